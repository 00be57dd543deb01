"""Calibrated probabilities: temperature scaling (Guo et al. 2017) and how far off they are.

A network trained with cross-entropy (and label smoothing) says "97%" more or less often than
it is right 97% of the time. One scalar ``T``, fitted on the validation split by minimising
the negative log-likelihood of ``softmax(logits / T)``, fixes most of that without changing any
top-1 answer. The expected calibration error (ECE) measures what is left: the
image-weighted mean gap between confidence and accuracy over equal-width confidence bins.

Pure numpy: no Keras, no SciPy.
"""

from __future__ import annotations

import math

import numpy as np

ECE_BINS = 15
T_RANGE = (0.05, 20.0)  # searched on log T; the NLL is unimodal in T
# Sharpening (T < 1) is trusted only from a validation split this large that holds at least one
# mistake: with every image right the NLL falls all the way to T's lower bound, and every
# answer, an unknown photo's too, would read ~100%.
MIN_IMAGES_TO_SHARPEN = 30


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def averaged_logits(probs: list[np.ndarray]) -> np.ndarray:
    """Logits (float32) of the mean of the outputs' probabilities ``probs`` (main, aux1,
    aux2): what a model answering with the average says, before its temperature (the
    exported model's ``answer`` layer computes the same)."""
    mean = sum(np.asarray(p, np.float64) for p in probs) / len(probs)
    return np.log(np.maximum(mean, 1e-30)).astype(np.float32)  # the layer's floor too


def log_probs_as_logits(probs: np.ndarray) -> np.ndarray:
    """Logits up to a per-row constant (all a softmax sees) from probabilities: for models
    that only output probabilities. Exact unless a probability underflowed to 0."""
    return np.log(np.maximum(np.asarray(probs, np.float64), 1e-45))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def safe_temperature(logits: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    """:func:`fit_temperature`, never sharpening on evidence too thin for it: with fewer than
    :data:`MIN_IMAGES_TO_SHARPEN` validation images or none of them wrong, ``T`` stays >= 1.
    Returns ``T`` and a note (empty when the fit was used as it came)."""
    labels = np.asarray(labels, np.int64)
    t = fit_temperature(logits, labels)
    if t >= 1.0 or not len(labels):
        return t, ""
    wrong = int((np.asarray(logits).argmax(1) != labels).sum())
    if len(labels) < MIN_IMAGES_TO_SHARPEN or wrong == 0:
        why = (f"only {len(labels)} validation images" if len(labels) < MIN_IMAGES_TO_SHARPEN
               else "no validation image is wrong")
        return 1.0, (f"probabilities not sharpened ({why}; the fit asked for T = {t:.2f}): "
                     "add images for calibrated confidence")
    return t, ""


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 60) -> float:
    """The ``T`` minimising the NLL on (``logits``, ``labels``): a golden-section search on
    ``log T`` over :data:`T_RANGE`. 1.0 when there is nothing to fit on."""
    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        return 1.0
    return best_temperature(lambda t: nll(logits, labels, t), iterations)


def best_temperature(loss, iterations: int = 60) -> float:
    """The ``T`` in :data:`T_RANGE` minimising ``loss(T)`` (unimodal in ``T``): a
    golden-section search on ``log T``."""
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(math.exp(a)), loss(math.exp(b))
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(math.exp(b))
    return float(math.exp((lo + hi) / 2))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width confidence bin: its edges, the mean confidence (max probability) of
    its images, their accuracy and their count (confidence and accuracy None when empty)."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    right = (probs.argmax(axis=1) == labels) if len(probs) else np.zeros(0, bool)
    # bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 goes to the first bin
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        mask = which == i
        n = int(mask.sum())
        out.append({"lower": i / bins, "upper": (i + 1) / bins, "count": n,
                    "confidence": float(conf[mask].mean()) if n else None,
                    "accuracy": float(right[mask].mean()) if n else None})
    return out


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """Expected calibration error: sum over bins of count/N * |accuracy - confidence|."""
    table = reliability(probs, labels, bins)
    total = sum(b["count"] for b in table)
    if not total:
        return None
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in table if b["count"]))
