"""The state of one retraining session, as values, and the jobs that make new ones.

Jobs never touch this state. Each job gets the values it works from, returns a value, and a
controller hands that value to an ``apply_*`` method here, on the GUI thread (Orange3's
pattern). A value that belongs to inputs the user has since replaced is dropped, never
applied; staleness is a value, never an identity:

- the data folder read last has a ``data_generation``: caching and training outcomes carry the
  one they started from;
- the current model (:attr:`slot`, :class:`~app.gui.model_slot.ModelSlot`) has a
  ``generation``: predictions and reviews carry the one they were made with.

The user's choices (folder, backbone, weights, where the backbone runs, the training
settings) are one frozen :class:`~app.core.pipeline.retrain.RunChoice`, :attr:`choice`,
replaced when a choice changes (``choice_changed`` only on a real change).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from app.core.base.jobs import CancelToken, ProgressCallback, long_lived_objects
from app.core.base.paths import user_cache_dir
from app.core.intake.dataset import TAGS_FILE, Dataset, scan_dataset
from app.core.intake.tags import scan_tagged
from app.core.pipeline.retrain import RunChoice
from app.core.storage.store import FeatureStore
from app.gui import thumbnails
from app.gui.model_slot import ModelSlot

CLASS_THUMBS = 4
THUMB = 56
Job = Any  # fn(progress, cancel) -> result, run by app.gui.worker


@dataclass(frozen=True)
class DataSummary:
    """What the Data and Train pages show of a dataset, counted once in the worker (a
    100k-image dataset takes tens of milliseconds to count: too long for the GUI thread)."""

    class_counts: dict[str, int]
    split_counts: dict[str, int]
    unique_images: int


def summarize(ds: Dataset) -> DataSummary:
    return DataSummary(ds.class_counts(), ds.split_counts(), len({r.digest for r in ds.images}))


def summarize_tagged(tagged) -> DataSummary:
    """A tagged folder's counts: photos per tag (a photo counts once for each of its tags)."""
    ds = tagged.images
    return DataSummary(tagged.tag_counts(), ds.split_counts(), len(tagged.records()))


@dataclass(frozen=True)
class Scanned:
    """What reading a folder gives: its dataset, its counts and a strip of photos a class
    (a tag); ``tagged``: the folder's tags (a tags file at its top), or None."""

    dataset: Dataset
    summary: DataSummary
    strips: dict[str, QImage]
    tagged: Any = None  # app.core.intake.tags.TaggedDataset


@dataclass(frozen=True)
class FolderChange:
    """The data folder as just read: what every page follows (``folder_changed``)."""

    dataset: Dataset
    summary: DataSummary
    strips: dict[str, QImage]
    generation: int
    tagged: Any = None  # app.core.intake.tags.TaggedDataset: several tags a photo

    @property
    def root(self) -> Path:
        return Path(self.dataset.root)

    @property
    def names(self) -> list[str]:
        """What its photos are labelled with: its classes, or its tags."""
        return list(self.tagged.tag_names if self.tagged is not None else
                    self.dataset.classes)


@dataclass(frozen=True)
class Predicted:
    prediction: Any  # app.core.delivery.predict.Prediction
    image: QImage | None


@dataclass(frozen=True)
class PredictOutcome:
    """A predict job's answers, the predictor it used (built if it had to), and the model
    generation they belong to."""

    predictor: Any  # app.core.delivery.predict.Predictor
    results: list[Predicted]
    generation: int


@dataclass(frozen=True)
class ReviewOutcome:
    review: Any  # app.core.pipeline.review.Review
    generation: int  # of the model reviewed


@dataclass(frozen=True)
class CacheOutcome:
    cache: Any  # app.core.features.caching.CacheResult
    dataset: Dataset
    choice: RunChoice  # what it cached for
    generation: int  # of the data folder it started from


@dataclass(frozen=True)
class TrainOutcome:
    model: Any  # app.core.pipeline.trained.TrainedModel | None (stopped before an epoch)
    cache: Any  # the CacheResult it trained from
    choice: RunChoice
    generation: int

    @property
    def stopped(self) -> bool:
        return self.model is not None and self.model.result.cancelled


class Session(QObject):
    folder_changed = Signal(object)  # FolderChange: the data folder just read
    cache_changed = Signal(object)  # CacheResult: the features just cached
    trained = Signal(object)  # TrainOutcome
    choice_changed = Signal(object)  # RunChoice: a choice the user changed

    def __init__(self, cache_dir: str | Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.cache_dir = cache_dir
        self.choice = RunChoice()
        self.folder: FolderChange | None = None  # the data folder read last
        self.data_generation = 0
        self.cache: Any = None  # the last CacheResult of this folder (for its choice)
        self.cache_choice: RunChoice | None = None
        self.slot = ModelSlot(self)  # the current model
        self.stopped: TrainOutcome | None = None  # a stopped run not (yet) chosen
        self.device = ""

    # --- choices ------------------------------------------------------------------------
    def set_choice(self, **changes) -> bool:
        """Replace the choice (True: it changed, and ``choice_changed`` said so)."""
        new = self.choice.replace(**changes)
        if new == self.choice:
            return False
        self.choice = new
        self.choice_changed.emit(new)
        return True

    # --- data ---------------------------------------------------------------------------
    @property
    def dataset(self) -> Dataset | None:
        return None if self.folder is None else self.folder.dataset

    @property
    def data_dir(self) -> Path | None:
        return None if self.folder is None else self.folder.root

    @property
    def has_data(self) -> bool:
        return self.folder is not None

    def scan_job(self, folder: str) -> Job:
        cache_dir = self.cache_dir

        def job(progress: ProgressCallback, cancel: CancelToken) -> Scanned:
            # the records and strips live as long as the session: no collection pass while
            # they are built, and no full pass walks them afterwards (each held the window's
            # event loop 40-70 ms on a 100k-image folder)
            with long_lived_objects():
                tagged = None
                with FeatureStore(cache_dir or user_cache_dir()) as store:
                    if (Path(folder) / TAGS_FILE).is_file():  # several tags a photo
                        tagged = scan_tagged(folder, None, store, progress=progress,
                                             cancel=cancel)
                        ds = tagged.images
                    else:
                        ds = scan_dataset(folder, store, progress=progress, cancel=cancel)
                summary = summarize(ds) if tagged is None else summarize_tagged(tagged)
                names = ds.classes if tagged is None else tagged.tag_names
                first: dict[str, list[str]] = {c: [] for c in names}
                for r in ds.images:
                    for c in ((r.label,) if tagged is None else tagged.tags.get(r.digest, ())):
                        if c in first and len(first[c]) < CLASS_THUMBS:
                            first[c].append(r.path)
                strips = {}
                for c in names:
                    cancel.raise_if_cancelled()
                    strips[c] = thumbnails.strip(first[c], THUMB)
            return Scanned(ds, summary, strips, tagged)

        return job

    def apply_scan(self, scanned: Scanned) -> FolderChange:
        """Use the folder just read (one read runs at a time: a later one replaces an earlier
        one before its result can arrive)."""
        ds = scanned.dataset
        self.data_generation += 1
        self.folder = FolderChange(ds, scanned.summary, scanned.strips, self.data_generation,
                                   scanned.tagged)
        self.cache = self.cache_choice = None
        self.set_choice(folder=str(ds.root))
        self.folder_changed.emit(self.folder)
        return self.folder

    # --- features -----------------------------------------------------------------------
    def cache_job(self, retry_skipped: bool = False) -> Job:
        """Cache what the chosen mode trains from, as the choice says (backbone, weights,
        this computer or a Ray cluster)."""
        dataset, choice, generation = self._need_data(), self.choice, self.data_generation
        cache_dir = self.cache_dir

        def job(progress: ProgressCallback, cancel: CancelToken) -> CacheOutcome:
            from app.core.pipeline.retrain import cache_features

            cache, ds = cache_features(choice, dataset, cache_dir, progress, cancel,
                                       retry_skipped)
            return CacheOutcome(cache, ds, choice, generation)

        return job

    def apply_cache(self, outcome: CacheOutcome) -> bool:
        if outcome.generation != self.data_generation:
            return False
        self.cache, self.cache_choice = outcome.cache, outcome.choice
        self.cache_changed.emit(outcome.cache)
        return True

    def cache_for(self, choice: RunChoice):
        """The last cache result when it is ``choice``'s (same backbone, weights, mode)."""
        c = self.cache_choice
        if c is None or (c.backbone, c.weights, c.mode) != (choice.backbone, choice.weights,
                                                            choice.mode):
            return None
        return self.cache

    # --- training -----------------------------------------------------------------------
    def train_job(self) -> Job:
        dataset, choice, generation = self._need_data(), self.choice, self.data_generation
        cache, cache_dir = self.cache_for(self.choice), self.cache_dir
        if self.folder.tagged is not None:
            return self._train_tags_job(self.folder.tagged, choice, generation)

        def job(progress: ProgressCallback, cancel: CancelToken) -> TrainOutcome:
            from app.core.base.jobs import Cancelled
            from app.core.pipeline.retrain import train

            # In a child process: TensorFlow compiling the training step would otherwise
            # hold this process's GIL, and with it the event loop, for ~150 ms at a time.
            try:
                model, used = train(choice, dataset, cache, cache_dir, progress, cancel,
                                    isolated=True)
            except Cancelled:
                if cancel.cancelled:
                    return TrainOutcome(None, cache, choice, generation)
                raise
            if model.result.epochs_run == 0:
                model = None
            return TrainOutcome(model, used, choice, generation)

        return job

    def _train_tags_job(self, tagged, choice: RunChoice, generation: int) -> Job:
        """Several tags a photo: trained in a child process and kept as a model folder of
        the app's own (the newest few kept, and the current model's), which is opened."""
        from app.core.delivery.export import onnx_unavailable

        cache_dir = self.cache_dir
        formats = ("keras",) if onnx_unavailable() else ("keras", "onnx")  # as Export writes

        def job(progress: ProgressCallback, cancel: CancelToken) -> TrainOutcome:
            from app.core.base.jobs import Cancelled
            from app.core.pipeline.tagged import new_run_dir, train_tagged_isolated

            out = new_run_dir()
            try:
                model = train_tagged_isolated(choice, tagged, out, cache_dir, progress, cancel,
                                              formats)
            except Cancelled:
                if cancel.cancelled:
                    return TrainOutcome(None, None, choice, generation)
                raise
            return TrainOutcome(model, None, choice, generation)

        return job

    def apply_training(self, outcome: TrainOutcome) -> bool:
        """The trained model becomes the current one, unless it was stopped and there is a
        model already: a stopped run never replaces the user's model unasked (it waits in
        :attr:`stopped` for :meth:`adopt_stopped`)."""
        if outcome.generation != self.data_generation:
            return False
        self.stopped = None
        if outcome.cache is not None:
            self.cache, self.cache_choice = outcome.cache, outcome.choice
        if outcome.model is not None:
            if outcome.stopped and not self.slot.empty:
                self.stopped = outcome
            else:
                self.slot.set_model(outcome.model, "the model just trained")
        self.trained.emit(outcome)
        return True

    def prune_runs_job(self) -> Job:
        """After a tag run (kept as a model folder of its own): the job that removes the
        older run folders (files, off the GUI thread), never the current model's or a
        stopped run's waiting for an answer (decided now, on the GUI thread)."""
        keep = {self.slot.folder}
        if self.stopped is not None:
            keep.add(getattr(self.stopped.model, "folder", None))
        keep.discard(None)

        def job(progress: ProgressCallback, cancel: CancelToken) -> list:
            from app.core.pipeline.tagged import prune_runs

            return prune_runs(keep)

        return job

    def adopt_stopped(self) -> None:
        """The user chose the stopped run over the model they had."""
        if self.stopped is not None:
            model, self.stopped = self.stopped.model, None
            self.slot.set_model(model, "the stopped run, chosen over the earlier model")

    def thumbnails_job(self, items: list[dict], size: int = 96) -> Job:
        """Thumbnails of ``items`` (entries with a "path"): ``[(entry, QImage | None)]``."""
        def job(progress: ProgressCallback, cancel: CancelToken) -> list:
            out = []
            for m in items:
                cancel.raise_if_cancelled()
                out.append((m, thumbnails.thumbnail(m["path"], size)))
            return out

        return job

    # --- reviewing the current model ----------------------------------------------------
    def review_job(self) -> Job:
        """Every test image's answer, the hardest training images and the validation
        images' unknown scores of the current model (cached features only)."""
        model, generation = self.slot.model, self.slot.generation
        if model is None or not model.reviewable:
            raise RuntimeError("train a model first")

        def job(progress: ProgressCallback, cancel: CancelToken) -> ReviewOutcome:
            from app.core.pipeline.review import review

            return ReviewOutcome(review(model), generation)

        return job

    def apply_review(self, outcome: ReviewOutcome) -> bool:
        """Keep the review; False (dropped) when another model came since."""
        return self.slot.set_review(outcome.review, outcome.generation)

    def set_unknown_threshold(self, threshold: float) -> dict | None:
        """Use ``threshold`` for "unknown" answers from now on (and in the next export);
        returns what it does on the validation images, None without an unknown test."""
        slot = self.slot
        if slot.threshold is None:
            return None
        slot.set_threshold(threshold)
        return self.threshold_effect()

    def threshold_effect(self) -> dict | None:
        """What the threshold now in use does on the validation images."""
        from app.core.pipeline.review import threshold_effect

        slot = self.slot
        if slot.threshold is None:
            return None
        review = slot.review
        return threshold_effect(review.validation_scores if review is not None else None,
                                slot.threshold)

    # --- fixing labels ------------------------------------------------------------------
    def move_image(self, path: str, new_class: str):
        """Move ``path`` into the class folder ``new_class`` of the data folder (a real file
        move, journaled); returns the core Move. Raises LabelError (nothing changed)."""
        from app.core.intake.filing import LabelError, move_image

        if self.data_dir is None:
            raise LabelError("open the data folder first")
        return move_image(self.data_dir, path, new_class)

    def undo_move(self):
        """Undo the latest fix made on Evaluate (never a filing of the Label page)."""
        from app.core.intake.filing import FIXES, LabelError, undo_move

        if self.data_dir is None:
            raise LabelError("open the data folder first")
        return undo_move(self.data_dir, FIXES)

    def moves(self):
        """The data folder's journal: moves in effect, and lines this app did not write
        there (shown, never undone)."""
        from app.core.intake.filing import JournalState, journal_state

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
        for r in (self.dataset.images if self.dataset is not None else ()):
            if r.path == path:
                return r.digest
        return ""

    # --- the model ----------------------------------------------------------------------
    def export_job(self, out_dir: str | Path, model: Any = None,
                   threshold: float | None = None, review: Any = None) -> Job:
        """Export ``model`` (default: the current model, trained or opened, with the unknown
        threshold now in use and its review); returns the core's ExportReport."""
        slot = self.slot
        if model is None:
            model, threshold, review = slot.model, slot.threshold, slot.review
        if model is None:
            raise RuntimeError("train a model or open a model folder before exporting")
        from app.core.delivery.export import onnx_unavailable

        formats = ("keras",) if onnx_unavailable() else ("keras", "onnx")

        def job(progress: ProgressCallback, cancel: CancelToken):
            from app.core.pipeline.review import review as review_of
            from app.core.pipeline.review import review_document

            doc = None
            if model.reviewable and model.evaluation is not None:
                doc = review_document(model.evaluation, review or review_of(model),
                                      str(model.dataset.root))
            return model.export(out_dir, formats, threshold, doc)

        return job

    def open_model_job(self, folder: str) -> Job:
        def job(progress: ProgressCallback, cancel: CancelToken):
            from app.core.pipeline.opened import open_model

            return open_model(folder, self.cache_dir or user_cache_dir())

        return job

    def apply_model(self, opened, source: str | None = None) -> None:
        self.slot.set_model(opened, source or opened.folder)

    # --- prediction ---------------------------------------------------------------------
    def predict_job(self, paths: list[str], top_k: int, size: int = 72) -> Job:
        slot = self.slot
        model, predictor, generation = slot.model, slot.predictor, slot.generation
        threshold = slot.threshold
        if model is None:
            raise RuntimeError("train a model or open an exported model folder first")

        def job(progress: ProgressCallback, cancel: CancelToken) -> PredictOutcome:
            built = predictor or model.predictor()
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

    def _need_data(self) -> Dataset:
        if self.folder is None:
            raise RuntimeError("open a data folder first (page 1)")
        return self.folder.dataset


def predictions_csv(results: list[Predicted], sep: str = ",", top_k: int | None = None,
                    tagged: bool | None = None) -> str:
    """path, [tags,] label_1, probability_1, …, unknown, score, error — one row per file
    (unknown and score empty when the model has no unknown test; ``tags``, the tag set joined
    by ';', for a model of several tags a photo); ``top_k`` labels a row (default: as many as
    the answers hold); ``tagged``: the model gives tag sets (default: some row has one)."""
    import csv
    import io

    k = max((len(r.prediction.top) for r in results), default=0)
    k = k if top_k is None else min(k, top_k)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=sep, lineterminator="\n")
    if tagged is None:
        tagged = any(r.prediction.tags is not None for r in results)
    header = ["path", "tags"] if tagged else ["path"]
    for i in range(1, k + 1):
        header += [f"label_{i}", f"probability_{i}"]
    writer.writerow([*header, "unknown", "score", "error"])
    for r in results:
        p = r.prediction
        row = [p.path]
        if tagged:
            row.append(";".join(t["label"] for t in p.tags or ()))
        for i in range(k):
            if i < len(p.top):
                row += [p.top[i]["label"], f"{p.top[i]['probability']:.6f}"]
            else:
                row += ["", ""]
        unknown = "" if p.unknown is None else str(bool(p.unknown)).lower()
        score = "" if p.score is None else f"{p.score:.6f}"
        writer.writerow([*row, unknown, score, p.error or ""])
    return buf.getvalue()
