"""Labeling with few labels, a stage of its own below the pipeline: which photo to ask about
next (:mod:`.queue`), what every unlabelled photo probably is (:mod:`.model`), groups of alike
photos to name at once (:mod:`.groups`), and what one refresh of the Label page shows
(:mod:`.pool`). Pure numpy on the cached features (no backbone run, no Keras): a question is
answered in milliseconds. A photo is measured by its main tap and its two auxiliary taps
averaged over their grid (:func:`photo_features`)."""

from app.core.intake.dataset import UNSURE_FOLDER
from app.core.labeling.groups import (
    CLUSTER_SAMPLE,
    MIN_GROUP,
    TYPICAL_NEIGHBOURS,
    Group,
    auto_groups,
    kmeans,
    main_features,
    make_groups,
    photo_features,
    typicality,
    unit,
)
from app.core.labeling.model import (
    KEEP_KNOWN,
    NOVELTY_K,
    RECALIBRATE,
    LabelModel,
    Suggestions,
    _relative,
    centred,
    fit_model,
    stratified_folds,
    suggest,
)
from app.core.labeling.pool import (
    LOAD_CHUNK,
    REGROUP,
    FeatureTable,
    LabelingView,
    Pool,
    accept_requests,
    check_inbox,
    prepare_pool,
    refresh,
    rest_requests,
)
from app.core.labeling.queue import (
    COVER_FIRST,
    COVER_SAMPLE,
    HARD_TASK,
    RANDOM_SHARE,
    Ask,
    Queue,
    ask,
    is_hard,
    next_batch,
)

__all__ = [
    "CLUSTER_SAMPLE", "COVER_FIRST", "COVER_SAMPLE", "HARD_TASK", "KEEP_KNOWN", "LOAD_CHUNK",
    "MIN_GROUP", "NOVELTY_K", "RANDOM_SHARE", "RECALIBRATE", "REGROUP", "TYPICAL_NEIGHBOURS",
    "UNSURE_FOLDER", "Ask", "FeatureTable", "Group", "LabelModel", "LabelingView",
    "Pool", "Queue", "Suggestions", "_relative", "accept_requests", "ask", "auto_groups",
    "centred", "check_inbox", "fit_model", "is_hard", "kmeans", "main_features", "make_groups",
    "next_batch", "photo_features", "prepare_pool", "refresh", "rest_requests",
    "stratified_folds", "suggest", "typicality", "unit",
]
