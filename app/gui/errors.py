"""Every error goes to a log file in the user's data folder; the window shows a message."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget

from app.core.base.paths import user_data_dir

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
    # BOTTLENECK_STUDIO_LOG=debug: also what the user looks at (the current photo on the Label
    # page, with its caption), for a support case or a scripted walk that follows the screen
    debug = os.environ.get("BOTTLENECK_STUDIO_LOG", "").strip().lower() == "debug"
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    return path


STYLES = {
    "error": "#errorBanner { background: #f8d7da; border: 1px solid #d62728; border-radius: 4px; }"
             " #errorBanner QLabel { color: #58151c; }",
    "warning": "#errorBanner { background: #fff3cd; border: 1px solid #e0a800; "
               "border-radius: 4px; } #errorBanner QLabel { color: #664d03; }",
}


class ErrorBanner(QFrame):
    """A dismissable message at the top of the window (never a modal dialog): a failure
    (``show_error``, logged, with the log file's path) or a warning the user should read."""

    shown = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("errorBanner")
        self.level = "error"
        self.setStyleSheet(STYLES["error"])
        self.topic = ""
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

    def show_error(self, message: str, title: str = "Something went wrong",
                   topic: str = "") -> None:
        """``topic``: what failed (a job's name), so that the message goes once it works
        (:meth:`clear_if_about`)."""
        log.error("%s", message)
        self._show("error", f"<b>{_escape(title)}:</b> {_escape(message)}<br><small>Details: "
                            f"{_escape(str(log_file()))}</small>", message)
        self.topic = topic

    def show_warning(self, message: str, topic: str = "") -> None:
        log.warning("%s", message)
        self._show("warning", f"<b>Note:</b> {_escape(message)}", message)
        self.topic = topic

    def clear_if_about(self, topic: str) -> None:
        """Hide the message when it is about ``topic``, which has just worked: a banner
        that outlives its cause reads as a problem that is still there."""
        if self.isVisible() and self.topic and self.topic == topic:
            self.hide()

    def _show(self, level: str, html: str, message: str) -> None:
        self.level = level
        self.setStyleSheet(STYLES[level])
        self.text.setText(html)
        self.text.setToolTip(message)
        self.show()
        self.shown.emit(message)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
