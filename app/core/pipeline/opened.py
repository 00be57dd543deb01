"""A model folder opened (the one kept at quit, or one exported or received), as a value with
the same face as a :class:`~app.core.pipeline.trained.TrainedModel`: its predictor, its
evaluation (as kept in the folder, or why none), its training curves, and an export that copies
the folder's files. What the window's current-model slot holds when the model was not trained
in this session."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.core.delivery.export import ExportReport
    from app.core.delivery.predict import Predictor


@dataclass(frozen=True, eq=False)
class OpenedModel:
    folder: str
    built: Predictor
    saved: Any = None  # app.core.pipeline.review.SavedReview | None
    why: str = ""  # why no evaluation is kept, when none is
    history: list[dict] = field(default_factory=list)  # its training curves (history.json)
    tag_scores: Any = None  # SavedTagScores of a model of several tags a photo, if kept

    reviewable = False  # its review is what the folder kept (saved), not made again

    @property
    def classes(self) -> list[str]:
        return list(self.built.classes)

    @property
    def multi_label(self) -> bool:
        """Several tags a photo (a threshold per tag), not one class."""
        return self.built.thresholds is not None

    @property
    def evaluation(self):
        return None if self.saved is None else self.saved.evaluation

    @property
    def detector(self):
        return self.built.unknown

    def predictor(self) -> Predictor:
        return self.built

    def export(self, out_dir: str | Path, formats: tuple[str, ...] = (),
               threshold: float | None = None, evaluation_doc: dict | None = None
               ) -> ExportReport:
        """The folder's files copied to ``out_dir`` (answering "unknown" below
        ``threshold``); the model is not rebuilt, so ``formats`` and ``evaluation_doc`` are
        what the folder holds."""
        from app.core.delivery.export import copy_model

        return copy_model(self.folder, out_dir, threshold)


def open_model(folder: str | Path, cache_dir: str | Path | None = None) -> OpenedModel:
    """Read a model folder (every file checked): its predictor (answering photos already in
    the feature cache ``cache_dir`` from their cached taps), its kept evaluation or why there
    is none, its training curves."""
    from app.core.delivery.export import read_history
    from app.core.delivery.predict import Predictor
    from app.core.pipeline.review import saved_review, saved_tag_scores

    predictor = Predictor.from_dir(folder, cache_dir)
    tag_scores = None
    if predictor.thresholds is not None:  # several tags a photo: per-tag scores, tag sets
        saved = None
        tag_scores, why = saved_tag_scores(folder, predictor.classes,
                                           predictor.thresholds.tolist())
    else:
        saved, why = saved_review(folder, predictor.classes)
    return OpenedModel(str(folder), predictor, saved, why, read_history(folder), tag_scores)
