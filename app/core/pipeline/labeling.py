"""Labeling with few labels: which photo to ask about next, what every unlabelled photo
probably is, and groups of alike photos to name at once. Pure numpy on the cached features
(no backbone run, no Keras): a question is answered in milliseconds. A photo is measured by its
main tap and its two auxiliary taps averaged over their grid (:func:`photo_features`).

- **Groups** (cold start): k-means on unit-length features; each group's photos ordered by
  typicality (the inverse mean distance to their nearest neighbours, TypiClust's measure), so
  the user sees the most typical ones first and names the group at once.
- **The model**: a softmax regression on unit-length features (class-balanced, L2), whose
  temperature is fitted on out-of-fold answers when there are enough labels: its confidence is
  calibrated. A photo whose nearest labelled photo is less alike than 95% of labelled photos'
  nearest other labelled photo is flagged as *maybe a new class*.
- **The queue**: TypiClust while the labels do not yet cover the photos' groups (k-means with
  as many groups as labels plus the batch; the most typical photo of each large group without a
  label), then the smallest margins between the top two classes, spread out by farthest-first
  selection, and a small random share so that blind spots show up.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from app.core.intake.dataset import UNSURE_FOLDER
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
RANDOM_SHARE = 0.1  # of each batch, asked at random
HARD_RANDOM_SHARE = 0.5  # and while the task is hard (a weak model's doubts mislead it)
TYPICAL_NEIGHBOURS = 20
MIN_GROUP = 3  # a k-means group smaller than this is outliers, not a group to ask about
COVER_FIRST = 40  # labels asked only to cover the photos' groups before margins join
LATER_TYPICAL = 0.3  # then this share of a batch covers groups; the rest: margins, random
HARD_TASK = 0.65  # below this out-of-fold accuracy, margins come from the denser photos only
PSEUDO_WEIGHT = 0.5  # self-training: the unlabelled photos lent as labels weigh this many labels
PSEUDO_ROWS = 2000  # and are at most this many (the fit's cost grows with its rows)
REFIT_STEPS = 300  # the second fit, from where the first ended
RECALIBRATE = 0.1  # a refresh fits the temperature again once the labels grew by this share
WARM_STEPS = 100  # a fit that starts from the last refresh's answer to the same question
COVER_SAMPLE = 2000  # the queue's coverage groups are fitted on at most this many photos
CLUSTER_SAMPLE = 20000  # k-means is fitted on at most this many photos (then all assigned)
LOAD_CHUNK = 4096  # photos whose stored taps are read at once


def main_features(main: np.ndarray) -> np.ndarray:
    """The main tap alone, unit rows: what :func:`ask` chooses questions on in a hard task."""
    return unit(main.astype(np.float32).reshape(len(main), -1))


def photo_features(main: np.ndarray, aux1: np.ndarray, aux2: np.ndarray) -> np.ndarray:
    """What labeling measures a photo by: the main tap and the two aux taps averaged over
    their grid, each made unit length (so each tap weighs the same, whatever its width),
    joined and made unit again. With the aux taps beside the main one, Oxford-17 reached
    93.4% after 190 labels against 92.6% on the main tap alone (docs/benchmarks.md): the
    intermediate layers say what the last one has pooled away, as the trained heads'
    averaged aux outputs showed."""
    n = len(main)
    parts = [main_features(main)]
    for tap in (aux1, aux2):
        a = tap.astype(np.float32)
        parts.append(unit(a.reshape(n, -1, a.shape[-1]).mean(axis=1)))
    return unit(np.concatenate(parts, axis=1))


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# -- groups -------------------------------------------------------------------------------
def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 25,
           sample: int = CLUSTER_SAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (k-means++ start) of unit rows ``x``: (centres, assignment). Fitted
    on a ``sample`` of the rows when ``x`` is larger; every row is assigned."""
    rng = np.random.default_rng(seed)
    n = len(x)
    k = max(1, min(k, n))
    fit = x if n <= sample else x[rng.choice(n, sample, replace=False)]
    centres = np.empty((k, x.shape[1]), np.float32)
    centres[0] = fit[rng.integers(len(fit))]
    closest = 1 - fit @ centres[0]
    for i in range(1, k):
        p = np.maximum(closest, 0) ** 2
        total = p.sum()
        j = rng.choice(len(fit), p=p / total) if total > 0 else rng.integers(len(fit))
        centres[i] = fit[j]
        closest = np.minimum(closest, 1 - fit @ centres[i])
    for _ in range(iterations):
        assign = np.argmax(fit @ centres.T, axis=1)
        moved = _group_sums(fit, assign, k)
        empty = ~np.bincount(assign, minlength=k).astype(bool)
        moved[empty] = centres[empty]
        moved = unit(moved)
        if np.allclose(moved, centres, atol=1e-5):
            centres = moved
            break
        centres = moved
    return centres, _assign(x, centres)


def _group_sums(x: np.ndarray, assign: np.ndarray, k: int) -> np.ndarray:
    """The sum of the rows of each group (``np.add.at`` is ten times slower on 20,000 rows)."""
    order = np.argsort(assign, kind="stable")
    groups, starts = np.unique(assign[order], return_index=True)
    out = np.zeros((k, x.shape[1]), np.float32)
    if len(groups):
        out[groups] = np.add.reduceat(x[order], starts, axis=0)
    return out


def _assign(x: np.ndarray, centres: np.ndarray, chunk: int = 8192) -> np.ndarray:
    return np.concatenate([np.argmax(x[i:i + chunk] @ centres.T, axis=1)
                           for i in range(0, len(x), chunk)]) if len(x) else np.zeros(0, int)


def typicality(x: np.ndarray, assign: np.ndarray, neighbours: int = TYPICAL_NEIGHBOURS,
               rows: np.ndarray | None = None) -> np.ndarray:
    """Per row: 1 / mean cosine distance to its nearest rows in the same group (TypiClust).
    ``rows``: compute only these rows' values (the others stay 0; each is the one computed
    without ``rows``, up to float32 rounding: the rows it is measured against do not
    change)."""
    out = np.zeros(len(x), np.float64)
    wanted = None
    if rows is not None:
        wanted = np.zeros(len(x), bool)
        wanted[rows] = True
    for g in np.unique(assign):
        idx = np.flatnonzero(assign == g)
        if len(idx) == 1:
            continue
        if len(idx) > 4000:  # a big group: typical against a sample of it
            ref = idx[np.random.default_rng(int(g)).choice(len(idx), 4000, replace=False)]
        else:
            ref = idx
        m = min(neighbours, len(ref) - 1)
        todo = idx if wanted is None else idx[wanted[idx]]
        for s in range(0, len(todo), 1024):
            part = todo[s:s + 1024]
            dist = 1 - x[part] @ x[ref].T
            dist[part[:, None] == ref[None, :]] = np.inf
            near = np.partition(dist, m - 1, axis=1)[:, :m]
            out[part] = 1 / (np.maximum(near.mean(axis=1), 1e-6))
    return out


def auto_groups(n: int, classes: int = 0) -> int:
    """How many groups to show for ``n`` photos when the user has not chosen: about one per 25
    photos and at least two per class known so far (k-means merges alike classes: seen in a
    walk, 21 groups for 17 flower classes put windflowers and pansies in one), 2 to 40."""
    return int(min(40, max(2, round(n / 25), 2 * classes), n))


@dataclass
class Group:
    """Alike photos (indices into the pool), most typical first."""

    members: list[int]
    typical: list[float]


def make_groups(x: np.ndarray, k: int | None = None, seed: int = 0, classes: int = 0
                ) -> list[Group]:
    """The pool ``x`` (unit rows) in ``k`` groups (default :func:`auto_groups`), largest
    first, each ordered most typical first."""
    if not len(x):
        return []
    _, assign = kmeans(x, k or auto_groups(len(x), classes), seed)
    typ = typicality(x, assign)
    groups = []
    for g in np.unique(assign):
        idx = np.flatnonzero(assign == g)
        order = idx[np.argsort(-typ[idx], kind="stable")]
        groups.append(Group([int(i) for i in order], [float(typ[i]) for i in order]))
    groups.sort(key=lambda grp: -len(grp.members))
    return groups


# -- the model ----------------------------------------------------------------------------
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
    first: tuple | None = None  # the fit on the labels alone (where a next refresh starts)
    half_fits: list = field(default_factory=list)  # each pool half's model, likewise
    stable_halves: bool = False  # the halves were by content (each photo stays in its half)
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
                  first: tuple[np.ndarray, np.ndarray] | None = None,
                  warm: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Fit on the labelled rows (or start from ``first``, that fit), then once more with the
    unlabelled rows it is surest of as labels (the surer half of each suggested class, at most
    ``PSEUDO_ROWS``), weighing ``PSEUDO_WEIGHT`` of the labels in all: self-training, which
    measured +4.7 points on Oxford-17 and +1.3 on flowers5 at 120 random labels
    (docs/benchmarks.md). ``warm``: the second fit starts there (the last refresh's answer to
    the same question) and takes ``WARM_STEPS``."""
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
                        weight=weight, start=warm or (w, b),
                        steps=WARM_STEPS if warm is not None else REFIT_STEPS)


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
    default a random split): a split that stays from one refresh to the next (by content) lets
    each half's model start from the last refresh's."""
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
    half_fits: list = []
    warm = (previous is not None and previous.classes == present
            and previous.first is not None and previous.weights.shape == (x.shape[1],
                                                                          len(present)))
    first = None
    if len(present) == 1:
        w, b = np.zeros((x.shape[1], 1)), np.zeros(1)
    else:
        # with the last refresh's model (the same classes), its fits are the starting points:
        # the same objectives, a few labels more (a convex fit: the same answer, sooner)
        first = (_fit_softmax(cx, yy, len(present), start=previous.first, steps=WARM_STEPS)
                 if warm else _fit_softmax(cx, yy, len(present)))
        w, b = _self_trained(cx, yy, len(present), cpool, first,
                             (previous.weights, previous.bias) if warm else None)
        if cpool is not None and len(cpool) > 1:
            # the pool's own answers come from a model that did not lend it as labels: the
            # half a photo is in is answered by the model self-trained on the other half
            # (a photo lent as a label is answered too surely by the model it taught)
            half = (np.asarray(halves) if halves is not None and len(halves) == len(cpool)
                    else np.random.default_rng(seed).permutation(len(cpool)) % 2)
            pool_logits = np.empty((len(cpool), len(present)), np.float32)
            half_fits = []
            for h in (0, 1):
                start = (previous.half_fits[h] if warm and halves is not None
                         and previous.stable_halves and len(previous.half_fits) == 2
                         else None)
                hw, hb = _self_trained(cx, yy, len(present), cpool[half != h], first, start)
                half_fits.append((hw, hb))
                pool_logits[half == h] = cpool[half == h] @ hw + hb
    model = LabelModel(w, b, present, n_classes, reference=ux, centre=centre,
                       pool=pool if pool_logits is not None else None, pool_logits=pool_logits,
                       first=first, half_fits=half_fits, stable_halves=halves is not None)
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


# -- the queue ----------------------------------------------------------------------------
@dataclass
class Ask:
    index: int  # into the pool
    reason: str  # "typical of a group without labels" | "uncertain" | "random"


@dataclass
class Queue:
    asks: list[Ask] = field(default_factory=list)

    @property
    def indices(self) -> list[int]:
        return [a.index for a in self.asks]


def next_batch(pool: np.ndarray, labelled: np.ndarray, model: LabelModel | None, batch: int,
               seed: int = 0, random_share: float | None = None,
               typical_share: float | None = None) -> Queue:
    """The next ``batch`` pool photos to ask about. ``pool`` and ``labelled`` are unit rows
    (unlabelled and labelled photos). ``random_share``: of the batch, how much is asked at
    random; default ``RANDOM_SHARE``, or ``HARD_RANDOM_SHARE`` while the task is hard (below).
    ``typical_share``: of the batch, how much of the rest goes to
    covering groups without labels; default all of it for the first ``COVER_FIRST`` labels,
    then ``LATER_TYPICAL``; but none, from the first model on, while the task is hard
    (out-of-fold accuracy below ``HARD_TASK``). Then the margins are taken among the denser
    half of the doubtful photos, since a weak model's doubts are often outliers, and half the
    batch is random. On flowers5 (3 seeds) that took the app from 0.7 and 1.2 points behind
    random order at 40 and 60 labels to 1.7 and 3.2 ahead. Measured with
    benchmarks/labeling.py (docs/benchmarks.md)."""
    hard = is_hard(model)
    if random_share is None:
        random_share = HARD_RANDOM_SHARE if hard else RANDOM_SHARE
    if typical_share is None:
        typical_share = 0.0 if hard else 1.0 if len(labelled) < COVER_FIRST else LATER_TYPICAL
    n = len(pool)
    batch = min(batch, n)
    queue = Queue()
    if batch <= 0:
        return queue
    rng = np.random.default_rng(seed)
    taken: set[int] = set()
    n_random = int(math.floor(batch * random_share + rng.random()))
    # 1. coverage: the most typical photo of each sizeable group that has no label yet
    if n >= 2:
        both = np.concatenate([labelled, pool]) if len(labelled) else pool
        _, assign = kmeans(both, len(labelled) + batch, seed, sample=COVER_SAMPLE)
        lab_groups = set(assign[:len(labelled)].tolist())
        pool_assign = assign[len(labelled):]
        typ = typicality(both, assign, rows=np.arange(len(labelled), len(both)))[len(labelled):]
        sizes = np.bincount(assign, minlength=assign.max() + 1)
        open_groups = [g for g in np.argsort(-sizes, kind="stable")
                       if g not in lab_groups and sizes[g] >= MIN_GROUP]
        for g in open_groups[:round((batch - n_random) * typical_share)]:
            idx = np.flatnonzero(pool_assign == g)
            if len(idx):
                best = int(idx[np.argmax(typ[idx])])
                taken.add(best)
                queue.asks.append(Ask(best, "typical of a group without labels"))
    # 2. uncertainty: the smallest margins, spread out
    want = batch - n_random - len(queue.asks)
    if want > 0:
        free = np.array([i for i in range(n) if i not in taken], np.int64)
        # margins from the model itself, not the cross-fitted answers the page shows: a photo
        # it was taught with is no question to ask
        sug = suggest(model, pool[free]) if model is not None and len(model.classes) > 1 \
            else None
        if sug is None:
            candidates = free[rng.permutation(len(free))[:want * 5]]
        else:
            candidates = free[np.argsort(sug.margin, kind="stable")[:want * 5]]
            if hard:  # a weak model's doubts are often outliers: only the denser half
                dens = typicality(pool, np.zeros(len(pool), np.int64),
                                  rows=candidates)[candidates]
                candidates = candidates[dens >= np.median(dens)]
        for i in _farthest_first(pool, candidates, labelled, want):
            taken.add(i)
            queue.asks.append(Ask(i, "uncertain"))
    # 3. a random share: what the model is sure of and wrong about shows up here
    free = [i for i in range(n) if i not in taken]
    for i in rng.permutation(free)[:batch - len(queue.asks)]:
        queue.asks.append(Ask(int(i), "random"))
    return queue


def is_hard(model: LabelModel | None) -> bool:
    """Whether the labels so far make a weak model: out-of-fold accuracy below HARD_TASK."""
    return model is not None and model.oof_accuracy is not None \
        and model.oof_accuracy < HARD_TASK


def ask(pool: np.ndarray, labelled: np.ndarray, labels: np.ndarray, n_classes: int,
        model: LabelModel | None, batch: int, seed: int = 0,
        pool_main: np.ndarray | None = None, labelled_main: np.ndarray | None = None
        ) -> Queue:
    """The next ``batch`` questions, as the Label page and the CLI ask them: the queue
    (:func:`next_batch`) on the photos' features with the suggestions' ``model``; but on a
    hard task (:func:`is_hard`) on the main tap alone (``pool_main``, ``labelled_main``),
    with a model fitted on it. Measured with benchmarks/labeling.py: on flowers5, where the
    task stays hard, the questions chosen on the main tap gave the aux-tap model 2-6 points
    more than those chosen on all taps; on Oxford-17 all taps are better (docs/benchmarks.md)."""
    queue_seed = seed + len(labels)
    if is_hard(model) and pool_main is not None and labelled_main is not None:
        model = fit_model(labelled_main, labels, n_classes, seed=seed, pool=pool_main)
        return next_batch(pool_main, labelled_main, model, batch, seed=queue_seed)
    return next_batch(pool, labelled, model, batch, seed=queue_seed)


def _farthest_first(x: np.ndarray, candidates: np.ndarray, labelled: np.ndarray,
                    want: int) -> list[int]:
    """``want`` of ``candidates`` chosen one by one, each the least like the labelled photos
    and the ones already chosen."""
    if not len(candidates):
        return []
    cx = x[candidates]
    near = (cx @ labelled.T).max(axis=1) if len(labelled) else np.full(len(cx), -1.0)
    chosen: list[int] = []
    for _ in range(min(want, len(candidates))):
        j = int(np.argmin(near))
        chosen.append(int(candidates[j]))
        near = np.maximum(near, cx @ cx[j])
        near[j] = np.inf
    return chosen


# -- the pool: a data folder's labelled photos and the unsorted ones, from the cache --------
@dataclass
class Pool:
    """What labeling works on: the data folder's labelled photos and the unsorted ones (those
    whose content is not labelled yet), with their features (:func:`photo_features`)."""

    classes: list[str]
    labelled_paths: list[str]
    labels: np.ndarray
    labelled: np.ndarray
    paths: list[str]  # unsorted
    digests: list[str]
    unsorted: np.ndarray
    skipped: list = field(default_factory=list)  # Skipped: unreadable or undecodable photos
    findings: list = field(default_factory=list)
    labelled_main: np.ndarray | None = None  # the unit main tap alone (for ask on a hard task)
    unsorted_main: np.ndarray | None = None
    table: FeatureTable | None = None  # what was read, for the next refresh

    def model(self, seed: int = 0, previous: LabelModel | None = None) -> LabelModel | None:
        """The label model; the pool's halves by content (a photo stays in its half from one
        refresh to the next, so each half's model may start from the last one's)."""
        halves = np.array([int(d[:8], 16) & 1 for d in self.digests], np.int64)
        return fit_model(self.labelled, self.labels, len(self.classes), seed=seed,
                         pool=self.unsorted, previous=previous, halves=halves)

    def ask(self, model: LabelModel | None, batch: int, seed: int = 0) -> Queue:
        return ask(self.unsorted, self.labelled, self.labels, len(self.classes), model, batch,
                   seed, self.unsorted_main, self.labelled_main)


def check_inbox(data_dir, inbox) -> None:
    """Refuse an inbox that is a folder inside the data folder: there every folder is a class,
    so its photos would be read as a class of their own (photos lying loose in the data folder
    are the inbox already; the folders a sort writes, ``_not_sure`` and ``_unknown``, are
    read as unsorted)."""
    from pathlib import Path

    from app.core.base.errors import shown
    from app.core.intake.dataset import NOT_CLASSES
    from app.core.intake.journal import LabelError

    root = Path(data_dir).expanduser().resolve()
    for item in ([inbox] if isinstance(inbox, (str, Path)) else inbox or []):
        path = Path(item).expanduser().resolve()
        if path.is_dir() and root in path.parents:
            first = path.relative_to(root).parts[0]
            if first in NOT_CLASSES:
                continue
            raise LabelError(
                f"{shown(path)} is inside the data folder {shown(root)}, where every folder is "
                f"a class ({shown(first)!r} would become one): move the unsorted photos out "
                "of it, or lay them loose in the data folder itself")


@dataclass(frozen=True)
class FeatureTable:
    """The photos' features as one refresh read them, by digest: the next refresh reads only
    the photos it has not seen (at 20,000 photos the three taps are 700 MB to read again).
    Kept as float32, the form every refresh computes with (at 20,000 MobileNet photos: 246
    MB), so a refresh converts none."""

    key: str
    index: dict[str, int]
    rows: np.ndarray  # photo_features
    main: np.ndarray  # main_features

    def take(self, digests: list[str]) -> tuple[np.ndarray, np.ndarray]:
        at = np.array([self.index[d] for d in digests], np.int64)
        return self.rows[at], self.main[at]


def _features(store, key: str, digests: list[str], known: FeatureTable | None
              ) -> FeatureTable:
    """The features of ``digests`` (in order): those ``known`` already holds for this key
    taken from it, the others read from the store."""
    if known is None or known.key != key:
        known = FeatureTable(key, {}, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32))
    todo = [d for d in dict.fromkeys(digests) if d not in known.index]
    parts = []
    for i in range(0, len(todo), LOAD_CHUNK):  # the aux grids pooled as they come
        b = store.load_features(key, todo[i:i + LOAD_CHUNK])
        parts.append((photo_features(b.main, b.aux1, b.aux2), main_features(b.main)))
    new_index = {d: len(known.index) + i for i, d in enumerate(todo)}
    if parts:
        rows = np.concatenate([known.rows] * bool(len(known.index)) + [p[0] for p in parts])
        main = np.concatenate([known.main] * bool(len(known.index)) + [p[1] for p in parts])
    else:
        rows, main = known.rows, known.main
    index = {**known.index, **new_index}
    keep = np.array([index[d] for d in dict.fromkeys(digests)], np.int64)  # drop the gone
    return FeatureTable(key, {d: i for i, d in enumerate(dict.fromkeys(digests))},
                        rows[keep] if len(keep) else rows[:0], main[keep] if len(keep)
                        else main[:0])


def _still(key: str, backbone: str, weights: str) -> bool:
    """Whether ``key`` is what ``backbone`` with ``weights`` caches under now."""
    from app.core.features.backbones import get_spec
    from app.core.features.keys import key_signature, model_key

    try:
        return model_key(get_spec(backbone), weights, key_signature(key)) == key
    except (KeyError, OSError, ValueError):
        return False


def prepare_pool(data_dir, inbox=None, backbone: str = "mobilenet", weights: str = "imagenet",
                 cache_dir=None, progress=None, cancel=None,
                 known: FeatureTable | None = None) -> Pool:
    """Scan and cache (the same store, keyed by content) the data folder and the unsorted
    photos: ``inbox`` a folder (or a list of photos and folders), or None for the photos lying
    loose in the data folder beside its class folders; the photos a sort left in the data
    folder's ``_not_sure`` and ``_unknown`` folders are unsorted too. A photo whose content is
    labelled already, or listed twice, is left out. Bad files are skipped with their
    reasons. ``known``: the features the last refresh read (only the others are read)."""
    from pathlib import Path

    from app.core.base.jobs import no_progress
    from app.core.base.paths import user_cache_dir
    from app.core.features.caching import CacheJob
    from app.core.intake.dataset import NOT_CLASSES, scan_dataset, scan_inbox
    from app.core.storage.store import FeatureStore

    check_inbox(data_dir, inbox)
    progress = progress or no_progress
    cache_dir = cache_dir or user_cache_dir()
    root = Path(data_dir).expanduser().resolve()
    with FeatureStore(cache_dir) as store:
        data = scan_dataset(data_dir, store, progress=progress, cancel=cancel)
        held = [root / f for f in NOT_CLASSES if (root / f).is_dir()]
        pile = scan_inbox(inbox or data_dir, store, progress, cancel, loose_only=inbox is None)
        for folder in held:
            extra = scan_inbox(folder, store, progress, cancel)
            pile.images = extra.images + pile.images  # the data folder's copy first
            pile.skipped += extra.skipped
    # photos whose features the last refresh read (this backbone's) need no caching job, which
    # checks every stored row again (a second at 20,000 photos)
    key = known.key if known is not None and _still(known.key, backbone, weights) else None
    read = known.index if key is not None else {}

    def cached(ds):
        nonlocal key
        todo = [r for r in ds.images if r.digest not in read]
        if not todo:
            return ds
        result, done = CacheJob(dataclasses.replace(ds, images=todo), backbone, weights,
                                cache_dir).run(progress, cancel)
        key = result.model_key
        ok = {r.digest for r in done.images} | set(read)
        ds.images = [r for r in ds.images if r.digest in ok]
        ds.skipped = list(ds.skipped) + [s for s in done.skipped if s not in ds.skipped]
        return ds

    if data.images:
        data = cached(data)
    seen = {r.digest for r in data.images}
    unique = []
    for r in pile.images:
        if r.digest not in seen:
            seen.add(r.digest)
            unique.append(r)
    pile.images = unique
    if pile.images:
        pile = cached(pile)
    skipped = list(data.skipped) + list(pile.skipped)  # caching adds what did not decode
    feats = {}
    table = None
    if key is not None:
        digests = [r.digest for r in data.images] + [r.digest for r in pile.images]
        if digests:
            with FeatureStore(cache_dir) as store:
                table = _features(store, key, digests, known)
            rows, main = table.take(digests)
            n = len(data.images)
            feats = {"labelled": rows[:n], "unsorted": rows[n:],
                     "labelled_main": main[:n], "unsorted_main": main[n:]}
    dim = next(iter(feats.values())).shape[1] if feats else 0
    index = {c: i for i, c in enumerate(data.classes)}
    return Pool(list(data.classes), [r.path for r in data.images],
                np.array([index[r.label] for r in data.images], np.int64),
                feats.get("labelled", np.zeros((0, dim), np.float32)),
                [r.path for r in pile.images], [r.digest for r in pile.images],
                feats.get("unsorted", np.zeros((0, dim), np.float32)), skipped,
                [f for f in data.findings if "no usable images" not in f.message],
                feats.get("labelled_main"), feats.get("unsorted_main"), table)


def accept_requests(pool: Pool, sug: Suggestions, at_least: float):
    """Bulk accept: a filing request for every unsorted photo suggested with confidence
    >= ``at_least`` (never one maybe of a new class), with the content it was suggested for;
    and how many of them the calibration expects to be wrong."""
    from app.core.intake.filing import Request

    idx, wrong = sug.confident(at_least)
    return [Request(pool.paths[i], pool.classes[int(sug.label[i])], pool.digests[i])
            for i in idx], wrong


def rest_requests(pool: Pool, sug: Suggestions, at_least: float):
    """File the rest: every unsorted photo, under its suggested class when suggested with
    confidence >= ``at_least``, else (and when maybe of a new class) in ``_not_sure``; with
    how many of the sure ones the calibration expects to be wrong. Photos already in
    ``_not_sure`` that stay unsure are left where they are."""
    from pathlib import Path

    from app.core.intake.filing import Request

    idx, wrong = sug.confident(at_least)
    sure = set(idx.tolist())
    out = []
    for i, path in enumerate(pool.paths):
        cls = pool.classes[int(sug.label[i])] if i in sure else UNSURE_FOLDER
        if cls == UNSURE_FOLDER and Path(path).parent.name == UNSURE_FOLDER:
            continue
        out.append(Request(path, cls, pool.digests[i]))
    return out, wrong


@dataclass
class LabelingView:
    """One refresh of what the Label page shows: the pool, its suggestions, the queue and the
    groups (computed off the GUI thread; the page only shows them); the model and the groups
    by digest are what the next refresh may build on."""

    pool: Pool
    suggestions: Suggestions | None
    queue: Queue
    groups: list[Group]
    calibrated: bool
    model: LabelModel | None = None
    group_digests: tuple = ()  # each group's members by digest, most typical first
    groups_asked: int | None = None  # the number of groups asked for (None: automatic)


REGROUP = 0.1  # the groups are made again once this share of the unsorted photos changed


def refresh(data_dir, inbox, backbone: str, weights: str, cache_dir=None, seed: int = 1,
            batch: int = 24, groups: int | None = None, progress=None,
            cancel=None, previous: LabelingView | None = None) -> LabelingView:
    """Everything the Label page needs after a change: scan and cache what is new (the same
    store), fit the model on the labelled photos, suggest, order the queue, group the
    unsorted photos. ``previous``: the last refresh, whose work is reused where nothing
    changed: the features read, the calibration (until the labels grew by a tenth), and the
    groups (less the photos filed since, until a tenth of the pile changed)."""
    pool = prepare_pool(data_dir, inbox, backbone, weights, cache_dir, progress, cancel,
                        known=previous.pool.table if previous is not None else None)
    model = pool.model(seed, previous.model if previous is not None else None)
    sug = suggest(model, pool.unsorted)
    queue = pool.ask(model, batch, seed)
    grouped = _regrouped(previous, pool, groups)
    if grouped is None:
        grouped = make_groups(pool.unsorted, groups, seed=seed,
                              classes=len(pool.classes)) if len(pool.paths) >= 2 else []
    digests = tuple(tuple(pool.digests[m] for m in g.members) for g in grouped)
    return LabelingView(pool, sug, queue, grouped, bool(sug is not None and sug.calibrated),
                        model, digests, groups)


def _regrouped(previous: LabelingView | None, pool: Pool, groups: int | None
               ) -> list[Group] | None:
    """The last refresh's groups less the photos gone since, while no photo came and no more
    than :data:`REGROUP` of them went, with the same number asked for; else None."""
    if previous is None or previous.groups_asked != groups or not previous.group_digests:
        return None
    at = {d: i for i, d in enumerate(pool.digests)}
    before = sum(len(g) for g in previous.group_digests)
    if len(at) > before or before - len(at) > REGROUP * before:
        return None
    out = []
    for g, old in zip(previous.group_digests, previous.groups):
        kept = [(at[d], t) for d, t in zip(g, old.typical) if d in at]
        if kept:
            out.append(Group([m for m, _ in kept], [t for _, t in kept]))
    if sum(len(g.members) for g in out) != len(at):
        return None
    out.sort(key=lambda grp: -len(grp.members))
    return out
