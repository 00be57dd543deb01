"""The state of one retraining session and the jobs that change it.

Jobs never touch this state. Each job gets copies of its inputs, returns a result, and the
window hands that result to an ``apply_*`` method here, on the GUI thread (Orange3's pattern).
A result that belongs to inputs the user has since replaced is dropped, not applied:

- caching and training work on a copy of the :class:`Retraining` they started from; their
  result is applied only while that object is still the session's ``retraining``;
- predictions carry the model ``generation`` they were made with; a new model (trained or
  opened) bumps it, so answers of the old model are never shown as the new one's, and the
  old predictor is never put back.

The model used for predictions is a snapshot of its own (``model``): a trained head stays
with the backbone, weights and splits it was trained on, whatever the Features page says now.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
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
    ticket: int = 0
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
    run: Retraining
    review: Any  # app.core.pipeline.review.Review


@dataclass
class RunOutcome:
    """What a caching or training job returns: the run it worked on (a copy) and the session
    object it was copied from, so that a stale outcome can be recognised."""

    run: Retraining
    base: Retraining


class Session(QObject):
    dataset_changed = Signal(object)  # Dataset
    cache_changed = Signal(object)  # CacheResult
    trained = Signal(object)  # Retraining (result, evaluation, training_warnings)
    predictor_changed = Signal(str)  # where the model comes from

    def __init__(self, cache_dir: str | Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.cache_dir = cache_dir
        self.retraining: Retraining | None = None  # the data side: dataset, cache
        self.model: Retraining | str | None = None  # a trained snapshot, or a model folder
        self.predictor = None  # app.core.delivery.predict.Predictor, once built or loaded
        self.predictor_source = ""
        self.generation = 0  # bumped whenever the model behind predictions changes
        self.stopped_run = None  # a stopped run not (yet) chosen over the current model
        self.review = None  # app.core.pipeline.review.Review of the current trained model
        self.device = ""
        self._scan_ticket = 0
        self._summary: tuple[Dataset, DataSummary] | None = None
        # Keras models are built one at a time: a random-weights backbone reseeds the global
        # generator, so two builds in two threads would not get the weights the cache used.
        self._building = threading.Lock()

    # --- data ---------------------------------------------------------------------------
    def scan_job(self, folder: str) -> Job:
        cache_dir = self.cache_dir
        self._scan_ticket += 1
        ticket = self._scan_ticket

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
            return ScanResult(ds, strips, ticket, summary)

        return job

    def apply_scan(self, result: ScanResult) -> bool:
        """Use the scanned folder; False (nothing changed) when a later scan was asked for."""
        if result.ticket != self._scan_ticket:
            return False
        ds = result.dataset
        self._summary = (ds, result.summary or summarize(ds))
        self.retraining = Retraining(str(ds.root), cache_dir=self.cache_dir, dataset=ds)
        self.dataset_changed.emit(ds)
        return True

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
            if run.result.cancelled and self.model is not None:
                self.stopped_run = run
            else:
                self._set_model(run, None, "the model just trained")
        self.trained.emit(run)
        return True

    def adopt(self, run) -> None:
        """The user chose the stopped run over the model they had."""
        if run is self.stopped_run:
            self.stopped_run = None
            self._set_model(run, None, "the stopped run, chosen over the earlier model")

    def model_accuracy(self) -> float | None:
        """The current model's test accuracy, when known."""
        ev = getattr(self.model, "evaluation", None)
        return None if ev is None else ev.main_accuracy

    @property
    def trained_run(self) -> Retraining | None:
        """The run behind the current model when it was trained in this session."""
        return self.model if isinstance(self.model, Retraining) else None

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
        run = self.trained_run
        if run is None:
            raise RuntimeError("train a model first")

        def job(progress: ProgressCallback, cancel: CancelToken) -> ReviewOutcome:
            from app.core.pipeline.review import review

            return ReviewOutcome(run, review(run))

        return job

    def apply_review(self, outcome: ReviewOutcome) -> bool:
        """Keep the review; False (dropped) when another model came since."""
        if outcome.run is not self.trained_run:
            return False
        self.review = outcome.review
        return True

    def set_unknown_threshold(self, threshold: float) -> dict | None:
        """Use ``threshold`` for "unknown" answers from now on (and in the next export);
        returns what it does on the validation images, None without a detector."""
        from app.core.pipeline.review import threshold_effect

        run, detector = self.trained_run, None
        if run is not None and run.trust is not None:
            detector = run.trust.detector
        targets = [detector, getattr(self.predictor, "unknown", None)]
        if not any(t is not None for t in targets):
            return None
        for target in targets:
            if target is not None:
                target.threshold = float(threshold)
        scores = self.review.validation_scores if self.review is not None else None
        return threshold_effect(scores, threshold)

    def reflag(self, results: list[Predicted]) -> bool:
        """Answers shown so far (the current model's) follow the threshold now in use;
        True when any changed."""
        detector = getattr(self.predictor, "unknown", None)
        if detector is None and self.trained_run is not None and self.trained_run.trust:
            detector = self.trained_run.trust.detector
        changed = False
        for r in results if detector is not None else ():
            p = r.prediction
            if p.score is not None:
                flag = bool(detector.flags([p.score])[0])
                changed, p.unknown = changed or flag != p.unknown, flag
        return changed

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
    @property
    def has_model(self) -> bool:
        return self.model is not None

    def export_job(self, out_dir: str | Path, run: Retraining | None = None) -> Job:
        """Export ``run``'s model (default: the current trained one); returns the core's
        ExportReport."""
        run = run or self.trained_run
        if run is None:
            raise RuntimeError("train a model before exporting it")
        trust = run.trust  # as it is now: the slider moves the live detector's threshold
        if trust is not None:
            trust = dataclasses.replace(trust, detector=copy.copy(trust.detector))

        from app.core.delivery.export import onnx_unavailable

        formats = ("keras",) if onnx_unavailable() else ("keras", "onnx")

        def job(progress: ProgressCallback, cancel: CancelToken):
            with self._building:
                return run.export(out_dir, formats, trust=trust)

        return job

    def open_model_job(self, folder: str) -> Job:
        def job(progress: ProgressCallback, cancel: CancelToken):
            from app.core.delivery.predict import Predictor

            with self._building:
                return Predictor.from_dir(folder)

        return job

    def apply_model(self, predictor: Any, folder: str, source: str | None = None) -> None:
        self._set_model(str(folder), predictor, source or str(folder))

    def _set_model(self, model: Retraining | str, predictor: Any, source: str) -> None:
        self.generation += 1
        self.model, self.predictor, self.predictor_source = model, predictor, source
        self.review = None
        self.predictor_changed.emit(source)

    # --- prediction ---------------------------------------------------------------------
    def predict_job(self, paths: list[str], top_k: int, size: int = 72) -> Job:
        model, predictor, generation = self.model, self.predictor, self.generation
        if model is None:
            raise RuntimeError("train a model or open an exported model folder first")

        def job(progress: ProgressCallback, cancel: CancelToken) -> PredictOutcome:
            built = predictor
            if built is None:
                with self._building:
                    if isinstance(model, Retraining):
                        built = model.predictor()
                    else:
                        from app.core.delivery.predict import Predictor

                        built = Predictor.from_dir(model)
            preds = built.predict(paths, top_k=top_k, progress=progress, cancel=cancel)
            cancel.raise_if_cancelled()
            return PredictOutcome(built, [
                Predicted(p, None if p.error else thumbnails.thumbnail(p.path, size))
                for p in preds], generation)

        return job

    def apply_predictions(self, outcome: PredictOutcome) -> bool:
        """Keep the predictor the job built; False (nothing kept) when the model has changed
        since the job started: its answers are the old model's."""
        if outcome.generation != self.generation:
            return False
        if self.predictor is None:
            self.predictor = outcome.predictor
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
