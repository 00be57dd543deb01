"""The Label page's controller: the unsorted photos, one refresh task at a time, and filing.

A refresh (scan, cache, fit, suggest, queue, group: ``app.core.pipeline.labeling.refresh``) runs
in the generic worker with frozen inputs and returns a view; starting another cancels the
previous one and disconnects it, so a stale view never arrives. Filing a photo is one rename or
copy on the GUI thread (``app.core.intake.labels``), journaled and undoable; after every
``RETRAIN_EVERY`` labels (and after an undo or a bulk accept) the model and the queue are
refreshed.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QFileDialog, QInputDialog

from app.core.intake.labels import LabelError, create_class, label_many, undo_move
from app.gui.activity import progress_text
from app.gui.pages.label import ICON, LabelPage
from app.gui.widgets import dialog_folder

RETRAIN_EVERY = 3


class Labeling(QObject):
    def __init__(self, win) -> None:
        super().__init__(win)
        self.win = win
        self.page: LabelPage = win.label
        self.inbox: list[str] = []  # dropped photos and folders; empty: loose photos
        self.groups = 0
        self.since_refresh = 0
        self.worker = None
        self.view = None
        page = self.page
        page.add_photos_requested.connect(self.choose_photos)
        page.add_folder_requested.connect(self.choose_inbox_folder)
        page.photos_dropped.connect(self.add)
        page.assign_requested.connect(self.assign)
        page.new_class_requested.connect(self.ask_new_class)
        page.undo_requested.connect(self.undo)
        page.accept_requested.connect(self.accept)
        page.groups_changed.connect(self._groups)
        self.dirty = True
        self.filed = False  # photos filed since the data folder was last read
        win.session.dataset_changed.connect(self._changed)
        win.stack.currentChanged.connect(lambda _i: self._page_changed())

    def _changed(self, *_args) -> None:
        """Work only for a user who is labelling: refresh when the page is shown."""
        self.dirty = True
        if self.win.stack.currentWidget() is self.page:
            self.refresh()

    def _page_changed(self) -> None:
        """Leaving the page after filing photos: the data folder is read again, so that the
        other pages (counts, caching, training) see the photos filed; until it is read,
        Features and Train say so instead of starting on the old list."""
        if self.filed and self.win.stack.currentWidget() is not self.page \
                and self.data_dir is not None:
            self.filed = False
            wait = "the data folder is being read again (photos were filed on the Label page)"
            self.win.features.set_missing(wait)
            self.win.train.set_missing(wait)
            self.win.load_folder(str(self.data_dir), show=False)
            return
        self._changed()

    @property
    def data_dir(self) -> Path | None:
        folder = self.win.session.data_dir or self.win.prefs.last_folder
        return Path(folder) if folder and Path(folder).is_dir() else None

    # --- inputs -----------------------------------------------------------------------------
    def choose_photos(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self.win, "Unsorted photos",
                                                dialog_folder(self.win.prefs.images_folder))
        if files:
            self.add(files)

    def choose_inbox_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.win, "Folder of unsorted photos",
                                                  dialog_folder(self.win.prefs.images_folder))
        if folder:
            self.add([folder])

    def add(self, paths: list[str]) -> None:
        self.inbox = list(dict.fromkeys([*self.inbox, *paths]))
        self.win.show_page("Label")
        self.refresh()

    def _groups(self, k: int) -> None:
        self.groups = k
        self.refresh()

    # --- the one refresh task -----------------------------------------------------------------
    def refresh(self):
        root = self.data_dir
        if root is None or self.win.heavy is not None:
            return None
        self.dirty = False
        try:
            backbone = self.win.features.backbone_name()
            weights = self.win.features.weights_value()
        except ValueError as exc:
            self.win.banner.show_warning(str(exc))
            return None
        inbox = list(self.inbox) or None
        cache_dir, groups = self.win.session.cache_dir, self.groups or None

        def job(progress, cancel):
            from threadpoolctl import threadpool_limits

            from app.core.pipeline.labeling import refresh

            # one BLAS thread: this worker runs at a lower priority, and OpenBLAS's helper
            # threads, starved by any busy process, held each of the fit's thousands of small
            # products (a refresh of 700 photos took 60 s instead of 1.2 s beside one)
            with threadpool_limits(1, user_api="blas"):
                return refresh(root, inbox, backbone, weights, cache_dir, groups=groups,
                               progress=progress, cancel=cancel)

        self.since_refresh = 0
        self.worker = self.win.jobs.start(
            "preparing the photos to label", job, slot="photos to label",
            on_result=lambda view: self._show(view, root),
            on_progress=lambda p: self.page.summary.setText(
                progress_text("reading and caching the photos", p)))
        self.page.summary.setText("Reading and caching the photos…")
        return self.worker

    def _show(self, view, root: Path) -> None:
        self.worker = None
        self.view = view
        self.page.show_view(view, root)
        self.page.current_grid().setFocus()
        self.load_thumbnails()

    def load_thumbnails(self) -> None:
        paths = self.page.shown_paths()
        entries = [{"path": p} for p in dict.fromkeys(paths)]

        def apply(out) -> None:
            for entry, image in out:
                if image is not None:
                    pix = QPixmap.fromImage(image)
                    self.page.queue.set_icon(entry["path"], pix)
                    self.page.group_grid.set_icon(entry["path"], pix)

        self.win.jobs.start("loading thumbnails",
                            self.win.session.thumbnails_job(entries, size=ICON),
                            on_result=apply, slot="label thumbnails")

    # --- filing -------------------------------------------------------------------------------
    def _refused(self) -> bool:
        return self.win.refused_while_busy("filing photos in the data folder") \
            or self.data_dir is None

    def assign(self, paths: list[str], cls: str) -> None:
        if self._refused():
            return
        done, refused = label_many(self.data_dir, paths, cls)
        self.filed = self.filed or bool(done)
        for _path, why in refused:
            self.win.banner.show_warning(why)
        if done:
            self.win.statusBar().showMessage(
                f"Filed {len(done)} photo(s) under {cls}" if len(done) > 1 else
                f"Filed {Path(paths[0]).name} under {cls}", 8000)
            filed = set(paths) - {p for p, _ in refused}
            for grid in (self.page.queue, self.page.group_grid):
                grid.mark_filed(filed, cls)
            self.since_refresh += len(done)
            if self.since_refresh >= RETRAIN_EVERY or len(done) > 1:
                self.refresh()

    def ask_new_class(self) -> None:
        if self._refused():
            return
        grid = self.page.current_grid()
        photos = list(grid.paths) if grid is self.page.group_grid else grid.selected_paths()
        name, ok = QInputDialog.getText(
            self.win, "New class", f"Name of the new class (the {len(photos)} selected "
            "photo(s) go into it):" if photos else "Name of the new class:")
        if ok and name.strip():
            try:
                create_class(self.data_dir, name.strip())
            except LabelError as exc:
                self.win.banner.show_warning(str(exc))
                return
            if photos:
                self.assign(photos, name.strip())
            self.refresh()

    def undo(self) -> None:
        if self._refused():
            return
        try:
            move = undo_move(self.data_dir)
        except LabelError as exc:
            self.win.banner.show_warning(str(exc))
            return
        self.filed = True
        self.win.statusBar().showMessage(f"Undone: {move.target}", 8000)
        self.refresh()

    def accept(self, at_least: float) -> None:
        view = self.view
        if self._refused() or view is None or view.suggestions is None:
            return
        idx, wrong = view.suggestions.confident(at_least)
        pool = view.pool
        by_class: dict[str, list[str]] = {}
        for i in idx:
            by_class.setdefault(pool.classes[int(view.suggestions.label[i])], []).append(
                pool.paths[i])
        n = 0
        for cls, photos in by_class.items():
            done, refused = label_many(self.data_dir, photos, cls)
            n += len(done)
            self.filed = self.filed or bool(done)
            for _path, why in refused[:3]:
                self.win.banner.show_warning(why)
        self.win.statusBar().showMessage(f"Filed {n} suggested photo(s) (about {wrong:.1f} "
                                         "expected wrong; Ctrl+Z undoes one at a time)", 10000)
        self.refresh()
