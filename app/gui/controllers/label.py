"""The Label page's controller: the unsorted photos, one refresh task at a time, and filing.

A refresh (scan, cache, fit, suggest, queue, group: ``app.core.labeling.refresh``) runs
in the generic worker with frozen inputs and returns a view; starting another cancels the
previous one and disconnects it, so a stale view never arrives. Every filing is one operation
of the data folder's journal (``app.core.intake.filing``): one photo is filed at once on the GUI
thread (a few milliseconds), a group, a bulk accept or "file the rest" off it, with progress and
Cancel on the page; Undo takes back one operation, the last or one picked from its list. After
every ``RETRAIN_EVERY`` labels (and after an undo or a bulk filing) the model and the queue are
refreshed.

A class keeps its key while the user works (:func:`class_keys`), and the unsorted photos are
remembered with the data folder across launches.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, SignalInstance
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMessageBox, QWidget

from app.core.intake.filing import (
    LabelError,
    Request,
    create_class,
    file_photos,
    operations,
    undo,
)
from app.gui.activity import progress_text
from app.gui.controllers.label_jobs import (
    measured_with,
    refresh_job,
    refresh_tags_job,
    rest_question,
    tag_photos_now,
)
from app.gui.operations import FileWork
from app.gui.pages.label import ICON, KEYS, LabelPage, photos
from app.gui.widgets import dialog_folder

if TYPE_CHECKING:
    from app.gui.errors import ErrorBanner
    from app.gui.preferences import Preferences
    from app.gui.session import Session
    from app.gui.worker import Jobs

RETRAIN_EVERY = 3


def class_keys(slots: list[str], classes: list[str]) -> list[str]:
    """The class of each key (``KEYS``: 1-9, then 0; "" for a free key), kept from ``slots``
    (the last assignment): a class keeps its key while it exists, a new class takes the first
    free key (new classes in alphabetical order), a class beyond the keys has none (the class
    chooser reaches it)."""
    present = set(classes)
    out = [c if c in present else "" for c in list(slots)[:len(KEYS)]]
    out += [""] * (len(KEYS) - len(out))
    for c in sorted(present - set(out), key=str.casefold):
        if "" not in out:
            break
        out[out.index("")] = c
    while out and not out[-1]:
        out.pop()
    return out


class OneBlasThread:
    """``with one_thread:`` one BLAS thread while any refresh runs, restored when the last one
    ends (a cancelled refresh may still run beside the next: nested limits restored out of
    order left the process at one thread for good). The libraries are found at construction,
    on the GUI thread while no job runs: the search (``dl_iterate_phdr`` calling back into
    Python with the loader's lock held) in a worker deadlocked the window at launch against a
    thread loading an extension module (the GIL held while it waits for that lock)."""

    def __init__(self, controller=None) -> None:
        import threading

        if controller is None:
            import numpy  # noqa: F401  (its OpenBLAS is what the limit is for)
            from threadpoolctl import ThreadpoolController

            controller = ThreadpoolController()
        self.controller = controller
        self._lock = threading.Lock()
        self._users = 0
        self._limit = None

    def __enter__(self) -> OneBlasThread:
        with self._lock:
            if self._users == 0:
                self._limit = self.controller.limit(limits=1, user_api="blas")
            self._users += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._limit is not None:
                self._limit.restore_original_limits()
                self._limit = None


class LabelControl(QObject):
    """Handed its collaborators, never the window: the session (the folder, the choices, the
    cache folder), the job runner, the Label page, the preferences, the banner, and callables
    to show a page, to know which page is shown, to tell the Features and Train pages that the
    folder is being read again, to read it again, and to know whether a heavy run holds the
    files."""

    def __init__(self, session: Session, jobs: Jobs, page: LabelPage, prefs: Preferences,
                 banner: ErrorBanner, show_page: Callable[[str], None],
                 shown_page: Callable[[], QWidget], page_changed: SignalInstance,
                 reading_again: Callable[[str], None], reload_folder: Callable[[str], None],
                 busy: Callable[[], bool], refused_while_busy: Callable[[str], bool],
                 dialog_parent: QWidget, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session, self.jobs, self.page, self.prefs, self.banner = (session, jobs, page,
                                                                       prefs, banner)
        self.show_page, self.shown_page, self.reading_again = show_page, shown_page, reading_again
        self.reload_folder, self.busy, self.refused_while_busy = (reload_folder, busy,
                                                                  refused_while_busy)
        self.dialog_parent = dialog_parent
        self.inbox: list[str] = []  # dropped photos and folders; empty: loose photos
        self.groups = 0
        self.since_refresh = 0
        self.worker = None
        self.view = None
        self._view_for: tuple = ()  # the folder, backbone and weights the view was made for
        self.slots: list[str] = []  # the class of each key
        self._folder: str | None = None  # whose inbox and keys are loaded
        self.work = FileWork(jobs, page.ops, banner.show_warning, self)
        self._blas = OneBlasThread()
        page.add_photos_requested.connect(self.choose_photos)
        page.add_folder_requested.connect(self.choose_inbox_folder)
        page.photos_dropped.connect(self.add)
        page.assign_requested.connect(self.assign)
        page.tags_requested.connect(self.tag)
        page.new_class_requested.connect(self.new_class)
        page.undo_requested.connect(self.undo)
        page.accept_requested.connect(self.accept)
        page.file_rest_requested.connect(self.file_rest)
        page.groups_changed.connect(self._groups)
        page.group_shown.connect(self.load_thumbnails)
        page.weights_requested.connect(self.choose_weights)
        self.dirty = True
        self.filed = False  # photos filed since the data folder was last read
        session.folder_changed.connect(self._changed)
        session.choice_changed.connect(self._choice_changed)
        page_changed.connect(lambda _i: self._page_changed())
        self._name_backbone()

    def _shown(self) -> bool:
        return self.shown_page() is self.page

    def _changed(self, *_args) -> None:
        """Work only for a user who is labelling: refresh when the page is shown."""
        self.dirty = True
        self._load_folder_state()
        if self._shown():
            self.refresh()

    def _choice_changed(self, choice) -> None:
        old = getattr(self, "_measured_with", None)
        self._name_backbone()
        if old is not None and old != (choice.backbone, choice.weights):
            self._changed()

    def _page_changed(self) -> None:
        """Leaving the page after filing photos: the data folder is read again, so that the
        other pages (counts, caching, training) see the photos filed; until it is read,
        Features and Train say so instead of starting on the old list."""
        if self.filed and not self._shown() and self.data_dir is not None:
            self.filed = False
            self.reading_again("the data folder is being read again (photos were filed on "
                               "the Label page)")
            self.reload_folder(str(self.data_dir))
            return
        if self._shown() and self.dirty:
            self.refresh()

    @property
    def data_dir(self) -> Path | None:
        folder = self.session.data_dir or self.prefs.last_folder
        return Path(folder) if folder and Path(folder).is_dir() else None

    def _load_folder_state(self) -> None:
        """The inbox and the keys remembered with this data folder (once per folder)."""
        root = self.data_dir
        if root is None or str(root) == self._folder:
            return
        self._folder = str(root)
        state = self.prefs.label_state(str(root))
        self.inbox = [p for p in state.get("inbox", []) if Path(p).exists()]
        self.slots = list(state.get("keys", []))

    def _remember(self) -> None:
        if self.data_dir is not None:
            self.prefs.remember_label_state(str(self.data_dir), inbox=self.inbox,
                                            keys=self.slots)

    def _name_backbone(self) -> None:
        choice = self.session.choice
        self._measured_with = (choice.backbone, choice.weights)
        self.page.set_backbone(measured_with(choice.backbone, choice.weights))

    # --- inputs -----------------------------------------------------------------------------
    def choose_photos(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self.dialog_parent, "Unsorted photos",
                                                dialog_folder(self.prefs.images_folder))
        if files:
            self.add(files)

    def choose_inbox_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.dialog_parent, "Folder of unsorted photos",
                                                  dialog_folder(self.prefs.images_folder))
        if folder:
            self.add([folder])

    def _backbone_title(self) -> str:
        from app.core.features.backbones import BACKBONES

        spec = BACKBONES.get(self.session.choice.backbone)
        return spec.title if spec else self.session.choice.backbone

    def choose_weights(self) -> None:
        """A local weights file for the backbone (an offline machine), chosen here."""
        path, _ = QFileDialog.getOpenFileName(
            self.dialog_parent, f"Weights file for {self._backbone_title()}",
            dialog_folder(str(Path(self.session.choice.weights).parent)
                          if Path(self.session.choice.weights).is_file() else ""),
            "Keras weights (*.h5 *.keras);;All files (*)")
        if path:
            self.session.set_choice(weights=path)  # the Features page follows the choice

    def add(self, paths: list[str]) -> None:
        from app.core.labeling import check_inbox

        self._load_folder_state()
        if self.session.folder is not None and self.session.folder.tagged is not None:
            self.banner.show_warning("This folder gives several tags a photo, and its photos "
                                     "stay where they are: copy photos into it to tag them.")
            return
        if self.data_dir is not None:
            try:
                check_inbox(self.data_dir, paths)
            except LabelError as exc:
                self.banner.show_warning(str(exc))
                return
        self.inbox = list(dict.fromkeys([*self.inbox, *paths]))
        self._remember()
        self.show_page("Label")
        self.refresh()

    def _groups(self, k: int) -> None:
        self.groups = k
        self.refresh()

    # --- the one refresh task -----------------------------------------------------------------
    def refresh(self):
        root = self.data_dir
        if root is None or self.busy():
            return None
        folder = self.session.folder
        tagged = folder is not None and folder.tagged is not None and folder.root == root
        self._load_folder_state()
        self.dirty = False
        backbone, weights = self.session.choice.backbone, self.session.choice.weights
        if not weights:
            self.banner.show_warning("Choose a weights file for the backbone (Weights file… "
                                     "above), or pick ImageNet on the Features page.")
            return None
        inbox = list(self.inbox) or None
        cache_dir, groups = self.session.cache_dir, self.groups or None
        # the last refresh's work is reused where nothing changed: same folder and backbone
        made_for = (str(root), backbone, weights)
        previous = self.view if self._view_for == made_for else None

        if tagged:  # several tags a photo: the tag model, its suggestions and queue
            job = refresh_tags_job(root, folder.tagged.tags_file, backbone, weights,
                                   cache_dir, groups, self._blas)
        else:
            job = refresh_job(root, inbox, backbone, weights, cache_dir, groups, previous,
                              self._blas)
        self.since_refresh = 0
        self.worker = self.jobs.start(
            "preparing the photos to label", job, slot="photos to label",
            on_result=lambda view: self._show(view, root, made_for),
            on_error=self._failed,
            on_progress=lambda p: self.page.summary.setText(
                progress_text("reading and caching the photos", p)))
        self.page.summary.setText("Reading and caching the photos…")
        return self.worker

    def _failed(self, message: str) -> None:
        self.worker = None
        self.page.summary.setText(f"The photos could not be prepared: {message}. (Weights "
                                  "file… above uses a local file instead of a download.)")

    def _show(self, view, root: Path, made_for: tuple = ()) -> None:
        self.worker = None
        self.view, self._view_for = view, made_for
        self.banner.clear_if_about("preparing the photos to label")
        tagged = hasattr(view.pool, "tags")  # app.core.labeling.tags.TagView
        self.slots = class_keys(self.slots, view.pool.tags if tagged else view.pool.classes)
        self._remember()
        keys = {c: KEYS[i] for i, c in enumerate(self.slots) if c}
        (self.page.show_tag_view if tagged else self.page.show_view)(view, root, keys)
        self.page.current_grid().setFocus()
        self._show_operations()
        self.load_thumbnails()

    def _show_operations(self) -> None:
        try:
            ops = operations(self.data_dir) if self.data_dir is not None else []
        except LabelError as exc:
            self.banner.show_warning(str(exc))
            ops = []
        self.page.ops.set_operations(ops)

    def load_thumbnails(self) -> None:
        paths = self.page.shown_paths()
        entries = [{"path": p} for p in dict.fromkeys(paths)]

        def apply(out) -> None:
            for entry, image in out:
                if image is not None:
                    pix = QPixmap.fromImage(image)
                    self.page.queue.set_icon(entry["path"], pix)
                    self.page.group_grid.set_icon(entry["path"], pix)

        self.jobs.start("loading thumbnails",
                            self.session.thumbnails_job(entries, size=ICON),
                            on_result=apply, slot="label thumbnails")

    # --- filing -------------------------------------------------------------------------------
    def _refused(self) -> bool:
        return self.refused_while_busy("filing photos in the data folder") \
            or self.data_dir is None

    def _digests(self) -> dict[str, str]:
        """Photo -> the content the page shows for it (checked when it is filed)."""
        pool = self.view.pool if self.view is not None else None
        return dict(zip(pool.paths, pool.digests)) if pool is not None else {}

    def assign(self, paths: list[str], cls: str) -> None:
        """File ``paths`` under ``cls``: one operation (one photo at once; more off the GUI
        thread, with progress and Cancel)."""
        if self._refused() or not paths:
            return
        digests = self._digests()
        requests = [Request(p, cls, digests.get(p)) for p in paths]
        title = (f"Filed {Path(paths[0]).name} under {cls}" if len(paths) == 1 else
                 f"Filed {photos(len(paths))} under {cls}")
        if len(paths) == 1:
            try:
                filing = file_photos(self.data_dir, requests, "label", title)
            except LabelError as exc:
                self.banner.show_warning(str(exc))
                return
            self._filed(filing, cls)
            return
        root = self.data_dir
        self.work.run("filing photos", f"Filing {photos(len(paths))} under {cls}…",
                      lambda progress, cancel: file_photos(
                          root, requests, "group", title, progress=progress, cancel=cancel),
                      lambda filing: self._filed(filing, cls))

    def tag(self, items: list) -> None:
        """Give each photo of ``items`` ((photo, tags, content shown)) its tags: one
        operation on the tags file (the photos stay where they are)."""
        folder = self.session.folder
        if self._refused() or not items or folder is None or folder.tagged is None:
            return
        root, tags_file = self.data_dir, folder.tagged.tags_file
        if len(items) > 1:  # a group: each photo read off the GUI thread, with Cancel
            self.work.run("tagging photos", f"Tagging {photos(len(items))}…",
                          lambda _p, _c: tag_photos_now(root, tags_file, items),
                          lambda out: self._filed(*out))
            return
        try:
            self._filed(*tag_photos_now(root, tags_file, items))
        except LabelError as exc:
            self.banner.show_warning(str(exc))

    def _filed(self, filing, cls: str | dict[str, str]) -> None:
        for _path, why in filing.refused[:3]:
            self.banner.show_warning(why)
        self.filed = self.filed or bool(filing.done)
        for grid in (self.page.queue, self.page.group_grid):
            grid.mark_filed(set(filing.photos), cls)
        self.page.ops.finish(f"{filing.summary()} under {cls}." if filing.done and
                             isinstance(cls, str) else f"{filing.summary()}.")
        self._show_operations()
        self.since_refresh += len(filing.done)
        if self._elsewhere():
            return
        if self.since_refresh >= RETRAIN_EVERY or len(filing.done) > 1 or filing.cancelled:
            self.refresh()

    def _elsewhere(self) -> bool:
        """A filing that ended after the user left the page: the data folder is read again
        now (as leaving the page does)."""
        if self._shown():
            return False
        self.dirty = True
        self._page_changed()
        return True

    def new_class(self, paths: list[str], name: str) -> None:
        """Make the class ``name`` (asked for when empty) and file ``paths`` in it."""
        if self._refused():
            return
        if not name:
            name, ok = QInputDialog.getText(
                self.dialog_parent, "New class", f"Name of the new class (the {photos(len(paths))} "
                "selected go into it):" if paths else "Name of the new class:")
            if not ok or not name.strip():
                return
        try:
            create_class(self.data_dir, name.strip())
        except LabelError as exc:
            self.banner.show_warning(str(exc))
            return
        if paths:
            self.assign(paths, name.strip())
        self.refresh()

    def undo(self, operation: str = "") -> None:
        """Take back one operation: the latest, or ``operation`` (picked from Undo's list)."""
        if self._refused():
            return
        root = self.data_dir

        def done(result) -> None:
            self.filed = True
            for _m, why in result.kept[:3]:
                self.banner.show_warning(why)
            self.page.ops.finish(f"{result.summary()}.")
            if not self._elsewhere():
                self.refresh()

        def failed(_message: str) -> None:
            self._show_operations()

        self.work.run("undoing", "Undoing…", lambda progress, cancel: undo(
            root, operation or None, progress=progress, cancel=cancel), done, failed)

    def _bulk(self, kind: str, at_least: float) -> None:
        from app.core import labeling

        view = self.view
        if self._refused() or view is None or view.suggestions is None:
            return
        make = labeling.rest_requests if kind == "rest" else labeling.accept_requests
        requests, wrong = make(view.pool, view.suggestions, at_least)
        sure = [r for r in requests if r.cls != labeling.UNSURE_FOLDER]
        unsure = len(requests) - len(sure)
        if not requests:
            return
        if kind == "rest":
            title = f"Filed the rest: {photos(len(requests))} by the model's answers"
            if not self.confirm(rest_question(len(sure), unsure, wrong)):
                return
            try:
                create_class(self.data_dir, labeling.UNSURE_FOLDER)
            except LabelError as exc:
                self.banner.show_warning(str(exc))
                return
        else:
            title = f"Accepted {photos(len(requests))} suggested at >= {at_least:.0%}"
        root = self.data_dir

        def done(filing) -> None:
            for _path, why in filing.refused[:3]:
                self.banner.show_warning(why)
            self.filed = self.filed or bool(filing.done)
            self.page.ops.finish(f"{filing.summary()} (about {wrong:.1f} expected wrong).")
            if not self._elsewhere():
                self.refresh()

        self.work.run("filing photos", f"Filing {photos(len(requests))}…",
                      lambda progress, cancel: file_photos(
                          root, requests, kind, title, progress=progress, cancel=cancel),
                      done)

    def accept(self, at_least: float) -> None:
        self._bulk("accept", at_least)

    def file_rest(self, at_least: float) -> None:
        self._bulk("rest", at_least)

    def confirm(self, text: str) -> bool:
        """Ask before a bulk filing (tests replace this method)."""
        return QMessageBox.question(self.dialog_parent, "File the rest", text) == \
            QMessageBox.StandardButton.Yes
