"""Tagging photos (several tags a photo) as operations that can be undone one by one.

In a multi-label folder the photos never move: the tags file beside them is the truth
(:mod:`app.core.intake.tags`). One user action (a photo's tags set on the Label page, a set
of photos tagged from the command line) is one *operation* in the data folder's journal
(:mod:`app.core.intake.journal`), written before the file changes, under the folder's lock:
each photo's row in the tags file with its tags before and after. The file is then changed
once (:func:`~app.core.intake.tags.edit_tags`: only those rows, replaced by rename).

:func:`app.core.intake.filing.undo` takes an operation back (its ``untag``): a row is set
back to its tags before only while it still holds the tags the operation gave it; a row
changed since (by hand, or by a later operation) is reported and left as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from app.core.base.errors import os_error_message, shown
from app.core.base.jobs import CancelToken
from app.core.intake import journal
from app.core.intake.dataset import TAGS_FILE
from app.core.intake.filing import Filing, _photos, _root, content_shown
from app.core.intake.journal import CHUNK, LabelError, Move, check_relative
from app.core.intake.tags import (
    edit_tags,
    read_tags,
    tag_name_reason,
)


@dataclass(frozen=True)
class TagRequest:
    """Give ``photo`` exactly ``tags`` (none: "none of these", a real answer); ``digest``:
    the content the user saw (checked)."""

    photo: str
    tags: tuple[str, ...]
    digest: str | None = None


def tags_file_in(data_dir: str | Path, labels: str | Path | None = None) -> Path:
    """The tags file tagging writes: ``labels`` (read as training reads it: as given when
    that file exists, else relative to the data folder) or the folder's ``labels.csv``; it
    must lie in the data folder or one folder below it (the journal names it), and may not
    exist yet."""
    root = _root(data_dir)
    path = Path(labels).expanduser() if labels else root / TAGS_FILE
    if not path.is_absolute() and not path.exists():
        path = root / path
    path = path.absolute()
    path = path.parent.resolve() / path.name
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        raise LabelError(f"the tags file {shown(path)} is not in the data folder "
                         f"{shown(root)}: the app tags photos only in a tags file there"
                         ) from None
    check_relative(root, rel, loose=True)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise LabelError(f"{shown(path)} is not a regular file; nothing was changed")
    return path


def tag_photos(data_dir: str | Path, requests: Iterable[TagRequest],
               labels: str | Path | None = None, kind: str = "tag", title: str = "",
               cancel: CancelToken | None = None) -> Filing:
    """Set every request's tags as ONE operation. A photo must lie below the data folder (it
    never moves; a photo outside it is refused: copy it in first); its row in the tags file is
    its path from the tags file's folder, or the bare name a row lists it by. A request that
    changes nothing is listed in ``already``; one refused (a bad tag, a missing or changed
    photo, a photo asked twice) never stops the others. Done items are ``tags`` items
    (:class:`~app.core.intake.journal.Move` with ``before`` and ``after``)."""
    root = _root(data_dir)
    path = tags_file_in(root, labels)
    base = path.parent
    requests = list(requests)
    filing = Filing("", kind, title or f"Tagged {_photos(len(requests))}")
    source = path.relative_to(root).as_posix()
    with journal.locked(root) as lock:
        found = read_tags(path) if path.exists() else None
        if found is not None and found.unreadable:  # a write could bury what it cannot read
            why = (f"{shown(path)} cannot be read whole ({found.findings[0].message}); "
                   "nothing was changed: fix it first")
            filing.refused = [(str(r.photo), why) for r in requests]
            return filing
        listed = found.first_tags() if found is not None else {}
        left_out = found.left_out if found is not None else {}
        planned: list[tuple[Move, str]] = []
        seen: set[str] = set()
        operation = journal.new_id()
        for req in requests:
            if cancel is not None and cancel.cancelled:
                filing.cancelled = True
                break
            try:
                item = _plan(root, base, source, req, listed, seen, operation, left_out)
            except LabelError as exc:
                filing.refused.append((str(req.photo), str(exc)))
                continue
            if item is None:
                filing.already.append((str(req.photo), "tagged so already"))
                continue
            planned.append((item, str(req.photo)))
        if not planned:
            return filing
        if not title:
            filing.title = f"Tagged {_photos(len(planned))}"
        lock.begin("file", operation)
        try:
            for start in range(0, len(planned), CHUNK):
                journal.write_items(root, operation, kind, filing.title,
                                    [m for m, _p in planned[start:start + CHUNK]])
        except LabelError as exc:  # a full disk: nothing changes (what was written is closed)
            filing.refused += [(photo, str(exc)) for _m, photo in planned]
            _abort(root, [m.id for m, _p in planned])
            lock.clear()
            return filing
        filing.operation = operation
        try:
            edit_tags(path, {m.target: m.after for m, _p in planned})
        except (OSError, ValueError) as exc:
            why = (os_error_message(exc, f"the tags file {shown(path)} could not be written")
                   + "; nothing was changed" if isinstance(exc, OSError) else str(exc))
            filing.refused += [(photo, why) for _m, photo in planned]
            _abort(root, [m.id for m, _p in planned])
            filing.operation = ""
        else:
            filing.done = [m for m, _p in planned]
            filing.photos = [p for _m, p in planned]
        lock.clear()
    return filing


def _only_one(base: Path, image: Path) -> bool:
    """Whether ``image`` is the only file of its name below ``base`` (a bare name in the tags
    file names it then, as the folder's reading takes it)."""
    seen = 0
    for _folder, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        seen += files.count(image.name)
        if seen > 1:
            return False
    return True


def _abort(root: Path, ids: list[str]) -> None:
    try:
        journal.write_end(root, "abort", ids)
    except LabelError:
        pass  # the next writer's recovery closes them (the file shows their tags before)


def _plan(root: Path, base: Path, source: str, req: TagRequest,
          listed: dict[str, tuple[str, ...]], seen: set[str], operation: str,
          left_out: dict[str, int]) -> Move | None:
    """The ``tags`` item for ``req`` (None: its row holds those tags already), or
    :class:`LabelError`: why it is refused. Nothing is changed here."""
    tags = tuple(sorted({t.strip() for t in req.tags if t.strip()}))
    for tag in tags:
        reason = tag_name_reason(tag)
        if reason:
            raise LabelError(f"tag {shown(tag)!r} {reason}; nothing was changed")
    image = Path(req.photo).expanduser().absolute()
    image = image.parent.resolve() / image.name
    try:
        rel = image.relative_to(base).as_posix()
        image.relative_to(root)
    except ValueError:
        raise LabelError(f"{shown(image)} is not below the tags file's folder {shown(base)}: "
                         "a tagged photo stays where it is, so only photos there can be "
                         "tagged (copy it in first)") from None
    if image.is_symlink() or not image.is_file():
        raise LabelError(f"{shown(image)} is not a photo file (gone, or a link); nothing was "
                         "changed")
    digest = content_shown(image, req.digest)
    for name in (rel, image.name):  # a row of it the file could not read is never written over
        if name in left_out:
            raise LabelError(f"line {left_out[name]} of {shown(source)} lists {shown(name)} "
                             "but cannot be read (see the folder's checks): fix that line "
                             "first; nothing was changed")
    key = rel
    if key not in listed and image.name in listed and _only_one(base, image):
        key = image.name  # listed by its bare name, which names this photo alone
    if key in seen:
        raise LabelError(f"{shown(image.name)} is asked twice in one go; the first counts")
    seen.add(key)
    before = listed.get(key)
    if before == tags:
        return None
    return Move(source, journal.row_name(key), journal.new_id(), "tags", digest, operation,
                before, tags)
