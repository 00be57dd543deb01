"""The label model: a softmax regression on unit-length, centred features (class-balanced,
L2), self-trained on the surer unlabelled photos, whose temperature is fitted on out-of-fold
answers when there are enough labels, so its confidence is calibrated; and "maybe a new class"
for a photo less like the labelled photos than they are like each other."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.core.labeling.groups import unit
from app.core.trust.calibration import safe_temperature, softmax

# "maybe a new class": a photo's relative likeness to the labelled photos (the mean similarity to
# its NOVELTY_K nearest, minus those neighbours' own, as the unknown test's relative_knn), below
# what all but KEEP_KNOWN of the labelled photos score, each without itself. Measured on
# Oxford-17 with 3 classes never labelled and groups named first (a walk's way): at 250-290
# labels the nearest-labelled similarity at 95% flagged 35% of the questions about known
# classes (the walk: 20 of 24), this score at 98% flagged 10% of them and 37% of those about
# the new classes (docs/benchmarks.md)
KEEP_KNOWN = 0.98
NOVELTY_K = 5
PSEUDO_WEIGHT = 0.5  # self-training: the unlabelled photos lent as labels weigh this many labels
PSEUDO_ROWS = 2000  # and are at most this many (the fit's cost grows with its rows)
REFIT_STEPS = 300  # the second fit, from where the first ended
RECALIBRATE = 0.1  # a refresh fits the temperature again once the labels grew by this share


@dataclass
class LabelModel:
    """Softmax regression on centred unit-length features, with a fitted temperature and the
    'maybe a new class' threshold."""

    weights: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,)
    classes: list[int]  # the class ids it was fitted on (others are never suggested)
    n_classes: int
    temperature: float = 1.0
    reference: np.ndarray | None = None  # unit features of the labelled photos
    density: np.ndarray | None = None  # each labelled photo's likeness to its nearest others
    novelty: float = -math.inf  # below this relative likeness: maybe a new class
    calibrated: bool = False  # the temperature was fitted on out-of-fold answers
    labels: int = 0  # how many labels the temperature was fitted on
    oof_accuracy: float | None = None  # how often out-of-fold answers were right
    centre: np.ndarray | None = None  # the mean unit feature of every photo it knows of
    pool: np.ndarray | None = None  # the unlabelled rows it was fitted with (the object)
    pool_logits: np.ndarray | None = None  # their answers from the other half's model

    def logits(self, x: np.ndarray) -> np.ndarray:
        """``x``'s logits; for the very pool array it was fitted with, the cross-fitted ones
        (so a suggestion's confidence is not that of the model the photo itself taught)."""
        z = np.full((len(x), self.n_classes), -1e9, np.float64)
        if x is self.pool and self.pool_logits is not None:
            z[:, self.classes] = self.pool_logits
        elif len(self.classes) == 1:
            z[:, self.classes[0]] = 0.0
        else:
            z[:, self.classes] = centred(x, self.centre) @ self.weights + self.bias
        return z

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.logits(x), self.temperature)

    def likeness(self, x: np.ndarray) -> np.ndarray:
        """How much each row of ``x`` is like the labelled photos: the mean similarity to its
        NOVELTY_K nearest labelled photos minus those photos' own :attr:`density` (higher:
        more like them; +inf without labelled photos)."""
        if self.reference is None or not len(self.reference) or self.density is None:
            return np.full(len(x), np.inf)
        ux = unit(x)
        out = np.empty(len(ux))
        for i in range(0, len(ux), 4096):
            out[i:i + 4096] = _relative(ux[i:i + 4096] @ self.reference.T, self.density)
        return out

def centred(x: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    """Unit rows, minus ``centre``, made unit again (SimpleShot's CL2N: the component every
    photo shares says nothing about its class)."""
    ux = unit(x)
    return ux if centre is None else unit(ux - centre)


def _fit_softmax(x: np.ndarray, y: np.ndarray, n: int, l2: float = 1e-3, steps: int = 300,
                 scale: float = 16.0, weight: np.ndarray | None = None,
                 start: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced softmax regression on unit rows by gradient descent with momentum;
    ``scale`` multiplies the features (cosine logits need a large range); ``weight``: one
    per row (default 1), on top of the class balance; ``start``: weights to start from (as
    returned)."""
    xs = x.astype(np.float32) * scale
    counts = np.bincount(y, minlength=n).astype(np.float64)
    sw = (len(y) / (n * np.maximum(counts, 1)))[y]
    if weight is not None:
        sw = sw * weight
    sw = (sw / sw.sum()).astype(np.float32)  # float32 throughout: one dtype, no copies
    onehot = np.eye(n, dtype=np.float32)[y]
    w = np.zeros((x.shape[1], n), np.float32) if start is None else start[0] / scale
    b = np.zeros(n, np.float32) if start is None else start[1].astype(np.float32)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    lr = np.float32(1.0 / scale ** 2)
    for _ in range(steps):
        z = xs @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) * sw[:, None]
        gw = xs.T @ g + np.float32(l2) * w
        gb = g.sum(axis=0)
        vw = np.float32(0.9) * vw - lr * gw
        vb = np.float32(0.9) * vb - lr * gb
        w += vw
        b += vb
    return w * scale, b


def _self_trained(x: np.ndarray, y: np.ndarray, n: int, pool: np.ndarray | None,
                  first: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Fit on the labelled rows (or start from ``first``, that fit), then once more with the
    unlabelled rows it is surest of as labels (the surer half of each suggested class, at most
    ``PSEUDO_ROWS``), weighing ``PSEUDO_WEIGHT`` of the labels in all: self-training, which
    measured +4.7 points on Oxford-17 and +1.3 on flowers5 at 120 random labels
    (docs/benchmarks.md). Each fit is a fixed number of steps from zero (from the first fit,
    for the second): stopped early on purpose, so a fit that starts from the last refresh's
    answer is not the same answer sooner but a sharper one (a walk's File the rest promised
    2.8 wrong photos and filed 10 after 20 warm-started refreshes; fresh fits: 2.9 and 4)."""
    w, b = first if first is not None else _fit_softmax(x, y, n)
    if pool is None or not len(pool):
        return w, b
    z = pool @ w + b
    # log of the top probability: how sure the first fit is of each unlabelled row
    label, sure = z.argmax(axis=1), -np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(1))
    keep = []
    for c in range(n):
        idx = np.flatnonzero(label == c)
        keep.append(idx[np.argsort(-sure[idx], kind="stable")][:max(1, len(idx) // 2)])
    take = np.concatenate(keep)
    if len(take) > PSEUDO_ROWS:
        take = take[np.argsort(-sure[take], kind="stable")][:PSEUDO_ROWS]
    if not len(take):
        return w, b
    weight = np.concatenate([np.ones(len(y)), np.full(len(take), PSEUDO_WEIGHT * len(y)
                                                      / len(take))])
    return _fit_softmax(np.concatenate([x, pool[take]]), np.concatenate([y, label[take]]), n,
                        weight=weight, start=(w, b), steps=REFIT_STEPS)


def fit_model(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5,
              seed: int = 0, pool: np.ndarray | None = None,
              previous: LabelModel | None = None, halves: np.ndarray | None = None
              ) -> LabelModel | None:
    """The model for labelled unit rows ``x`` with class ids ``y`` (None without labels).
    ``pool``: the unlabelled photos' rows; they set the centre the features are measured
    from and lend their surest suggestions as extra labels (self-training). The temperature
    is fitted on out-of-fold answers (the same procedure, the held-out labels left out) once
    every labelled class has 2 photos and there are 20 labels; before that it is 1 and the
    confidence is rough. ``previous``: the model of the last refresh; its calibration is kept
    while the labels are the same classes and grew by less than :data:`RECALIBRATE` (a label
    more moves the temperature by little, and its five folds were most of a refresh's time).
    ``halves``: which half of the pool each photo is in for the cross-fitted answers (0/1;
    default a random split): by content, a photo keeps its half from one refresh to the
    next."""
    y = np.asarray(y, np.int64)
    if not len(y):
        return None
    present = sorted(int(c) for c in np.unique(y))
    remap = {c: i for i, c in enumerate(present)}
    yy = np.array([remap[int(c)] for c in y])
    ux = unit(x)
    upool = unit(pool) if pool is not None and len(pool) else None
    known = ux if upool is None else np.concatenate([ux, upool])
    centre = known.mean(axis=0)
    cx = unit(ux - centre)  # centred(), from the unit rows already at hand
    cpool = None if upool is None else unit(upool - centre)
    pool_logits = None
    if len(present) == 1:
        w, b = np.zeros((x.shape[1], 1)), np.zeros(1)
    else:
        first = _fit_softmax(cx, yy, len(present))
        w, b = _self_trained(cx, yy, len(present), cpool, first)
        if cpool is not None and len(cpool) > 1:
            # the pool's own answers come from a model that did not lend it as labels: the
            # half a photo is in is answered by the model self-trained on the other half
            # (a photo lent as a label is answered too surely by the model it taught)
            half = (np.asarray(halves) if halves is not None and len(halves) == len(cpool)
                    else np.random.default_rng(seed).permutation(len(cpool)) % 2)
            pool_logits = np.empty((len(cpool), len(present)), np.float32)
            for h in (0, 1):
                hw, hb = _self_trained(cx, yy, len(present), cpool[half != h], first)
                pool_logits[half == h] = cpool[half == h] @ hw + hb
    model = LabelModel(w, b, present, n_classes, reference=ux, centre=centre,
                       pool=pool if pool_logits is not None else None, pool_logits=pool_logits)
    counts = np.bincount(yy)
    if (previous is not None and previous.calibrated and previous.classes == present
            and previous.labels <= len(y) < previous.labels * (1 + RECALIBRATE)):
        model.temperature, model.calibrated = previous.temperature, True
        model.oof_accuracy, model.labels = previous.oof_accuracy, previous.labels
    elif len(present) > 1 and len(y) >= 20 and counts.min() >= 2:
        fold = np.random.default_rng(seed).permutation(len(y)) % folds
        if any(len(np.unique(yy[fold != f])) < len(present) for f in range(folds)):
            # a class left out of a fold's training part switched the calibration off
            fold = stratified_folds(yy, folds, seed)
        oof = np.zeros((len(y), len(present)))
        for f in range(folds):
            train = fold != f
            if len(np.unique(yy[train])) < len(present):
                break
            # held-out labels are answered like the pool is: by a model that never saw them
            # and was self-trained on half the pool
            fw, fb = _self_trained(cx[train], yy[train], len(present),
                                   None if cpool is None else cpool[f % 2::2])
            oof[~train] = cx[~train] @ fw + fb
        else:
            # never sharpened on thin evidence (fewer than 30 labels, or none answered
            # wrong out of fold): T would shrink towards 0 and every suggestion read 100%
            model.temperature, _ = safe_temperature(oof, yy)
            model.calibrated, model.labels = True, len(y)
            model.oof_accuracy = float((oof.argmax(axis=1) == yy).mean())
    if len(y) >= 3:
        sims = ux @ ux.T
        np.fill_diagonal(sims, -np.inf)  # each labelled photo scored without itself
        k = min(NOVELTY_K, len(y) - 1)
        model.density = np.sort(sims, axis=1)[:, -k:].mean(axis=1)
        model.novelty = float(np.quantile(_relative(sims, model.density), 1 - KEEP_KNOWN))
    return model


def _relative(sims: np.ndarray, density: np.ndarray) -> np.ndarray:
    """Rows' relative likeness from their similarities to the labelled photos (columns)."""
    k = min(NOVELTY_K, sims.shape[1] - 1 if sims.shape[1] > 1 else 1)
    near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(sims, near, axis=1)
    return top.mean(axis=1) - density[near].mean(axis=1)


def stratified_folds(y: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """A fold per label, each class spread over the folds in turn (shuffled within the
    class): with 2 photos in every class, every fold's training part holds every class. Used
    where random folds leave a class out of one, which switched the calibration off and on
    between refreshes (seen at 101 labels: "once there are 20 labels..." for a while, Accept
    disabled)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    offset = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        fold[rng.permutation(idx)] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)
    return fold


@dataclass
class Suggestions:
    """For every pool photo: the suggested class id, its calibrated confidence, the margin to
    the second class, and whether it is maybe none of the classes yet."""

    label: np.ndarray
    confidence: np.ndarray
    margin: np.ndarray
    new_class: np.ndarray
    calibrated: bool = False  # False: too few labels yet, the confidence is rough

    def confident(self, at_least: float) -> tuple[np.ndarray, float]:
        """Photos suggested with confidence >= ``at_least`` (and not new-class) and how many
        of them the calibration expects to be wrong."""
        idx = np.flatnonzero((self.confidence >= at_least) & ~self.new_class)
        return idx, float((1 - self.confidence[idx]).sum())


def suggest(model: LabelModel | None, x: np.ndarray) -> Suggestions | None:
    """What every row of ``x`` probably is; None until the labels hold two classes (with one,
    every photo read "pansy ~100%")."""
    if model is None or not len(x) or len(model.classes) < 2:
        return None
    p = model.probabilities(x)
    top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.c_[np.zeros(len(p)), p]
    new = model.likeness(x) < model.novelty
    return Suggestions(p.argmax(axis=1), p.max(axis=1), top2[:, 1] - top2[:, 0], new,
                       model.calibrated)


