"""Labeling several tags a photo: the tag model (a sigmoid per tag on the same features as the
class model: one-vs-rest logistic regression, each tag balanced, with a temperature per tag
fitted on out-of-fold answers once there are enough labels), what every untagged photo
probably carries (a calibrated probability per tag), and the queue asking for the photos
whose tag set is most uncertain (the same cold start and random share as the class queue:
:func:`app.core.labeling.queue.next_batch`).

A photo is labelled when the folder's tags file lists it (with tags, or none: "none of
these"); every other photo below the folder is waiting. The photos never move
(:mod:`app.core.intake.tagging`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.core.labeling.groups import unit
from app.core.labeling.model import centred
from app.core.labeling.queue import Queue, next_batch
from app.core.trust.tags import safe_tag_temperature, sigmoid

CALIBRATE_AT = 20  # labels before the per-tag temperatures are fitted out of fold
FOLDS = 5


@dataclass
class TagModel:
    """A sigmoid per tag on centred unit features; ``temperatures`` fitted out of fold (1
    until :attr:`calibrated`). A tag every label has, or none has, answers its label rate."""

    tags: list[str]
    weights: np.ndarray  # (D, T)
    bias: np.ndarray  # (T,)
    centre: np.ndarray
    temperatures: np.ndarray  # (T,)
    calibrated: bool = False
    labels: int = 0

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Per-tag probabilities (N, T) for feature rows ``x``."""
        if not len(x):
            return np.zeros((0, len(self.tags)))
        z = centred(x, self.centre) @ self.weights + self.bias
        return sigmoid(z, self.temperatures)


def _fit_sigmoids(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 300,
                  scale: float = 16.0) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest logistic regression on unit rows ``x`` for multi-hot ``y`` (N, T), by
    gradient descent with momentum (the class model's
    :func:`~app.core.labeling.model._fit_softmax`, a sigmoid per column). Not balanced: a
    tag's probability keeps its base rate (balanced, every rare tag read about 50%); each
    bias starts at its tag's rate (on VOC-dev, 2 seeds, 20-200 labels: test mAP +0.05 to
    +0.09 over a start at 0, BCE 0.42 against 0.67 at 20 labels)."""
    xs = x.astype(np.float32) * scale
    y = y.astype(np.float32)
    sw = np.float32(1.0 / len(y))
    w = np.zeros((x.shape[1], y.shape[1]), np.float32)
    rate = np.clip(y.mean(axis=0), 1e-3, 1 - 1e-3)
    b = np.log(rate / (1 - rate)).astype(np.float32)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    lr = np.float32(1.0 / scale ** 2)
    for _ in range(steps):
        p = 0.5 * (1.0 + np.tanh(0.5 * (xs @ w + b)))
        g = (p - y) * sw
        vw = np.float32(0.9) * vw - lr * (xs.T @ g + np.float32(l2) * w)
        vb = np.float32(0.9) * vb - lr * g.sum(axis=0)
        w += vw
        b += vb
    return w * scale, b


def _fit(cx: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fit, with a tag that is always or never given answered by its rate alone."""
    w, b = _fit_sigmoids(cx, y)
    rate = y.mean(axis=0)
    flat = (rate <= 0) | (rate >= 1)
    w[:, flat] = 0.0
    b[flat] = np.log(np.clip(rate[flat], 1e-3, 1 - 1e-3) / np.clip(1 - rate[flat], 1e-3, 1))
    return w, b


def fit_tag_model(x: np.ndarray, y: np.ndarray, tags: list[str], pool: np.ndarray | None = None,
                  seed: int = 0) -> TagModel | None:
    """The tag model for labelled rows ``x`` with multi-hot ``y`` (None without labels or
    tags). ``pool``: the untagged rows, which set the centre the features are measured from.
    Once there are :data:`CALIBRATE_AT` labels, each tag's temperature is fitted on out-of-fold
    answers, and never sharpens a tag with fewer than 3 photos or none answered wrong."""
    y = np.asarray(y, np.float32)
    if not len(y) or not tags:
        return None
    ux = unit(x)
    known = ux if pool is None or not len(pool) else np.concatenate([ux, unit(pool)])
    centre = known.mean(axis=0)
    cx = unit(ux - centre)
    w, b = _fit(cx, y)
    model = TagModel(list(tags), w, b, centre, np.ones(len(tags)), labels=len(y))
    if len(y) >= CALIBRATE_AT:
        fold = np.random.default_rng(seed).permutation(len(y)) % FOLDS
        oof = np.zeros(y.shape, np.float64)
        for f in range(FOLDS):
            fw, fb = _fit(cx[fold != f], y[fold != f])
            oof[fold == f] = cx[fold == f] @ fw + fb
        for k in range(len(tags)):
            model.temperatures[k] = safe_tag_temperature(oof[:, k], y[:, k])[0]
        model.calibrated = True
    return model


@dataclass
class TagSuggestions:
    """For every waiting photo: each tag's probability, the suggested set (each tag at 0.5 or
    more) and how sure the set is (the product over tags of the more likely answer's
    probability: the chance every tag of the set is right, tags taken apart)."""

    tags: list[str]
    probabilities: np.ndarray  # (N, T)
    calibrated: bool

    @property
    def given(self) -> np.ndarray:
        return self.probabilities >= 0.5

    @property
    def sureness(self) -> np.ndarray:
        p = self.probabilities
        return np.prod(np.maximum(p, 1 - p), axis=1) if p.shape[1] else np.ones(len(p))

    def suggested(self, i: int) -> tuple[str, ...]:
        return tuple(t for t, g in zip(self.tags, self.given[i]) if g)


def suggest_tags(model: TagModel | None, x: np.ndarray) -> TagSuggestions | None:
    if model is None or not len(x):
        return None
    return TagSuggestions(model.tags, model.probabilities(x), model.calibrated)


def ask_tags(pool: np.ndarray, labelled: np.ndarray, model: TagModel | None, batch: int,
             seed: int = 0) -> Queue:
    """The next ``batch`` photos to tag: groups without labels first (the cold start), then
    the least sure tag sets, spread out, and the random share, as the class queue asks."""
    sug = suggest_tags(model, pool)
    doubt = None if sug is None else 1.0 - sug.sureness
    return next_batch(unit(pool), unit(labelled) if len(labelled) else labelled, None, batch,
                      seed=seed + len(labelled), doubt=doubt)


@dataclass
class TagPool:
    """What tagging works on: the tags the file uses, the listed photos with their tag sets,
    the photos waiting (below the folder, not listed, content not listed either), with their
    features (:func:`~app.core.labeling.groups.photo_features`)."""

    tags_file: Path
    tags: list[str]
    labelled_paths: list[str]
    targets: np.ndarray  # (N, T) multi-hot
    labelled: np.ndarray
    paths: list[str]
    digests: list[str]
    unsorted: np.ndarray
    skipped: list = field(default_factory=list)
    findings: list = field(default_factory=list)

    def model(self, seed: int = 0) -> TagModel | None:
        return fit_tag_model(self.labelled, self.targets, self.tags, self.unsorted, seed)

    def ask(self, model: TagModel | None, batch: int, seed: int = 0) -> Queue:
        return ask_tags(self.unsorted, self.labelled, model, batch, seed)


def prepare_tag_pool(data_dir, labels=None, backbone: str = "mobilenet",
                     weights: str = "imagenet", cache_dir=None, progress=None,
                     cancel=None) -> TagPool:
    """Scan every photo below ``data_dir`` and cache it (the same store, keyed by content);
    the tags file (``labels``, default the folder's ``labels.csv``; it may not exist yet)
    says which are labelled. Bad files are skipped with their reasons."""
    from app.core.base.jobs import no_progress
    from app.core.base.paths import user_cache_dir
    from app.core.features.caching import CacheJob
    from app.core.intake.dataset import scan_inbox
    from app.core.intake.tagging import tags_file_in
    from app.core.intake.tags import read_tags
    from app.core.labeling.pool import _features
    from app.core.storage.store import FeatureStore

    progress = progress or no_progress
    cache_dir = cache_dir or user_cache_dir()
    root = Path(data_dir).expanduser().resolve()
    path = tags_file_in(root, labels)
    tags_file = read_tags(path) if path.exists() else None
    listed = tags_file.first_tags() if tags_file else {}
    with FeatureStore(cache_dir) as store:
        photos = scan_inbox(root, store, progress, cancel)
    key = None
    if photos.images:
        result, done = CacheJob(photos, backbone, weights, cache_dir).run(progress, cancel)
        key = result.model_key
        photos = dataclasses.replace(photos, images=done.images,
                                     skipped=list(photos.skipped) + [
                                         s for s in done.skipped if s not in photos.skipped])
    names: dict[str, int] = {}
    for r in photos.images:
        names[Path(r.path).name] = names.get(Path(r.path).name, 0) + 1
    base = path.parent
    tagged: dict[str, tuple[str, ...]] = {}  # digest -> tags
    lab_paths, lab_digests, wait_paths, wait_digests = [], [], [], []
    for r in photos.images:
        p = Path(r.path)
        try:
            rel = p.relative_to(base).as_posix()
        except ValueError:
            rel = None
        tags = listed.get(rel) if rel is not None else None
        if tags is None and names[p.name] == 1:
            tags = listed.get(p.name)
        if tags is not None and r.digest not in tagged:
            tagged[r.digest] = tags
            lab_paths.append(r.path)
            lab_digests.append(r.digest)
    seen = set(tagged)
    for r in photos.images:
        if r.digest not in seen:
            seen.add(r.digest)
            wait_paths.append(r.path)
            wait_digests.append(r.digest)
    tag_names = sorted({t for ts in tagged.values() for t in ts})
    index = {t: i for i, t in enumerate(tag_names)}
    y = np.zeros((len(lab_digests), len(tag_names)), np.float32)
    for row, d in enumerate(lab_digests):
        for t in tagged[d]:
            y[row, index[t]] = 1.0
    rows = np.zeros((0, 0), np.float32)
    if key is not None and (lab_digests or wait_digests):
        with FeatureStore(cache_dir) as store:
            table = _features(store, key, lab_digests + wait_digests, None)
        rows, _main = table.take(lab_digests + wait_digests)
    dim = rows.shape[1] if rows.size else 0
    rows = rows if rows.size else np.zeros((len(lab_digests) + len(wait_digests), dim),
                                           np.float32)
    n = len(lab_digests)
    findings = list(tags_file.findings) if tags_file else []
    return TagPool(path, tag_names, lab_paths, y, rows[:n], wait_paths, wait_digests,
                   rows[n:], list(photos.skipped), findings)


@dataclass
class TagView:
    """One refresh of the Label page for a tagged folder: the pool, each waiting photo's
    tag probabilities, the queue and the groups of alike waiting photos."""

    pool: TagPool
    suggestions: TagSuggestions | None
    queue: Queue
    groups: list
    model: TagModel | None = None


def refresh_tags(data_dir, labels=None, backbone: str = "mobilenet", weights: str = "imagenet",
                 cache_dir=None, seed: int = 1, batch: int = 24, groups: int | None = None,
                 progress=None, cancel=None) -> TagView:
    """Everything the Label page needs after a change in a tagged folder: scan and cache
    what is new, fit the tag model, suggest, order the queue, group the waiting photos."""
    from app.core.labeling.groups import make_groups

    def check() -> None:  # a refresh replaced by a newer one stops between its stages
        if cancel is not None:
            cancel.raise_if_cancelled()

    pool = prepare_tag_pool(data_dir, labels, backbone, weights, cache_dir, progress, cancel)
    check()
    model = pool.model(seed)
    sug = suggest_tags(model, pool.unsorted)
    queue = pool.ask(model, batch, seed)
    check()
    grouped = make_groups(pool.unsorted, groups, seed=seed,
                          classes=len(pool.tags)) if len(pool.paths) >= 2 else []
    return TagView(pool, sug, queue, grouped, model)
