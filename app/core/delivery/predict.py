"""Prediction on new images, from an exported model folder or a model just trained.

Images go through the same decoding as the cache, in batches; a file that cannot be read
gives an error entry of its own and the others go on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.core.base.errors import shown
from app.core.base.jobs import KERAS_BUILDS, CancelToken, ProgressCallback, RateMeter, no_progress
from app.core.intake.imaging import IMAGE_SUFFIXES, ImageError, load_rgb, sniff_format
from app.core.storage.model_folder import (
    META_FILE,
    MODEL_FILE,
    SUPPORTED_MODEL_FORMATS,
    ModelDirError,
    read_json,
    regular_file,
    validate_metadata,
)
from app.core.trust.unknown import UnknownDetector, feature_width

if TYPE_CHECKING:
    import keras

__all__ = ["SUPPORTED_MODEL_FORMATS", "ModelDirError", "Prediction", "Predictor",
           "expand_paths", "read_metadata"]
NAN_ANSWER = "the model answered NaN for this image: the model folder is damaged"


@dataclass
class Prediction:
    path: str
    top: list[dict] = field(default_factory=list)  # [{"label", "probability"}], best first
    error: str | None = None
    unknown: bool | None = None  # None: the model has no unknown detector (or an error)
    score: float | None = None  # how much it looks like the training classes (higher: more)

    def as_dict(self) -> dict:
        return {"path": self.path, "top": self.top, "unknown": self.unknown,
                "score": self.score, "error": self.error}


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders walked for images (by content), hidden entries skipped."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if any(part.startswith(".") for part in f.relative_to(p).parts):
                    continue
                if f.is_file() and (f.suffix.lower() in IMAGE_SUFFIXES or _is_image(f)):
                    out.append(f)
        else:
            out.append(p)
    return out


def _is_image(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return sniff_format(fh.read(64)) is not None
    except OSError:
        return False


def read_metadata(model_dir: str | Path) -> dict:
    """A model folder's ``metadata.json``, checked against the schema; nothing else of the
    folder is opened (``model.keras`` is only checked to be a regular file in it)."""
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise ModelDirError(f"{shown(folder)} is not a model folder (it does not exist)")
    meta_path = regular_file(folder, META_FILE, META_FILE)
    regular_file(folder, MODEL_FILE, MODEL_FILE)
    return validate_metadata(read_json(meta_path))


class Predictor:
    """A pixels -> probabilities model with its class names and input size, and the test
    that calls an image unknown (when the model has one)."""

    def __init__(self, model: keras.Model, classes: list[str], image_size: tuple[int, int],
                 metadata: dict | None = None, unknown: UnknownDetector | None = None) -> None:
        self.model, self.classes, self.image_size = model, list(classes), tuple(image_size)
        self.metadata = metadata or {}
        self.unknown = unknown
        # built here, once, so that predicting never changes the object (any thread may)
        self._with_features = None
        if unknown is not None and unknown.needs_features:
            import keras

            with KERAS_BUILDS:
                self._with_features = keras.Model(
                    model.input, [model.output, model.get_layer("main_tap").output])

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Predictor:
        """The folder's model, refused with one :class:`ModelDirError` line when anything
        in it is wrong: metadata first (before Keras is imported), then the model, then the
        unknown test's arrays against the model's feature width."""
        folder = Path(model_dir).expanduser()
        meta = read_metadata(folder)
        model_path = regular_file(folder, MODEL_FILE, MODEL_FILE)
        from app.core.base.device import configure

        configure()
        import keras

        import app.core.training.answer  # noqa: F401  (older folders' AverageAnswer layer)

        try:
            with KERAS_BUILDS:
                model = keras.saving.load_model(model_path, safe_mode=True)
        except Exception as exc:
            raise ModelDirError(f"{shown(model_dir)}/model.keras cannot be loaded "
                                f"({type(exc).__name__}: {shown(str(exc)[:200])})") from exc
        classes, size = meta["classes"], tuple(meta["image_size"])
        try:
            out_shape, in_shape = tuple(model.output_shape), tuple(model.input_shape)
        except (AttributeError, ValueError, TypeError):
            raise ModelDirError(f"{shown(model_dir)}/model.keras is not a model with one "
                                "image input and one output") from None
        if out_shape[-1] != len(classes):
            raise ModelDirError(f"{shown(model_dir)}: labels and model disagree on the class "
                                f"count ({len(classes)} classes, the model answers "
                                f"{out_shape[-1]})")
        if len(in_shape) != 4 or in_shape[3] not in (None, 3) or any(
                want is not None and want != got
                for want, got in zip(in_shape[1:3], (size[1], size[0]))):
            raise ModelDirError(f"{META_FILE}: image_size {list(size)} does not fit the "
                                f"model's input {list(in_shape[1:])}")
        unknown = None
        entry = meta.get("unknown") or {}
        if entry.get("method"):
            try:
                unknown = UnknownDetector.load(folder, entry, n_classes=len(classes))
            except ModelDirError:
                raise
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ModelDirError(f"{shown(model_dir)}: the unknown-image data is damaged "
                                    f"({type(exc).__name__}: {shown(str(exc)[:200])}); "
                                    "export it again") from exc
            width = feature_width(unknown)
            if width is not None:
                try:
                    tap = model.get_layer("main_tap").output.shape[-1]
                except (ValueError, AttributeError):
                    raise ModelDirError(f"{shown(model_dir)}/model.keras has no layer "
                                        "'main_tap', which the unknown test reads") from None
                if tap != width:
                    raise ModelDirError(f"{entry['file']}: its arrays are {width} features "
                                        f"wide, the model's main_tap gives {tap}")
        return cls(model, classes, size, meta, unknown)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(pixels.astype(np.float32)))

    def outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and, when the unknown test needs them, main-tap features."""
        if self._with_features is None:
            return self.probabilities(pixels), None
        probs, feats = self._with_features.predict_on_batch(pixels.astype(np.float32))
        return np.asarray(probs), np.asarray(feats)

    def predict(self, paths: Iterable[str | Path], top_k: int = 3, batch_size: int = 32,
                progress: ProgressCallback = no_progress,
                cancel: CancelToken | None = None,
                threshold: float | None = None) -> list[Prediction]:
        """Top-``top_k`` answers per image; with an unknown test, each answer's score and
        whether it is below ``threshold`` (default: the one the model folder holds)."""
        files = expand_paths(paths)
        results = [Prediction(str(f)) for f in files]
        meter = RateMeter(len(files))
        k = max(1, min(top_k, len(self.classes)))
        for start in range(0, len(files), batch_size):
            if cancel is not None:
                cancel.raise_if_cancelled()  # never half-filled answers
            idx, pixels = [], []
            for i in range(start, min(start + batch_size, len(files))):
                try:
                    pixels.append(load_rgb(files[i], self.image_size))
                    idx.append(i)
                except ImageError as exc:
                    results[i].error = str(exc)
            if pixels:
                probs, feats = self.outputs(np.stack(pixels))
                scores = flags = None
                if self.unknown is not None:
                    scores = self.unknown.score(feats, probs)
                    flags = self.unknown.flags(scores, threshold)
                for n, (i, p) in enumerate(zip(idx, probs)):
                    if not np.isfinite(p).all() or (
                            scores is not None and not np.isfinite(scores[n])):
                        results[i].error = NAN_ANSWER  # never a top label with nan
                        continue
                    order = np.argsort(-p)[:k]
                    results[i].top = [{"label": self.classes[j], "probability": float(p[j])}
                                      for j in order]
                    if scores is not None:
                        results[i].score = float(scores[n])
                        results[i].unknown = bool(flags[n])
            progress(meter.report("predict", min(start + batch_size, len(files))))
        return results
