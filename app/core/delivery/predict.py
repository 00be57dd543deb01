"""Prediction on new images, from an exported model folder or a model just trained.

Images go through the same decoding as the cache, in batches; a file that cannot be read
gives an error entry of its own and the others go on.

Nothing is computed twice: a head-mode model given the cache folder (:class:`CachedTaps`)
answers a photo whose content is in the cache under its model key from the cached pooled taps
(no decoding, no backbone: the head alone), and computes the others' taps with the caching
job's own extractor (:func:`app.core.features.runtime.best_extractor`, ONNX Runtime where
installed, its graph shared with the cache), rounded to float16 as the store keeps them. So an
answer is the same whether the photo was cached or not (tested equal), and the same as the
app's own evaluation on cached features. Predict never writes the cache.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.core.base.errors import shown
from app.core.base.jobs import KERAS_BUILDS, CancelToken, ProgressCallback, RateMeter, no_progress
from app.core.features.backbones import BackboneSpec, get_spec
from app.core.intake.imaging import (
    IMAGE_SUFFIXES,
    PREPROCESS_VERSION,
    ImageError,
    load_rgb,
    sniff_format,
)
from app.core.storage.model_folder import (
    META_FILE,
    MODEL_FILE,
    SUPPORTED_MODEL_FORMATS,
    ModelDirError,
    read_json,
    regular_file,
    validate_metadata,
)
from app.core.storage.store import DB_NAME, TAPS, FeatureStore, StoreError
from app.core.trust.unknown import UnknownDetector, feature_width

if TYPE_CHECKING:
    import keras

__all__ = ["SUPPORTED_MODEL_FORMATS", "CachedTaps", "ModelDirError", "Prediction",
           "Predictor", "expand_paths", "read_metadata"]
NAN_ANSWER = "the model answered NaN for this image: the model folder is damaged"
# The head answers taps in batches of this many rows, padded: cached or computed, a photo's
# answer comes from the same graph and batch shape (identical), and the head's per-call cost
# (~8 ms on a CPU, whatever the rows) is paid once per 256 cached photos.
HEAD_BATCH = 256


@dataclass
class Prediction:
    path: str
    top: list[dict] = field(default_factory=list)  # [{"label", "probability"}], best first
    error: str | None = None
    unknown: bool | None = None  # None: the model has no unknown detector (or an error)
    score: float | None = None  # how much it looks like the training classes (higher: more)
    # several tags a photo: every tag at or above its threshold, most probable first ([]:
    # "none of my tags"); None for a model of one class a photo
    tags: list[dict] | None = None

    def as_dict(self) -> dict:
        d = {"path": self.path, "top": self.top, "unknown": self.unknown,
             "score": self.score, "error": self.error}
        if self.tags is not None:
            d["tags"] = self.tags
        return d


def probability_rows(preds: list[Prediction], classes: list[str]) -> np.ndarray:
    """Each prediction's probabilities as a row in ``classes``' order (N, classes), from its
    ``top`` (asked with ``top_k`` = every class); a class not in its top is 0."""
    index = {c: i for i, c in enumerate(classes)}
    probs = np.zeros((len(preds), len(index)))
    for row, p in enumerate(preds):
        for t in p.top:
            probs[row, index[t["label"]]] = t["probability"]
    return probs


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


@dataclass(frozen=True)
class CachedTaps:
    """Where a head-mode model's inputs, the pooled taps, may already be: the cache folder
    and the model key its rows have, and the backbone and weights fingerprint the taps of
    other photos are computed with (the cache's own ONNX graph is found by them)."""

    folder: Path
    key: str
    spec: BackboneSpec
    fingerprint: str


_TAP_LAYERS = {"main": "main_tap", "aux1": "aux1_tap", "aux2": "aux2_tap"}


class Predictor:
    """A pixels -> probabilities model with its class names and input size, and the test
    that calls an image unknown (when the model has one). With ``cached`` (head mode), the
    model's head answers from cached or freshly extracted taps (see the module's note)."""

    def __init__(self, model: keras.Model, classes: list[str], image_size: tuple[int, int],
                 metadata: dict | None = None, unknown: UnknownDetector | None = None,
                 cached: CachedTaps | None = None) -> None:
        self.model, self.classes, self.image_size = model, list(classes), tuple(image_size)
        self.metadata = metadata or {}
        self.unknown = unknown
        # several tags a photo: each tag's threshold, in the classes' order
        self.thresholds = (np.array([float(self.metadata["thresholds"][c]) for c in self.classes])
                           if self.metadata.get("task") == "multi-label" else None)
        self.cached = cached
        # built here, once, so that predicting never changes the object (any thread may)
        self._with_features = None
        self._head = None  # taps -> probabilities: the model above its tap layers
        self.taps: tuple[str, ...] = ()
        self._extractor = None  # built on the first photo not in the cache
        self._extractor_lock = threading.Lock()
        import keras

        with KERAS_BUILDS:
            if unknown is not None and unknown.needs_features:
                self._with_features = keras.Model(
                    model.input, [model.output, model.get_layer("main_tap").output])
            if cached is not None:
                names = {layer.name for layer in model.layers}
                self.taps = tuple(t for t in TAPS if _TAP_LAYERS[t] in names)
                if "main" in self.taps:
                    self._head = keras.Model(
                        [model.get_layer(_TAP_LAYERS[t]).output for t in self.taps],
                        model.output, name="head_on_taps")
                else:
                    self.cached = None

    @classmethod
    def from_dir(cls, model_dir: str | Path, cache_dir: str | Path | None = None
                 ) -> Predictor:
        """The folder's model, refused with one :class:`ModelDirError` line when anything
        in it is wrong: metadata first (before Keras is imported), then the model, then the
        unknown test's arrays against the model's feature width. With ``cache_dir``, a
        head-mode model answers photos in that feature cache from their cached taps."""
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
        return cls(model, classes, size, meta, unknown, _folder_taps(meta, cache_dir))

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
        done = 0

        def answer(idx: list[int], probs: np.ndarray, feats: np.ndarray | None) -> None:
            scores = flags = None
            if self.unknown is not None:
                scores = self.unknown.score(feats, probs)
                flags = self.unknown.flags(scores, threshold)
            for n, (i, p) in enumerate(zip(idx, probs)):
                if not np.isfinite(p).all() or (
                        scores is not None and not np.isfinite(scores[n])):
                    results[i].error = NAN_ANSWER  # never a top label with nan
                    continue
                order = np.argsort(-p)
                results[i].top = [{"label": self.classes[j], "probability": float(p[j])}
                                  for j in order[:k]]
                if self.thresholds is not None:
                    results[i].tags = [{"label": self.classes[j], "probability": float(p[j])}
                                       for j in order if p[j] >= self.thresholds[j]]
                if scores is not None:
                    results[i].score = float(scores[n])
                    results[i].unknown = bool(flags[n])

        def step(count: int) -> None:
            nonlocal done
            done += count
            progress(meter.report("predict", done))

        todo = list(range(len(files)))
        if self.cached is not None:
            todo = self._answer_cached(files, answer, step, cancel)
        for start in range(0, len(todo), batch_size):
            if cancel is not None:
                cancel.raise_if_cancelled()  # never half-filled answers
            idx, pixels = [], []
            for i in todo[start : start + batch_size]:
                try:
                    pixels.append(load_rgb(files[i], self.image_size))
                    idx.append(i)
                except ImageError as exc:
                    results[i].error = str(exc)
            if pixels:
                if self.cached is not None:
                    taps = self._extract(np.stack(pixels), batch_size)
                    answer(idx, self._on_taps(taps), taps["main"])
                else:
                    answer(idx, *self.outputs(np.stack(pixels)))
            step(len(todo[start : start + batch_size]))
        return results

    # -- answers from taps: the cache's, or this machine's extractor's ----------------------
    def _answer_cached(self, files: list[Path], answer, step, cancel: CancelToken | None
                       ) -> list[int]:
        """Answer the files whose taps are cached (by content digest, under the model key)
        from the store, :data:`HEAD_BATCH` at a time; returns the indices of the others."""
        where = self.cached.folder
        if not (where / DB_NAME).is_file():
            return list(range(len(files)))
        rest: list[int] = []
        answered: set[int] = set()
        try:
            with FeatureStore(where) as store:
                digests = _digests(files, store)
                have = store.cached_digests(self.cached.key, set(digests.values()))
                found = [i for i in range(len(files)) if digests.get(i) in have]
                rest = [i for i in range(len(files)) if digests.get(i) not in have]
                for start in range(0, len(found), HEAD_BATCH):
                    if cancel is not None:
                        cancel.raise_if_cancelled()
                    idx = found[start : start + HEAD_BATCH]
                    try:
                        batch = store.load_features(self.cached.key,
                                                    [digests[i] for i in idx], self.taps)
                    except (KeyError, StoreError):  # damaged or gone since: computed instead
                        rest.extend(idx)
                        continue
                    taps = {t: getattr(batch, t).astype(np.float32) for t in self.taps}
                    answer(idx, self._on_taps(taps), taps["main"])
                    answered.update(idx)
                    step(len(idx))
        except StoreError:  # a cache that cannot be read: the rest is computed
            return [i for i in range(len(files)) if i not in answered]
        return sorted(rest)

    def _on_taps(self, taps: dict[str, np.ndarray]) -> np.ndarray:
        """The head on float32 taps, padded to :data:`HEAD_BATCH` rows (one traced graph,
        and a photo's answer does not depend on how many came with it)."""
        n = len(taps["main"])
        out = []
        for start in range(0, n, HEAD_BATCH):
            part = []
            for t in self.taps:
                x = np.zeros((HEAD_BATCH, *taps[t].shape[1:]), np.float32)
                rows = taps[t][start : start + HEAD_BATCH]
                x[: len(rows)] = rows
                part.append(x)
            out.append(np.asarray(self._head.predict_on_batch(part))[: min(HEAD_BATCH,
                                                                           n - start)])
        return np.concatenate(out)

    def _extract(self, pixels: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        """The taps of decoded photos, as the cache would store them (float16), as float32."""
        extractor = self.extractor()
        n = len(pixels)
        x = pixels
        if n < batch_size:  # the caching engine's batch shape: the same numbers
            x = np.zeros((batch_size, *pixels.shape[1:]), pixels.dtype)
            x[:n] = pixels
        out = extractor.predict(x)
        with np.errstate(over="ignore"):
            return {name: np.asarray(o[:n]).astype(np.float16).astype(np.float32)
                    for name, o in zip(extractor.names, out) if name in self.taps}

    def extractor(self):
        """The caching job's extractor of this model's backbone (built once, on the first
        photo not in the cache; ONNX Runtime's graph from the cache folder when there)."""
        with self._extractor_lock:
            if self._extractor is None:
                from app.core.delivery.export import taps_extractor
                from app.core.features import runtime
                from app.core.features.extract import KerasExtractor

                spec = self.cached.spec
                self._extractor = runtime.best_extractor(
                    spec, "none", "float32", False, no_progress, CancelToken(),
                    self.cached.folder, fingerprint=self.cached.fingerprint,
                    keras_build=lambda: KerasExtractor(taps_extractor(spec, self.model), TAPS))
            return self._extractor


def _digests(files: list[Path], store: FeatureStore) -> dict[int, str]:
    """Content digests of ``files`` (by index): from the cache's path, size and mtime index
    when the file is unchanged since it was scanned, else by reading it. Files that cannot be
    read are left out (their decode reports why)."""
    from app.core.intake.dataset import digest_file

    index = store.file_index()
    out: dict[int, str] = {}
    for i, f in enumerate(files):
        try:
            st = f.stat()
            # the scan records a resolved folder's entries, links inside it as they are
            for where in (os.path.abspath, os.path.realpath):
                known = index.get(where(f))
                if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
                    out[i] = known[2]
                    break
            else:
                out[i] = digest_file(f)[0]
        except OSError:
            continue
    return out


def _folder_taps(meta: dict, cache_dir: str | Path | None) -> CachedTaps | None:
    """Where a model folder's taps may be cached: a head-mode model of this decoding, whose
    features this machine computes in float32 (the folder's own backbone is float32)."""
    from app.core.base.device import compute_precision, compute_signature
    from app.core.features.keys import key_of

    if cache_dir is None or meta.get("mode", "head") != "head":
        return None
    fingerprint = meta.get("weights_fingerprint")
    if not fingerprint or meta.get("preprocess_version") != PREPROCESS_VERSION:
        return None
    if compute_precision() != "float32":
        return None
    try:
        spec = get_spec(meta["backbone"])
    except Exception:
        return None
    return CachedTaps(Path(cache_dir), key_of(spec.name, fingerprint, compute_signature()),
                      spec, fingerprint)
