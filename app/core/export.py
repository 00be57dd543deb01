"""Export: a model folder that gives the same answers outside the app.

``model.keras`` is backbone + main head as one Keras model taking raw RGB pixels (0..255) at the
backbone's input size, with its input scaling inside. Beside it: ``labels.txt``,
``metadata.json``, the training history (CSV and JSON), and optionally a SavedModel and a TFLite
file. Before the folder is put in place, the saved model is loaded back (Keras safe mode) and
its predictions on validation images are compared with the app's own predictions from cached
features; any difference fails the export and leaves no folder behind.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.metadata
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app import __version__
from app.core.backbones import BackboneSpec, build_image_model, weights_fingerprint
from app.core.head import main_branch
from app.core.imaging import PREPROCESS_VERSION, RESIZE_METHOD, ImageError, load_rgb
from app.core.training import HISTORY_KEYS, SplitData

if TYPE_CHECKING:
    import keras

MODEL_FORMAT_VERSION = 1
FORMATS = ("keras", "savedmodel", "tflite")
PARITY_IMAGES = 64
PARITY_TOLERANCE = 1e-3


class ExportError(Exception):
    """The export could not be made or did not pass its parity check."""


@dataclass
class ParityReport:
    images: int
    max_abs_diff: float
    top1_mismatches: int

    @property
    def ok(self) -> bool:
        return self.top1_mismatches == 0 and self.max_abs_diff <= PARITY_TOLERANCE


def classifier_model(spec: BackboneSpec, weights: str, head: keras.Model,
                     backbone: keras.Model | None = None) -> keras.Model:
    """Pixels -> class probabilities: backbone, main tap and main head as one model."""
    import keras

    features = build_image_model(spec, weights, backbone)
    probs = main_branch(head)(features.output)
    return keras.Model(features.input, probs, name="bottleneck_studio_classifier")


def check_parity(model: keras.Model, head: keras.Model, validation: SplitData,
                 image_size: tuple[int, int], limit: int = PARITY_IMAGES) -> ParityReport:
    """Exported model on decoded images vs. the head on cached features, same images."""
    pixels, index = [], []
    for i, path in enumerate(validation.paths[:limit]):
        try:
            pixels.append(load_rgb(path, image_size))
            index.append(i)
        except ImageError:
            continue  # a file changed since caching: nothing to compare
    if not pixels:
        return ParityReport(0, 0.0, 0)
    exported = np.asarray(model.predict(np.stack(pixels).astype(np.float32), verbose=0))
    cached = {k: v[index] for k, v in validation.features.items()}
    in_app = np.asarray(main_branch(head).predict(cached["main"], verbose=0))
    return ParityReport(
        images=len(index),
        max_abs_diff=float(np.abs(exported - in_app).max()),
        top1_mismatches=int((exported.argmax(1) != in_app.argmax(1)).sum()),
    )


def write_history(folder: Path, history: list[dict]) -> None:
    (folder / "history.json").write_text(json.dumps(history, indent=1))
    keys = ["epoch", *HISTORY_KEYS, "loss", "val_loss", "best_epoch"]
    with open(folder / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def export_model(out_dir: str | Path, *, spec: BackboneSpec, weights: str, head: keras.Model,
                 classes: list[str], validation: SplitData | None, history: list[dict],
                 extra_metadata: dict | None = None, formats: tuple[str, ...] = ("keras",),
                 backbone: keras.Model | None = None) -> Path:
    """Write the model folder to ``out_dir`` (replacing it) once its parity check passed."""
    import keras

    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ExportError(f"unknown export format(s) {sorted(unknown)}; choose from {FORMATS}")
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model = classifier_model(spec, weights, head, backbone)
        model.save(staging / "model.keras")
        reloaded = keras.saving.load_model(staging / "model.keras", safe_mode=True)
        parity = None
        if validation is not None and len(validation):
            parity = check_parity(reloaded, head, validation, spec.input_size)
            if not parity.ok:
                raise ExportError(
                    f"exported model disagrees with the app on {parity.images} validation images "
                    f"(max probability difference {parity.max_abs_diff:.2g}, "
                    f"{parity.top1_mismatches} different top-1 labels); nothing was written"
                )
        (staging / "labels.txt").write_text("".join(f"{c}\n" for c in classes), "utf-8")
        write_history(staging, history)
        meta = {
            "format_version": MODEL_FORMAT_VERSION,
            "app_version": __version__,
            "keras_version": importlib.metadata.version("keras"),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "backbone": spec.name,
            "weights": weights if weights in ("imagenet", "none") else Path(weights).name,
            "weights_fingerprint": weights_fingerprint(spec, weights),
            "image_size": [spec.image_size, spec.image_size],
            "input": "RGB pixels 0..255, float32, shape (batch, height, width, 3); the model "
                     "scales them itself",
            "resize": RESIZE_METHOD,
            "preprocess_version": PREPROCESS_VERSION,
            "classes": list(classes),
            "parity": None if parity is None else {
                "images": parity.images, "max_abs_diff": parity.max_abs_diff,
                "top1_mismatches": parity.top1_mismatches},
            **(extra_metadata or {}),
        }
        (staging / "metadata.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False),
                                               "utf-8")
        if "savedmodel" in formats or "tflite" in formats:
            _export_tensorflow(model, staging, "tflite" in formats)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
        return out_dir
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"export to {out_dir} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _export_tensorflow(model: keras.Model, folder: Path, tflite: bool) -> None:
    """SavedModel and TFLite: the TensorFlow-only edge of the app."""
    saved = folder / "saved_model"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    if tflite:
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        (folder / "model.tflite").write_bytes(converter.convert())
