"""What the window's review views show of a trained run: every test image's answer (the
images behind a confusion-matrix cell), the hardest training images, and the "unknown" score
of every validation image, so that moving the threshold shows what it does on them.

One pass over the cached features of the three splits (:func:`review`, for a worker thread);
the rest are small pure functions the GUI thread may call as a slider moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from app.core.trust.calibration import softmax
from app.core.trust.fit import main_outputs

if TYPE_CHECKING:
    from app.core.pipeline.retrain import Retraining

HARDEST = 60  # training images listed by default
SLIDER_STEPS = 1000


@dataclass
class Review:
    """A trained run's answers on its own splits (calibrated probabilities)."""

    classes: list[str]
    test: list[dict] = field(default_factory=list)  # path, digest, true, predicted, confidence
    hardest: list[dict] = field(default_factory=list)  # labels.hardest entries + digest
    validation_scores: np.ndarray | None = None  # None: the model has no unknown detector
    method: str | None = None  # the unknown score's method
    default_threshold: float | None = None  # the fitted threshold (95% of the known images)


def answers(classes: list[str], paths: list[str], digests: list[str], true: np.ndarray,
            probs: np.ndarray) -> list[dict]:
    """One entry per image: its path, digest, true and predicted label and confidence."""
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    return [{"path": paths[i], "digest": digests[i] if i < len(digests) else "",
             "true": classes[int(true[i])], "predicted": classes[int(pred[i])],
             "confidence": round(float(probs[i, pred[i]]), 4)} for i in range(len(paths))]


def review(run: Retraining, n_hardest: int = HARDEST) -> Review:
    """Compute the :class:`Review` of ``run`` (trained, with its splits) from cached features:
    no backbone runs. For a worker thread; ``run`` is only read."""
    result, splits = run.result, run.splits
    if result is None or splits is None:
        raise RuntimeError("train a model first")
    temperature = run.trust.temperature if run.trust else 1.0
    detector = run.trust.detector if run.trust else None
    out = Review(list(result.classes))
    probs = {}
    feats = {}
    for name in ("validation", "test"):
        f, logits = main_outputs(result, splits[name])
        probs[name], feats[name] = softmax(logits, temperature), f
    test = splits["test"]
    out.test = answers(out.classes, test.paths, test.digests, test.labels, probs["test"])
    train = splits["train"]
    digest_of = dict(zip(train.paths, train.digests))
    out.hardest = [{**h, "true": h["label"], "digest": digest_of.get(h["path"], "")}
                   for h in run.hardest_training_images(n_hardest)]
    if detector is not None:
        out.method, out.default_threshold = detector.method, detector.fitted_threshold
        out.validation_scores = detector.score(feats["validation"], probs["validation"])
    return out


def cell_images(entries: list[dict], true: str, predicted: str) -> list[dict]:
    """The entries behind one confusion-matrix cell (true label, predicted label)."""
    return [e for e in entries if e["true"] == true and e["predicted"] == predicted]


def threshold_effect(scores: np.ndarray | None, threshold: float) -> dict:
    """What a threshold does on the validation images: how many (and which fraction) would
    be called unknown (score below it)."""
    scores = np.zeros(0) if scores is None else np.asarray(scores, np.float64)
    flagged = int((scores < threshold).sum())
    return {"threshold": float(threshold), "flagged": flagged, "count": int(len(scores)),
            "fraction": flagged / len(scores) if len(scores) else None}


@dataclass(frozen=True)
class ThresholdScale:
    """Slider positions 0..``steps`` to thresholds, linear over the range worth showing:
    [0, 1] for a probability; else the validation scores' range widened by a tenth, so that
    "nothing flagged" and "everything flagged" are both reachable."""

    lo: float
    hi: float
    steps: int = SLIDER_STEPS

    @classmethod
    def for_scores(cls, method: str | None, scores: np.ndarray | None,
                   threshold: float) -> ThresholdScale:
        if method == "max_probability" or scores is None or not len(scores):
            return cls(0.0, 1.0)
        lo = float(min(np.min(scores), threshold))
        hi = float(max(np.max(scores), threshold))
        pad = (hi - lo) * 0.1 or 1.0
        return cls(lo - pad, hi + pad)

    def value(self, position: int) -> float:
        return self.lo + (self.hi - self.lo) * position / self.steps

    def position(self, threshold: float) -> int:
        if not math.isfinite(threshold):
            return 0
        t = (threshold - self.lo) / (self.hi - self.lo)
        return int(round(min(1.0, max(0.0, t)) * self.steps))
