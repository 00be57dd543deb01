"""The Data page's controller: choosing, making and reading the data folder. Reading runs in
the background; its result becomes the session's folder, which every page follows
(``Session.folder_changed``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QFileDialog, QStatusBar, QWidget

from app.core.base.errors import os_error_message, shown
from app.gui.activity import progress_text
from app.gui.widgets import dialog_folder

if TYPE_CHECKING:
    from app.gui.activity import ActivityLabel
    from app.gui.errors import ErrorBanner
    from app.gui.pages.data import DataPage
    from app.gui.preferences import Preferences
    from app.gui.session import Session
    from app.gui.worker import Jobs, Worker


class DataControl(QObject):
    def __init__(self, session: Session, jobs: Jobs, page: DataPage, prefs: Preferences,
                 banner: ErrorBanner, status: QStatusBar, activity: ActivityLabel,
                 show_page: Callable[[str], None], refused_while_busy: Callable[[str], bool],
                 dialog_parent: QWidget, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session, self.jobs, self.page, self.prefs = session, jobs, page, prefs
        self.banner, self.status, self.activity = banner, status, activity
        self.show_page, self.refused_while_busy = show_page, refused_while_busy
        self.dialog_parent = dialog_parent
        page.choose_requested.connect(self.choose_folder)
        page.new_requested.connect(self.new_data_folder)
        page.folder_dropped.connect(self.load_folder)
        session.folder_changed.connect(page.show_scan)

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.dialog_parent, "Data folder",
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
            self.dialog_parent, "New data folder (its name)", str(suggested), "",
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

    def load_folder(self, folder: str, show: bool = True) -> Worker | None:
        """Read ``folder`` (in the background); ``show``: go to the Data page."""
        if self.refused_while_busy("opening another folder"):
            return None
        self.prefs.last_folder = folder
        if show:
            self.show_page("Data")
        self.page.set_busy(folder)
        worker = self.jobs.start("reading the folder", self.session.scan_job(folder),
                                 on_result=self._scanned, on_done=self.page.set_idle,
                                 on_progress=lambda p: self._reading(worker, p), slot="folder")
        self.activity.track(worker, "Reading the folder…")
        return worker

    def _reading(self, worker: Worker, p) -> None:
        """Files read so far: the Data page's bar and the status bar (a new folder's files
        are each read and hashed once: ~20 s for 100k small images here, longer on slow
        disks)."""
        if p.stage == "scan":
            self.activity.update_text(worker, progress_text("reading the folder", p))
            self.page.show_reading(p.done, p.total)

    def _scanned(self, scanned) -> None:
        change = self.session.apply_scan(scanned)  # the pages follow the session
        ds = change.dataset
        self.status.showMessage(f"{len(ds.images)} images in {len(ds.classes)} classes", 5000)
