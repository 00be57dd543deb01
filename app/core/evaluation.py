"""An honest evaluation: per-output accuracy, balanced accuracy, per-class scores, confusion
matrix and every misclassified image, so an unbalanced dataset cannot hide a weak class."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


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

    def as_dict(self) -> dict:
        return asdict(self)


def score(labels: list[str], true: np.ndarray, probs: np.ndarray, paths: list[str],
          aux_probs: dict[str, np.ndarray] | None = None) -> Evaluation:
    """Evaluate main-output probabilities ``probs`` (N, C) against integer labels ``true``."""
    n_classes = len(labels)
    count = len(true)
    if count == 0:
        return Evaluation(0, labels, None, None,
                          confusion=[[0] * n_classes for _ in range(n_classes)])
    pred = probs.argmax(axis=1)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (true, pred), 1)
    per_class = {}
    recalls = []
    for i, name in enumerate(labels):
        tp = int(confusion[i, i])
        support = int(confusion[i].sum())
        predicted = int(confusion[:, i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else None
        f1 = (2 * precision * recall / (precision + recall)
              if recall is not None and precision + recall > 0 else 0.0)
        if recall is not None:
            recalls.append(recall)
        per_class[name] = {"precision": round(precision, 4),
                           "recall": None if recall is None else round(recall, 4),
                           "f1": round(f1, 4), "support": support}
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
        **aux,
    )
