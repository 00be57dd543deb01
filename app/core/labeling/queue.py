"""The queue: which photos to ask about next. TypiClust while the labels do not yet cover the
photos' groups (k-means with as many groups as labels plus the batch; the most typical photo of
each large group without a label), then the smallest margins between the top two classes,
spread out by farthest-first selection, and a small random share so that blind spots show up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from app.core.labeling.groups import MIN_GROUP, kmeans, typicality
from app.core.labeling.model import LabelModel, fit_model, suggest

RANDOM_SHARE = 0.1  # of each batch, asked at random
HARD_RANDOM_SHARE = 0.5  # and while the task is hard (a weak model's doubts mislead it)
COVER_FIRST = 40  # labels asked only to cover the photos' groups before margins join
LATER_TYPICAL = 0.3  # then this share of a batch covers groups; the rest: margins, random
HARD_TASK = 0.65  # below this out-of-fold accuracy, margins come from the denser photos only
# the queue's coverage groups are fitted on at most this many photos (a run with 2,000 had
# flowers5 1-3 points lower from 80 labels on: docs/benchmarks.md)
COVER_SAMPLE = 5000


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
               typical_share: float | None = None, doubt: np.ndarray | None = None) -> Queue:
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
    benchmarks/labeling.py (docs/benchmarks.md). ``doubt``: instead of the ``model``'s
    margins, how doubtful each pool photo's answer is (higher: asked first; the tag queue's
    uncertain tag sets)."""
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
        if doubt is not None:
            candidates = free[np.argsort(-np.asarray(doubt)[free], kind="stable")[:want * 5]]
        elif sug is None:
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


