"""The state of one retraining session and the jobs that change it.

Jobs never touch this state. Each job gets copies of its inputs, returns a result, and the
window hands that result to an ``apply_*`` method here, on the GUI thread (Orange3's pattern).
A result that belongs to inputs the user has since replaced is dropped, not applied:

- caching and training work on a copy of the :class:`Retraining` they started from; their
  result is applied only while that object is still the session's ``retraining``;
- predictions and reviews carry the model ``generation`` they were made with; a new model
  (trained or opened) bumps it, so answers of the old model are never shown as the new
  one's, and the old predictor is never put back.

The current model lives in one place, :attr:`slot` (:class:`~app.gui.model_slot.ModelSlot`):
a trained head stays with the backbone, weights and splits it was trained on, whatever the
Features page says now; a model folder opened brings its kept evaluation with it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from app.core.base.jobs import CancelToken, ProgressCallback, long_lived_objects
from app.core.base.paths import user_cache_dir
from app.core.intake.dataset import Dataset, scan_dataset
from app.core.pipeline.retrain import Retraining
from app.core.storage.store import FeatureStore
from app.core.training.fit import TrainSettings
from app.gui import thumbnails
from app.gui.model_slot import ModelSlot

CLASS_THUMBS = 4
THUMB = 56
Job = Any  # fn(progress, cancel) -> result, run by app.gui.worker


@dataclass
class DataSummary:
    """What the Data and Train pages show of a dataset, counted once in the worker (a
    100k-image dataset takes tens of milliseconds to count: too long for the GUI thread)."""

    class_counts: dict[str, int]
    split_counts: dict[str, int]
    unique_images: int


def summarize(ds: Dataset) -> DataSummary:
    return DataSummary(ds.class_counts(), ds.split_counts(), len({r.digest for r in ds.images}))


@dataclass
class ScanResult:
    dataset: Dataset
    strips: dict[str, QImage]
    summary: DataSummary | None = None


@dataclass
class Predicted:
    prediction: Any  # app.core.delivery.predict.Prediction
    image: QImage | None


@dataclass
class PredictOutcome:
    """What a predict job returns: the predictor it used (built if it had to) and its answers,
    with the model generation they belong to."""

    predictor: Any  # app.core.delivery.predict.Predictor
    results: list[Predicted]
    generation: int


@dataclass
class ReviewOutcome:
    review: Any  # app.core.pipeline.review.Review
    generation: int  # of the model reviewed


@dataclass
class OpenedModel:
    """A model folder read by a job: its predictor and its kept evaluation (or why none)."""

    folder: str
    predictor: Any  # app.core.delivery.predict.Predictor
    saved: Any  # app.core.pipeline.review.SavedReview | None
    why: str


@dataclass
class RunOutcome:
    """What a caching or training job returns: the run it worked on (a copy) and the session
    object it was copied from, so that a stale outcome can be recognised."""

    run: Retraining
    base: Retraining


class Session(QObject):
    scanned = Signal(object)  # ScanResult: the folder just read (its strips and counts)
    dataset_changed = Signal(object)  # Dataset
    cache_changed = Signal(object)  # CacheResult
    trained = Signal(object)  # Retraining (result, evaluation, training_warnings)

    def __init__(self, cache_dir: str | Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.cache_dir = cache_dir
        self.retraining: Retraining | None = None  # the data side: dataset, cache
        self.slot = ModelSlot(self)  # the current model
        self.stopped_run = None  # a stopped run not (yet) chosen over the current model
        self.device = ""
        self._summary: tuple[Dataset, DataSummary] | None = None

    # --- data ---------------------------------------------------------------------------
    def scan_job(self, folder: str) -> Job:
        cache_dir = self.cache_dir

        def job(progress: ProgressCallback, cancel: CancelToken) -> ScanResult:
            # the records and strips live as long as the session: no collection pass while
            # they are built, and no full pass walks them afterwards (each held the window's
            # event loop 40-70 ms on a 100k-image folder)
            with long_lived_objects():
                with FeatureStore(cache_dir or user_cache_dir()) as store:
                    ds = scan_dataset(folder, store, progress=progress, cancel=cancel)
                summary = summarize(ds)
                first: dict[str, list[str]] = {c: [] for c in ds.classes}
                for r in ds.images:
                    if len(first[r.label]) < CLASS_THUMBS:
                        first[r.label].append(r.path)
                strips = {}
                for c in ds.classes:
                    cancel.raise_if_cancelled()
                    strips[c] = thumbnails.strip(first[c], THUMB)
            return ScanResult(ds, strips, summary)

        return job

    def apply_scan(self, result: ScanResult) -> None:
        """Use the scanned folder (the window runs one scan at a time: a later one replaces
        an earlier one before its result can arrive)."""
        ds = result.dataset
        self._summary = (ds, result.summary or summarize(ds))
        self.retraining = Retraining(str(ds.root), cache_dir=self.cache_dir, dataset=ds)
        self.scanned.emit(result)
        self.dataset_changed.emit(ds)

    def summary(self, ds: Dataset) -> DataSummary:
        """``ds``'s counts: those the scan made when it is the scanned dataset."""
        if self._summary is None or self._summary[0] is not ds:
            self._summary = (ds, summarize(ds))
        return self._summary[1]

    @property
    def has_data(self) -> bool:
        return self.retraining is not None

    # --- features -----------------------------------------------------------------------
    def cache_job(self, backbone: str, weights: str, retry_skipped: bool = False,
                  mode: str = "head", engine: str = "local",
                  ray_address: str | None = None) -> Job:
        """Cache what ``mode`` trains from: pooled taps ("head") or the cut ("finetune"),
        on this computer (``engine`` "local") or on a Ray cluster ("ray", ``ray_address``)."""
        base = self._need_data()
        run = copy.copy(base)
        run.backbone, run.weights = backbone, weights
        run.settings = dataclasses.replace(run.settings, mode=mode)
        run.cache = run.splits = run.result = run.evaluation = None

        def job(progress: ProgressCallback, cancel: CancelToken) -> RunOutcome:
            run.run_cache(progress, cancel, retry_skipped=retry_skipped, engine=engine,
                          ray_address=ray_address)
            return RunOutcome(run, base)

        return job

    def apply_cache(self, outcome: RunOutcome) -> bool:
        if outcome.base is not self.retraining:
            return False
        self.retraining = outcome.run
        self.cache_changed.emit(outcome.run.cache)
        return True

    # --- training -----------------------------------------------------------------------
    def train_job(self, settings: TrainSettings, backbone: str, weights: str) -> Job:
        base = self._need_data()
        run = copy.copy(base)
        if (run.backbone, run.weights) != (backbone, weights):
            run.backbone, run.weights, run.cache = backbone, weights, None
        run.settings = settings
        run.splits = run.result = run.evaluation = None

        def job(progress: ProgressCallback, cancel: CancelToken) -> RunOutcome:
            # In a child process: TensorFlow compiling the training step would otherwise
            # hold this process's GIL, and with it the event loop, for ~150 ms at a time.
            run.run_training_isolated(progress, cancel)
            return RunOutcome(run, base)

        return job

    def apply_training(self, outcome: RunOutcome) -> bool:
        """The trained run becomes the session's run and its model the current one, unless
        it was stopped and there is a model already: a stopped run never replaces the user's
        model unasked (it waits in :attr:`stopped_run` for :meth:`adopt`)."""
        if outcome.base is not self.retraining:
            return False
        run = self.retraining = outcome.run
        self.stopped_run = None
        if run.result is not None and run.result.epochs_run > 0:
            if run.result.cancelled and not self.slot.empty:
                self.stopped_run = run
            else:
                self.slot.set_trained(run, "the model just trained")
        self.trained.emit(run)
        return True

    def adopt(self, run) -> None:
        """The user chose the stopped run over the model they had."""
        if run is self.stopped_run:
            self.stopped_run = None
            self.slot.set_trained(run, "the stopped run, chosen over the earlier model")

    def thumbnails_job(self, items: list[dict], size: int = 96) -> Job:
        """Thumbnails of ``items`` (entries with a "path"): ``[(entry, QImage | None)]``."""
        def job(progress: ProgressCallback, cancel: CancelToken) -> list:
            out = []
            for m in items:
                cancel.raise_if_cancelled()
                out.append((m, thumbnails.thumbnail(m["path"], size)))
            return out

        return job

    # --- reviewing the trained model ----------------------------------------------------
    def review_job(self) -> Job:
        """Every test image's answer, the hardest training images and the validation
        images' unknown scores of the current trained model (cached features only)."""
        run, generation = self.slot.trained_run, self.slot.generation
        if run is None:
            raise RuntimeError("train a model first")

        def job(progress: ProgressCallback, cancel: CancelToken) -> ReviewOutcome:
            from app.core.pipeline.review import review

            return ReviewOutcome(review(run), generation)

        return job

    def apply_review(self, outcome: ReviewOutcome) -> bool:
        """Keep the review; False (dropped) when another model came since."""
        return self.slot.set_review(outcome.review, outcome.generation)

    def set_unknown_threshold(self, threshold: float) -> dict | None:
        """Use ``threshold`` for "unknown" answers from now on (and in the next export);
        returns what it does on the validation images, None without an unknown test."""
        from app.core.pipeline.review import threshold_effect

        slot = self.slot
        if slot.threshold is None:
            return None
        slot.set_threshold(threshold)
        review = slot.review
        return threshold_effect(review.validation_scores if review is not None else None,
                                slot.threshold)

    # --- fixing labels ------------------------------------------------------------------
    @property
    def data_dir(self) -> Path | None:
        run = self.retraining
        return None if run is None or run.dataset is None else Path(run.dataset.root)

    def move_image(self, path: str, new_class: str):
        """Move ``path`` into the class folder ``new_class`` of the data folder (a real file
        move, journaled); returns the core Move. Raises LabelError (nothing changed)."""
        from app.core.intake.labels import LabelError, move_image

        if self.data_dir is None:
            raise LabelError("open the data folder first")
        return move_image(self.data_dir, path, new_class)

    def undo_move(self):
        from app.core.intake.labels import LabelError, undo_move

        if self.data_dir is None:
            raise LabelError("open the data folder first")
        return undo_move(self.data_dir)

    def moves(self):
        """The data folder's journal: moves in effect, and lines this app did not write
        there (shown, never undone)."""
        from app.core.intake.labels import JournalState, journal_state

        return JournalState() if self.data_dir is None else journal_state(self.data_dir)

    def exclude(self, entry: dict, exclude: bool = True) -> None:
        """Leave ``entry``'s image (by content) out of the next training runs."""
        from app.core.intake.labels import LabelError, set_excluded

        digest = entry.get("digest") or self._digest_of(entry["path"])
        if self.data_dir is None or not digest:
            raise LabelError(f"{entry['path']} is not an image of the open data folder")
        set_excluded(self.cache_dir or user_cache_dir(), self.data_dir, digest,
                     entry["path"], exclude)

    def excluded(self) -> dict[str, str]:
        from app.core.intake.labels import excluded

        if self.data_dir is None:
            return {}
        return excluded(self.cache_dir or user_cache_dir(), self.data_dir)

    def _digest_of(self, path: str) -> str:
        run = self.retraining
        for r in (run.dataset.images if run is not None and run.dataset else ()):
            if r.path == path:
                return r.digest
        return ""

    # --- the model ----------------------------------------------------------------------
    def export_job(self, out_dir: str | Path, run: Retraining | None = None) -> Job:
        """Export ``run``'s model (default: the current model, trained or opened) with the
        unknown threshold now in use; returns the core's ExportReport."""
        slot = self.slot
        if run is None and slot.folder is not None:
            folder, threshold = slot.folder, slot.threshold

            def copy_job(progress: ProgressCallback, cancel: CancelToken):
                from app.core.delivery.export import copy_model

                return copy_model(folder, out_dir, threshold)

            return copy_job
        run = run or slot.trained_run
        if run is None:
            raise RuntimeError("train a model or open a model folder before exporting")
        trust = run.trust
        if trust is not None and trust.detector is not None:
            detector = copy.copy(trust.detector)  # the run's own is never moved
            if run is slot.model and slot.threshold is not None:
                detector.threshold = slot.threshold
            trust = dataclasses.replace(trust, detector=detector)
        review = slot.review if run is slot.model else None

        from app.core.delivery.export import onnx_unavailable

        formats = ("keras",) if onnx_unavailable() else ("keras", "onnx")

        def job(progress: ProgressCallback, cancel: CancelToken):
            return run.export(out_dir, formats, trust=trust, review=review)

        return job

    def open_model_job(self, folder: str) -> Job:
        def job(progress: ProgressCallback, cancel: CancelToken) -> OpenedModel:
            from app.core.delivery.predict import Predictor
            from app.core.pipeline.review import saved_review

            predictor = Predictor.from_dir(folder, self.cache_dir or user_cache_dir())
            saved, why = saved_review(folder, predictor.classes)
            return OpenedModel(str(folder), predictor, saved, why)

        return job

    def apply_model(self, opened: OpenedModel, source: str | None = None) -> None:
        self.slot.set_opened(opened.folder, opened.predictor, source or opened.folder,
                             opened.saved, opened.why)

    # --- prediction ---------------------------------------------------------------------
    def predict_job(self, paths: list[str], top_k: int, size: int = 72) -> Job:
        slot = self.slot
        model, predictor, generation = slot.model, slot.predictor, slot.generation
        threshold = slot.threshold
        cache_dir = self.cache_dir or user_cache_dir()  # photos cached there: no backbone
        if model is None:
            raise RuntimeError("train a model or open an exported model folder first")

        def job(progress: ProgressCallback, cancel: CancelToken) -> PredictOutcome:
            built = predictor
            if built is None:
                if isinstance(model, Retraining):
                    built = model.predictor()
                else:
                    from app.core.delivery.predict import Predictor

                    built = Predictor.from_dir(model, cache_dir)
            preds = built.predict(paths, top_k=top_k, progress=progress, cancel=cancel,
                                  threshold=threshold)
            cancel.raise_if_cancelled()
            return PredictOutcome(built, [
                Predicted(p, None if p.error else thumbnails.thumbnail(p.path, size))
                for p in preds], generation)

        return job

    def apply_predictions(self, outcome: PredictOutcome) -> bool:
        """Keep the predictor the job built and flag the answers with the threshold now in
        use; False (nothing kept) when the model has changed since the job started: its
        answers are the old model's."""
        if outcome.generation != self.slot.generation:
            return False
        self.slot.keep_predictor(outcome.predictor, outcome.generation)
        self.slot.flag(outcome.results)
        return True

    def _need_data(self) -> Retraining:
        if self.retraining is None:
            raise RuntimeError("open a data folder first (page 1)")
        return self.retraining


def predictions_csv(results: list[Predicted], sep: str = ",", top_k: int | None = None) -> str:
    """path, label_1, probability_1, …, unknown, score, error — one row per file (unknown
    and score empty when the model has no unknown test); ``top_k`` labels a row (default:
    as many as the answers hold)."""
    import csv
    import io

    k = max((len(r.prediction.top) for r in results), default=0)
    k = k if top_k is None else min(k, top_k)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=sep, lineterminator="\n")
    header = ["path"]
    for i in range(1, k + 1):
        header += [f"label_{i}", f"probability_{i}"]
    writer.writerow([*header, "unknown", "score", "error"])
    for r in results:
        p = r.prediction
        row = [p.path]
        for i in range(k):
            if i < len(p.top):
                row += [p.top[i]["label"], f"{p.top[i]['probability']:.6f}"]
            else:
                row += ["", ""]
        unknown = "" if p.unknown is None else str(bool(p.unknown)).lower()
        score = "" if p.score is None else f"{p.score:.6f}"
        writer.writerow([*row, unknown, score, p.error or ""])
    return buf.getvalue()
