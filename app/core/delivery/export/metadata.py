"""What ``metadata.json`` says of the preprocessing: the decoding exactly, and the plain-decode
and other forms' deviations measured at export."""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass



def preprocessing_metadata(size: tuple[int, int], plain: dict | None,
                           forms: dict[str, dict] | None = None) -> dict:
    """The app's decoding, exactly (what ``predict.py`` does)."""
    w, h = size
    return {
        "library": f"Pillow {importlib.metadata.version('pillow')}",
        "jpeg_draft": f"JPEG files are decoded with Image.draft('RGB', ({w}, {h})) first: "
                      "DCT scaling by 1/2, 1/4 or 1/8 to the smallest size still at least "
                      "the input size in both dimensions",
        "exif_transpose": "PIL.ImageOps.exif_transpose after decoding",
        "to_rgb": "transparency (RGBA, LA, PA, palette with transparency) composited on white; "
                  "16-bit and float grayscale scaled to 8 bits (divided by 257 when above "
                  "255; float in [0, 1] times 255); anything else Image.convert('RGB'); "
                  "first frame of an animation",
        "resize": f"whole image squashed to {w}x{h} (no crop, no padding) with "
                  "Image.resize(size, Image.Resampling.BILINEAR), which antialiases when "
                  "downscaling",
        "input": "float32 RGB 0..255, shape (batch, height, width, 3); the model scales them "
                 "itself",
        "script": "predict.py in this folder does exactly this (Pillow, numpy, Keras; no app)",
        "plain_decode": {
            "what": "the exported model on validation images decoded without the JPEG draft "
                    "step, against the decoding above: how far a script that skips it is off",
            **(plain or {"images": 0, "max_abs_diff": None, "top1_mismatches": None}),
            **({"other_forms": forms} if forms else {}),
        },
    }


