"""Decoding: any supported image file into the RGB array a backbone takes.

This one function is used by caching, prediction and export alike, so an exported model sees
exactly the pixels the cached features were computed from. Bump :data:`PREPROCESS_VERSION`
whenever its output changes: cached features carry it in their key.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PREPROCESS_VERSION = 1
RESIZE_METHOD = "whole image squashed to the input size, bilinear with antialiasing (Pillow)"

# Format sniffing by content: a WebP saved as .jpeg is still a WebP.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"WEBP", 8, "WEBP"),
)
_BMP_DIB_SIZES = {12, 40, 52, 56, 64, 108, 124}

IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif",
    ".webp", ".tif", ".tiff",
}


# Decoded pixels all decode threads of this process may hold at once: a 13000 x 13000 PNG
# (under Pillow's bomb limit) took about 1 GB a decode thread, 9.1 GB with 8 threads. A photo
# waits until its pixels fit; one larger than the budget decodes alone. 256 Mpx is about 1 GB
# of RGBA, room for 20 phone photos at once.
PIXEL_BUDGET = 256 * 2**20


class PixelBudget:
    """Pixels lent to decoders; ``peak``: the most lent at once (what memory follows)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.lent = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        want = max(1, min(int(pixels), self.total))
        with self._cond:
            self._cond.wait_for(lambda: self.lent + want <= self.total)
            self.lent += want
            self.peak = max(self.peak, self.lent)
        try:
            yield
        finally:
            with self._cond:
                self.lent -= want
                self._cond.notify_all()


BUDGET = PixelBudget(PIXEL_BUDGET)


class ImageError(Exception):
    """An image that cannot be used; ``str(err)`` is a reason a person can act on.

    ``transient`` is True when the content may be fine and reading failed for another
    reason (the file could not be opened, memory ran out): such a file is tried again next
    time instead of being remembered as bad.
    """

    def __init__(self, reason: str, transient: bool = False) -> None:
        super().__init__(reason)
        self.transient = transient


def sniff_format(head: bytes) -> str | None:
    """The image format named by a file's first bytes, or None when it is no image we read."""
    for magic, offset, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            if name == "WEBP" and head[:4] != b"RIFF":
                continue
            return name
    if head[:2] == b"BM" and len(head) >= 18:
        if int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
            return "BMP"
    return None


def load_rgb(source: str | Path | bytes, size: tuple[int, int]) -> np.ndarray:
    """Decode ``source`` to a ``(height, width, 3)`` uint8 array of exactly ``size`` (w, h).

    EXIF orientation is applied; grayscale, palette, CMYK and 16-bit images become RGB;
    transparency is composited on white; the first frame of an animation is used. Large JPEGs
    are decoded at a reduced scale (still at least ``size``), which is several times faster.
    Raises :class:`ImageError` with a plain reason for anything unreadable.
    """
    if isinstance(source, bytes):
        if not source:
            raise ImageError("empty file (0 bytes)")
        fp: io.BytesIO | str | Path = io.BytesIO(source)
    else:
        fp = source
        try:
            if Path(source).stat().st_size == 0:
                raise ImageError("empty file (0 bytes)")
        except OSError as exc:
            raise ImageError(f"cannot read file: {exc.strerror or exc}", transient=True) from exc
    try:
        with warnings.catch_warnings():
            quiet_pillow()
            with Image.open(fp) as im:
                if im.format == "JPEG":
                    im.draft("RGB", size)
                with BUDGET.hold(im.size[0] * im.size[1]):  # the header says how many
                    im.load()
                    im = ImageOps.exif_transpose(im)
                    rgb = _to_rgb(im)
                    rgb = rgb.resize(size, Image.Resampling.BILINEAR)
                    return np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"image too large to decode safely ({exc}); downscale it or remove it"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not a readable image (unknown or damaged format)") from exc
    except OSError as exc:
        if exc.errno is not None:  # the file system failed, not the image's content
            raise ImageError(f"cannot read file: {exc.strerror or exc}", transient=True) from exc
        text = str(exc)
        if "truncated" in text:
            raise ImageError("truncated image: the file ends before the picture does") from exc
        raise ImageError(f"corrupt image data: {text}") from exc
    except MemoryError as exc:
        raise ImageError("not enough memory to decode this image", transient=True) from exc
    except Exception as exc:  # Pillow raises SyntaxError, ValueError, struct.error ...
        raise ImageError(f"corrupt image: {type(exc).__name__}: {exc}") from exc


def quiet_pillow() -> None:
    """Inside ``warnings.catch_warnings()``: Pillow's warnings stay off the user's terminal.
    A decompression bomb is refused by its error, and a damaged EXIF block ("Corrupt EXIF
    data", printed once per photo from a camera that wrote one) still decodes: the pixels
    are read as they are, without the orientation the broken block could not give."""
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(im)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit and float grayscale: scale to 8 bits instead of Pillow's clipping."""
    arr = np.asarray(im).astype(np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    if im.mode == "F" and peak <= 1.0:
        arr = arr * 255.0
    elif peak > 255.0:
        arr = arr / 257.0
    gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB")
