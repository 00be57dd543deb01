"""What labeling works on and what one refresh of the Label page shows: the data folder's
labelled photos and the unsorted ones with their cached features (scanned and cached through
the same store as training), the suggestions, the queue and the groups; a refresh reuses the
last one's work where nothing changed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from app.core.intake.dataset import UNSURE_FOLDER
from app.core.labeling.groups import Group, main_features, make_groups, photo_features
from app.core.labeling.model import LabelModel, Suggestions, fit_model, suggest
from app.core.labeling.queue import Queue, ask

LOAD_CHUNK = 4096  # photos whose stored taps are read at once


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
    def check() -> None:  # a refresh replaced by a newer one stops between its stages
        if cancel is not None:
            cancel.raise_if_cancelled()

    pool = prepare_pool(data_dir, inbox, backbone, weights, cache_dir, progress, cancel,
                        known=previous.pool.table if previous is not None else None)
    check()
    model = pool.model(seed, previous.model if previous is not None else None)
    check()
    sug = suggest(model, pool.unsorted)
    queue = pool.ask(model, batch, seed)
    check()
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
