"""The main window: composes the six pages and their controllers, a status bar and the menus;
routes drops, restores and remembers the user's choices, and closes. It computes nothing and
drives no page: each page's controller (``app.gui.controllers``) is handed its collaborators."""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.base.paths import last_model_dir
from app.gui.activity import ActivityLabel, say_while
from app.gui.closing import Closing
from app.gui.controllers.data import DataControl
from app.gui.controllers.evaluate import EvaluateControl
from app.gui.controllers.label import LabelControl
from app.gui.controllers.models import ModelsControl, export_suggestion  # noqa: F401  (API)
from app.gui.controllers.predict import PredictControl
from app.gui.controllers.run import RunControl
from app.gui.errors import ErrorBanner, log, log_file, setup_logging
from app.gui.last_model import LastModel
from app.gui.pages.data import DataPage
from app.gui.pages.evaluate import EvaluatePage
from app.gui.pages.features import FeaturesPage
from app.gui.pages.label import LabelPage
from app.gui.pages.predict import PredictPage
from app.gui.pages.train import TrainPage
from app.gui.preferences import Preferences, default_settings
from app.gui.session import Session
from app.gui.widgets import local_paths, unique_mnemonics
from app.gui.worker import Jobs

PAGES = ("Data", "Label", "Features", "Train", "Evaluate", "Predict")
HELP = ("<b>From photos to a model</b><br>"
        "1 Data: open a folder with one sub-folder per class (or a new, empty one).<br>"
        "2 Label: drop unsorted photos; a class's key (1-9, 0) files the selected photos under "
        "it, typing a letter chooses any class by name (or makes a new one), Enter accepts the "
        "suggestion shown, Space skips, Delete takes a photo out of a group, Ctrl+Z undoes the "
        "last operation (Undo's arrow lists the others).<br>"
        "3 Features: cache every photo once through the backbone.<br>"
        "4 Train, 5 Evaluate (fix labels there), 6 Predict (drop photos; sort a folder).<br>"
        "<br>Ctrl+1…Ctrl+6 go to a page, Ctrl+O opens a data folder, Ctrl+E exports.")


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
        self._painted = False
        self.data, self.label, self.features = DataPage(), LabelPage(), FeaturesPage()
        self.train, self.evaluate, self.predict = TrainPage(), EvaluatePage(), PredictPage()
        self._layout()
        self._menus()
        self._compose()
        self._restore(reopen)
        if preload:
            QTimer.singleShot(0, self.preload_tensorflow)
        if reopen:
            QTimer.singleShot(0, lambda: self.reopen_last(folder))

    @property
    def pages(self) -> tuple[QWidget, ...]:
        return (self.data, self.label, self.features, self.train, self.evaluate, self.predict)

    def show_page(self, name: str) -> None:
        self.nav.setCurrentRow(PAGES.index(name))

    # --- composition --------------------------------------------------------------------
    def _layout(self) -> None:
        self.stack, self.nav = QStackedWidget(), QListWidget()
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

    def _menus(self) -> None:
        file = self.menuBar().addMenu("&File")
        for text, keys, slot in (
            ("Open &data folder…", QKeySequence.StandardKey.Open, lambda: self.data_control
             .choose_folder()),
            ("&New data folder…", QKeySequence.StandardKey.New, lambda: self.data_control
             .new_data_folder()),
            ("Open &model folder…", "Ctrl+Shift+O", lambda: self.models.choose_model()),
            ("&Export model…", "Ctrl+E", lambda: self.models.choose_export()),
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
        keys.triggered.connect(lambda: QMessageBox.information(self, "Keys and steps", HELP))
        about = QAction("&About Bottleneck Studio", self)
        about.triggered.connect(self.show_about)
        help_menu.addAction(keys)
        help_menu.addAction(about)
        menus = {a.text()[a.text().index("&") + 1].lower()
                 for a in self.menuBar().actions() if "&" in a.text()}
        for page in self.pages:
            unique_mnemonics(page, menus)

    def show_about(self) -> None:
        from app import __version__

        QMessageBox.about(self, "About Bottleneck Studio",
                          f"<b>Bottleneck Studio {__version__}</b><br>Retrain an image "
                          "classifier on your own photos, on your own machine.<br>"
                          f"Log file: {log_file()}")

    def _compose(self) -> None:
        s, jobs, banner, status = self.session, self.jobs, self.banner, self.statusBar()
        self.closing = Closing(jobs, lambda: self.evaluate_control.flush_threshold(),
                               lambda text: self.confirm_quit(text), self._save,
                               self._finishing, self.close, self)
        underway = lambda: self.closing.underway  # noqa: E731
        self.last_model = LastModel(s, jobs, self.activity, self)
        self.run_control = RunControl(s, jobs, self.features, self.train, self.prefs, banner,
                                      status, self.activity, self.last_model, underway, self)
        busy = self.run_control.refused_while_busy
        self.data_control = DataControl(s, jobs, self.data, self.prefs, banner, status,
                                        self.activity, self.show_page, busy, self, self)
        self.evaluate_control = EvaluateControl(
            self, s, self.evaluate, jobs, banner, status, busy,
            lambda generation: [str(last_model_dir())] if self.last_model.holds == generation
            and not self.last_model.busy else [])
        self.evaluate_control.threshold_resting.connect(self.last_model.remember_threshold)
        self.evaluate_control.folder_changed.connect(self.reload_folder)
        self.models = ModelsControl(s, jobs, self.prefs, banner, status, self.activity,
                                    self.last_model, self.predict, self.train, self.evaluate,
                                    self.evaluate_control, self.show_page, underway, self, self)
        self.evaluate_control.model_folder_changed.connect(
            lambda folder, source: self.models.open_model(folder, source=source))
        self.predict_control = PredictControl(s, jobs, self.predict, banner, status,
                                              self.activity, self.show_page,
                                              self.reload_folder, self, self)
        self.label_control = LabelControl(
            s, jobs, self.label, self.prefs, banner, self.show_page, self.stack.currentWidget,
            self.stack.currentChanged, self._reading_again, self.reload_folder,
            lambda: self.run_control.heavy is not None, busy, self, self)

    def reload_folder(self, folder: str) -> None:
        """Read the data folder again (files were filed or moved), staying on the page."""
        self.data_control.load_folder(folder, show=False)

    def _reading_again(self, why: str) -> None:
        self.features.set_missing(why)
        self.train.set_missing(why)

    # --- what the user left -------------------------------------------------------------
    def _restore(self, reopen: bool) -> None:
        p = self.prefs
        if p.geometry is not None:
            self.restoreGeometry(p.geometry)
        else:  # fits the screen it opens on (a 1280x720 laptop too)
            screen = self.screen().availableGeometry() if self.screen() else None
            width, height = 1280, 820
            if screen is not None:
                width, height = min(width, screen.width()), min(height, screen.height() - 30)
            self.resize(width, max(height, self.minimumSizeHint().height()))
        self.run_control.restore()
        self.predict.images_dir, self.predict.save_dir = p.images_folder, p.save_folder
        self.label.accept_at.setValue(p.accept_threshold)
        self.nav.setCurrentRow(PAGES.index(p.last_page) if reopen and p.last_page in PAGES
                               else 0)

    def _save(self) -> None:
        p = self.prefs
        p.geometry = self.saveGeometry()
        self.run_control.save()
        p.images_folder, p.save_folder = self.predict.images_dir, self.predict.save_dir
        p.accept_threshold = self.label.accept_at.value()
        p.last_page = PAGES[self.stack.currentIndex()]
        p.sync()

    def reopen_last(self, folder: str | None = None) -> None:
        """Open ``folder`` (else the last data folder) and the last trained model, if any."""
        from pathlib import Path

        folder = folder or self.prefs.last_folder
        if folder and Path(folder).is_dir():
            self.data_control.load_folder(folder, show=False)  # on the page the user left
        self.models.reopen_last()

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
            self.predict_control.predict_paths(paths)
        elif os.path.isdir(paths[0]):
            self.data_control.load_folder(paths[0])

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
