"""What runs in the background, visible from every page: a permanent status-bar label
("Training… epoch 12/40 · Caching… 120/400") and status messages that end with their job."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QStatusBar, QWidget

from app.core.base.jobs import Progress
from app.gui.worker import Worker


class ActivityLabel(QLabel):
    """One short line per running job that asked to be shown; hidden when none runs."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setToolTip("Jobs running in the background")
        self.setStyleSheet("padding: 0 10px; border-right: 1px solid palette(mid);")
        self._texts: dict[Worker, str] = {}
        self.hide()

    def track(self, worker: Worker, text: str) -> None:
        """Show ``text`` for ``worker`` until it is done."""
        self._texts[worker] = text
        worker.when_done(lambda: self._end(worker))
        self._refresh()

    def update_text(self, worker: Worker, text: str) -> None:
        if worker in self._texts:
            self._texts[worker] = text
            self._refresh()

    def _end(self, worker: Worker) -> None:
        self._texts.pop(worker, None)
        self._refresh()

    def _refresh(self) -> None:
        self.setText("  ·  ".join(self._texts.values()))
        self.setVisible(bool(self._texts))


def progress_text(name: str, p: Progress) -> str:
    """'Training… epoch 12/40', 'Caching… 120/400', 'Training: caching first… 3/9'."""
    if p.stage == "scan":
        return f"{name.capitalize()}: reading files… {p.done}/{p.total}"
    if name == "training":
        if p.stage != "train":
            return f"Training: caching first… {p.done}/{p.total}"
        data = p.data or {}
        epoch = data.get("epoch", p.done) if data.get("partial") else p.done
        return f"Training… epoch {epoch}/{p.total}"
    return f"{name.capitalize()}… {p.done}/{p.total}"


def say_while(bar: QStatusBar, worker: Worker, text: str) -> None:
    """Show ``text`` in the status bar until ``worker`` is done (unless replaced before)."""
    bar.showMessage(text)

    def end() -> None:
        if bar.currentMessage() == text:
            bar.clearMessage()

    worker.when_done(end)
