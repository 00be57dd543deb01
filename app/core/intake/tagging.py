"""Tagging photos (several tags a photo) as operations that can be undone one by one.

In a multi-label folder the photos never move: the tags file beside them is the truth
(:mod:`app.core.intake.tags`). One user action (a photo's tags set on the Label page, a set
of photos tagged from the command line) is one *operation* in the data folder's journal
(:mod:`app.core.intake.journal`), written before the file changes, under the folder's lock:
each photo's row in the tags file with its tags before and after. The file is then changed
once (:func:`~app.core.intake.tags.edit_tags`: only those rows, replaced by rename).

:func:`app.core.intake.filing.undo` takes an operation back through :func:`untag`: a row is
set back to its tags before only while it still holds the tags the operation gave it; a row
changed since (by hand, or by a later operation) is reported and left as it is.
"""

from __future__ import annotations

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
    current_tags,
    edit_tags,
    read_tags,
    row_key,
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
    """The tags file tagging writes: ``labels`` (relative to the data folder unless absolute)
    or the folder's ``labels.csv``; it must lie in the data folder or one folder below it (the
    journal names it), and may not exist yet."""
    root = _root(data_dir)
    path = Path(labels).expanduser() if labels else root / TAGS_FILE
    if not path.is_absolute():
        path = root / path
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
        rows = read_tags(path).rows if path.exists() else []
        listed: dict[str, tuple[str, ...]] = {}
        for row in rows:
            listed.setdefault(row_key(row.file), row.tags)
        planned: list[tuple[Move, str]] = []
        seen: set[str] = set()
        operation = journal.new_id()
        for req in requests:
            if cancel is not None and cancel.cancelled:
                filing.cancelled = True
                break
            try:
                item = _plan(root, base, source, req, listed, seen, operation)
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
                   if isinstance(exc, OSError) else str(exc)) + "; nothing was changed"
            filing.refused += [(photo, why) for _m, photo in planned]
            _abort(root, [m.id for m, _p in planned])
            filing.operation = ""
        else:
            filing.done = [m for m, _p in planned]
            filing.photos = [p for _m, p in planned]
        lock.clear()
    return filing


def _abort(root: Path, ids: list[str]) -> None:
    try:
        journal.write_end(root, "abort", ids)
    except LabelError:
        pass  # the next writer's recovery closes them (the file shows their tags before)


def _plan(root: Path, base: Path, source: str, req: TagRequest,
          listed: dict[str, tuple[str, ...]], seen: set[str], operation: str
          ) -> Move | None:
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
    key = rel
    if key not in listed and image.name in listed:  # listed by its bare name
        key = image.name
    if key in seen:
        raise LabelError(f"{shown(image.name)} is asked twice in one go; the first counts")
    seen.add(key)
    before = listed.get(key)
    if before == tags:
        return None
    return Move(source, journal.row_name(key), journal.new_id(), "tags", digest, operation,
                before, tags)


def untag(root: Path, items: list[Move]) -> tuple[list[Move], list[tuple[Move, str]]]:
    """Take back ``tags`` items (of one operation): each row set back to its tags before
    while it holds the tags the item gave it; one that holds its tags before already is
    counted as taken back; any other is kept, with why. One rewrite per tags file. Raises
    :class:`LabelError` when a file cannot be written (nothing of it changed)."""
    undone: list[Move] = []
    kept: list[tuple[Move, str]] = []
    for source in dict.fromkeys(m.source for m in items):
        group = [m for m in items if m.source == source]
        try:
            path = root / check_relative(root, source, loose=True)
        except LabelError as exc:
            kept += [(m, str(exc)) for m in group]
            continue
        if not path.is_file() or path.is_symlink():
            kept += [(m, f"the tags file {shown(path)} is gone; nothing to take back")
                     for m in group]
            continue
        now = current_tags(path, [m.target for m in group])
        changes: dict[str, tuple[str, ...] | None] = {}
        back: list[Move] = []
        for m in group:
            at = now.get(m.target)
            if at == m.before:
                undone.append(m)
            elif at == m.after:
                changes[m.target] = m.before
                back.append(m)
            else:
                kept.append((m, f"{shown(m.target)} was tagged {_tags(at)} since (not "
                                f"{_tags(m.after)}), so its tags stay"))
        if changes:
            try:
                edit_tags(path, changes)
            except OSError as exc:
                raise LabelError(os_error_message(exc, f"the tags file {shown(path)} could "
                                                       "not be written")) from exc
        undone += back
    return undone, kept


def _tags(tags: tuple[str, ...] | None) -> str:
    if tags is None:
        return "not at all"
    return "; ".join(tags) if tags else "none of these"
