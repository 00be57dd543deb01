"""The Label page: unsorted photos in, a sorted data folder out, with the keyboard.

It shows what :func:`app.core.labeling.refresh` computed (the queue with suggestions, the
groups, the classes) and turns keys and clicks into requests; the controller
(``app.gui.labeling``) files the photos and asks for a refresh. Keys on a grid: a class's key
(1-9, then 0: a class keeps its key when others are made) files the selected photos (on the
Groups tab: every photo left in the group) under it; typing a letter opens the class chooser
(any class by name, or a new one); Enter accepts the suggestion shown on the selected photo;
Space skips to the next photo; Delete takes a photo out of the group shown; Ctrl+Z undoes the
last operation (Undo's arrow lists the others).
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QKeySequence, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.base.errors import shown
from app.gui.errors import log
from app.gui.operations import OperationBar
from app.gui.pages.label_tags import WHY, TagSets
from app.gui.widgets import heading, hint

CLASS_HINT = ("Drop unsorted photos here. Name a group, or label the photos the app asks "
              "about: it suggests the rest and learns from every label. Photos are filed in "
              "the data folder's class folders (moved when they are in it, copied when not).")
TAG_HINT = ("Several tags a photo: give each photo the app asks about its tags (or none), or "
            "name a group; it suggests the rest and learns from every photo tagged. The photos "
            "stay where they are; the tags file lists their tags.")
ICON = 112
GROUP_ICON = 72  # smaller: a whole group of ~40 on one screen, to check before naming it
KEYS = "1234567890"  # a class's key: its slot's place here
def photos(n: int) -> str:
    return f"{n} photo{'s' if n != 1 else ''}"


class PhotoGrid(QListWidget):
    """Photos as thumbnails with a caption; keys become the page's requests."""

    key_class = Signal(str)  # a class key was pressed (its character)
    key_typed = Signal(str)  # a letter: the start of a class name
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
        # where the keys go must show: a frame in the highlight colour while it has the focus
        self.setStyleSheet("PhotoGrid { border: 2px solid transparent; }"
                           "PhotoGrid:focus { border: 2px solid palette(highlight); }")
        self.paths: list[str] = []
        self.currentItemChanged.connect(self._log_current)

    def _log_current(self, item, _previous) -> None:
        if item is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("Label page, %s: current photo %s [%s]", self.objectName(),
                      item.data(Qt.ItemDataRole.UserRole), item.text().replace("\n", " | "))

    def set_photos(self, rows: list[tuple[str, str, str]]) -> None:
        """``rows``: (path, caption, tooltip)."""
        self.clear()
        self.paths = [r[0] for r in rows]
        for path, caption, tip in rows:
            item = QListWidgetItem(f"{shown(Path(path).name)}\n{caption}")
            item.setData(Qt.ItemDataRole.UserRole, path)
            item.setToolTip(f"{shown(path)}\n{tip}" if tip else shown(path))
            self.addItem(item)
        if self.count():
            self.setCurrentRow(0)

    def set_caption(self, path: str, caption: str) -> None:
        """A new caption for ``path`` (not for a photo marked filed)."""
        for i in range(self.count()):
            item = self.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == path and self._open(i):
                item.setText(f"{shown(Path(path).name)}\n{caption}")

    def set_icon(self, path: str, pixmap: QPixmap) -> None:
        for i in range(self.count()):
            if self.item(i).data(Qt.ItemDataRole.UserRole) == path:
                self.item(i).setIcon(QIcon(pixmap))

    def mark_filed(self, paths: set[str], cls: str | dict[str, str]) -> None:
        """Say on the photos just filed where they went (``cls``, or by photo: what it
        became) until the next refresh; they can no longer be selected, and the next photo
        not filed yet becomes the current one."""
        row = self.currentRow()
        for i in range(self.count()):
            item = self.item(i)
            path = item.data(Qt.ItemDataRole.UserRole)
            if path in paths:
                item.setSelected(False)
                went = cls.get(path, "") if isinstance(cls, dict) else cls
                item.setText(f"{shown(Path(path).name)}\n→ {shown(went)}")
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
        plain = not event.modifiers() & (Qt.KeyboardModifier.ControlModifier
                                         | Qt.KeyboardModifier.AltModifier)
        if plain and text and text in KEYS:
            self.key_class.emit(text)
        elif plain and text and text.isalpha():
            self.key_typed.emit(text)
        elif key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.key_accept.emit()
        elif key == Qt.Key.Key_Space:
            self.key_skip.emit()
            self.setCurrentRow(min(self.currentRow() + 1, self.count() - 1))
        elif key == Qt.Key.Key_Delete:
            self.key_remove.emit()
        else:
            super().keyPressEvent(event)


class ClassChooser(QDialog):
    """Any class by typing part of its name (and Enter), or a new class of the name typed."""

    def __init__(self, classes: list[str], keys: dict[str, str], text: str,
                 parent: QWidget | None = None, tags: bool = False) -> None:
        super().__init__(parent)
        self.what = "tag" if tags else "class"
        self.setWindowTitle("Tag on or off…" if tags else "File under…")
        self.classes, self.keys = classes, keys
        self.chosen: tuple[str, bool] | None = None  # (class, new)
        self.edit = QLineEdit(text)
        self.edit.setPlaceholderText(f"type a {self.what} name")
        self.list = QListWidget()
        self.list.itemActivated.connect(lambda _i: self.accept())
        self.edit.textChanged.connect(self._filter)
        self.edit.returnPressed.connect(self.accept)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Turn on or off for the selected photos (Enter; Esc: nothing):"
                                if tags else "File the selected photos under (Enter; Esc: "
                                "nothing):"))
        layout.addWidget(self.edit)
        layout.addWidget(self.list)
        self._filter(text)
        self.resize(360, 320)

    def _filter(self, text: str) -> None:
        self.list.clear()
        t = text.strip().casefold()
        # names that start with the text first, then those that hold it
        match = sorted((c for c in self.classes if t in c.casefold()),
                       key=lambda c: (not c.casefold().startswith(t), c.casefold()))
        for c in match:
            key = self.keys.get(c, "")
            item = QListWidgetItem(f"{key or ' '}  {shown(c)}")
            item.setData(Qt.ItemDataRole.UserRole, (c, False))
            self.list.addItem(item)
        if text.strip() and text.strip() not in self.classes:
            item = QListWidgetItem(f"+  New {self.what} \u201c{shown(text.strip())}\u201d")
            item.setData(Qt.ItemDataRole.UserRole, (text.strip(), True))
            self.list.addItem(item)
        if self.list.count():
            self.list.setCurrentRow(0)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        if event.key() in (Qt.Key.Key_Down, Qt.Key.Key_Up):
            row = self.list.currentRow() + (1 if event.key() == Qt.Key.Key_Down else -1)
            self.list.setCurrentRow(max(0, min(row, self.list.count() - 1)))
            return
        super().keyPressEvent(event)

    def accept(self) -> None:
        item = self.list.currentItem()
        self.chosen = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        super().accept()


class LabelPage(QWidget):
    add_photos_requested = Signal()
    add_folder_requested = Signal()
    photos_dropped = Signal(list)
    assign_requested = Signal(list, str)  # photo paths, class
    new_class_requested = Signal(list, str)  # photo paths, a name ("": ask for one)
    undo_requested = Signal(str)  # an operation's id, "" for the latest
    accept_requested = Signal(float)
    file_rest_requested = Signal(float)
    tags_requested = Signal(list)  # [(photo, its tags, the content shown)]: a tagged folder
    groups_changed = Signal(int)  # 0: automatic
    group_shown = Signal()  # another group is shown: its thumbnails are wanted
    weights_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.classes: list[str] = []
        self.keys: dict[str, str] = {}  # class -> its key
        self.view = None
        self.tags = None  # TagSets: the folder gives several tags a photo
        self._index: dict[str, int] = {}  # unsorted photo -> its row in the view's pool
        self.summary = QLabel("Open or make a data folder, then add unsorted photos.")
        self.summary.setWordWrap(True)
        add = QPushButton("&Add photos…")
        add.setToolTip("Choose unsorted photos to label (or drop photos or a folder here)")
        add.clicked.connect(self.add_photos_requested)
        add_folder = QPushButton("Add fol&der…")
        add_folder.setToolTip("Choose a folder of unsorted photos to label")
        add_folder.clicked.connect(self.add_folder_requested)
        self.new_class = QPushButton("&New class…")
        self.new_class.setToolTip("Make a new class folder in the data folder and file the "
                                  "selected photos (on Groups: the group) in it; or type its "
                                  "name on the photos")
        self.new_class.clicked.connect(self._new_class)
        self.backbone = QLabel("")
        self.backbone.setToolTip("The backbone that measures the photos (chosen on the "
                                 "Features page)")
        self.weights = QPushButton("&Weights file…")
        self.weights.setToolTip("Use a local weights file for this backbone (no download: "
                                "for a machine without internet)")
        self.weights.clicked.connect(self.weights_requested)
        top = QHBoxLayout()
        top.addWidget(add)
        top.addWidget(add_folder)
        top.addWidget(self.new_class)
        top.addStretch(1)
        top.addWidget(self.backbone)
        top.addWidget(self.weights)

        self.class_list = QListWidget()
        self.class_list.setToolTip("The classes, with the key that files a photo under each "
                                   "(double-click one to file the selected photos there; "
                                   "type a name on the photos for any class)")
        self.class_list.setMaximumWidth(220)
        # never the focus: Enter must always reach the photos, and file what they say
        self.class_list.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.class_list.itemDoubleClicked.connect(self._class_activated)

        self.queue = PhotoGrid("The photos to label next, most useful first: a class's key "
                               "files the selected ones, Enter accepts the suggestion shown, "
                               "Space skips, typing a letter chooses a class by name")
        self.queue.setObjectName("label next")
        self.group_grid = PhotoGrid("A group of alike photos, most typical first (the least "
                                    "typical quarter is marked 'check'): Delete takes a photo "
                                    "out, then a class's key files the rest", icon=GROUP_ICON)
        self.group_grid.setObjectName("groups")
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
            grid.key_class.connect(self._key)
            grid.key_typed.connect(self.choose_class)
            grid.key_accept.connect(self._accept_suggestion)
        self.group_grid.key_remove.connect(self._remove_from_group)

        self.accept_at = QDoubleSpinBox()
        self.accept_at.setRange(50.0, 99.9)
        self.accept_at.setValue(95.0)
        self.accept_at.setSuffix(" %")
        self.accept_at.setToolTip("File every photo suggested with at least this confidence")
        self.accept_at.valueChanged.connect(lambda _v: self._describe_accept())
        self.accept_text = QLabel("")
        self.accept = QPushButton("A&ccept")
        self.accept.setToolTip("File them all under their suggested class: one operation, "
                               "undone at once")
        self.accept.clicked.connect(lambda: self.accept_requested.emit(
            self.accept_at.value() / 100))
        self.file_rest = QPushButton("File the &rest…")
        self.file_rest.setToolTip("Every photo still unsorted: under its suggested class when "
                                  "suggested with at least this confidence, in _not_sure "
                                  "(not a class; listed here) otherwise: one operation, "
                                  "undone at once")
        self.file_rest.clicked.connect(lambda: self.file_rest_requested.emit(
            self.accept_at.value() / 100))
        bottom = QHBoxLayout()
        bottom.addWidget(QLabel("Accept every suggestion above"))
        bottom.addWidget(self.accept_at)
        bottom.addWidget(self.accept_text, 1)
        bottom.addWidget(self.accept)
        bottom.addWidget(self.file_rest)
        self.ops = OperationBar("&Undo")
        self.ops.undo_requested.connect(self.undo_requested)

        middle = QHBoxLayout()
        left = QVBoxLayout()
        self.list_title = QLabel("Classes")
        left.addWidget(self.list_title)
        left.addWidget(self.class_list, 1)
        middle.addLayout(left)
        middle.addWidget(self.tabs, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(heading("2  Label"))
        self.hint = hint(CLASS_HINT)
        layout.addWidget(self.hint)
        layout.addLayout(top)
        layout.addWidget(self.summary)
        layout.addLayout(middle, 1)
        layout.addLayout(bottom)
        layout.addWidget(self.ops)
        QShortcut(QKeySequence.StandardKey.Undo, self, lambda: self.undo_requested.emit(""))
        self._describe_accept()

    # --- what the controller sets --------------------------------------------------------
    def current_grid(self) -> PhotoGrid:
        return self.queue if self.tabs.currentIndex() == 0 else self.group_grid

    def set_backbone(self, text: str) -> None:
        self.backbone.setText(text)

    def show_nothing(self, text: str) -> None:
        """No photos to label here (``text`` says why): the lists are emptied, so no key
        files a photo of a view that no longer applies."""
        self.view = self.tags = None
        self.classes, self.keys, self._index = [], {}, {}
        self.class_list.clear()
        self.queue.set_photos([])
        self.group_pick.clear()
        self.group_grid.set_photos([])
        self.summary.setText(text)
        self._describe_accept()

    def show_view(self, view, data_dir: Path | None, keys: dict[str, str] | None = None
                  ) -> None:
        """Show one refresh (app.core.labeling.LabelingView); ``keys``: class ->
        its key (stable across refreshes; see ``app.gui.labeling.class_keys``)."""
        self.view, self.tags = view, None
        self._set_mode(False)
        pool = view.pool
        self.classes = list(pool.classes)
        self.keys = dict(keys or {c: KEYS[i] for i, c in enumerate(self.classes)
                                  if i < len(KEYS)})
        counts = {c: int((pool.labels == i).sum()) for i, c in enumerate(pool.classes)}
        self.class_list.clear()
        for c in sorted(self.classes, key=lambda c: (KEYS.find(self.keys.get(c, "~")) % 99,
                                                     c.casefold())):
            key = self.keys.get(c, "")
            item = QListWidgetItem(f"{key or ' '}  {shown(c)} ({counts[c]})")
            item.setData(Qt.ItemDataRole.UserRole, c)
            self.class_list.addItem(item)
        # captions are made for the photos a grid shows, not for the whole pile (20,000
        # captions held the event loop ~50 ms at every refresh)
        self._index = {p: i for i, p in enumerate(pool.paths)}
        why = {pool.paths[a.index]: a.reason for a in view.queue.asks}
        # the photos still waiting in the grid keep their places: a refresh never moves a
        # photo under the user's fingers; new asks come after them
        waiting = [p for i, p in enumerate(self.queue.paths)
                   if self.queue._open(i) and p in self._index]
        held = set(waiting)
        order = waiting + [p for p in why if p not in held]
        rows = []
        for p in order[:max(len(why), len(waiting))]:
            short, long = WHY.get(why.get(p, "asked before"), WHY["asked before"])
            rows.append((p, f"{self.caption(p)} · {short}", long))
        self.queue.set_photos(rows)
        current = self.group_pick.currentIndex()
        self.group_pick.blockSignals(True)
        self.group_pick.clear()
        for n, g in enumerate(view.groups, 1):
            self.group_pick.addItem(f"Group {n}: {photos(len(g.members))}", n - 1)
        if 0 <= current < self.group_pick.count():
            self.group_pick.setCurrentIndex(current)
        self.group_pick.blockSignals(False)
        self._show_group()
        where = shown(data_dir) if data_dir else "no data folder"
        self.summary.setText(
            f"{photos(len(pool.paths))} unsorted; {len(pool.labels)} labelled in "
            f"{len(pool.classes)} class(es) in {where}"
            + ("" if not pool.skipped else f"; {len(pool.skipped)} skipped (unreadable)"))
        self._describe_accept()

    def _set_mode(self, tags: bool) -> None:
        self.hint.setText(TAG_HINT if tags else CLASS_HINT)
        self.list_title.setText("Tags" if tags else "Classes")
        self.new_class.setText("&New tag…" if tags else "&New class…")

    def show_tag_view(self, view, data_dir: Path | None, keys: dict[str, str]) -> None:
        """Show one refresh of a tagged folder (app.core.labeling.tags.TagView): a tag's key
        turns it on or off in the selected photos' sets, Enter tags them with their sets."""
        self.view, self.tags = view, TagSets(view, keys, self.tags)
        self._set_mode(True)
        pool = view.pool
        self.classes, self.keys, self._index = list(pool.tags), dict(keys), self.tags.index
        self._list_tags()
        self.queue.set_photos([(p, self.caption(p), WHY[r][1])
                               for p, r in self.tags.asked(self._still_open()).items()])
        self.group_pick.blockSignals(True)
        self.group_pick.clear()
        for n, g in enumerate(view.groups, 1):
            self.group_pick.addItem(f"Group {n}: {photos(len(g.members))}", n - 1)
        self.group_pick.blockSignals(False)
        self._show_group()
        self.summary.setText(self.tags.summary(data_dir))
        self._describe_accept()

    def _list_tags(self) -> None:
        self.class_list.clear()
        for t, n in self.tags.counts().items():
            self.keys.setdefault(t, next((k for k in KEYS if k not in self.keys.values()), ""))
            item = QListWidgetItem(f"{self.keys[t] or ' '}  {shown(t)} ({n})")
            item.setData(Qt.ItemDataRole.UserRole, t)
            self.class_list.addItem(item)
        self.tags.keys = dict(self.keys)

    def _still_open(self) -> list[str]:
        """The photos of the queue not filed yet, in their places (a refresh never moves a
        photo under the user's fingers)."""
        return [p for i, p in enumerate(self.queue.paths) if self.queue._open(i)]

    def _toggle(self, paths: list[str], tag: str) -> None:
        self.tags.toggle(paths, tag)
        if tag not in self.classes:
            self.classes.append(tag)
            self._list_tags()
        for grid in (self.queue, self.group_grid):
            for p in paths:
                grid.set_caption(p, self.caption(p))
            grid.viewport().update()  # a shorter caption left pieces of the longer one

    def suggestion(self, path: str) -> str | None:
        """The class the caption of unsorted ``path`` suggests (None: none, or "maybe a new
        class"): what Enter files it under."""
        sug = self.view.suggestions if self.view is not None else None
        i = self._index.get(path)
        if sug is None or i is None or sug.new_class[i]:
            return None
        return self.view.pool.classes[int(sug.label[i])]

    def caption(self, path: str) -> str:
        """What the page says of unsorted ``path``: its suggestion and confidence."""
        if self.tags is not None:
            return self.tags.caption(path)
        pool, sug = self.view.pool, self.view.suggestions
        if sug is None:
            return ("no suggestion yet" if len(pool.classes) > 1 else
                    "suggestions come once there are two classes")
        i = self._index[path]
        if sug.new_class[i]:
            return "maybe a new class"
        rough = "" if sug.calibrated else "~"
        return f"{shown(pool.classes[int(sug.label[i])])} {rough}{sug.confidence[i]:.0%}"

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
                                     + self.caption(view.pool.paths[m]),
                                     "among the least typical of the group: check it"
                                     if m in check else "") for m in members])
        self.group_shown.emit()

    def shown_paths(self) -> list[str]:
        return self.queue.paths + self.group_grid.paths

    def _describe_accept(self) -> None:
        view = self.view
        sug = view.suggestions if view is not None and self.tags is None else None
        if self.tags is not None:
            self.accept_text.setText("(several tags a photo: each photo's set is given with "
                                     "Enter)")
            self.accept.setEnabled(False)
            self.file_rest.setEnabled(False)
            return
        if sug is None or not sug.calibrated:
            self.accept_text.setText("(once there are 20 labels and 2 photos in every class, "
                                     "the confidence is calibrated)")
            self.accept.setEnabled(False)
            self.file_rest.setEnabled(False)
            return
        idx, wrong = sug.confident(self.accept_at.value() / 100)
        self.accept_text.setText(f"{photos(len(idx))}; the calibration expects about "
                                 f"{wrong:.1f} of them to be wrong")
        self.accept.setEnabled(bool(len(idx)))
        self.file_rest.setEnabled(bool(len(view.pool.paths)))

    # --- keys ------------------------------------------------------------------------------
    def _photos_for_key(self) -> list[str]:
        """Label next: the selected photos. Groups: every photo left in the group."""
        grid = self.current_grid()
        return list(grid.paths) if grid is self.group_grid else grid.selected_paths()

    def _key(self, key: str) -> None:
        cls = next((c for c, k in self.keys.items() if k == key), None)
        paths = self._photos_for_key()
        if cls is not None and paths:
            if self.tags is not None:
                self._toggle(paths, cls)
            else:
                self.assign_requested.emit(paths, cls)

    def choose_class(self, text: str = "") -> None:
        """The class chooser, started with ``text``: any class by name, or a new one."""
        paths = self._photos_for_key()
        grid = self.current_grid()
        if not paths:
            return
        chooser = ClassChooser(self.classes, self.keys, text, self, self.tags is not None)
        if chooser.exec() == QDialog.DialogCode.Accepted and chooser.chosen:
            cls, new = chooser.chosen
            if self.tags is not None:
                self._toggle(paths, cls)
            elif new:
                self.new_class_requested.emit(paths, cls)
            else:
                self.assign_requested.emit(paths, cls)
        grid.setFocus()

    def _new_class(self) -> None:
        if self.tags is not None:
            self.choose_class("")
            return
        self.new_class_requested.emit(self._photos_for_key(), "")
        self.current_grid().setFocus()

    def _class_activated(self, item) -> None:
        cls = item.data(Qt.ItemDataRole.UserRole)
        paths = self.current_grid().selected_paths()
        if paths and cls is not None and self.tags is not None:
            self._toggle(paths, cls)
        elif paths and cls is not None:
            self.assign_requested.emit(paths, cls)
        self.current_grid().setFocus()

    def _accept_suggestion(self) -> None:
        if self.tags is not None:
            paths = self._photos_for_key()
            if paths:
                self.tags_requested.emit(self.tags.requests(paths))
            return
        for path in self.current_grid().selected_paths():
            cls = self.suggestion(path)
            if cls is not None:
                self.assign_requested.emit([path], cls)

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
