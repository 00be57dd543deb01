"""The extractor interface every caching engine uses: pixels in, one array per stored name out.

One factory builds the frozen Keras extractor in the precision a model key names
(:func:`keras_extractor`); :func:`app.core.features.runtime.best_extractor`, the engines'
default, runs the same model as an ONNX graph where ONNX Runtime is installed. An engine (this
process, a Ray actor) only calls ``predict``. A caller may hand
:class:`~app.core.features.caching.CacheJob` another factory with the same signature: the
benchmarks measure the pipeline with an extractor that costs nothing, and the
tests one that runs out of memory or overflows. Beside it, the two rules both engines share:
how a model key is registered in the store (:func:`register`), and which failures are
remembered (:func:`remember_failures`: content that cannot be decoded, never a transient
error).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from app.core.base.jobs import CancelToken, ProgressCallback
from app.core.features.backbones import BackboneSpec
from app.core.intake.imaging import PREPROCESS_VERSION
from app.core.storage.store import CUT, TAPS, FeatureStore

if TYPE_CHECKING:
    import keras


class PrecisionChanged(Exception):
    """The device turned out to compute in another precision than the model key assumed."""


class Extractor(Protocol):
    """What an engine needs of an extractor. It may also say where it runs (``device``, e.g.
    "CPU, ONNX Runtime", read after its runs: a fallback changes it) and carry one-line
    ``notes`` for the user (why it is not the fastest engine)."""

    names: tuple[str, ...]  # the store's names of the outputs: TAPS, or (CUT,)
    shapes: dict[str, tuple[int, ...]]  # per name, one image's output shape

    def predict(self, pixels: np.ndarray) -> list[np.ndarray]:
        """``pixels`` (N, h, w, 3), 0..255 -> one array of N rows per name."""
        ...


# (spec, weights, precision, cut, progress, cancel) -> Extractor
ExtractorFactory = Callable[[BackboneSpec, str, str, bool, ProgressCallback, CancelToken],
                            Extractor]
# (path, (width, height)) -> (height, width, 3) uint8, or raises ImageError: load_rgb's
# contract. Pixels from another decoder are other features: it must not share a model key.
Decoder = Callable[[str, tuple[int, int]], np.ndarray]


def output_names(cut: bool) -> tuple[str, ...]:
    return (CUT,) if cut else TAPS


class KerasExtractor:
    """A frozen Keras model as an :class:`Extractor`."""

    def __init__(self, model: keras.Model, names: tuple[str, ...], device: str = "") -> None:
        self.model, self.names = model, names
        self.shapes = {n: tuple(o.shape[1:]) for n, o in zip(names, model.outputs)}
        self.device = device or keras_device()
        self.notes: list[str] = []

    def predict(self, pixels: np.ndarray) -> list[np.ndarray]:
        res = self.model.predict_on_batch(pixels)
        if not isinstance(res, (list, tuple)):
            res = [res]  # a one-output model (the cut extractor)
        return [np.asarray(r) for r in res]


def keras_extractor(spec: BackboneSpec, weights: str, precision: str, cut: bool,
                    progress: ProgressCallback, cancel: CancelToken) -> KerasExtractor:
    """The frozen extractor of the pooled taps (or of the fine-tune cut), built in
    ``precision`` ('float32' or 'mixed_float16'), scaling inside the graph. Raises
    :class:`PrecisionChanged` when the device computes in another precision."""
    from app.core.base import device as dev

    dev.configure()
    if dev.compute_precision() != precision:
        raise PrecisionChanged()
    import keras

    from app.core.features.backbones import build_extractor
    from app.core.features.cuts import build_cut_extractor

    build = build_cut_extractor if cut else build_extractor
    if precision == "float32":
        model = build(spec, weights, progress=progress, cancel=cancel)
    else:
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(precision)
        try:
            model = build(spec, weights, progress=progress, cancel=cancel)
        finally:
            keras.config.set_dtype_policy(previous)
    return KerasExtractor(model, output_names(cut))


def keras_device() -> str:
    """Where Keras computes, and that it is Keras: 'CPU, Keras/TensorFlow'."""
    from app.core.base import device as dev

    backend = dev.keras_backend_name()
    pretty = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}.get(backend, backend)
    return f"{dev.configure()}, Keras/{pretty}"


def register(store: FeatureStore, key: str, spec: BackboneSpec,
             shapes: dict[str, Sequence[int]]) -> None:
    """Record what ``key``'s rows are (backbone, shapes, input size, decoding)."""
    store.register_model(key, {"backbone": spec.name,
                               "shapes": {n: list(s) for n, s in shapes.items()},
                               "image_size": spec.image_size, "prep": PREPROCESS_VERSION})


def remember_failures(store: FeatureStore, failures: Sequence[tuple[str, str, bool]]) -> None:
    """``failures``: (digest, reason, transient). Only content that is really bad is
    remembered (not tried again until asked); a transient error (a file being written, a
    network share away) is tried again next run."""
    permanent = [(d, reason) for d, reason, transient in failures if not transient]
    if permanent:
        store.mark_bad(PREPROCESS_VERSION, permanent)
