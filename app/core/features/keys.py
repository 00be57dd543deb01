"""The cache-key scheme, in one place: which backbone, which weights, which decoding, which
backend and precision computed a row (``model_key``), and for the fine-tune mode which cut
(``cut_key``). Two rows share a key only when they are interchangeable.

Which engine ran the frozen graph (Keras/TensorFlow, or ONNX Runtime on any execution
provider computing float32: :mod:`app.core.features.runtime`) is not in the key, by this
rule: an engine shares the key when, on real photos, its taps differ from Keras float32's by
at most a tenth of the rounding the store applies to those taps anyway
(``max |engine - Keras| <= 0.1 * max |float16(Keras) - Keras|``). Below that, a stored row
differs from Keras' by one float16 step in about one value in a hundred, where the rounding
itself already moves every value by up to half a step; an engine above it gets its own
signature, as mixed float16 on a GPU does (~1e-2: the precision part of the key).
Measured (``benchmarks/cache_throughput.py``, docs/benchmarks.md, 2-core AMD EPYC, ONNX
Runtime 1.32 CPU provider, real ImageNet weights, Oxford-17 photos): MobileNet, 256 photos,
max difference 5.2e-5 (main), 2.1e-5 and 2.0e-5 (aux1, aux2) against float16 rounding of
up to 2.0e-3: ratios 0.026, 0.011, 0.010; 1.1%, 0.2% and 0.5% of the stored values one step
apart. Xception, 64 photos: 2.3e-6, 2.3e-5, 2.0e-5 against up to 4.9e-4, 1.9e-3, 2.0e-3:
ratios 0.005, 0.012, 0.010. So the largest is 0.026, forty times inside the rule. Tested on
the tiny backbone (tests/core/test_runtime.py)."""

from __future__ import annotations

from app.core.features.backbones import BackboneSpec, weights_fingerprint
from app.core.features.cuts import CUTS
from app.core.intake.imaging import PREPROCESS_VERSION


def model_key(spec: BackboneSpec, weights: str, signature: str | None = None) -> str:
    """The cache key of features from ``spec`` with ``weights`` after our decoding, computed
    with ``signature`` (Keras backend and precision,
    :func:`app.core.base.device.compute_signature`): mixed-precision GPU rows are never
    mistaken for float32 CPU rows."""
    return key_of(spec.name, weights_fingerprint(spec, weights), signature)


def key_of(backbone: str, fingerprint: str, signature: str | None = None) -> str:
    """:func:`model_key` from its parts, e.g. a model folder's ``backbone`` and
    ``weights_fingerprint`` (no weights file needed)."""
    from app.core.base.device import compute_signature

    return f"{backbone}|{fingerprint}|prep{PREPROCESS_VERSION}|{signature or compute_signature()}"


def key_signature(key: str) -> str:
    """The backend-precision part of a model key (or of a cut key, which extends one)."""
    return key.split("|")[3]


def key_precision(key: str) -> str:
    """The compute precision a model key was made with ('float32' or 'mixed_float16')."""
    return key_signature(key).rsplit("-", 1)[-1]


def cut_key(spec: BackboneSpec, weights: str, signature: str | None = None) -> str:
    """The store key of ``spec``'s cut tensors: the model key plus the cut."""
    return f"{model_key(spec, weights, signature)}|cut:{CUTS[spec.name].cut}"


def features_key(spec: BackboneSpec, weights: str, mode: str, signature: str | None = None
                 ) -> str:
    """What a mode trains from: pooled taps (``head``) or the cut tensor (``finetune``)."""
    if mode == "finetune":
        return cut_key(spec, weights, signature)
    return model_key(spec, weights, signature)
