"""Groups of alike photos (the Label page's cold start) and the features labeling measures a
photo by: k-means on unit-length features; each group's photos ordered by typicality (the
inverse mean distance to their nearest neighbours, TypiClust's measure), so the user sees the
most typical ones first and names the group at once. Pure numpy on the cached features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TYPICAL_NEIGHBOURS = 20
MIN_GROUP = 3  # a k-means group smaller than this is outliers, not a group to ask about
CLUSTER_SAMPLE = 20000  # k-means is fitted on at most this many photos (then all assigned)


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


