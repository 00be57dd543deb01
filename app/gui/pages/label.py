"""The Label page: unsorted photos in, a sorted data folder out, with the keyboard.

It shows what :func:`app.core.pipeline.labeling.refresh` computed (the queue with suggestions, the
groups, the classes) and turns keys and clicks into requests; the controller
(``app.gui.labeling``) files the photos and asks for a refresh. Keys on a grid: 1-9 file the
selected photos (on the Groups tab: every photo left in the group) under the class shown beside
that digit, Enter accepts the suggestion, Space skips to the next photo, N makes a new class
and files the selected photos (the group) in it, Delete takes a photo out of the group shown,
Ctrl+Z undoes.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QKeySequence, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.base.errors import shown
from app.gui.widgets import heading, hint

ICON = 112
GROUP_ICON = 72  # smaller: a whole group of ~40 on one screen, to check before naming it


class PhotoGrid(QListWidget):
    """Photos as thumbnails with a caption; keys become the page's requests."""

    key_digit = Signal(int)
    key_accept = Signal()
    key_skip = Signal()
    key_remove = Signal()

    def __init__(self, tip: str, icon: int = ICON) -> None:
        super().__init__()
        self.setViewMode(QListWidget.ViewMode.IconMode)
        self.setIconSize(QSize(icon, icon))
        self.setGridSize(QSize(icon + 40, icon + 48))
        self.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.setMovement(QListWidget.Movement.Static)
        self.setWordWrap(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setDragEnabled(False)  # photos dropped on a grid are the page's (icon mode
        self.setAcceptDrops(False)  # would take them as an internal move and refuse them)
        self.setToolTip(tip)
        self.paths: list[str] = []

    def set_photos(self, rows: list[tuple[str, str]]) -> None:
        """``rows``: (path, caption)."""
        self.clear()
        self.paths = [p for p, _ in rows]
        for path, caption in rows:
            item = QListWidgetItem(f"{shown(Path(path).name)}\n{caption}")
            item.setData(Qt.ItemDataRole.UserRole, path)
            item.setToolTip(shown(path))
            self.addItem(item)
        if self.count():
            self.setCurrentRow(0)

    def set_icon(self, path: str, pixmap: QPixmap) -> None:
        for i in range(self.count()):
            if self.item(i).data(Qt.ItemDataRole.UserRole) == path:
                self.item(i).setIcon(QIcon(pixmap))

    def mark_filed(self, paths: set[str], cls: str) -> None:
        """Say on the photos just filed where they went (until the next refresh); they can no
        longer be selected, and the next photo not filed yet becomes the current one."""
        row = self.currentRow()
        for i in range(self.count()):
            item = self.item(i)
            path = item.data(Qt.ItemDataRole.UserRole)
            if path in paths:
                item.setSelected(False)
                item.setText(f"{shown(Path(path).name)}\n→ {shown(cls)}")
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsSelectable)
        later = [i for i in range(self.count()) if self._open(i)]
        after = [i for i in later if i >= row] or later
        self.clearSelection()
        if after:
            self.setCurrentRow(after[0])

    def _open(self, row: int) -> bool:
        return bool(self.item(row).flags() & Qt.ItemFlag.ItemIsSelectable)

    def selected_paths(self) -> list[str]:
        """The selected photos not filed yet (else the current one, if not filed)."""
        items = self.selectedItems() or ([self.currentItem()] if self.currentItem() else [])
        return [i.data(Qt.ItemDataRole.UserRole) for i in items
                if i.flags() & Qt.ItemFlag.ItemIsSelectable]

    def keyPressEvent(self, event) -> None:  # noqa: N802
        key, text = event.key(), event.text()
        if text.isdigit() and text != "0" and not event.modifiers() & (
                Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier):
            self.key_digit.emit(int(text))
        elif key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.key_accept.emit()
        elif key == Qt.Key.Key_Space:
            self.key_skip.emit()
            self.setCurrentRow(min(self.currentRow() + 1, self.count() - 1))
        elif key == Qt.Key.Key_Delete:
            self.key_remove.emit()
        else:
            super().keyPressEvent(event)


class LabelPage(QWidget):
    add_photos_requested = Signal()
    add_folder_requested = Signal()
    photos_dropped = Signal(list)
    assign_requested = Signal(list, str)  # photo paths, class
    new_class_requested = Signal()
    undo_requested = Signal()
    accept_requested = Signal(float)
    groups_changed = Signal(int)  # 0: automatic

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.classes: list[str] = []
        self.suggested: dict[str, str] = {}  # path -> suggested class
        self.view = None
        self.summary = QLabel("Open or make a data folder, then add unsorted photos.")
        self.summary.setWordWrap(True)
        add = QPushButton("Add photos…")
        add.setToolTip("Choose unsorted photos to label (or drop photos or a folder here)")
        add.clicked.connect(self.add_photos_requested)
        add_folder = QPushButton("Add folder…")
        add_folder.setToolTip("Choose a folder of unsorted photos to label")
        add_folder.clicked.connect(self.add_folder_requested)
        self.new_class = QPushButton("New class… (N)")
        self.new_class.setToolTip("Make a new class folder in the data folder and file the "
                                  "selected photos (on Groups: the group) in it")
        self.new_class.clicked.connect(self.new_class_requested)
        self.undo = QPushButton("Undo (Ctrl+Z)")
        self.undo.setToolTip("Put the last photo filed back where it was")
        self.undo.clicked.connect(self.undo_requested)
        top = QHBoxLayout()
        top.addWidget(add)
        top.addWidget(add_folder)
        top.addWidget(self.new_class)
        top.addWidget(self.undo)
        top.addStretch(1)

        self.class_list = QListWidget()
        self.class_list.setToolTip("The classes, with the digit that files a photo under each")
        self.class_list.setMaximumWidth(220)
        self.class_list.itemActivated.connect(self._class_activated)

        self.queue = PhotoGrid("The photos to label next, most useful first: 1-9 file the "
                               "selected ones, Enter accepts the suggestion, Space skips")
        self.group_grid = PhotoGrid("A group of alike photos, most typical first (the least "
                                    "typical quarter is marked 'check'): Delete takes a photo "
                                    "out, then a digit files the rest", icon=GROUP_ICON)
        self.group_pick = QComboBox()
        self.group_pick.setToolTip("Which group of alike photos to show")
        self.group_pick.currentIndexChanged.connect(self._show_group)
        self.group_count = QComboBox()
        self.group_count.addItem("groups: automatic", 0)
        for k in (2, 3, 5, 8, 12, 17, 25, 40):
            self.group_count.addItem(f"{k} groups", k)
        self.group_count.setToolTip("How many groups the unsorted photos are split into")
        self.group_count.currentIndexChanged.connect(
            lambda _i: self.groups_changed.emit(int(self.group_count.currentData())))
        groups = QWidget()
        gl = QVBoxLayout(groups)
        gl.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.group_pick, 1)
        row.addWidget(self.group_count)
        gl.addLayout(row)
        gl.addWidget(self.group_grid, 1)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.queue, "Label next")
        self.tabs.addTab(groups, "Groups")
        self.tabs.currentChanged.connect(lambda _i: self.current_grid().setFocus())
        for grid in (self.queue, self.group_grid):
            grid.key_digit.connect(self._digit)
            grid.key_accept.connect(self._accept_suggestion)
        self.group_grid.key_remove.connect(self._remove_from_group)

        self.accept_at = QDoubleSpinBox()
        self.accept_at.setRange(50.0, 99.9)
        self.accept_at.setValue(95.0)
        self.accept_at.setSuffix(" %")
        self.accept_at.setToolTip("File every photo suggested with at least this confidence")
        self.accept_at.valueChanged.connect(lambda _v: self._describe_accept())
        self.accept_text = QLabel("")
        self.accept = QPushButton("Accept")
        self.accept.setToolTip("File them all under their suggested class (undoable one by one)")
        self.accept.clicked.connect(lambda: self.accept_requested.emit(
            self.accept_at.value() / 100))
        bottom = QHBoxLayout()
        bottom.addWidget(QLabel("Accept every suggestion above"))
        bottom.addWidget(self.accept_at)
        bottom.addWidget(self.accept_text, 1)
        bottom.addWidget(self.accept)

        middle = QHBoxLayout()
        left = QVBoxLayout()
        left.addWidget(QLabel("Classes"))
        left.addWidget(self.class_list, 1)
        middle.addLayout(left)
        middle.addWidget(self.tabs, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(heading("2  Label"))
        layout.addWidget(hint("Drop unsorted photos here. Name a group, or label the photos the "
                              "app asks about: it suggests the rest and learns from every "
                              "label. Photos are filed in the data folder's class folders "
                              "(moved when they are in it, copied when not)."))
        layout.addLayout(top)
        layout.addWidget(self.summary)
        layout.addLayout(middle, 1)
        layout.addLayout(bottom)
        QShortcut(QKeySequence.StandardKey.Undo, self, self.undo_requested.emit)
        QShortcut(QKeySequence("N"), self, self.new_class_requested.emit)
        self._describe_accept()

    # --- what the controller sets --------------------------------------------------------
    def current_grid(self) -> PhotoGrid:
        return self.queue if self.tabs.currentIndex() == 0 else self.group_grid

    def show_view(self, view, data_dir: Path | None) -> None:
        """Show one refresh (app.core.pipeline.labeling.LabelingView)."""
        self.view = view
        pool = view.pool
        self.classes = list(pool.classes)
        counts = {c: int((pool.labels == i).sum()) for i, c in enumerate(pool.classes)}
        self.class_list.clear()
        for i, c in enumerate(self.classes):
            digit = f"{i + 1}  " if i < 9 else "    "
            self.class_list.addItem(f"{digit}{shown(c)} ({counts[c]})")
        sug = view.suggestions
        self.suggested = {}
        captions = {}
        for i, path in enumerate(pool.paths):
            if sug is None:
                captions[path] = "no suggestion yet"
                continue
            cls = pool.classes[int(sug.label[i])]
            self.suggested[path] = cls
            rough = "" if sug.calibrated else "~"
            captions[path] = ("maybe a new class" if sug.new_class[i] else
                              f"{shown(cls)} {rough}{sug.confidence[i]:.0%}")
        reason = {"typical of a group without labels": "typical", "uncertain": "unsure",
                  "random": "random"}
        why = {pool.paths[a.index]: reason[a.reason] for a in view.queue.asks}
        # the photos still waiting in the grid keep their places: a refresh never moves a
        # photo under the user's fingers; new asks come after them
        waiting = [p for i, p in enumerate(self.queue.paths)
                   if self.queue._open(i) and p in captions]
        order = waiting + [p for p in why if p not in set(waiting)]
        self.queue.set_photos([(p, f"{captions[p]} · {why.get(p, 'asked before')}")
                               for p in order[:max(len(why), len(waiting))]])
        self.group_pick.blockSignals(True)
        self.group_pick.clear()
        for n, g in enumerate(view.groups, 1):
            self.group_pick.addItem(f"Group {n}: {len(g.members)} photos", n - 1)
        self.group_pick.blockSignals(False)
        self._captions = captions
        self._show_group()
        where = shown(data_dir) if data_dir else "no data folder"
        self.summary.setText(
            f"{len(pool.paths)} unsorted photo(s); {len(pool.labels)} labelled in "
            f"{len(pool.classes)} class(es) in {where}"
            + ("" if not pool.skipped else f"; {len(pool.skipped)} skipped (unreadable)"))
        self._describe_accept()

    def _show_group(self, *_args) -> None:
        view = self.view
        i = self.group_pick.currentData()
        if view is None or i is None or i >= len(view.groups):
            self.group_grid.set_photos([])
            return
        members = view.groups[i].members[:80]
        check = set(members[len(members) - len(members) // 4:]) if len(members) >= 8 else set()
        self.group_grid.set_photos([(view.pool.paths[m],
                                     ("check · " if m in check else "")
                                     + self._captions[view.pool.paths[m]]) for m in members])

    def shown_paths(self) -> list[str]:
        return self.queue.paths + self.group_grid.paths

    def _describe_accept(self) -> None:
        view = self.view
        sug = view.suggestions if view is not None else None
        if sug is None or not sug.calibrated:
            self.accept_text.setText("(once there are 20 labels and 2 photos in every class, "
                                     "the confidence is calibrated)")
            self.accept.setEnabled(False)
            return
        idx, wrong = sug.confident(self.accept_at.value() / 100)
        self.accept_text.setText(f"{len(idx)} photo(s); the calibration expects about "
                                 f"{wrong:.1f} of them to be wrong")
        self.accept.setEnabled(bool(len(idx)))

    # --- keys ------------------------------------------------------------------------------
    def _digit(self, n: int) -> None:
        """Label next: the selected photos. Groups: every photo left in the group (naming
        it)."""
        if n <= len(self.classes):
            grid = self.current_grid()
            paths = list(grid.paths) if grid is self.group_grid else grid.selected_paths()
            if paths:
                self.assign_requested.emit(paths, self.classes[n - 1])

    def _class_activated(self, item) -> None:
        row = self.class_list.row(item)
        paths = self.current_grid().selected_paths()
        if paths and row < len(self.classes):
            self.assign_requested.emit(paths, self.classes[row])

    def _accept_suggestion(self) -> None:
        for path in self.current_grid().selected_paths():
            if path in self.suggested:
                self.assign_requested.emit([path], self.suggested[path])

    def _remove_from_group(self) -> None:
        grid = self.group_grid
        for item in grid.selectedItems():
            grid.paths.remove(item.data(Qt.ItemDataRole.UserRole))
            grid.takeItem(grid.row(item))

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.photos_dropped.emit(paths)
