"""Small shared pieces of the pages: headings, hints, drop helpers, formatting."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QMimeData, QStandardPaths
from PySide6.QtWidgets import QLabel


def heading(text: str) -> QLabel:
    label = QLabel(text)
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * 1.4)
    font.setBold(True)
    label.setFont(font)
    return label


def hint(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    font = label.font()
    font.setItalic(True)
    label.setFont(font)
    return label


def local_paths(mime: QMimeData) -> list[str]:
    return [u.toLocalFile() for u in mime.urls() if u.isLocalFile()] if mime.hasUrls() else []


def folder_urls(mime: QMimeData) -> list[str]:
    return [p for p in local_paths(mime) if Path(p).is_dir()]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def dialog_folder(*candidates: str | None) -> str:
    """Where a file dialog opens: the first of ``candidates`` (last-used folders) that
    exists, else the user's Pictures folder, else home. Never "" — Qt would open the working
    directory, which may be the app's install or source folder."""
    pictures = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
    for folder in (*candidates, pictures, str(Path.home())):
        if folder and Path(folder).expanduser().is_dir():
            return str(Path(folder).expanduser())
    return str(Path.home())
