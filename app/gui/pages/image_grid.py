"""A grid of image thumbnails with what a user can do about each image: move it to another
class folder, exclude it from training, open it. Used for the misclassified test images, the
images behind a confusion-matrix cell and the hardest training images.

Thumbnails come a page at a time ("Show more"): the grid asks for them (``thumbnails_wanted``)
and a worker makes them; a batch that arrives after the grid was refilled is dropped.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QAction, QIcon, QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

PAGE = 48  # thumbnails asked for at a time
ICON = 96


def entry_caption(e: dict) -> str:
    """What the model answered, then the class folder the image is filed under (for a photo
    of several tags: the tags given, then its true tags)."""
    if e.get("tags"):
        return f"given: {e['predicted']}\ntrue: {e['true']}"
    return f"predicted: {e['predicted']}\nfolder: {e['true']}"


class ImageGrid(QWidget):
    thumbnails_wanted = Signal(object, int, int, object)  # grid, ticket, first row, entries
    move_requested = Signal(object, str)  # entry (dict), class folder
    exclude_requested = Signal(object)
    open_requested = Signal(object)

    def __init__(self, empty: str, caption: Callable[[dict], str] = entry_caption,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.caption = caption
        self.entries: list[dict] = []
        self.ticket = 0
        self.list = QListWidget()
        self.list.setViewMode(QListWidget.ViewMode.IconMode)
        self.list.setIconSize(QSize(ICON, ICON))
        self.list.setGridSize(QSize(ICON + 48, ICON + 62))  # room for three caption lines
        self.list.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.list.setMovement(QListWidget.Movement.Static)
        self.list.setWordWrap(True)
        self.list.setMinimumHeight(ICON + 56)
        self.list.setToolTip("Select an image, then move, exclude or open it; double-click "
                             "to see it large")
        self.list.itemSelectionChanged.connect(self._update_buttons)
        self.list.itemActivated.connect(lambda item: self._look(item))
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._context_menu)
        self.empty = QLabel(empty)
        self.empty.setWordWrap(True)

        self.move = QPushButton("&Move to class")
        self.move.setToolTip("Move the file into another class folder of your data folder "
                             "(listed under Moves, undoable)")
        self.move_menu = QMenu(self)
        self.move.setMenu(self.move_menu)
        self.exclude = QPushButton("E&xclude from training")
        self.exclude.setToolTip("Leave this image out of the next training runs (the file "
                                "stays where it is)")
        self.exclude.clicked.connect(lambda: self._emit(self.exclude_requested))
        self.open = QPushButton("&Open")
        self.open.setToolTip("Open the file in your image viewer")
        self.open.clicked.connect(lambda: self._emit(self.open_requested))
        self.more = QPushButton()
        self.more.setToolTip(f"Load {PAGE} more thumbnails")
        self.more.clicked.connect(self.show_more)
        buttons = QHBoxLayout()
        for w in (self.move, self.exclude, self.open):
            buttons.addWidget(w)
        buttons.addStretch(1)
        buttons.addWidget(self.more)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.empty)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        self.set_items([])

    # --- content ------------------------------------------------------------------------
    def set_classes(self, classes: list[str]) -> None:
        self.move_menu.clear()
        for c in classes:
            action = QAction(c, self.move_menu)
            action.triggered.connect(lambda _=False, c=c: self._emit(self.move_requested, c))
            self.move_menu.addAction(action)

    def move_action(self, name: str) -> QAction | None:
        return next((a for a in self.move_menu.actions() if a.text() == name), None)

    def set_items(self, entries: list[dict]) -> None:
        """Show ``entries`` (each with "path"); only the first page's thumbnails are asked
        for."""
        self.ticket += 1
        self.entries = list(entries)
        self.list.clear()
        self.empty.setVisible(not entries)
        self.list.setVisible(bool(entries))
        self.show_more()

    @property
    def shown(self) -> int:
        return self.list.count()

    def show_more(self) -> None:
        start = self.list.count()
        batch = self.entries[start:start + PAGE]
        for e in batch:  # row i shows self.entries[i]
            item = QListWidgetItem(QIcon(), self._text(e))
            item.setToolTip(_tip(e))
            self.list.addItem(item)
        if batch:
            self.thumbnails_wanted.emit(self, self.ticket, start, batch)
        self._update_buttons()

    def show_thumbnails(self, ticket: int, start: int, results: list) -> None:
        """``results``: [(entry, QImage | None)] for the batch asked for with ``ticket``
        from row ``start``."""
        if ticket != self.ticket:
            return  # the grid was refilled since
        for k, (_, image) in enumerate(results):
            item = self.list.item(start + k)
            if item is not None and image is not None:
                item.setIcon(QIcon(QPixmap.fromImage(image)))

    def has_icon(self, row: int) -> bool:
        item = self.list.item(row)
        return item is not None and not item.icon().isNull()

    def item_of(self, path: str) -> QListWidgetItem | None:
        for row in range(self.list.count()):
            if self.entries[row]["path"] == path:
                return self.list.item(row)
        return None

    def select(self, path: str) -> None:
        item = self.item_of(path)
        if item is not None:
            self.list.setCurrentItem(item)

    def selected(self) -> dict | None:
        items = self.list.selectedItems()
        return self.entries[self.list.row(items[0])] if items else None

    def relabel(self, old_path: str, new_path: str, note: str) -> None:
        """An image was moved (or moved back): its entry follows the file."""
        for row, e in enumerate(self.entries):
            if e["path"] in (old_path, new_path):
                e["path"], e["note"] = new_path, note
                item = self.list.item(row)
                if item is not None:
                    item.setText(self._text(e))
                    item.setToolTip(_tip(e))
        self._update_buttons()

    def _text(self, e: dict) -> str:
        return (f"{e['note']}\n" if e.get("note") else "") + self.caption(e)

    # --- actions ------------------------------------------------------------------------
    def _emit(self, signal, *args) -> None:
        entry = self.selected()
        if entry is not None:
            signal.emit(entry, *args)

    def _update_buttons(self) -> None:
        entry = self.selected()
        for w in (self.move, self.exclude, self.open):
            w.setEnabled(entry is not None)
        if entry is not None and entry.get("tags"):  # a tagged photo stays where it is
            self.move.setEnabled(False)
            self.exclude.setEnabled(False)
        folder = Path(entry["path"]).parent.name if entry is not None else None
        for action in self.move_menu.actions():  # not into the folder it is in
            action.setEnabled(action.text() != folder)
        left = len(self.entries) - self.list.count()
        self.more.setText(f"Show more ({left} left)")
        self.more.setVisible(left > 0)

    def _context_menu(self, pos) -> None:
        item = self.list.itemAt(pos)
        if item is None:
            return
        self.list.setCurrentItem(item)
        menu = QMenu(self)
        move = menu.addMenu("Move to class")
        for action in self.move_menu.actions():
            move.addAction(action)
        menu.addAction(self.exclude.text().replace("&", ""),
                       lambda: self._emit(self.exclude_requested))
        menu.addAction("Open", lambda: self._emit(self.open_requested))
        menu.exec(self.list.viewport().mapToGlobal(pos))

    def _look(self, item: QListWidgetItem) -> None:
        ImageDialog(self.entries[self.list.row(item)], self).open()


def _tip(e: dict) -> str:
    if e.get("tags"):  # a photo of several tags given a wrong set
        return "\n".join([e["path"], f"true tags: {e['true']}", f"given: {e['predicted']}"])
    lines = [e["path"], f"folder (label): {e['true']}",
             f"predicted: {e['predicted']} ({e['confidence']:.0%})"]
    if "loss" in e:
        lines.append(f"loss: {e['loss']:.3g}")
    if e.get("note"):
        lines.append(e["note"])
    return "\n".join(lines)


class ImageDialog(QDialog):
    """One image, large, with its label and what the model predicted."""

    def __init__(self, m: dict, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(m["path"].rsplit("/", 1)[-1])
        picture = QLabel()
        pix = QPixmap(m["path"])
        if not pix.isNull():
            pix = pix.scaled(640, 640, Qt.AspectRatioMode.KeepAspectRatio,
                             Qt.TransformationMode.SmoothTransformation)
        picture.setPixmap(pix)
        picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        esc = {k: html.escape(str(m[k])) for k in ("true", "predicted", "path")}
        text = QLabel(f"True tags: <b>{esc['true']}</b><br>Given: <b>{esc['predicted']}</b>"
                      f"<br><small>{esc['path']}</small>" if m.get("tags") else
                      f"Label (folder): <b>{esc['true']}</b><br>Predicted: <b>"
                      f"{esc['predicted']}</b> ({m['confidence']:.0%} sure)<br><small>"
                      f"{esc['path']}</small>")
        text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        layout = QVBoxLayout(self)
        layout.addWidget(picture)
        layout.addWidget(text)
        layout.addWidget(close, 0, Qt.AlignmentFlag.AlignRight)
        self.text = text
