"""The current model: the one every page shows and every action (Evaluate, the unknown
threshold, Predict, Export) works on, whether it was trained in this window, kept at quit
and reopened, or opened from a model folder.

It holds the model (a trained model, or a model folder opened: values with the same face), its
predictor once built, where
it came from, what the Evaluate page shows of it (and where those figures come from), the
"unknown" threshold as a value, and a generation that a new model bumps, so that an answer
made by an earlier model is recognised and dropped. It is changed on the GUI thread only;
jobs get copies of what they need (a threshold is a float, never a detector to move).

Scores become "unknown" in one place, :meth:`flag`: predictions carry scores, and the
threshold in the slot decides.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal


class ModelSlot(QObject):
    changed = Signal()  # another model is the current one
    reviewed = Signal()  # the current model's review (test answers, hardest images) arrived
    threshold_changed = Signal(float)  # only when it changed

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        # a TrainedModel (trained in this session) or an OpenedModel (a model folder): both
        # give predictor(), export(), evaluation, history, detector, classes
        self.model: Any = None
        self.predictor: Any = None  # app.core.delivery.predict.Predictor, once built
        self.source = ""  # where it came from, in words
        self.generation = 0
        self.evaluation: Any = None  # app.core.trust.evaluation.Evaluation
        self.tag_scores: Any = None  # app.core.pipeline.review.SavedTagScores (several tags)
        self.review: Any = None  # app.core.pipeline.review.Review
        self.evaluation_note = ""  # where the Evaluate page's figures come from, or why none
        self.threshold: float | None = None  # below it an answer is "unknown"; None: no test
        self.method: str | None = None  # the unknown score's method
        self.fitted_threshold: float | None = None
        self.history: list[dict] = []  # its training curves, one record an epoch

    # --- what it holds --------------------------------------------------------------------
    @property
    def empty(self) -> bool:
        return self.model is None

    @property
    def folder(self) -> str | None:
        """The model folder the current model was opened from."""
        return getattr(self.model, "folder", None)

    @property
    def accuracy(self) -> float | None:
        ev = self.evaluation
        return None if ev is None else ev.main_accuracy

    # --- changing it (GUI thread) ---------------------------------------------------------
    def set_model(self, model: Any, source: str) -> None:
        """``model`` becomes the current one: a TrainedModel (its test scores) or an
        OpenedModel (its evaluation as kept in the folder, or why there is none)."""
        self.generation += 1
        self.model, self.source = model, source
        self.predictor = None if model.reviewable else model.predictor()
        self.evaluation, self.review = model.evaluation, None
        self.tag_scores = model.tag_scores
        if model.reviewable:
            self.evaluation_note = "Scores on the test images, which training never saw."
        elif model.saved is not None:
            saved = model.saved
            made = f" on {saved.made[:10]}" if saved.made else ""
            data = f" ({saved.dataset})" if saved.dataset else ""
            self.evaluation_note = (
                f"Scores kept in the model folder, measured when it was exported{made} on "
                f"the test images of its data folder{data}.")
            self.review = saved.review
        elif model.tag_scores is not None:
            self.evaluation_note = (
                "Scores kept in the model folder, measured when it was exported on the test "
                "photos of its data folder; a tag is given at or above its threshold.")
        else:
            self.evaluation_note = f"No scores for this model: {model.why}"
        self.history = list(model.history)
        detector = model.detector
        if detector is None:
            self.threshold = self.method = self.fitted_threshold = None
        else:
            self.threshold = float(detector.threshold)
            self.method, self.fitted_threshold = detector.method, detector.fitted_threshold
        self.changed.emit()

    def keep_predictor(self, predictor: Any, generation: int) -> None:
        """A predictor a job built for this model (kept once, for the next predictions)."""
        if generation == self.generation and self.predictor is None:
            self.predictor = predictor

    def set_review(self, review: Any, generation: int) -> bool:
        """The review a job made of the model of ``generation``; False when it is stale."""
        if generation != self.generation:
            return False
        self.review = review
        self.reviewed.emit()
        return True

    def set_threshold(self, threshold: float) -> bool:
        """Use ``threshold`` from now on; True (and ``threshold_changed``) only when it is
        another value: a threshold set to what it was is not news."""
        if self.threshold is None or float(threshold) == self.threshold:
            return False
        self.threshold = float(threshold)
        self.threshold_changed.emit(self.threshold)
        return True

    # --- the one place a score becomes "unknown" --------------------------------------------
    def flag(self, predictions: list) -> bool:
        """Set ``unknown`` on each prediction (``.prediction`` of each item) from its score
        and the threshold now in use; True when any changed."""
        changed = False
        for item in predictions if self.threshold is not None else ():
            p = item.prediction
            if p.score is not None:
                flag = bool(p.score < self.threshold)
                changed, p.unknown = changed or flag != p.unknown, flag
        return changed
