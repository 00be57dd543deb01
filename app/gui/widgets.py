"""Small shared pieces of the pages: headings, hints, drop helpers, formatting."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QMimeData, QStandardPaths
from PySide6.QtGui import QColor
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


def unique_mnemonics(page, taken: set[str]) -> None:
    """Give every Alt+letter of ``page`` (buttons, and labels with a buddy) its own letter,
    none of ``taken`` (the menu bar's): a letter a widget has is kept where it is free,
    else the first free initial of its words, else any free letter of its text. Two
    buttons of one page on one letter made Alt+letter press the wrong one."""
    import re

    from PySide6.QtWidgets import QAbstractButton, QGroupBox

    used = {t.lower() for t in taken}
    widgets = [w for w in page.findChildren(QAbstractButton) + page.findChildren(QLabel)
               + page.findChildren(QGroupBox)
               if not (isinstance(w, QLabel) and w.buddy() is None)]

    def text_of(w) -> str:
        return w.title() if isinstance(w, QGroupBox) else w.text()

    def set_text(w, text: str) -> None:
        (w.setTitle if isinstance(w, QGroupBox) else w.setText)(text)

    later = []
    for w in widgets:
        m = re.search(r"&([^&])", text_of(w).replace("&&", "\0"))
        if m is None:
            continue
        letter = m.group(1).lower()
        if letter.isalnum() and letter not in used:
            used.add(letter)
        else:
            later.append(w)
    for w in later:
        plain = text_of(w).replace("&&", "\0").replace("&", "")
        starts = [m.start() for m in re.finditer(r"\b\w", plain)]
        spots = starts + [i for i, ch in enumerate(plain) if ch.isalnum() and i not in starts]
        spot = next((i for i in spots if plain[i].lower() not in used), None)
        if spot is None:
            set_text(w, plain.replace("\0", "&&"))
            continue
        used.add(plain[spot].lower())
        set_text(w, (plain[:spot] + "&" + plain[spot:]).replace("\0", "&&"))


def heat_colour(fraction: float, diagonal: bool) -> QColor:
    """White to blue on the diagonal (right), white to red off it (confusions)."""
    if fraction <= 0:
        return QColor(0, 0, 0, 0)
    base = QColor(31, 119, 180) if diagonal else QColor(214, 39, 40)
    t = 0.15 + 0.85 * fraction
    return QColor(int(255 + (base.red() - 255) * t), int(255 + (base.green() - 255) * t),
                  int(255 + (base.blue() - 255) * t))
