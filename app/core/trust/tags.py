"""Several tags a photo: how far each tag's answer can be trusted, where each tag's yes
begins, and the scores that say when the model is good enough per tag.

- **Calibration**: one temperature per tag (Platt-style scaling of the tag's logit,
  ``sigmoid(z / T_k)``), fitted on the validation split by minimising that tag's binary
  cross-entropy; a tag with fewer than :data:`MIN_POSITIVES_TO_FIT` photos there, or none
  wrong, is never sharpened (T stays >= 1) (the single-label rule, per tag).
- **Thresholds**: one per tag, on its calibrated probability: 0.5 (yes as likely as no),
  moved to the probability that gives the tag's **best F1 on the validation split** (the
  midpoint between the two neighbouring probabilities) once that split holds at least
  :data:`MIN_POSITIVES_TO_TUNE` photos with the tag. Measured on VOC-dev (MobileNet, 101
  validation photos, 5-25 a tag): thresholds tuned on so few photos lost 0.6 to 5.1 points of
  test micro-F1 against 0.5 in 8 runs of 11 and won in 2, by at most 1.0
  (docs/benchmarks.md).
- **Scores** (:func:`score_tags`): per tag precision, recall, F1 (at its threshold) and
  average precision (AP, the area under the precision-recall curve as scikit-learn computes
  it: the precision at each distinct score, weighted by the recall it adds); mAP (the mean of
  the tags' APs), micro-F1 (all tag decisions pooled), macro-F1 (mean of the tags' F1),
  exact match (the whole tag set right) and the Hamming loss (the share of tag decisions
  wrong); which tag is given wrongly beside which true tag (the co-occurrence of errors), and
  every photo with a wrong tag set.

A photo with no tag above its threshold is "none of my tags", a real answer; a photo unlike
every training photo is "unknown" by the same score as the single-label models.
Pure numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from app.core.trust.calibration import best_temperature

MIN_POSITIVES_TO_FIT = 3  # photos with a tag in the validation split before its T may sharpen
MIN_POSITIVES_TO_TUNE = 25  # ... before its threshold moves from 0.5 to its best F1 there
DEFAULT_THRESHOLD = 0.5
NO_TAG = "(none)"  # the true "tag" of a photo with none, in the confusions
def sigmoid(z: np.ndarray, temperature: np.ndarray | float = 1.0) -> np.ndarray:
    z = np.asarray(z, np.float64) / temperature
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)), without overflow


def bce(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of targets ``y`` under ``sigmoid(z / temperature)``."""
    s = np.asarray(z, np.float64) / temperature
    # log(1 + exp(-s)) for y=1, log(1 + exp(s)) for y=0, computed stably
    return float(np.mean(np.logaddexp(0.0, -s) * y + np.logaddexp(0.0, s) * (1 - y)))


def fit_tag_temperature(z: np.ndarray, y: np.ndarray, iterations: int = 60) -> float:
    """The ``T`` minimising :func:`bce` on one tag: golden-section search on ``log T``."""
    if not len(y):
        return 1.0
    return best_temperature(lambda t: bce(z, y, t), iterations)


def safe_tag_temperature(z: np.ndarray, y: np.ndarray) -> tuple[float, bool]:
    """One tag's temperature (:func:`fit_tag_temperature`), never sharpening on thin
    evidence: fewer than MIN_POSITIVES_TO_FIT photos with the tag, or none answered wrong, keep
    T = 1. Returns (T, whether it was held at 1 for that reason)."""
    t = fit_tag_temperature(z, y)
    wrong = int(((np.asarray(z) >= 0) != (np.asarray(y) > 0.5)).sum())
    if t < 1.0 and (np.asarray(y).sum() < MIN_POSITIVES_TO_FIT or wrong == 0):
        return 1.0, True
    return t, False


def best_f1_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The threshold on probabilities ``p`` with the best F1 for targets ``y`` (a tie: the
    highest such threshold); between two neighbouring probabilities, their midpoint. No
    positive at all: :data:`DEFAULT_THRESHOLD`."""
    p, y = np.asarray(p, np.float64), np.asarray(y) > 0.5
    if not y.any():
        return DEFAULT_THRESHOLD
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys)
    predicted = np.arange(1, len(ps) + 1)
    last = np.r_[ps[1:] != ps[:-1], True]  # cut after each distinct value only
    f1 = np.where(last, 2 * tp / (predicted + y.sum()), -1.0)
    best = int(np.flatnonzero(f1 == f1.max())[0])
    below = ps[best + 1] if best + 1 < len(ps) else 0.0
    return float((ps[best] + below) / 2)


@dataclass
class TagTrust:
    """What was fitted on the validation split of a multi-label run (pickles: crosses the
    training child): a temperature and a threshold per tag, and the unknown detector."""

    temperatures: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    detector: object | None = None  # app.core.trust.unknown.UnknownDetector, or None
    rule: str = (f"0.5 on the calibrated probability; the best F1 on the validation split "
                 f"for a tag with {MIN_POSITIVES_TO_TUNE} or more photos there")
    note: str = ""

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """Per-tag probabilities from the answer's per-tag logits."""
        if not self.temperatures:
            return sigmoid(logits)
        return sigmoid(logits, np.asarray(self.temperatures, np.float64))

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Which tags each photo gets (bool (N, tags)): each tag above its threshold."""
        t = np.asarray(self.thresholds or [DEFAULT_THRESHOLD] * probs.shape[1], np.float64)
        return np.asarray(probs, np.float64) >= t


def fit_tag_trust(logits: np.ndarray, targets: np.ndarray) -> TagTrust:
    """Per-tag temperatures, then per-tag thresholds on the calibrated probabilities, both
    on the validation split's answer logits and multi-hot targets."""
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    if not len(targets):
        k = targets.shape[1] if targets.ndim == 2 else 0
        return TagTrust([1.0] * k, [DEFAULT_THRESHOLD] * k,
                        note="the validation split is empty: probabilities are not "
                             "calibrated and every tag's threshold is 0.5")
    temps, kept = [], []
    for k in range(targets.shape[1]):
        t, held = safe_tag_temperature(logits[:, k], targets[:, k])
        if held:
            kept.append(k)
        temps.append(t)
    trust = TagTrust(temps, [])
    probs = trust.calibrated(logits)
    trust.thresholds = [best_f1_threshold(probs[:, k], targets[:, k])
                        if targets[:, k].sum() >= MIN_POSITIVES_TO_TUNE else DEFAULT_THRESHOLD
                        for k in range(targets.shape[1])]
    if kept:
        trust.note = (f"{len(kept)} tag(s) not sharpened: too few photos with the tag in the "
                      "validation split, or none wrong")
    return trust


def average_precision(p: np.ndarray, y: np.ndarray) -> float | None:
    """Average precision of scores ``p`` for targets ``y`` (scikit-learn's definition:
    sum over distinct thresholds of (R_n - R_{n-1}) * P_n); None with no positive."""
    p, y = np.asarray(p, np.float64), np.asarray(y) > 0.5
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    last = np.r_[ps[1:] != ps[:-1], True]
    tp = np.cumsum(ys)[last]
    predicted = np.flatnonzero(last) + 1
    precision = tp / predicted
    recall = tp / n_pos
    gained = np.diff(np.r_[0.0, recall])
    return float(np.sum(gained * precision))


@dataclass
class TagEvaluation:
    count: int
    tags: list[str]
    map: float | None  # mean of the tags' APs (tags with a photo in the split)
    micro_f1: float | None
    macro_f1: float | None
    exact_match: float | None  # share of photos whose whole tag set is right
    hamming_loss: float | None  # share of (photo, tag) decisions that are wrong
    per_tag: dict[str, dict] = field(default_factory=dict)
    # {true tag: {tag given wrongly beside it: photos}}; "(none)" for photos with no tag
    confused: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)  # photos with a wrong tag set
    outputs_map: dict[str, float | None] = field(default_factory=dict)  # main, aux1, aux2
    thresholds: dict[str, float] = field(default_factory=dict)
    threshold_rule: str = ""
    none_rate: float | None = None  # share of photos given no tag ("none of my tags")
    unknown_rate: float | None = None
    # [{"path", "reason"}]: photos meant to be scored that could not be (not in count)
    skipped: list[dict] = field(default_factory=list)
    findings: list[dict] = field(default_factory=list)  # the tags file's warnings, when read
    # each photo scored: {"paths", "probabilities" (N, tags), "targets" (N, tags, 0/1)}, kept
    # in a model folder so that its thresholds can be moved and the scores measured again
    answers: dict = field(default_factory=dict)

    def as_dict(self, answers: bool = False) -> dict:
        out = asdict(self)
        if not answers:
            out.pop("answers")
        return out


def score_tags(tags: list[str], targets: np.ndarray, probs: np.ndarray, paths: list[str],
               thresholds: list[float] | None = None, outputs: dict[str, np.ndarray] | None = None,
               unknown: np.ndarray | None = None, rule: str = "") -> TagEvaluation:
    """Score per-tag probabilities ``probs`` (N, tags) against multi-hot ``targets``, each
    tag decided at its threshold (0.5 when none is given)."""
    y = np.asarray(targets, np.float64) > 0.5
    probs = np.asarray(probs, np.float64)
    k = len(tags)
    thr = np.asarray(thresholds if thresholds else [DEFAULT_THRESHOLD] * k, np.float64)
    n = len(y)
    unknown_rate = (round(float(np.mean(unknown)), 4)
                    if unknown is not None and len(unknown) else None)
    if n == 0:
        return TagEvaluation(0, list(tags), None, None, None, None, None,
                             thresholds=dict(zip(tags, map(float, thr))), threshold_rule=rule)
    pred = probs >= thr
    per_tag, aps, f1s = {}, [], []
    for i, tag in enumerate(tags):
        tp = int((pred[:, i] & y[:, i]).sum())
        fp = int((pred[:, i] & ~y[:, i]).sum())
        fn = int((~pred[:, i] & y[:, i]).sum())
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
        ap = average_precision(probs[:, i], y[:, i])
        if ap is not None:
            aps.append(ap)
        if tp + fn:
            f1s.append(f1 or 0.0)
        per_tag[tag] = {"precision": _r(precision), "recall": _r(recall), "f1": _r(f1),
                        "ap": _r(ap), "support": tp + fn, "predicted": tp + fp,
                        "threshold": round(float(thr[i]), 4)}
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    confused: dict[str, dict[str, int]] = {}
    errors = []
    for row in np.flatnonzero((pred != y).any(axis=1)):
        true = [tags[i] for i in np.flatnonzero(y[row])]
        given = [tags[i] for i in np.flatnonzero(pred[row])]
        for extra in set(given) - set(true):
            for t in true or [NO_TAG]:
                confused.setdefault(t, {}).setdefault(extra, 0)
                confused[t][extra] += 1
        errors.append({"path": paths[row], "true": true, "predicted": given,
                       "probabilities": {tags[i]: round(float(probs[row, i]), 4)
                                         for i in range(k) if y[row, i] or pred[row, i]}})
    outputs_map = {}
    for name, p in (outputs or {}).items():
        ap_out = [a for i in range(k) if (a := average_precision(p[:, i], y[:, i])) is not None]
        outputs_map[name] = _r(float(np.mean(ap_out))) if ap_out else None
    return TagEvaluation(
        count=n, tags=list(tags),
        map=_r(float(np.mean(aps))) if aps else None,
        micro_f1=_r(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else None,
        macro_f1=_r(float(np.mean(f1s))) if f1s else None,
        exact_match=_r(float((pred == y).all(axis=1).mean())),
        hamming_loss=_r(float((pred != y).mean())),
        per_tag=per_tag, confused=confused,
        errors=sorted(errors, key=lambda e: e["path"]),
        outputs_map=outputs_map,
        thresholds={t: round(float(v), 4) for t, v in zip(tags, thr)},
        threshold_rule=rule,
        none_rate=_r(float((~pred.any(axis=1)).mean())),
        unknown_rate=unknown_rate,
        answers={"paths": list(paths), "probabilities": np.round(probs, 6).tolist(),
                 "targets": y.astype(int).tolist()})


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
