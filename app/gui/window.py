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
    QMessageBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.base.errors import os_error_message, shown
from app.core.base.paths import last_model_dir
from app.core.delivery.export import clean_leftovers, is_model_folder
from app.gui.activity import ActivityLabel, progress_text, say_while
from app.gui.closing import Closing
from app.gui.errors import ErrorBanner, log, log_file, setup_logging
from app.gui.fixes import Fixes
from app.gui.labeling import Labeling
from app.gui.last_model import LastModel
from app.gui.operations import FileWork
from app.gui.pages.data import DataPage
from app.gui.pages.evaluate import EvaluatePage
from app.gui.pages.features import NO_DATA, FeaturesPage
from app.gui.pages.label import LabelPage
from app.gui.pages.predict import PredictPage
from app.gui.pages.train import TrainPage
from app.gui.pages.train_mode import TrainContext
from app.gui.preferences import Preferences, default_settings
from app.gui.session import RunOutcome, Session
from app.gui.widgets import dialog_folder, local_paths, unique_mnemonics
from app.gui.worker import Jobs, Worker

PAGES = ("Data", "Label", "Features", "Train", "Evaluate", "Predict")
MAX_TOP = 20  # answers kept per image: the Predict page's "top k" shows any k up to this


class MainWindow(QMainWindow):
    first_painted = Signal()
    tensorflow_ready = Signal(str)  # device description

    def __init__(self, settings: QSettings | None = None, preload: bool = True,
                 cache_dir: str | None = None, reopen: bool = True,
                 folder: str | None = None) -> None:
        """``reopen``: open the last data folder (or ``folder``) and the last trained model
        at launch, as the user left them."""
        super().__init__()
        setup_logging()
        self.setWindowTitle("Bottleneck Studio")
        self.setAcceptDrops(True)
        self.prefs = Preferences(settings or default_settings())
        self.jobs = Jobs(self)
        self.session = Session(cache_dir, self)
        self.banner = ErrorBanner()
        self.jobs.error.connect(
            lambda name, msg: self.banner.show_error(msg, f"{name.capitalize()} failed", name))
        self.heavy: Worker | None = None  # the caching or training run
        self._painted = False
        self.closing = Closing(self.jobs, lambda: self.fixes.flush_threshold(),
                               lambda text: self.confirm_quit(text), self._save,
                               self._finishing, self.close, self)

        self.data, self.label, self.features = DataPage(), LabelPage(), FeaturesPage()
        self.train, self.evaluate, self.predict = TrainPage(), EvaluatePage(), PredictPage()
        self.stack = QStackedWidget()
        self.nav = QListWidget()
        for i, (name, page) in enumerate(zip(PAGES, self.pages)):
            self.stack.addWidget(page)
            self.nav.addItem(f"{i + 1}  {name}")
        self.nav.setToolTip("The steps from photos to a model (Ctrl+1 … Ctrl+6)")
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

        self.activity = ActivityLabel()
        self.statusBar().addPermanentWidget(self.activity)
        self.device = QLabel("Backbone runs on: (loading TensorFlow…)")
        self.device.setToolTip("Where the backbone computes features")
        self.statusBar().addPermanentWidget(self.device)
        self._menus()
        menus = {a.text()[a.text().index("&") + 1].lower()
                 for a in self.menuBar().actions() if "&" in a.text()}
        for page in self.pages:
            unique_mnemonics(page, menus)
        self._connect()
        self._restore()
        self._data_changed()
        self.nav.setCurrentRow(PAGES.index(self.prefs.last_page)
                               if reopen and self.prefs.last_page in PAGES else 0)
        if preload:
            QTimer.singleShot(0, self.preload_tensorflow)
        if reopen:
            QTimer.singleShot(0, lambda: self.reopen_last(folder))

    @property
    def pages(self) -> tuple[QWidget, ...]:
        return (self.data, self.label, self.features, self.train, self.evaluate, self.predict)

    def show_page(self, name: str) -> None:
        self.nav.setCurrentRow(PAGES.index(name))

    # --- wiring -------------------------------------------------------------------------
    def _menus(self) -> None:
        file = self.menuBar().addMenu("&File")
        for text, keys, slot in (
            ("Open &data folder…", QKeySequence.StandardKey.Open, self.choose_folder),
            ("&New data folder…", QKeySequence.StandardKey.New, self.new_data_folder),
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
        help_menu = self.menuBar().addMenu("&Help")
        keys = QAction("&Keys and steps", self)
        keys.setShortcut(QKeySequence.StandardKey.HelpContents)  # F1
        keys.triggered.connect(self.show_help)
        about = QAction("&About Bottleneck Studio", self)
        about.triggered.connect(self.show_about)
        help_menu.addAction(keys)
        help_menu.addAction(about)

    HELP = ("<b>From photos to a model</b><br>"
            "1 Data: open a folder with one sub-folder per class (or a new, empty one).<br>"
            "2 Label: drop unsorted photos; a class's key (1-9, 0) files the selected photos "
            "under it, typing a letter chooses any class by name (or makes a new one), Enter "
            "accepts the suggestion shown, Space skips, Delete takes a photo out of a group, "
            "Ctrl+Z undoes the last operation (Undo's arrow lists the others).<br>"
            "3 Features: cache every photo once through the backbone.<br>"
            "4 Train, 5 Evaluate (fix labels there), 6 Predict (drop photos; sort a folder).<br>"
            "<br>Ctrl+1…Ctrl+6 go to a page, Ctrl+O opens a data folder, Ctrl+E exports.")

    def show_help(self) -> None:
        QMessageBox.information(self, "Keys and steps", self.HELP)

    def show_about(self) -> None:
        from app import __version__

        QMessageBox.about(self, "About Bottleneck Studio",
                          f"<b>Bottleneck Studio {__version__}</b><br>Retrain an image "
                          "classifier on your own photos, on your own machine.<br>"
                          f"Log file: {log_file()}")

    def _connect(self) -> None:
        self.data.choose_requested.connect(self.choose_folder)
        self.data.new_requested.connect(self.new_data_folder)
        self.data.folder_dropped.connect(self.load_folder)
        self.features.start_requested.connect(self.start_caching)
        self.features.retry_requested.connect(lambda: self.start_caching(retry_skipped=True))
        self.features.cancel_requested.connect(lambda: self.cancel_heavy("caching"))
        self.train.start_requested.connect(self.start_training)
        self.train.stop_requested.connect(lambda: self.cancel_heavy("training"))
        self.train.export_requested.connect(self.choose_export)
        self.evaluate.export_requested.connect(self.choose_export)
        self.last_model = LastModel(self.session, self.jobs, self.activity, self)
        self.fixes = Fixes(self, self.session, self.evaluate, self.jobs, self.banner,
                           self.statusBar(), self.refused_while_busy)
        self.fixes.threshold_resting.connect(self.last_model.remember_threshold)
        self.fixes.folder_changed.connect(lambda folder: self.load_folder(folder, show=False))
        self.session.slot.threshold_changed.connect(self._reflag_predictions)
        self.session.slot.changed.connect(self._model_changed)
        self.labeling = Labeling(self)
        self.predict.predict_requested.connect(self.predict_paths)
        self.predict.open_model_requested.connect(self.choose_model)
        self.predict.sort_requested.connect(self.choose_sort_folder)
        self.predict.work = FileWork(self.jobs, self.predict.ops, self.banner.show_warning,
                                     self)
        self.predict.ops.undo_requested.connect(self.undo_sort)
        self.predict.saved.connect(lambda path: self.statusBar().showMessage(
            f"Predictions saved to {path}", 10000))
        # the pages follow the session's parts: the folder read, the cache, the current model
        session = self.session
        session.scanned.connect(self.data.show_scan)
        session.scanned.connect(lambda r: self.features.show_skipped(r.dataset.skipped))
        session.dataset_changed.connect(lambda ds: setattr(self.predict, "data_dir",
                                                           str(ds.root)))
        session.dataset_changed.connect(lambda _ds: self.features.forget_result())
        session.dataset_changed.connect(lambda _ds: self.train.forget_status())
        session.cache_changed.connect(self.features.show_result)
        session.trained.connect(lambda run: self.train.show_result(run.result))
        session.trained.connect(lambda run: self.train.show_warnings(
            list(getattr(run, "training_warnings", []))))
        session.trained.connect(lambda run: run.cache is not None
                                and self.features.show_result(run.cache))
        session.dataset_changed.connect(self._data_changed)
        for signal in (self.session.dataset_changed, self.session.cache_changed,
                       self.session.trained, self.features.backbone.currentIndexChanged,
                       self.features.weights.currentIndexChanged, self.train.mode.changed):
            signal.connect(self._describe_training)
        self.train.mode.changed.connect(self.features.set_mode)

    def _restore(self) -> None:
        p = self.prefs
        if p.geometry is not None:
            self.restoreGeometry(p.geometry)
        else:  # fits the screen it opens on (a 1280x720 laptop too)
            screen = self.screen().availableGeometry() if self.screen() else None
            width, height = 1280, 820
            if screen is not None:
                width, height = min(width, screen.width()), min(height, screen.height() - 30)
            self.resize(width, max(height, self.minimumSizeHint().height()))
        if p.backbone:
            self.features.set_backbone(p.backbone)
        if p.weights_file:
            self.features.weights_file.setText(p.weights_file)
        if p.weights:
            self.features.set_weights(p.weights if p.weights != "file" else p.weights_file)
        self.features.compute_on.set_engine(p.compute_engine, p.ray_address)
        self.train.set_settings(p.training)
        self.predict.images_dir, self.predict.save_dir = p.images_folder, p.save_folder
        self.label.accept_at.setValue(p.accept_threshold)
        self.features.set_mode(self.train.mode.mode())
        self._describe_training()

    def _save(self) -> None:
        p = self.prefs
        p.geometry = self.saveGeometry()
        p.backbone = self.features.backbone_name()
        p.weights = self.features.weights.currentData()
        p.weights_file = self.features.weights_file.text()
        p.compute_engine = self.features.compute_on.chosen()
        p.ray_address = self.features.compute_on.address.text().strip()
        p.images_folder, p.save_folder = self.predict.images_dir, self.predict.save_dir
        p.accept_threshold = self.label.accept_at.value()
        p.last_page = PAGES[self.stack.currentIndex()]
        try:
            p.training = self.train.settings()
        except ValueError:
            pass
        p.sync()

    # --- TensorFlow in the background ---------------------------------------------------
    def preload_tensorflow(self) -> None:
        def load(progress, cancel):
            import pyqtgraph  # noqa: F401  (the Train page's plots, off the launch path)

            from app.core.base import device

            return device.described()  # on the CPU: why not on a GPU

        worker = self.jobs.start("loading TensorFlow", load, on_result=self._tensorflow_loaded)
        say_while(self.statusBar(), worker, "Loading TensorFlow…")

    def _tensorflow_loaded(self, device: str) -> None:
        self.session.device = device
        self.device.setText(f"Backbone runs on: {device}")
        self.statusBar().showMessage("Ready", 5000)
        self.tensorflow_ready.emit(device)

    # --- data ---------------------------------------------------------------------------
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Data folder",
                                                  dialog_folder(self.prefs.last_folder))
        if folder:
            self.load_folder(folder)

    def new_data_folder(self) -> None:
        """Create an empty data folder and open it on the Label page: classes are created
        there, by name, as photos are labelled."""
        if self.refused_while_busy("starting a new data folder"):
            return
        start = Path(dialog_folder(self.prefs.last_folder))
        suggested = start.parent / "my-photos" if start.is_dir() else start / "my-photos"
        path, _ = QFileDialog.getSaveFileName(
            self, "New data folder (its name)", str(suggested), "",
            options=QFileDialog.Option.ShowDirsOnly)
        if not path:
            return
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            self.banner.show_warning(f"{shown(folder)} is a file, not a folder: choose "
                                     "another name.")
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.banner.show_warning(os_error_message(exc, f"{shown(folder)} could not be "
                                                           "created"))
            return
        self.load_folder(str(folder), show=False)
        self.show_page("Label")

    def reopen_last(self, folder: str | None = None) -> None:
        """Open ``folder`` (else the last data folder) and the last trained model, if any."""
        folder = folder or self.prefs.last_folder
        if folder and Path(folder).is_dir():
            self.load_folder(folder, show=False)  # on the page the user left
        model = last_model_dir()
        clean_leftovers(model.parent)  # what a killed save of it left, never anything else
        if is_model_folder(model):
            self.open_model(str(model), show=False,
                            source=f"the last model trained, reopened from {model}")

    def refused_while_busy(self, action: str) -> bool:
        """True (and says why) while caching or training runs: files and folders stay as
        they are until it ends."""
        if self.heavy is None:
            return False
        self.banner.show_warning(f"Stop {self.heavy.name} before {action}.")
        return True

    def load_folder(self, folder: str, show: bool = True) -> None:
        """Read ``folder`` (in the background); ``show``: go to the Data page."""
        if self.refused_while_busy("opening another folder"):
            return
        self.prefs.last_folder = folder
        if show:
            self.show_page("Data")
        self.data.set_busy(folder)
        worker = self.jobs.start("reading the folder", self.session.scan_job(folder),
                                 on_result=self._scanned, on_done=self.data.set_idle,
                                 on_progress=lambda p: self._reading(worker, p), slot="folder")
        self.activity.track(worker, "Reading the folder…")

    def _reading(self, worker: Worker, p) -> None:
        """Files read so far: the Data page's bar and the status bar (a new folder's files
        are each read and hashed once: ~20 s for 100k small images here, longer on slow
        disks)."""
        if p.stage == "scan":
            self.activity.update_text(worker, progress_text("reading the folder", p))
            self.data.show_reading(p.done, p.total)

    def _scanned(self, result) -> None:
        self.session.apply_scan(result)  # the pages follow (see _connect)
        self.statusBar().showMessage(f"{len(result.dataset.images)} images in "
                                     f"{len(result.dataset.classes)} classes", 5000)

    def _data_changed(self, _dataset=None) -> None:
        missing = "" if self.session.has_data else NO_DATA
        self.features.set_missing(missing)
        self.train.set_missing(missing)

    # --- features and training ----------------------------------------------------------
    def _start_heavy(self, name: str, make_job, page, on_result) -> Worker | None:
        if self.heavy is not None:
            self.banner.show_warning(f"{self.heavy.name.capitalize()} is still running; "
                                     "stop it first.")
            return None
        try:
            job = make_job()
        except (ValueError, RuntimeError) as exc:
            self.banner.show_warning(str(exc))
            return None
        self.banner.hide()
        page.set_running(True)

        def done():
            self.heavy = None
            page.set_running(False)

        def progressed(p):
            page.show_progress(p)
            self.activity.update_text(worker, progress_text(name, p))

        worker = self.jobs.start(name, job, on_result=on_result, on_progress=progressed,
                                 on_error=page.show_error, on_done=done)
        self.activity.track(worker, f"{name.capitalize()}…")
        self.heavy = worker
        return worker

    def start_caching(self, retry_skipped: bool = False) -> Worker | None:
        return self._start_heavy(
            "caching", lambda: self.session.cache_job(self.features.backbone_name(),
                                                      self.features.weights_value(),
                                                      retry_skipped=retry_skipped,
                                                      mode=self.train.mode.mode(),
                                                      **self.features.compute_on.job_args()),
            self.features, self._cached)

    def _cached(self, outcome: RunOutcome) -> None:
        if self.session.apply_cache(outcome):  # the Features page follows (see _connect)
            if outcome.run.cache.cancelled:
                self.statusBar().showMessage("Caching cancelled: what was computed is kept",
                                             5000)

    def start_training(self) -> Worker | None:
        return self._start_heavy(
            "training", lambda: self.session.train_job(self.train.settings(),
                                                       self.features.backbone_name(),
                                                       self.features.weights_value()),
            self.train, self._trained)

    def _trained(self, outcome: RunOutcome) -> None:
        if not self.session.apply_training(outcome):
            return
        run = outcome.run  # the Train and Features pages follow (see _connect)
        self._remember_run(run)
        if self.session.stopped_run is run and not self.closing.underway:
            if self.confirm_use_stopped(self._stopped_question(run)):
                self.session.adopt(run)
            else:
                self.statusBar().showMessage("Kept the model you had; the stopped run was "
                                             "not saved", 10000)
                slot = self.session.slot  # the page shows the model kept, not the one dropped
                self.train.show_model_history(slot.history, slot.source)
                self.train.status.setText(self.train.status.text() + " The stopped run was "
                                          "not kept.")
        self.train.export.setEnabled(not self.session.slot.empty)
        if self.session.slot.model is run:
            self.last_model.save(run)

    def _stopped_question(self, run) -> str:
        def acc(value) -> str:
            return "" if value is None else f" ({value:.1%})"

        new = acc(run.evaluation.main_accuracy if run.evaluation is not None else None)
        return (f"Training was stopped after {run.result.epochs_run} epoch(s). Use the stopped "
                f"run{new} instead of the current model{acc(self.session.slot.accuracy)}? "
                "(No keeps the model you had.)")

    def confirm_use_stopped(self, text: str) -> bool:
        return QMessageBox.question(self, "Use the stopped run?", text) == \
            QMessageBox.StandardButton.Yes

    def _remember_run(self, run) -> None:
        """Measured time per epoch (per training image) and the layers a fine-tune run
        trained, for the expectations shown before the next Start."""
        result = run.result
        if result is None or not result.epochs_run:
            return
        per_epoch = self.train.clock.per_epoch()
        train_images = len(run.splits["train"]) if run.splits else 0
        if per_epoch is not None:
            self.prefs.remember_epoch_seconds(run.backbone, result.settings.mode, per_epoch,
                                              train_images)
        if result.trainable_backbone_layers:
            self.prefs.remember_trainable_layers(run.backbone, result.trainable_backbone_layers)
        self._describe_training()

    def _describe_training(self, *_args) -> None:
        """Tell the Train page what the chosen backbone and mode cost on this folder."""
        backbone = self.features.backbone_name()
        run = self.session.retraining
        dataset = run.dataset if run is not None else None
        cache = None
        if run is not None and run.cache is not None and run.backbone == backbone:
            try:
                same_weights = run.weights == self.features.weights_value()
            except ValueError:
                same_weights = False
            cache = run.cache if same_weights and not run.cache.cancelled else None
        summary = self.session.summary(dataset) if dataset else None
        self.train.describe(TrainContext(
            backbone=backbone,
            images=summary.unique_images if summary else 0,
            train_images=summary.split_counts["train"] if summary else 0,
            cache=cache,
            seconds_per_image={m: self.prefs.epoch_seconds_per_image(backbone, m)
                               for m in ("head", "finetune")},
            layers=self.prefs.trainable_layers(backbone)))

    def cancel_heavy(self, name: str | None = None) -> None:
        """Cancel the running caching or training run (only the one named, when named)."""
        worker = self.heavy
        if worker is None or (name is not None and worker.name != name):
            return  # a late click: that run has ended
        worker.cancel()
        say_while(self.statusBar(), worker, f"Cancelling {worker.name}…")

    def _reflag_predictions(self, _threshold=None) -> None:
        if self.session.slot.flag(self.predict.results):
            self.predict.refresh()

    def _model_changed(self) -> None:
        """Another model is the current one: every page shows it."""
        slot = self.session.slot
        self.predict.set_model(slot.source)
        if slot.trained_run is None:  # its curves, where the folder keeps them
            self.train.show_model_history(slot.history, slot.source)
        self.evaluate.show_model(slot.evaluation, slot.source, slot.evaluation_note,
                                 not slot.empty)
        self.fixes.show_review()  # its review, or why the slider cannot move yet
        if slot.review is None and slot.trained_run is not None \
                and slot.evaluation is not None and not self.closing.underway:
            self.fixes.start_review()

    # --- export and models --------------------------------------------------------------
    def choose_export(self) -> None:
        if self.session.slot.empty:
            self.banner.show_warning("Train a model or open a model folder first: Export "
                                     "writes the current model.")
            return
        start = Path(export_suggestion(self.prefs.last_model_folder, self.session.data_dir))
        if start.is_dir():  # a save dialog would open inside it and nest a second copy
            if is_model_folder(start) and self.confirm_replace(
                    f"{start} holds a model this app exported earlier. Replace it with this "
                    "one? (No: choose another folder)"):
                self.export_to(str(start))
                return
            start = next(start.with_name(f"{start.name}-{n}") for n in range(2, 1000)
                         if not start.with_name(f"{start.name}-{n}").exists())
        folder, _ = QFileDialog.getSaveFileName(self, "Export model folder", str(start))
        if folder:
            self.export_to(folder)

    def confirm_replace(self, text: str) -> bool:
        return QMessageBox.question(self, "Replace the model?", text) == \
            QMessageBox.StandardButton.Yes

    def export_to(self, folder: str) -> Worker | None:
        try:
            job = self.session.export_job(folder)
        except RuntimeError as exc:
            self.banner.show_warning(str(exc))
            return None
        worker = self.jobs.start("export", job, on_result=self._exported)
        say_while(self.statusBar(), worker, f"Exporting to {folder}…")
        self.activity.track(worker, "Exporting…")
        return worker

    def _exported(self, report) -> None:
        """The status bar says where; a warning says when parity could not be checked."""
        folder = report.folder
        self.prefs.last_model_folder = str(Path(folder).parent)
        forms = " and ".join({"keras": "Keras", "onnx": "ONNX"}.get(f, f) for f in report.formats)
        self.statusBar().showMessage(f"Model exported to {folder} ({forms})", 10000)
        if report.parity_note:
            self.banner.show_warning(f"Model exported to {folder}, but: {report.parity_note}")

    def choose_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder",
                                                  dialog_folder(self.prefs.last_model_folder))
        if folder:
            self.open_model(folder)

    def open_model(self, folder: str, show: bool = True, source: str | None = None) -> Worker:
        if show:
            self.show_page("Predict")
        generation = self.session.slot.generation

        def opened(result) -> None:
            slot = self.session.slot
            if slot.generation != generation:
                return  # a newer model meanwhile
            self.session.apply_model(result, source)
            if Path(folder) == last_model_dir():
                self.last_model.opened(slot.model, slot.threshold)

        worker = self.jobs.start("opening the model", self.session.open_model_job(folder),
                                 on_result=opened, slot="opening a model")
        say_while(self.statusBar(), worker, f"Loading the model in {folder}…")
        self.activity.track(worker, "Loading the model…")
        return worker

    def predict_paths(self, paths: list[str]) -> Worker | None:
        self.show_page("Predict")
        try:
            job = self.session.predict_job(paths, MAX_TOP)  # the page shows its top k
        except RuntimeError as exc:
            self.banner.show_warning(str(exc))
            return None
        self.predict.set_running(True)
        worker = self.jobs.start("prediction", job, on_result=self._predicted,
                                 on_progress=self.predict.show_progress,
                                 on_done=lambda: self.predict.set_running(False))
        self.activity.track(worker, "Predicting…")
        return worker

    def _predicted(self, outcome) -> None:
        if self.session.apply_predictions(outcome):
            self.predict.add_results(outcome.results)
        else:
            self.statusBar().showMessage("The model changed while those images were being "
                                         "classified: add them again for the new model's "
                                         "answers.", 10000)

    # --- sorting a folder by the answers ------------------------------------------------
    def choose_sort_folder(self) -> None:
        """A folder to sort into: an existing one, or a new name (made when sorting)."""
        images = self.predict.images_dir
        start = Path(dialog_folder(self.predict.sort_dir, str(Path(images).parent)
                                   if images else "", self.predict.save_dir))
        path, _ = QFileDialog.getSaveFileName(
            self, "Sort the photos into this folder (an existing one, or a new name)",
            str(start / "sorted"), "", options=QFileDialog.Option.ShowDirsOnly
            | QFileDialog.Option.DontConfirmOverwrite)
        if not path:
            return
        if Path(path).exists() and not Path(path).is_dir():
            self.banner.show_warning(f"{shown(path)} is a file, not a folder: choose another "
                                     "name.")
            return
        self.sort_predictions(path)

    def sort_predictions(self, out: str) -> Worker | None:
        """Preview (off the GUI thread: which photos are filed in ``out`` already, by
        content), ask, then copy the listed photos into ``out``/<class>/ and
        ``out``/_unknown/ by their answers as one undoable operation, with progress and
        Cancel on the Predict page."""
        from app.core.intake.sorting import filed_in, sort_plan

        predictions = [r.prediction for r in self.predict.results]
        if not any(p.top and not p.error for p in predictions):
            self.banner.show_warning("None of the photos listed has an answer to sort by.")
            return None
        cache_dir = self.session.cache_dir

        def plan_job(progress, cancel):
            from app.core.base.paths import user_cache_dir
            from app.core.storage.store import FeatureStore

            with FeatureStore(cache_dir or user_cache_dir()) as store:
                filed = filed_in(out, store, progress, cancel)
            return sort_plan(predictions, out, filed)

        return self.predict.work.run("the sort's preview", f"Looking at {out}…", plan_job,
                                     lambda plan: self._confirm_sort(out, plan))

    def _confirm_sort(self, out: str, plan) -> None:
        from app.core.intake.sorting import sort_into

        if not plan.to_file:
            self.predict.ops.finish(f"Nothing to copy into {out}: " + (
                f"the {len(plan.already)} photo(s) are filed there already"
                if plan.already else "no photo has an answer"))
            return
        if not self.confirm_sort(plan.preview(out)):
            self.predict.ops.finish("Sort cancelled: nothing was copied.")
            return
        self.predict.sort_dir = str(Path(out).parent)
        self.predict.work.run(
            "the sort", f"Copying {plan.to_file} photo(s) into {out}…",
            lambda progress, cancel: sort_into(out, plan, progress=progress, cancel=cancel),
            lambda filing: self._sorted(out, filing))

    def _sorted(self, out: str, filing) -> None:
        for _path, why in filing.refused[:3]:
            self.banner.show_warning(why)
        self._sorted_into = out
        self.predict.ops.finish(f"{filing.summary()} in {out}.")
        self._show_sort_operations()
        if self.session.data_dir is not None and Path(out).resolve() == \
                Path(self.session.data_dir).resolve():
            self.load_folder(out, show=False)

    def _show_sort_operations(self) -> None:
        from app.core.intake.filing import LabelError, operations

        out = getattr(self, "_sorted_into", None)
        try:
            ops = [o for o in operations(out) if o.kind == "sort"] if out else []
        except LabelError as exc:
            self.banner.show_warning(str(exc))
            ops = []
        self.predict.ops.set_operations(ops)

    def confirm_sort(self, text: str) -> bool:
        return QMessageBox.question(self, "Sort into folder", text) == \
            QMessageBox.StandardButton.Yes

    def undo_sort(self, operation: str = "") -> Worker | None:
        """Take back one sort into the folder last sorted into (the latest, or the one
        picked): exactly the copies it made, only while unchanged."""
        from app.core.intake.filing import undo

        out = getattr(self, "_sorted_into", None)
        if not out:
            return None

        def done(result) -> None:
            self.predict.ops.finish(f"{result.summary()}.")
            self._show_sort_operations()
            if self.session.data_dir is not None and Path(out).resolve() == \
                    Path(self.session.data_dir).resolve():
                self.load_folder(out, show=False)

        return self.predict.work.run(
            "undoing the sort", f"Undoing the sort into {out}…",
            lambda progress, cancel: undo(out, operation or None, kind="sort",
                                          progress=progress, cancel=cancel), done)

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

    def confirm_quit(self, text: str) -> bool:
        """Ask before closing while work runs (tests replace this method)."""
        answer = QMessageBox.question(
            self, "Quit Bottleneck Studio?", text,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.Yes)
        return answer == QMessageBox.StandardButton.Yes

    def closeEvent(self, event) -> None:  # noqa: N802
        """Ask when training, caching or an export runs; then stop what can stop, wait for
        the rest (a stopped training run's best model is saved for the next start) and close
        once every job ended (:class:`~app.gui.closing.Closing`). The window stays
        responsive meanwhile."""
        if self.closing.allows():
            event.accept()
        else:
            event.ignore()

    def _finishing(self, names: set[str]) -> None:
        log.info("closing: waiting for %s", sorted(names))
        self.centralWidget().setEnabled(False)
        self.statusBar().showMessage(
            "Stopping training; its best model is saved for the next start…"
            if "training" in names else "Finishing before closing…")


def export_suggestion(last_parent: str, data_dir: Path | None) -> str:
    """Where Export proposes to write: ``<data folder name>-model`` beside the data folder
    (or in the folder last exported to); never the app's own folder."""
    name = f"{data_dir.name}-model" if data_dir is not None else "image-model"
    if last_parent and Path(last_parent).is_dir():
        return str(Path(last_parent) / name)
    if data_dir is not None:
        return str(data_dir.parent / name)
    return str(Path(dialog_folder("")) / name)
