"""What the window's review views show of a trained run: every test image's answer (the
images behind a confusion-matrix cell), the hardest training images, and the "unknown" score
of every validation image, so that moving the threshold shows what it does on them.

One pass over the cached features of the three splits (:func:`review`, for a worker thread);
the rest are small pure functions the GUI thread may call as a slider moves.

An export writes the evaluation and the review beside the model (``evaluation.json``), so that
a model folder opened later (the one kept at quit, or one received) shows on the Evaluate page
what it showed when it was trained: :func:`saved_review` reads it back without trusting it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.core.base.errors import shown
from app.core.storage.model_folder import (
    EVALUATION_FILE,
    ModelDirError,
    read_json,
    regular_file,
)
from app.core.trust.calibration import softmax
from app.core.trust.evaluation import Evaluation
from app.core.trust.fitting import main_outputs
from app.core.trust.tags import NO_TAG

if TYPE_CHECKING:
    from app.core.pipeline.trained import TrainedModel

HARDEST = 60  # training images listed by default
SLIDER_STEPS = 1000
EVALUATION_VERSION = 1
# a 100k-image folder's evaluation is about 2 MB; JSON takes ~26x its size in memory once read
# (a 250 MB file took 6.5 GB when the window opened its model folder), so more is not read
MAX_EVALUATION_BYTES = 16 * 2**20


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


def review(model: TrainedModel, n_hardest: int = HARDEST) -> Review:
    """Compute the :class:`Review` of ``model`` (its splits' cached features: no backbone
    runs). For a worker thread."""
    result, splits = model.result, model.splits
    temperature, detector = model.trust.temperature, model.trust.detector
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
                   for h in model.hardest_training_images(n_hardest)]
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


# --- the evaluation kept in a model folder ------------------------------------------------

@dataclass
class SavedReview:
    """What a model folder's ``evaluation.json`` gives back: the test scores, the review and
    when and on which data folder they were made."""

    evaluation: Evaluation
    review: Review
    made: str = ""  # ISO time of the export
    dataset: str = ""  # the data folder the model was trained on


def review_document(evaluation: Evaluation, review_: Review | None, dataset: str) -> dict:
    """``evaluation.json``'s content for an export."""
    doc: dict[str, Any] = {
        "evaluation_version": EVALUATION_VERSION,
        "made": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset": dataset, "evaluation": evaluation.as_dict()}
    if review_ is not None:
        scores = review_.validation_scores
        doc["review"] = {
            "test": review_.test, "hardest": review_.hardest, "method": review_.method,
            "default_threshold": review_.default_threshold,
            "validation_scores": None if scores is None else [float(v) for v in scores]}
    return doc


def saved_review(folder: str | Path, classes: list[str]) -> tuple[SavedReview | None, str]:
    """The evaluation kept in ``folder`` for a model answering ``classes``; (None, why) when
    there is none or it cannot be trusted (a folder from someone else is read like any
    other input: every field checked, nothing from it executed)."""
    return _read_kept(folder, lambda doc: _parse_saved(doc, list(classes)),
                      "this model folder holds no evaluation (exported before this version "
                      "kept one): open its data folder and train again to see one")


def _read_kept(folder: str | Path, parse: Callable[[Any], Any], none: str
               ) -> tuple[Any, str]:
    """``parse`` of the evaluation kept in ``folder`` (size-limited, a regular file), and
    "" ; or (None, why): ``none`` when there is none, else what is wrong with it."""
    folder = Path(folder)
    if not (folder / EVALUATION_FILE).exists():
        return None, none
    try:
        doc = read_json(regular_file(folder, EVALUATION_FILE, EVALUATION_FILE),
                        MAX_EVALUATION_BYTES)
        return parse(doc), ""
    except ModelDirError as exc:
        return None, str(exc)
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"{shown(folder)}/{EVALUATION_FILE} is damaged ({shown(str(exc)[:120])})"


TAG_SCORES = ("map", "micro_f1", "macro_f1", "exact_match", "hamming_loss", "none_rate",
              "unknown_rate")
PER_TAG = ("precision", "recall", "f1", "ap", "threshold")
THRESHOLDS_BY_HAND = "set by hand on the Evaluate page, looking at the test scores"


@dataclass(frozen=True)
class SavedTagScores:
    """A multi-label model folder's test scores as kept at export (``evaluation.json``), read
    as plain values: the scores of the whole set and each tag's precision, recall, F1, AP,
    support and threshold."""

    count: int
    scores: dict[str, float | None]  # TAG_SCORES
    per_tag: dict[str, dict[str, float | int | None]]  # in the model's tag order
    threshold_rule: str = ""
    # {true tag, or NO_TAG: {tag given wrongly beside it: photos}}
    confused: dict[str, dict[str, int]] = field(default_factory=dict)
    # each test photo given a wrong set: {"path", "true": [tags], "predicted": [tags]}
    errors: tuple[dict, ...] = ()
    # every test photo's probabilities and true tags (paths, (N, tags), (N, tags)), when kept:
    # the scores can then be measured again at other thresholds (:meth:`at`)
    answers: tuple | None = None

    @property
    def thresholds(self) -> dict[str, float]:
        return {t: float(row["threshold"]) for t, row in self.per_tag.items()}

    def at(self, thresholds: dict[str, float]) -> SavedTagScores:
        """The same test photos scored with each tag given at ``thresholds`` (AP and mAP do
        not depend on them; the unknown share is the one kept). Needs :attr:`answers`."""
        from app.core.trust.tags import score_tags

        if self.answers is None:
            raise ValueError("this model folder keeps no answers to measure again")
        paths, probs, targets = self.answers
        tags = list(self.per_tag)
        ev = score_tags(tags, targets, probs, list(paths), [thresholds[t] for t in tags],
                        rule=THRESHOLDS_BY_HAND)
        scores = {k: getattr(ev, k) for k in TAG_SCORES}
        # the ranking scores as kept (the answers are kept rounded: ties would move them)
        for k in ("map", "unknown_rate"):
            scores[k] = self.scores.get(k)
        per_tag = {t: {"support": ev.per_tag[t]["support"],
                       **{k: ev.per_tag[t][k] for k in PER_TAG},
                       "ap": self.per_tag[t].get("ap")} for t in tags}
        return SavedTagScores(ev.count, scores, per_tag, THRESHOLDS_BY_HAND, ev.confused,
                              tuple(ev.errors), self.answers)

    def as_doc(self) -> dict:
        """As evaluation.json keeps it."""
        paths, probs, targets = self.answers if self.answers is not None else ([], [], [])
        return {"task": "multi-label", "count": self.count, **self.scores,
                "tags": list(self.per_tag), "per_tag": self.per_tag,
                "thresholds": self.thresholds, "threshold_rule": self.threshold_rule,
                "confused": self.confused, "errors": list(self.errors),
                **({"answers": {"paths": list(paths),
                                "probabilities": np.asarray(probs).tolist(),
                                "targets": np.asarray(targets).astype(int).tolist()}}
                   if self.answers is not None else {})}

    def error_photos(self, true: str | None = None, given: str | None = None) -> list[dict]:
        """The photos behind the errors, as the image grids list them: all, or those with
        ``true`` (NO_TAG: none) that were given ``given`` wrongly."""
        out = []
        for e in self.errors:
            extra = set(e["predicted"]) - set(e["true"])
            if true is not None and not (true in e["true"] or (true == NO_TAG
                                                               and not e["true"])):
                continue
            if given is not None and given not in extra:
                continue
            out.append({"path": e["path"], "tags": True,
                        "true": "; ".join(e["true"]) or "none of the tags",
                        "predicted": "; ".join(e["predicted"]) or "none of the tags"})
        return out


def saved_tag_scores(folder: str | Path, tags: list[str], thresholds=None
                     ) -> tuple[SavedTagScores | None, str]:
    """The per-tag scores kept in multi-label ``folder`` for a model of ``tags`` deciding at
    ``thresholds`` (metadata.json's; scores measured at other thresholds are not its scores);
    (None, why) when there are none or they cannot be trusted (every field checked, as
    :func:`saved_review` does)."""
    return _read_kept(folder, lambda doc: _parse_tag_scores(doc, tags, thresholds),
                      "this model folder holds no evaluation")


def _parse_tag_scores(doc: Any, tags: list[str], thresholds) -> SavedTagScores:
    if not isinstance(doc, dict) or doc.get("task") != "multi-label":
        raise ValueError("not the scores of a model of several tags a photo")
    _count(doc["count"])
    for key in TAG_SCORES:
        _fraction(doc.get(key), key)
    per = doc["per_tag"]
    if not isinstance(per, dict) or sorted(per) != sorted(tags):
        raise ValueError("its tags are not the model's")
    per_tag = {}
    for t in tags:
        row = per[t]
        if not isinstance(row, dict):
            raise ValueError(f"tag {shown(t)!r} has no scores")
        _count(row["support"])
        for key in PER_TAG:
            _fraction(row.get(key), f"{t}: {key}")
        per_tag[t] = {"support": row["support"], **{k: row.get(k) for k in PER_TAG}}
    if thresholds is not None and any(
            per_tag[t]["threshold"] is None or abs(per_tag[t]["threshold"] - float(m)) > 1e-6
            for t, m in zip(tags, thresholds)):
        raise ValueError("its thresholds are not the model's (metadata.json)")
    rule = doc.get("threshold_rule")
    known = set(tags)
    confused = {}
    for true, row in (doc.get("confused") or {}).items():
        if (true not in known and true != NO_TAG) or not isinstance(row, dict) \
                or not set(row) <= known or not all(map(_is_count, row.values())):
            raise ValueError("its confusions are not counts between its tags")
        confused[true] = dict(row)
    errors = []
    for e in doc.get("errors") or []:
        if not (isinstance(e, dict) and isinstance(e.get("path"), str)
                and all(isinstance(e.get(k), list) and set(e[k]) <= known
                        and all(isinstance(t, str) for t in e[k])
                        for k in ("true", "predicted"))):
            raise ValueError("its error photos are not photos with tag sets of its tags")
        errors.append({"path": e["path"], "true": list(e["true"]),
                       "predicted": list(e["predicted"])})
    return SavedTagScores(doc["count"], {k: doc.get(k) for k in TAG_SCORES}, per_tag,
                          shown(rule[:300]) if isinstance(rule, str) else "", confused,
                          tuple(errors), _answers(doc.get("answers"), doc["count"], tags,
                                                  doc.get("tags")))


def _answers(raw: Any, count: int, tags: list[str], order: Any) -> tuple | None:
    """The kept answers (paths, probabilities, targets), checked: one row a scored photo,
    one fraction (and one 0/1) a tag, the columns in the model's tag order (``order``: the
    evaluation's tags); None when none are kept."""
    if raw is None:
        return None
    n_tags = len(tags)
    if not isinstance(raw, dict) or order != tags:
        raise ValueError("its answers are not a table of the model's tags in its order")
    paths = raw.get("paths")
    try:
        probs = np.asarray(raw.get("probabilities"), np.float64)
        targets = np.asarray(raw.get("targets"), np.float64)
    except (TypeError, ValueError):
        raise ValueError("its answers are not numbers") from None
    if (not isinstance(paths, list) or not all(isinstance(p, str) for p in paths)
            or len(paths) != count or probs.shape != (count, n_tags)
            or targets.shape != (count, n_tags) or not np.isfinite(probs).all()
            or probs.min(initial=0) < 0 or probs.max(initial=0) > 1
            or not np.isin(targets, (0, 1)).all()):
        raise ValueError("its answers are not one probability and one 0/1 a tag for each "
                         "photo scored")
    return tuple(paths), probs, targets


def _parse_saved(doc: Any, classes: list[str]) -> SavedReview:
    if not isinstance(doc, dict) or doc.get("evaluation_version") != EVALUATION_VERSION:
        raise ValueError("not an evaluation this version writes")
    ev = doc["evaluation"]
    if not isinstance(ev, dict) or ev.get("labels") != classes:
        raise ValueError("its classes are not the model's")
    n = len(classes)
    known = {f.name for f in dataclasses.fields(Evaluation)}
    fields = {k: v for k, v in ev.items() if k in known}
    _count(fields["count"])
    for key in ("main_accuracy", "balanced_accuracy", "aux1_accuracy", "aux2_accuracy",
                "unknown_rate"):
        _fraction(fields.get(key), key)
    confusion = fields.get("confusion", [])
    if len(confusion) != n or any(len(r) != n or not all(map(_is_count, r)) for r in confusion):
        raise ValueError("its confusion matrix is not one count per pair of classes")
    interval = fields.get("accuracy_interval")
    if interval is not None and (len(interval) != 2 or not all(map(_is_fraction, interval))):
        raise ValueError("accuracy_interval is not two fractions")
    per_class = fields.get("per_class", {})
    if not isinstance(per_class, dict) or not set(per_class) <= set(classes) or not all(
            isinstance(v, dict) for v in per_class.values()):
        raise ValueError("per_class does not name the model's classes")
    for v in per_class.values():
        for key in ("precision", "recall"):
            _fraction(v.get(key), key)
        _count(v.get("support", 0))
    if not all(isinstance(c, str) and c in classes for c in fields.get("few_images", [])):
        raise ValueError("few_images names a class the model does not have")
    fields["misclassified"] = _entries(fields.get("misclassified", []), classes, "true")
    fields["skipped"] = [{"path": str(e["path"]), "reason": str(e["reason"])}
                         for e in fields.get("skipped", [])]
    fields["calibration"] = _calibration(fields.get("calibration"))
    fields["reliability"] = _reliability(fields.get("reliability"))
    evaluation = Evaluation(**fields)
    review_ = Review(list(classes))
    rv = doc.get("review")
    if isinstance(rv, dict):
        review_.test = _entries(rv.get("test", []), classes, "true")
        review_.hardest = _entries(rv.get("hardest", []), classes, "label")
        for e in review_.hardest:
            e["true"] = e["label"]
        method, default = rv.get("method"), rv.get("default_threshold")
        scores = rv.get("validation_scores")
        if method is not None:
            from app.core.trust.unknown import SCORES

            if method not in SCORES or not _is_finite(default):
                raise ValueError("its unknown test is not one this version knows")
            if not isinstance(scores, list) or not all(map(_is_finite, scores)):
                raise ValueError("validation_scores are not numbers")
            review_.method, review_.default_threshold = method, float(default)
            review_.validation_scores = np.asarray(scores, np.float64)
    return SavedReview(evaluation, review_, str(doc.get("made", ""))[:40],
                       str(doc.get("dataset", ""))[:4096])


def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_fraction(v: Any) -> bool:
    return _is_finite(v) and 0.0 <= v <= 1.0


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _count(v: Any) -> None:
    if not _is_count(v):
        raise ValueError(f"{shown(str(v)[:40])} is not a count")


def _fraction(v: Any, key: str) -> None:
    if v is not None and not _is_fraction(v):
        raise ValueError(f"{key} is not a fraction")


def _entries(items: Any, classes: list[str], label_key: str) -> list[dict]:
    """Image entries (path, label names, confidence), kept only as plain values."""
    if not isinstance(items, list):
        raise ValueError("an image list is not a list")
    out = []
    for e in items:
        if not isinstance(e, dict) or not isinstance(e.get("path"), str) or \
                e.get(label_key) not in classes or e.get("predicted") not in classes or \
                not _is_fraction(e.get("confidence")):
            raise ValueError("an image entry lacks a path, a class or a confidence")
        entry = {"path": e["path"], label_key: e[label_key], "predicted": e["predicted"],
                 "confidence": float(e["confidence"])}
        if "digest" in e:
            entry["digest"] = str(e["digest"])[:128]
        if label_key == "label" and _is_finite(e.get("loss")):
            entry["loss"] = float(e["loss"])
        out.append(entry)
    return out


def _calibration(c: Any) -> dict | None:
    if c is None:
        return None
    if not isinstance(c, dict) or not _is_finite(c.get("temperature")) or not all(
            c.get(k) is None or _is_finite(c[k]) for k in ("ece_before", "ece_after")):
        raise ValueError("calibration is not a temperature and two errors")
    out = {k: c.get(k) for k in ("temperature", "ece_before", "ece_after")}
    if isinstance(c.get("note"), str):
        out["note"] = c["note"][:500]
    return out


def _reliability(r: Any) -> dict | None:
    if r is None:
        return None
    if not isinstance(r, dict):
        raise ValueError("reliability is not a table")
    out = {}
    for side in ("before", "after"):
        bins = r.get(side, [])
        if not isinstance(bins, list) or not all(
                isinstance(b, dict) and _is_count(b.get("count"))
                and all(_is_finite(b.get(k)) for k in ("lower", "upper"))
                and all(_is_fraction(b.get(k)) or (b.get(k) is None and not b["count"])
                        for k in ("confidence", "accuracy")) for b in bins):
            raise ValueError(f"reliability's {side} bins are not numbers")
        out[side] = [{k: b[k] for k in ("lower", "upper", "count", "confidence", "accuracy")}
                     for b in bins]
    return out
