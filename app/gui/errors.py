"""Every error goes to a log file in the user's data folder; the window shows a message."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget

from app.core.paths import user_data_dir

LOG_NAME = "bottleneck-studio.log"
log = logging.getLogger("app.gui")


def log_file() -> Path:
    return user_data_dir() / "logs" / LOG_NAME


def setup_logging() -> Path:
    """Log to the current data folder's file (idempotent; follows a changed data folder)."""
    path = log_file()
    for h in list(log.handlers):
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename) != path:
            log.removeHandler(h)
            h.close()
    if not any(isinstance(h, logging.FileHandler) for h in log.handlers):
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return path


class ErrorBanner(QFrame):
    """A dismissable message at the top of the window (never a modal dialog)."""

    shown = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("errorBanner")
        self.setStyleSheet("#errorBanner { background: #f8d7da; border: 1px solid #d62728; "
                           "border-radius: 4px; } #errorBanner QLabel { color: #58151c; }")
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QPushButton("Dismiss")
        close.setToolTip("Hide this message (details are in the log file)")
        close.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.addWidget(self.text, 1)
        layout.addWidget(close)
        self.hide()

    def show_error(self, message: str) -> None:
        log.error("%s", message)
        self.text.setText(f"<b>Something went wrong:</b> {message}<br><small>Details: "
                          f"{log_file()}</small>")
        self.show()
        self.shown.emit(message)
