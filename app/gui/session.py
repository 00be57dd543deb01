"""The state of one retraining session and the jobs that change it.

The session owns the core's :class:`Retraining` and the current predictor; pages read it and
ask it for job callables ``fn(progress, cancel)`` that the generic worker runs. Results are
applied on the GUI thread (``apply_*``), which emits the signals pages listen to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from app.core.dataset import Dataset, scan_dataset
from app.core.jobs import CancelToken
from app.core.paths import user_cache_dir
from app.core.retrain import Retraining
from app.core.store import FeatureStore
from app.core.training import TrainSettings
from app.gui import thumbnails

CLASS_THUMBS = 4
THUMB = 56


@dataclass
class ScanResult:
    dataset: Dataset
    strips: dict[str, QImage]


@dataclass
class Predicted:
    prediction: Any  # app.core.predict.Prediction
    image: QImage | None


class Session(QObject):
    dataset_changed = Signal(object)  # Dataset
    cache_changed = Signal(object)  # CacheResult
    trained = Signal(object)  # TrainResult (evaluation in self.retraining.evaluation)
    predictor_changed = Signal(str)  # where the model comes from

    def __init__(self, cache_dir: str | Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.cache_dir = cache_dir
        self.retraining: Retraining | None = None
        self.predictor = None  # app.core.predict.Predictor
        self.predictor_source = ""
        self.device = ""

    # --- data ---------------------------------------------------------------------------
    def scan_job(self, folder: str):
        cache_dir = self.cache_dir

        def job(progress, cancel: CancelToken) -> ScanResult:
            with FeatureStore(cache_dir or user_cache_dir()) as store:
                ds = scan_dataset(folder, store, progress=progress, cancel=cancel)
            strips = {}
            for c in ds.classes:
                cancel.raise_if_cancelled()
                paths = [r.path for r in ds.images if r.label == c][:CLASS_THUMBS]
                strips[c] = thumbnails.strip(paths, THUMB)
            return ScanResult(ds, strips)

        return job

    def apply_scan(self, result: ScanResult) -> None:
        ds = result.dataset
        self.retraining = Retraining(str(ds.root), cache_dir=self.cache_dir, dataset=ds)
        self.dataset_changed.emit(ds)

    # --- features -----------------------------------------------------------------------
    def cache_job(self, backbone: str, weights: str):
        r = self._need_data()
        r.backbone, r.weights = backbone, weights
        r.cache = r.splits = r.result = r.evaluation = None
        return lambda progress, cancel: r.run_cache(progress, cancel)

    def apply_cache(self, result) -> None:
        self.cache_changed.emit(result)

    # --- training -----------------------------------------------------------------------
    def train_job(self, settings: TrainSettings, backbone: str, weights: str):
        r = self._need_data()
        if (r.backbone, r.weights) != (backbone, weights):
            r.backbone, r.weights, r.cache = backbone, weights, None
        r.settings = settings

        def job(progress, cancel):
            # In a child process: TensorFlow compiling the training step would otherwise
            # hold this process's GIL, and with it the event loop, for ~150 ms at a time.
            return r.run_training_isolated(progress, cancel)

        return job

    def apply_training(self, result) -> None:
        self.predictor, self.predictor_source = None, "the model just trained"
        self.trained.emit(result)
        self.predictor_changed.emit(self.predictor_source)

    def misclassified_job(self, items: list[dict], size: int = 96):
        def job(progress, cancel):
            out = []
            for m in items:
                cancel.raise_if_cancelled()
                out.append((m, thumbnails.thumbnail(m["path"], size)))
            return out

        return job

    @property
    def has_model(self) -> bool:
        return self.predictor is not None or (self.retraining is not None
                                              and self.retraining.result is not None)

    def export_job(self, out_dir: str):
        r = self.retraining
        if r is None or r.result is None:
            raise RuntimeError("train a model before exporting it")
        return lambda progress, cancel: r.export(out_dir)

    # --- prediction ---------------------------------------------------------------------
    def open_model_job(self, folder: str):
        def job(progress, cancel):
            from app.core.predict import Predictor

            return Predictor.from_dir(folder)

        return job

    def apply_model(self, predictor, folder: str) -> None:
        self.predictor, self.predictor_source = predictor, folder
        self.predictor_changed.emit(folder)

    def predict_job(self, paths: list[str], top_k: int, size: int = 72):
        r = self.retraining

        def job(progress, cancel):
            predictor = self.predictor
            if predictor is None:
                if r is None or r.result is None:
                    raise RuntimeError("train a model or open an exported model folder first")
                predictor = r.predictor()
                self.predictor = predictor  # plain attribute: read by later jobs only
            preds = predictor.predict(paths, top_k=top_k, progress=progress, cancel=cancel)
            return [Predicted(p, None if p.error else thumbnails.thumbnail(p.path, size))
                    for p in preds]

        return job

    def _need_data(self) -> Retraining:
        if self.retraining is None:
            raise RuntimeError("choose a data folder first")
        return self.retraining


def predictions_csv(results: list[Predicted], sep: str = ",") -> str:
    """path, label_1, probability_1, …, error — one row per file."""
    import csv
    import io

    k = max((len(r.prediction.top) for r in results), default=0)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=sep, lineterminator="\n")
    header = ["path"]
    for i in range(1, k + 1):
        header += [f"label_{i}", f"probability_{i}"]
    writer.writerow([*header, "error"])
    for r in results:
        p = r.prediction
        row = [p.path]
        for i in range(k):
            if i < len(p.top):
                row += [p.top[i]["label"], f"{p.top[i]['probability']:.6f}"]
            else:
                row += ["", ""]
        writer.writerow([*row, p.error or ""])
    return buf.getvalue()
