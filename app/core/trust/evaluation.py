"""An honest evaluation: per-output accuracy, balanced accuracy, per-class scores, confusion
matrix and every misclassified image, so an unbalanced dataset cannot hide a weak class; the
accuracy's 95% Wilson interval and the classes with too few images to judge, so "100% on 34
images" reads as what it is; and
how well the main probabilities are calibrated (ECE and reliability bins, before and after
temperature scaling)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from app.core.training.feeds import SplitData
from app.core.trust.calibration import ece, reliability

FEW_IMAGES = 5  # a class with fewer images than this in the split is flagged
Z_95 = 1.959963984540054


@dataclass
class Evaluation:
    count: int
    labels: list[str]
    main_accuracy: float | None
    balanced_accuracy: float | None
    aux1_accuracy: float | None = None
    aux2_accuracy: float | None = None
    confusion: list[list[int]] = field(default_factory=list)  # rows: true, columns: predicted
    per_class: dict[str, dict] = field(default_factory=dict)
    misclassified: list[dict] = field(default_factory=list)
    # {"temperature", "ece_before", "ece_after"}: 15-bin ECE of the main probabilities
    calibration: dict | None = None
    # {"before": bins, "after": bins}, each bin {"lower", "upper", "count", "confidence",
    # "accuracy"}: the reliability diagram's data
    reliability: dict | None = None
    unknown_rate: float | None = None  # fraction of these images the detector calls unknown
    accuracy_interval: list[float] | None = None  # 95% Wilson interval of main_accuracy
    few_images: list[str] = field(default_factory=list)  # classes with < FEW_IMAGES here
    # [{"path", "reason"}]: images of the split that could not be scored (not decodable, a
    # NaN answer, skipped by the dataset scan); not in count, so a score never hides them
    skipped: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def score(labels: list[str], true: np.ndarray, probs: np.ndarray, paths: list[str],
          aux_probs: dict[str, np.ndarray] | None = None, *,
          uncalibrated: np.ndarray | None = None, temperature: float | None = None,
          unknown: np.ndarray | None = None,
          skipped: list[dict] | None = None) -> Evaluation:
    """Evaluate main-output probabilities ``probs`` (N, C) against integer labels ``true``.

    With ``uncalibrated`` (the same images' probabilities before temperature scaling) and the
    ``temperature`` that made ``probs`` from them, the calibration before and after is scored
    too. ``unknown`` (one bool per image) gives the unknown rate. ``skipped`` ({"path",
    "reason"}) lists the images that were meant to be scored and could not be."""
    skipped = list(skipped or [])
    n_classes = len(labels)
    count = len(true)
    calibration = reliable = None
    unknown_rate = (round(float(np.mean(unknown)), 4)
                    if unknown is not None and len(unknown) else None)
    if uncalibrated is not None and temperature is not None:
        calibration = {"temperature": float(temperature),
                       "ece_before": _round(ece(uncalibrated, true)),
                       "ece_after": _round(ece(probs, true))}
        reliable = {"before": reliability(uncalibrated, true),
                    "after": reliability(probs, true)}
    if count == 0:
        return Evaluation(0, labels, None, None,
                          confusion=[[0] * n_classes for _ in range(n_classes)],
                          calibration=calibration, reliability=reliable,
                          unknown_rate=unknown_rate, few_images=list(labels),
                          skipped=skipped)
    pred = probs.argmax(axis=1)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (true, pred), 1)
    per_class = {}
    recalls = []
    for i, name in enumerate(labels):
        tp = int(confusion[i, i])
        support = int(confusion[i].sum())
        predicted = int(confusion[:, i].sum())
        # no image called this class: its precision is not 0%, it is unknown (shown "-")
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        f1 = (None if recall is None or precision is None else
              2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
        if recall is not None:
            recalls.append(recall)
        per_class[name] = {"precision": None if precision is None else round(precision, 4),
                           "recall": None if recall is None else round(recall, 4),
                           "f1": None if f1 is None else round(f1, 4), "support": support,
                           "few_images": support < FEW_IMAGES}
    wrong = np.nonzero(pred != true)[0]
    misclassified = sorted(
        ({"path": paths[i], "true": labels[true[i]], "predicted": labels[pred[i]],
          "confidence": round(float(probs[i, pred[i]]), 4)} for i in wrong),
        key=lambda m: -m["confidence"],
    )
    aux = {}
    for name, p in (aux_probs or {}).items():
        aux[f"{name}_accuracy"] = round(float((p.argmax(axis=1) == true).mean()), 4)
    return Evaluation(
        count=count,
        labels=labels,
        main_accuracy=round(float((pred == true).mean()), 4),
        balanced_accuracy=round(float(np.mean(recalls)), 4),
        confusion=confusion.tolist(),
        per_class=per_class,
        misclassified=misclassified,
        calibration=calibration,
        reliability=reliable,
        unknown_rate=unknown_rate,
        accuracy_interval=[round(v, 4) for v in wilson(int((pred == true).sum()), count)],
        few_images=[name for name, s in per_class.items() if s["few_images"]],
        skipped=skipped,
        **aux,
    )


def wilson(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); honest near 0 and 1."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def hardest(classes: list[str], data: SplitData, probs: np.ndarray, n: int = 20) -> list[dict]:
    """The ``n`` images of ``data`` with the highest loss (-log probability of their label):
    ``{"path", "label", "predicted", "confidence", "loss"}``, hardest first."""
    if not len(data):
        return []
    p_true = probs[np.arange(len(data)), data.labels]
    loss = -np.log(np.maximum(p_true, 1e-12))
    order = np.argsort(-loss, kind="stable")[:n]
    return [{"path": data.paths[i], "label": classes[data.labels[i]],
             "predicted": classes[int(probs[i].argmax())],
             "confidence": round(float(probs[i].max()), 4), "loss": round(float(loss[i]), 4)}
            for i in order]
