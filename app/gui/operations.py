"""File work on a page: a bulk filing, a sort, an undo, off the GUI thread with progress and
Cancel, and its result shown on the page that did it ("Copied 193 photos; 407 were already
filed", with Undo), not only in a status bar that vanishes.

:class:`OperationBar` is the view (a line of text, a bar, Cancel, Undo with the list of
operations); :class:`FileWork` runs one core file job at a time through the generic worker
and shows it there. The core job returns a value (a ``Filing`` or an ``Undone``); the caller
applies it on the GUI thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QToolButton,
    QWidget,
)

from app.core.base.errors import shown
from app.gui.worker import Jobs, Worker

MENU_OPERATIONS = 15  # operations listed under Undo


class OperationBar(QWidget):
    """The last file operation of a page: what it did, Undo; while one runs, its progress and
    Cancel."""

    cancel_requested = Signal()
    undo_requested = Signal(str)  # an operation's id; "" for the latest

    def __init__(self, undo_text: str = "Undo", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.text = QLabel("")
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.bar = QProgressBar()
        self.bar.setVisible(False)
        self.bar.setMaximumWidth(220)
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Stop after the current photo: what was done stays, undoable")
        self.cancel.setVisible(False)
        self.cancel.clicked.connect(self.cancel_requested)
        self.undo = QToolButton()
        self.undo.setText(undo_text)
        self.undo.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.undo.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        self.undo.setToolTip("Take back the last operation (the arrow lists the others: "
                             "undo exactly the one you pick)")
        self.undo.clicked.connect(lambda: self.undo_requested.emit(""))
        self.menu = QMenu(self.undo)
        self.undo.setMenu(self.menu)
        self.undo.setEnabled(False)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.text, 1)
        row.addWidget(self.bar)
        row.addWidget(self.cancel)
        row.addWidget(self.undo)

    def start(self, text: str) -> None:
        self.text.setText(text)
        self.bar.setRange(0, 0)
        self.bar.setVisible(True)
        self.cancel.setVisible(True)
        self.cancel.setEnabled(True)
        self.undo.setEnabled(False)

    def show_progress(self, p) -> None:
        self.bar.setRange(0, max(1, p.total))
        self.bar.setValue(p.done)

    def finish(self, text: str) -> None:
        self.text.setText(shown(text))
        self.bar.setVisible(False)
        self.cancel.setVisible(False)

    def set_operations(self, operations: list) -> None:
        """The operations that can be undone (oldest first, as the journal lists them)."""
        self.menu.clear()
        for op in list(reversed(operations))[:MENU_OPERATIONS]:
            when = op.time.replace("T", " ")[:16]
            action = self.menu.addAction(f"Undo \u201c{shown(op.title)}\u201d "
                                         f"({len(op.moves)}) \u00b7 {when}")
            action.triggered.connect(lambda _=False, i=op.id: self.undo_requested.emit(i))
        self.undo.setEnabled(bool(operations) and not self.cancel.isVisible())
        latest = operations[-1].title if operations else ""
        self.undo.setToolTip(f"Undo \u201c{shown(latest)}\u201d (the arrow lists the others)"
                             if latest else "Nothing to undo")


class FileWork(QObject):
    """One file job at a time for a page, shown on its :class:`OperationBar`."""

    def __init__(self, jobs: Jobs, bar: OperationBar, refuse: Callable[[str], None],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.jobs, self.bar, self.refuse = jobs, bar, refuse
        self.worker: Worker | None = None
        bar.cancel_requested.connect(self.cancel)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.bar.cancel.setEnabled(False)

    def run(self, name: str, text: str, fn, on_result: Callable[[Any], None],
            on_error: Callable[[str], None] | None = None) -> Worker | None:
        """Run ``fn(progress, cancel)`` (a core file job) unless one runs already; the bar
        shows ``text`` and the progress meanwhile; ``on_result`` gets its value."""
        if self.worker is not None:
            self.refuse(f"Wait for {self.worker.name} to finish (or cancel it) first.")
            return None
        self.bar.start(text)
        worker: Worker | None = None

        def release() -> None:
            if self.worker is worker:
                self.worker = None

        def result(value) -> None:
            release()  # free before the result is applied: it may start the next step
            on_result(value)

        def done() -> None:
            if self.worker is worker and self.bar.cancel.isVisible():
                self.bar.finish(f"{name.capitalize()} did not finish.")  # no result came
            release()

        def failed(message: str) -> None:
            self.bar.finish(f"{name.capitalize()} failed: {message}")
            if on_error is not None:
                on_error(message)

        worker = self.jobs.start(name, fn, on_result=result,
                                 on_progress=self.bar.show_progress, on_error=failed,
                                 on_done=done)
        self.worker = worker
        return worker
