"""Small previews of images as QImage, made in worker threads (QImage, unlike QPixmap, may be
created off the GUI thread); the GUI thread only turns them into pixmaps."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QImage, QImageReader, QPainter


def thumbnail(path: str, size: int) -> QImage | None:
    """``path`` scaled to fit ``size`` x ``size`` pixels, or None when it cannot be read."""
    reader = QImageReader(path)
    reader.setAutoTransform(True)
    full = reader.size()
    if full.isValid() and full.width() > 0 and full.height() > 0:
        scaled = full.scaled(QSize(size, size), Qt.AspectRatioMode.KeepAspectRatio)
        reader.setScaledSize(scaled)
    image = reader.read()
    if not image.isNull():
        return image
    return _thumbnail_pillow(path, size)


def _thumbnail_pillow(path: str, size: int) -> QImage | None:
    try:
        from PIL import Image

        from app.core.intake.imaging import quiet_pillow

        with warnings.catch_warnings():
            quiet_pillow()
            with Image.open(path) as im:
                im.draft("RGB", (size, size))
                im = im.convert("RGB")
                im.thumbnail((size, size))
                data = im.tobytes()
                return QImage(data, im.width, im.height, 3 * im.width,
                              QImage.Format.Format_RGB888).copy()
    except Exception:
        return None


def strip(paths: Sequence[str], size: int, gap: int = 4) -> QImage:
    """Up to ``len(paths)`` thumbnails side by side, each centred in a ``size`` square."""
    out = QImage(max(1, len(paths)) * (size + gap), size, QImage.Format.Format_ARGB32)
    out.fill(QColor(0, 0, 0, 0))
    painter = QPainter(out)
    for i, path in enumerate(paths):
        img = thumbnail(path, size)
        if img is None:
            continue
        x = i * (size + gap) + (size - img.width()) // 2
        painter.drawImage(x, (size - img.height()) // 2, img)
    painter.end()
    return out
