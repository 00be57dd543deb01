"""The cache-key scheme, in one place: which backbone, which weights, which decoding, which
backend and precision computed a row (``model_key``), and for the fine-tune mode which cut
(``cut_key``). Two rows share a key only when they are interchangeable."""

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
