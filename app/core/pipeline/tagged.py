"""Several tags a photo, from a tagged folder to a judged model: cache the photos' features
(the same store and key as a class folder's: a tag set changes no cached feature), train the
same head with a sigmoid per tag and binary cross-entropy on every output (the aux loss weight
as set), fit a temperature and a threshold per tag on the validation split, score the test
split (:mod:`app.core.trust.tags`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.core.base.errors import SettingsError
from app.core.base.jobs import Cancelled, CancelToken, ProgressCallback, no_progress
from app.core.base.paths import user_cache_dir
from app.core.features.backbones import get_spec
from app.core.features.caching import CacheResult
from app.core.features.keys import key_precision
from app.core.intake.dataset import SPLITS, DatasetError
from app.core.intake.tags import TaggedDataset
from app.core.pipeline.opened import OpenedModel
from app.core.pipeline.retrain import RunChoice, cache_features
from app.core.storage.store import FeatureStore
from app.core.training.feeds import FeatureSource, SplitData
from app.core.training.fit import TrainResult, predict_split, train_head
from app.core.trust.fitting import main_outputs
from app.core.trust.tags import TagEvaluation, TagTrust, fit_tag_trust, score_tags
from app.core.trust.unknown import DEFAULT_METHOD, fit_detector, reference_rows

if TYPE_CHECKING:
    from app.core.delivery.export import ExportReport

# the unknown scores that read features alone (a class mean or a top-1 probability means
# nothing when a photo holds several tags)
TAG_UNKNOWN_METHODS = ("relative_knn", "knn")


def load_tagged_splits(data: TaggedDataset, model_key: str, cache_dir: str | Path | None = None
                       ) -> dict[str, SplitData]:
    """Each split's photos (one a content) with their multi-hot tags, features streamed from
    the store."""
    folder = Path(cache_dir or user_cache_dir())
    recs = data.records()
    with FeatureStore(folder) as store:
        digests = {r.digest for r in recs}
        missing = digests - store.cached_digests(model_key, digests)
    if missing:
        raise DatasetError(f"{len(missing)} photos have no cached features for {model_key}: "
                           "cache them first")
    source = FeatureSource(folder, model_key)
    out = {}
    for split in SPLITS:
        rs = data.records(split)
        out[split] = SplitData(None, data.targets(rs), [r.path for r in rs],
                               [r.digest for r in rs], source)
    return out


def tag_answer(result: TrainResult, data: SplitData) -> tuple[np.ndarray, np.ndarray]:
    """Main-tap features (N, D) and the answer's per-tag logits (N, tags) on ``data``: the
    main output's (a multi-label model answers with it: :func:`train_tagged`)."""
    features, z = main_outputs(result, data)
    return features, np.asarray(z, np.float64)


@dataclass
class TaggedModel:
    """A multi-label run and what was learned about it."""

    dataset: TaggedDataset
    splits: dict[str, SplitData]
    result: TrainResult
    trust: TagTrust
    evaluation: TagEvaluation
    training_warnings: tuple[str, ...] = ()
    validation: TagEvaluation | None = None

    @property
    def tags(self) -> list[str]:
        return list(self.result.classes)

    def export(self, out_dir: str | Path, formats: tuple[str, ...] = ("keras",)
               ) -> ExportReport:
        """The model folder: per-tag sigmoids calibrated inside the model, each tag's
        threshold in ``metadata.json``, checked against the app's answers like any export."""
        from app.core.delivery.export import export_model

        result = self.result
        spec = self.dataset.images.split_spec
        return export_model(
            out_dir, spec=get_spec(result.backbone), weights=result.weights, result=result,
            validation=self.splits["validation"], precision=key_precision(result.model_key),
            tag_trust=self.trust, formats=formats,
            extra_metadata={
                "dataset": str(self.dataset.root),
                "split": {s: len(self.splits[s]) for s in SPLITS},
                "split_fractions": [spec.train, spec.validation, spec.test],
                "test": {k: getattr(self.evaluation, k) for k in
                         ("count", "map", "micro_f1", "macro_f1", "exact_match",
                          "hamming_loss", "none_rate", "unknown_rate")},
                "training": result.summary()["settings"],
                "mode": result.settings.mode,
                "best_epoch": result.best_epoch,
                "cancelled": result.cancelled,
                "left_out_classes": list(self.dataset.left_out_tags),
            },
            evaluation={"task": "multi-label", **self.evaluation.as_dict(answers=True)})

    def summary(self) -> dict:
        ev = self.evaluation
        return {
            "mode": "multi-label",
            "tags": self.tags,
            "training": self.result.summary(),
            "thresholds": {"rule": self.trust.rule,
                           "per_tag": dict(zip(self.tags, (round(t, 4) for t in
                                                           self.trust.thresholds)))},
            "calibration": {"temperatures": dict(zip(self.tags, (round(t, 4) for t in
                                                                 self.trust.temperatures))),
                            "note": self.trust.note},
            "test": ev.as_dict(),
            "warnings": list(self.training_warnings),
        }


@dataclass(frozen=True, eq=False)
class TrainedTags(OpenedModel):
    """A multi-label run trained for the window: the model folder it was kept in, opened (its
    predictor, curves and per-tag scores; Export copies that folder, in the forms it was
    written in), with the run's result (without Keras objects: how
    it ended, its history) and its warnings."""

    result: TrainResult | None = None
    training_warnings: tuple[str, ...] = ()
    train_count: int = 0  # photos in the training split


def judge_tags(result: TrainResult, splits: dict[str, SplitData],
               unknown_method: str = DEFAULT_METHOD) -> tuple[TagTrust, TagEvaluation,
                                                              TagEvaluation | None]:
    """Per-tag temperatures and thresholds and the unknown detector, fitted on the validation
    split; the test split scored with them (and the validation split, for comparison)."""
    val, test, train = splits["validation"], splits["test"], splits["train"]
    if not len(val):
        trust = fit_tag_trust(np.zeros((0, len(result.classes))),
                              np.zeros((0, len(result.classes))))
        val_ev = None
    else:
        val_features, val_logits = tag_answer(result, val)
        trust = fit_tag_trust(val_logits, val.labels)
        method = unknown_method if unknown_method in TAG_UNKNOWN_METHODS else "relative_knn"
        ref = train.take(reference_rows(len(train)))
        train_features = main_outputs(result, ref)[0]
        trust.detector = fit_detector(
            method, train_features, np.zeros(len(ref), np.int64), 1, val_features,
            trust.calibrated(val_logits), pool_training=result.settings.mode == "head")
        val_ev = _scored(result, trust, val, (val_features, val_logits))
    return trust, _scored(result, trust, test), val_ev


def _scored(result: TrainResult, trust: TagTrust, data: SplitData,
            answer: tuple[np.ndarray, np.ndarray] | None = None) -> TagEvaluation:
    """``data`` scored with ``trust``; ``answer``: its :func:`tag_answer`, when at hand."""
    if not len(data):
        return score_tags(result.classes, data.labels, np.zeros((0, len(result.classes))), [],
                          trust.thresholds, rule=trust.rule)
    features, z = answer if answer is not None else tag_answer(result, data)
    probs = trust.calibrated(z)
    unknown = None
    if trust.detector is not None:
        unknown = trust.detector.flags(trust.detector.score(features, probs))
    outputs = predict_split(result, data)
    return score_tags(result.classes, data.labels, probs, data.paths, trust.thresholds,
                      outputs=outputs, unknown=unknown, rule=trust.rule)


def train_tagged(choice: RunChoice, data: TaggedDataset, cache_dir: str | Path | None = None,
                 progress: ProgressCallback = no_progress, cancel: CancelToken | None = None,
                 unknown_method: str = DEFAULT_METHOD) -> tuple[TaggedModel, CacheResult]:
    """Cache what is missing, train a multi-label head on the tagged folder's photos, fit its
    trust and score its test split."""
    if data.errors:
        raise DatasetError(data.errors[0].message)
    if not data.tag_names:
        raise DatasetError("no tag has enough photos to train on")
    if choice.settings.answer == "average" and choice.settings.aux_weight > 0:
        raise SettingsError("a multi-label model answers with its main output (the mean "
                            "with the aux outputs cost mAP, and cannot be exported): --answer "
                            "main, the multi-label default")
    cache, images = cache_features(choice, data.images, cache_dir, progress, cancel)
    if cache.cancelled:
        raise Cancelled()
    data = data.only(images)  # less the photos that could not be decoded (each reported)
    splits = load_tagged_splits(data, cache.model_key, cache_dir)
    if not len(splits["train"]):
        raise SettingsError("the training split is empty")
    backbone = (get_spec(choice.backbone), choice.weights)
    result = train_head(splits["train"], splits["validation"], data.tag_names,
                        choice.settings, progress, cancel, backbone)
    result = replace(result, model_key=cache.model_key, backbone=choice.backbone,
                     weights=choice.weights)
    trust, evaluation, val_ev = judge_tags(result, splits, unknown_method)
    warnings = tuple(f"tag {t!r} left out of training: fewer than 2 photos"
                     for t in data.left_out_tags)
    return TaggedModel(data, splits, result, trust, evaluation, warnings, val_ev), cache



def evaluate_tagged_model_dir(model_dir: str | Path, data_dir: str | Path,
                              labels: str | Path | None = None, split: str = "test",
                              progress: ProgressCallback = no_progress,
                              cancel: CancelToken | None = None) -> TagEvaluation:
    """Score a multi-label model folder on a tagged folder's photos (its ``split``, by the
    model's split fractions, or all), each tag decided at the folder's threshold. Photos that
    cannot be scored are listed with why in the result's errors, never dropped silently."""
    from app.core.delivery.predict import ModelDirError, Predictor, probability_rows
    from app.core.intake.dataset import SplitSpec
    from app.core.intake.tags import scan_tagged

    predictor = Predictor.from_dir(model_dir)
    if predictor.thresholds is None:
        raise ModelDirError(f"{model_dir} gives one class a photo: evaluate it on a folder "
                            "of class folders, without --multi-label")
    fractions = predictor.metadata.get("split_fractions")
    data = scan_tagged(data_dir, labels, split=SplitSpec(*fractions) if fractions else None)
    if data.errors:
        raise DatasetError(data.errors[0].message)
    unknown = sorted(set(data.tag_names) - set(predictor.classes))
    if unknown:
        raise ModelDirError(f"{data_dir} has tags the model does not know: "
                            f"{', '.join(unknown)}")
    recs = data.records(None if split == "all" else split)
    preds = predictor.predict([r.path for r in recs], top_k=len(predictor.classes),
                              progress=progress, cancel=cancel)
    ok = [(r, p) for r, p in zip(recs, preds) if p.error is None]
    index = {c: i for i, c in enumerate(predictor.classes)}
    probs = probability_rows([p for _, p in ok], predictor.classes)
    targets = np.zeros_like(probs)
    for row, (r, _) in enumerate(ok):
        for t in data.tags.get(r.digest, ()):
            if t in index:
                targets[row, index[t]] = 1.0
    unknown_flags = (np.array([p.unknown for _, p in ok], bool)
                     if predictor.unknown is not None else None)
    ev = score_tags(predictor.classes, targets, probs, [r.path for r, _ in ok],
                    predictor.thresholds.tolist(), unknown=unknown_flags,
                    rule=str(predictor.metadata.get("threshold_rule") or ""))
    ev.skipped = [{"path": p.path, "reason": p.error} for p in preds if p.error is not None]
    ev.skipped += [{"path": s.path, "reason": s.reason} for s in data.images.skipped]
    ev.findings = [f.as_dict() for f in data.findings if f.level != "info"]
    return ev


# -- a multi-label run for a window: trained in a child process, kept as a model folder -------
RUNS = "runs"  # in the user's data folder: the window's multi-label runs, one folder each
RUN_PREFIX = "tags-"
KEEP_RUNS = 3  # the newest run folders kept (and any the caller names)


def runs_dir() -> Path:
    from app.core.base.paths import user_data_dir

    return user_data_dir() / RUNS


def new_run_dir() -> Path:
    """A new, not yet existing run folder of this app's own naming."""
    import time
    import uuid

    return runs_dir() / f"{RUN_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def prune_runs(keep: set[str] = frozenset(), newest: int = KEEP_RUNS) -> list[Path]:
    """Remove the run folders this app made (its naming, directly in :func:`runs_dir`, a
    model folder's ``metadata.json`` in them) but the ``newest`` and those in ``keep``;
    returns what was removed. Nothing else there is touched."""
    import shutil

    folder = runs_dir()
    if not folder.is_dir():
        return []
    ours = sorted((p for p in folder.iterdir() if p.name.startswith(RUN_PREFIX)
                   and p.is_dir() and not p.is_symlink() and (p / "metadata.json").is_file()),
                  key=lambda p: p.name)
    kept = {str(Path(k).resolve()) for k in keep}
    removed = []
    for p in ours[:max(0, len(ours) - newest)]:
        if str(p.resolve()) not in kept:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def train_tagged_in_child(choice: RunChoice, data: TaggedDataset, out_dir: str,
                          cache_dir: str | Path | None = None,
                          progress: ProgressCallback = no_progress,
                          cancel: CancelToken | None = None,
                          formats: tuple[str, ...] = ("keras",)) -> tuple[TrainResult | None,
                                                                           tuple[str, ...]]:
    """The child-process half of :func:`train_tagged_isolated`: train, then write the model
    folder (``formats``, its scores kept) to ``out_dir``. Returns the run's result without
    its Keras objects (None when stopped before an epoch ended) and its warnings."""
    model, _cache = train_tagged(choice, data, cache_dir, progress, cancel)
    if not model.result.epochs_run:
        return None, model.training_warnings
    model.export(out_dir, formats)
    return replace(model.result, head=None, model=None, base=None), model.training_warnings


def train_tagged_isolated(choice: RunChoice, data: TaggedDataset, out_dir: str | Path,
                          cache_dir: str | Path | None = None,
                          progress: ProgressCallback = no_progress,
                          cancel: CancelToken | None = None,
                          formats: tuple[str, ...] = ("keras",)) -> TrainedTags | None:
    """Train a multi-label head on a tagged folder in a child process (TensorFlow would hold
    a window's GIL for ~150 ms at a time), keep it as the model folder ``out_dir`` and open
    it: the model the window's pages show (its tag sets, curves and per-tag scores) is that
    folder's. None when the run stopped before its first epoch ended."""
    from app.core.base.isolation import run_isolated
    from app.core.pipeline.opened import open_model

    result, warnings = run_isolated(train_tagged_in_child, {
        "choice": choice, "data": data, "out_dir": str(out_dir), "cache_dir": cache_dir,
        "formats": tuple(formats)},
        progress, cancel)
    if result is None:
        return None
    opened = open_model(out_dir, cache_dir)
    return TrainedTags(opened.folder, opened.built, opened.saved, opened.why, opened.history,
                       opened.tag_scores, result, tuple(warnings),
                       len(data.records("train")))
