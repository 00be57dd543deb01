"""Sorting photos into a folder by a model's answers (Predict's *Sort into folder*, the Label
page's *File the rest*): a preview first, then one undoable operation
(:func:`app.core.intake.filing.file_photos`).

A target that already holds class folders (the data folder itself, a folder sorted before) is
made safe by design: a photo whose content is already in one of its class folders, or that
lies in one, is never copied into a second class; the preview counts those apart and says
where they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.core.base.jobs import CancelToken, ProgressCallback, no_progress
from app.core.intake.dataset import UNKNOWN_FOLDER, UNSURE_FOLDER
from app.core.intake.filing import Filing, Request, content_key, create_class, file_photos


@dataclass
class SortPlan:
    """Where sorting files each photo: ``{folder: [photo, ...]}`` (a class, ``_unknown`` or
    ``_not_sure``); the photos it cannot file (no answer), and those left alone because their
    content is filed in the target already (photo, where)."""

    folders: dict[str, list[str]]
    errors: list[tuple[str, str]] = field(default_factory=list)
    already: list[tuple[str, str]] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # photo -> content, when known
    waiting: int = 0  # of the photos to file, those waiting in the target's _not_sure or
    # _unknown (filing moves them out of there rather than copying them again)
    by_tags: bool = False  # a sort by tags: a photo is copied into every tag folder it gets
    untagged: list[str] = field(default_factory=list)  # (by tags) none of the tags: not sorted

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.folders.items()}

    @property
    def to_file(self) -> int:
        return sum(len(v) for v in self.folders.values())

    def preview(self, out: str | Path, verb: str = "copied") -> str:
        """What the confirmation shows: how many go where, how many are filed already."""
        moved = (f" ({self.waiting} of them moved out of {UNSURE_FOLDER} or {UNKNOWN_FOLDER} "
                 "there)" if self.waiting else "")
        lines = [f"{self.to_file} photo(s) would be {verb} into {out}{moved}:"]
        if self.by_tags:
            photos = len({p for v in self.folders.values() for p in v})
            lines = [f"{self.to_file} copies of {photos} photo(s) would be made in {out}, one "
                     "in each tag folder a photo gets:"]
        lines += [f"  {folder}: {n}" for folder, n in self.counts().items()]
        if self.already:
            where = sorted({w.split('/')[0] for _p, w in self.already})
            lines.append(f"{len(self.already)} already filed in {out} (in "
                         f"{', '.join(where[:5])}{', ...' if len(where) > 5 else ''}) "
                         "stay where they are")
        if self.untagged:
            lines.append(f"{len(self.untagged)} with none of the tags stay where they are")
        if self.errors:
            lines.append(f"{len(self.errors)} without an answer stay where they are")
        return "\n".join(lines)


def filed_in(out: str | Path, store=None, progress: ProgressCallback = no_progress,
             cancel: CancelToken | None = None, per_folder: bool = False) -> dict[str, str]:
    """Digest -> ``class/file`` of every photo in a class folder of ``out`` (nothing when it
    does not exist yet); ``per_folder``: keyed by digest and folder
    (:func:`~app.core.intake.filing.content_key`), every copy. With a feature ``store``,
    unchanged files are not read again."""
    from app.core.intake.dataset import scan_dataset

    root = Path(out).expanduser()
    if not root.is_dir():
        return {}
    ds = scan_dataset(root, store, progress=progress, cancel=cancel)
    base = ds.root
    found = {}
    for r in ds.images:
        path = Path(r.path)
        try:
            rel = path.relative_to(base).as_posix()
        except ValueError:
            rel = path.name
        found.setdefault(content_key(r.digest, r.label if per_folder else None), rel)
    return found


def sort_plan(predictions, out: str | Path | None = None,
              filed: dict[str, str] | None = None, digests: dict[str, str] | None = None,
              unsure_below: float | None = None) -> SortPlan:
    """The preview: each prediction's folder (its top class, ``_unknown``, or ``_not_sure``
    below ``unsure_below``). ``filed``: digest -> where, the target's photos (from
    :func:`filed_in`); ``digests``: photo -> digest, where known. A photo lying in a class
    folder of ``out``, or whose content is in ``filed``, is listed in ``already``."""
    root = Path(out).expanduser().resolve() if out is not None else None
    filed, digests = filed or {}, dict(digests or {})
    folders: dict[str, list[str]] = {}
    errors, already = [], []
    waits, waiting = _waiting(root), 0
    for p in predictions:
        if p.error or not p.top:
            errors.append((p.path, p.error or "no answer"))
            continue
        where = _in_class_folder(root, p.path)
        if where is None and filed:
            digest = digests.get(p.path) or _digest_or_none(p.path)
            if digest is not None:
                digests[p.path] = digest
                where = filed.get(digest)
        if where is not None:
            already.append((p.path, where))
            continue
        if p.unknown:
            folder = UNKNOWN_FOLDER
        elif unsure_below is not None and p.top[0]["probability"] < unsure_below:
            folder = UNSURE_FOLDER
        else:
            folder = p.top[0]["label"]
        if root is not None and Path(p.path).expanduser().absolute().parent.resolve() == \
                root / folder:  # a photo of _not_sure that stays unsure stays there
            already.append((p.path, f"{folder}/{Path(p.path).name}"))
            continue
        wait = waits.get(digests.get(p.path) or _digest_or_none(p.path) or "") if waits else None
        if wait is not None and wait.split("/", 1)[0] == folder:  # waits where it would go
            already.append((p.path, wait))
            continue
        waiting += wait is not None
        folders.setdefault(folder, []).append(p.path)
    return SortPlan(dict(sorted(folders.items())), errors, already, digests, waiting)


def tag_sort_plan(predictions, out: str | Path | None = None,
                  filed: dict[str, str] | None = None,
                  digests: dict[str, str] | None = None) -> SortPlan:
    """The preview of a sort by tags: each photo into every tag folder it gets (an unknown
    photo into ``_unknown`` only); a photo with none of the tags is not sorted (listed in
    ``untagged``). ``filed``: the target's photos by digest and folder
    (:func:`filed_in` with ``per_folder``); a copy already in a folder is listed in
    ``already`` for that folder."""
    root = Path(out).expanduser().resolve() if out is not None else None
    filed, digests = dict(filed or {}), dict(digests or {})
    for d, where in _waiting(root).items():  # _unknown is no class: the scan leaves it out
        filed.setdefault(content_key(d, where.split("/", 1)[0]), where)
    folders: dict[str, list[str]] = {}
    errors, already, untagged = [], [], []
    for p in predictions:
        if p.error or p.tags is None:
            errors.append((p.path, p.error or "no tag set"))
            continue
        wanted = [UNKNOWN_FOLDER] if p.unknown else [t["label"] for t in p.tags]
        if not wanted:
            untagged.append(p.path)
            continue
        digest = digests.get(p.path) or _digest_or_none(p.path)
        if digest is None:
            errors.append((p.path, "could not be read"))
            continue
        digests[p.path] = digest
        here = _in_class_folder(root, p.path)
        for folder in wanted:
            where = filed.get(content_key(digest, folder))
            if where is None and here is not None and here.split("/", 1)[0] == folder:
                where = here
            if where is not None:
                already.append((p.path, where))
            else:
                folders.setdefault(folder, []).append(p.path)
    return SortPlan(dict(sorted(folders.items())), errors, already, digests, 0, True,
                    untagged)


def _waiting(root: Path | None) -> dict[str, str]:
    """Content -> ``folder/name`` of the photos in ``root``'s _not_sure and _unknown."""
    found = {}
    for name in (UNSURE_FOLDER, UNKNOWN_FOLDER):
        folder = root / name if root is not None else None
        if folder is not None and folder.is_dir():
            for f in sorted(folder.iterdir()):
                d = (_digest_or_none(str(f)) if f.is_file() and not f.is_symlink()
                     and not f.name.startswith(".") else None)
                if d is not None:
                    found.setdefault(d, f"{name}/{f.name}")
    return found


def _in_class_folder(root: Path | None, path: str) -> str | None:
    """``class/file`` when ``path`` lies in a class folder of ``root`` (a sub-folder, not
    hidden), else None."""
    if root is None:
        return None
    p = Path(path).expanduser().absolute()
    try:
        rel = p.parent.resolve().relative_to(root)
    except ValueError:
        return None
    parts = rel.parts
    if not parts or parts[0].startswith(".") or parts[0] in (UNSURE_FOLDER, UNKNOWN_FOLDER):
        return None  # _not_sure and _unknown are no classes: their photos still to be filed
    return f"{parts[0]}/{p.name}"


def _digest_or_none(path: str) -> str | None:
    from app.core.intake.dataset import digest_file

    try:
        return digest_file(Path(path))[0]
    except OSError:
        return None


def sort_into(out: str | Path, plan: SortPlan, move: bool = False, kind: str = "sort",
              title: str = "", progress: ProgressCallback = no_progress,
              cancel: CancelToken | None = None) -> Filing:
    """Carry out ``plan`` in ``out`` as one operation: copies (photos inside ``out`` are moved
    when ``move``); never overwrites; undone at once (``filing.undo(out, operation=...)``)."""
    if plan.by_tags and move:  # refused before any folder is made
        raise ValueError("a sort by tags copies: a photo with several tags goes into each")
    Path(out).expanduser().mkdir(parents=True, exist_ok=True)
    requests = []
    for folder, photos in plan.folders.items():
        create_class(out, folder)
        requests += [Request(p, folder, plan.digests.get(p)) for p in photos]
    if plan.by_tags and not title:
        title = (f"Sorted {len({r.photo for r in requests})} photo(s) by tag into "
                 f"{Path(out).name} ({len(requests)} copies)")
    filing = file_photos(out, requests, kind,
                         title or f"Sorted {len(requests)} photo(s) into {Path(out).name}",
                         copy=None if move else True, progress=progress, cancel=cancel,
                         per_folder=plan.by_tags)
    filing.already = list(plan.already) + filing.already
    return filing
