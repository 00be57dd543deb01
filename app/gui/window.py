"""The main window: composes the five pages, a status bar and the menus; starts jobs through
the one generic worker and routes their results to the pages. It computes nothing itself."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.gui.errors import ErrorBanner, log, setup_logging
from app.gui.pages.data import DataPage
from app.gui.pages.evaluate import EvaluatePage
from app.gui.pages.features import FeaturesPage
from app.gui.pages.predict import PredictPage
from app.gui.pages.train import TrainPage
from app.gui.preferences import Preferences, default_settings
from app.gui.session import Session
from app.gui.widgets import local_paths
from app.gui.worker import Jobs, Worker

PAGES = ("Data", "Features", "Train", "Evaluate", "Predict")


class MainWindow(QMainWindow):
    first_painted = Signal()
    tensorflow_ready = Signal(str)  # device description

    def __init__(self, settings: QSettings | None = None, preload: bool = True,
                 cache_dir: str | None = None) -> None:
        super().__init__()
        setup_logging()
        self.setWindowTitle("Bottleneck Studio")
        self.setAcceptDrops(True)
        self.prefs = Preferences(settings or default_settings())
        self.jobs = Jobs(self)
        self.session = Session(cache_dir, self)
        self.banner = ErrorBanner()
        self.jobs.error.connect(lambda name, msg: self.banner.show_error(f"{name}: {msg}"))
        self.heavy: Worker | None = None  # the caching or training run
        self._painted = False

        self.data, self.features = DataPage(), FeaturesPage()
        self.train, self.evaluate, self.predict = TrainPage(), EvaluatePage(), PredictPage()
        self.stack = QStackedWidget()
        self.nav = QListWidget()
        for i, (name, page) in enumerate(zip(PAGES, self.pages)):
            self.stack.addWidget(page)
            self.nav.addItem(f"{i + 1}  {name}")
        self.nav.setToolTip("The steps from photos to a model (Ctrl+1 … Ctrl+5)")
        self.nav.setFixedWidth(self.nav.fontMetrics().horizontalAdvance("0  Evaluate") + 48)
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)
        body = QHBoxLayout()
        body.addWidget(self.nav)
        body.addWidget(self.stack, 1)
        central = QWidget()
        outer = QVBoxLayout(central)
        outer.addWidget(self.banner)
        outer.addLayout(body, 1)
        self.setCentralWidget(central)

        self.device = QLabel("Backbone runs on: (loading TensorFlow…)")
        self.device.setToolTip("Where the backbone computes features")
        self.statusBar().addPermanentWidget(self.device)
        self._menus()
        self._connect()
        self._restore()
        self.nav.setCurrentRow(0)
        if preload:
            QTimer.singleShot(0, self.preload_tensorflow)

    @property
    def pages(self) -> tuple[QWidget, ...]:
        return (self.data, self.features, self.train, self.evaluate, self.predict)

    def show_page(self, name: str) -> None:
        self.nav.setCurrentRow(PAGES.index(name))

    # --- wiring -------------------------------------------------------------------------
    def _menus(self) -> None:
        file = self.menuBar().addMenu("&File")
        for text, keys, slot in (
            ("Open &data folder…", QKeySequence.StandardKey.Open, self.choose_folder),
            ("Open &model folder…", "Ctrl+Shift+O", self.choose_model),
            ("&Export model…", "Ctrl+E", self.choose_export),
            (None, None, None),
            ("&Quit", QKeySequence.StandardKey.Quit, self.close),
        ):
            if text is None:
                file.addSeparator()
                continue
            action = QAction(text, self)
            action.setShortcut(keys)
            action.triggered.connect(slot)
            file.addAction(action)
        go = self.menuBar().addMenu("&Go")
        for i, name in enumerate(PAGES):
            action = QAction(f"&{i + 1} {name}", self)
            action.setShortcut(f"Ctrl+{i + 1}")
            action.triggered.connect(lambda _=False, n=name: self.show_page(n))
            go.addAction(action)

    def _connect(self) -> None:
        self.data.choose_requested.connect(self.choose_folder)
        self.data.folder_dropped.connect(self.load_folder)
        self.features.start_requested.connect(self.start_caching)
        self.features.cancel_requested.connect(self.cancel_heavy)
        self.train.start_requested.connect(self.start_training)
        self.train.stop_requested.connect(self.cancel_heavy)
        self.train.export_requested.connect(self.choose_export)
        self.evaluate.export_requested.connect(self.choose_export)
        self.evaluate.thumbnails_wanted.connect(self._load_misclassified)
        self.predict.predict_requested.connect(self.predict_paths)
        self.predict.open_model_requested.connect(self.choose_model)
        self.session.predictor_changed.connect(self.predict.set_model)

    def _restore(self) -> None:
        p = self.prefs
        if p.geometry is not None:
            self.restoreGeometry(p.geometry)
        else:
            self.resize(1280, 820)
        if p.backbone:
            self.features.set_backbone(p.backbone)
        if p.weights_file:
            self.features.weights_file.setText(p.weights_file)
        if p.weights:
            self.features.set_weights(p.weights if p.weights != "file" else p.weights_file)
        self.train.set_settings(p.training)

    def _save(self) -> None:
        p = self.prefs
        p.geometry = self.saveGeometry()
        p.backbone = self.features.backbone_name()
        p.weights = self.features.weights.currentData()
        p.weights_file = self.features.weights_file.text()
        try:
            p.training = self.train.settings()
        except ValueError:
            pass
        p.sync()

    # --- TensorFlow in the background ---------------------------------------------------
    def preload_tensorflow(self) -> None:
        self.statusBar().showMessage("Loading TensorFlow…")

        def load(progress, cancel):
            import pyqtgraph  # noqa: F401  (the Train page's plots, off the launch path)

            from app.core import device

            return device.configure()

        self.jobs.start("loading TensorFlow", load, on_result=self._tensorflow_loaded)

    def _tensorflow_loaded(self, device: str) -> None:
        self.session.device = device
        self.device.setText(f"Backbone runs on: {device}")
        self.statusBar().showMessage("Ready", 5000)
        self.tensorflow_ready.emit(device)

    # --- data ---------------------------------------------------------------------------
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Data folder", self.prefs.last_folder)
        if folder:
            self.load_folder(folder)

    def load_folder(self, folder: str) -> None:
        if self.heavy is not None:
            self.banner.show_error("cancel the running job before opening another folder")
            return
        self.prefs.last_folder = folder
        self.show_page("Data")
        self.data.set_busy(folder)
        self.jobs.start("reading the folder", self.session.scan_job(folder),
                        on_result=self._scanned, on_done=self.data.set_idle)

    def _scanned(self, result) -> None:
        self.session.apply_scan(result)
        self.data.show_scan(result)
        self.features.show_skipped(result.dataset.skipped)
        self.statusBar().showMessage(f"{len(result.dataset.images)} images in "
                                     f"{len(result.dataset.classes)} classes", 5000)

    # --- features and training ----------------------------------------------------------
    def _start_heavy(self, name: str, make_job, page, on_result) -> Worker | None:
        if self.heavy is not None:
            self.banner.show_error(f"{self.heavy.name} is still running; cancel it first")
            return None
        try:
            job = make_job()
        except (ValueError, RuntimeError) as exc:
            self.banner.show_error(str(exc))
            return None
        self.banner.hide()
        page.set_running(True)

        def done():
            self.heavy = None
            page.set_running(False)

        self.heavy = self.jobs.start(name, job, on_result=on_result,
                                     on_progress=page.show_progress, on_done=done)
        return self.heavy

    def start_caching(self) -> Worker | None:
        return self._start_heavy(
            "caching", lambda: self.session.cache_job(self.features.backbone_name(),
                                                      self.features.weights_value()),
            self.features, self._cached)

    def _cached(self, result) -> None:
        self.features.show_result(result)
        self.session.apply_cache(result)

    def start_training(self) -> Worker | None:
        return self._start_heavy(
            "training", lambda: self.session.train_job(self.train.settings(),
                                                       self.features.backbone_name(),
                                                       self.features.weights_value()),
            self.train, self._trained)

    def _trained(self, result) -> None:
        self.session.apply_training(result)
        self.train.show_result(result)
        r = self.session.retraining
        if r.cache is not None:
            self.features.show_result(r.cache)
        if r.evaluation is not None:
            self.evaluate.show_evaluation(r.evaluation)

    def cancel_heavy(self) -> None:
        if self.heavy is not None:
            self.heavy.cancel()
            self.statusBar().showMessage(f"Cancelling {self.heavy.name}…")

    def _load_misclassified(self, items: list) -> None:
        self.jobs.start("loading thumbnails", self.session.misclassified_job(items),
                        on_result=self.evaluate.show_thumbnails)

    # --- export and models --------------------------------------------------------------
    def choose_export(self) -> None:
        if not self.session.has_model or self.session.retraining is None \
                or self.session.retraining.result is None:
            self.banner.show_error("train a model before exporting it")
            return
        start = str(Path(self.prefs.last_model_folder or Path.home()) / "flower-model")
        folder, _ = QFileDialog.getSaveFileName(self, "Export model folder", start)
        if folder:
            self.export_to(folder)

    def export_to(self, folder: str) -> Worker:
        self.statusBar().showMessage(f"Exporting to {folder}…")
        return self.jobs.start("export", self.session.export_job(folder),
                               on_result=self._exported)

    def _exported(self, folder) -> None:
        self.prefs.last_model_folder = str(Path(folder).parent)
        self.statusBar().showMessage(f"Model exported to {folder}", 10000)

    def choose_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder",
                                                  self.prefs.last_model_folder)
        if folder:
            self.open_model(folder)

    def open_model(self, folder: str) -> Worker:
        self.show_page("Predict")
        self.statusBar().showMessage(f"Loading the model in {folder}…")
        return self.jobs.start("opening the model", self.session.open_model_job(folder),
                               on_result=lambda p: self.session.apply_model(p, folder))

    def predict_paths(self, paths: list[str]) -> Worker:
        self.show_page("Predict")
        self.predict.set_running(True)
        return self.jobs.start("prediction", self.session.predict_job(
            paths, self.predict.top_k.value()), on_result=self.predict.show_results,
            on_progress=self.predict.show_progress,
            on_done=lambda: self.predict.set_running(False))

    # --- window events ------------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if local_paths(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        paths = local_paths(event.mimeData())
        if not paths:
            return
        event.acceptProposedAction()
        if self.stack.currentWidget() is self.predict:
            self.predict_paths(paths)
        elif os.path.isdir(paths[0]):
            self.load_folder(paths[0])

    def paintEvent(self, event) -> None:  # noqa: N802
        super().paintEvent(event)
        if not self._painted:
            self._painted = True
            self.first_painted.emit()

    def closeEvent(self, event) -> None:  # noqa: N802
        """Cancel every job and wait for it: the cache keeps every finished batch."""
        self._save()
        if self.jobs.running:
            log.info("closing: cancelling %s", [w.name for w in self.jobs.running])
            self.statusBar().showMessage("Finishing the current batch before closing…")
            self.jobs.cancel_all()
            self.jobs.wait_all()
        event.accept()
