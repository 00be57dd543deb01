"""Filing photos in a data folder's class folders, as operations that can be undone one by one.

Every user action that writes files (one filing, a group named, a bulk accept, "file the
rest", a sort, a move on Evaluate) is one *operation* (:func:`file_photos`), journaled in the
data folder (:mod:`app.core.intake.journal`) before any file changes, under the folder's lock.
:func:`undo` takes back one operation, the latest or one the user picks, and nothing another
operation wrote: a copy is removed only while it is still exactly what was copied, a move is
put back only where its old name is free. What cannot be put back (deleted or changed by hand)
is reported and closed, never a wall in front of the operations before it.

A photo is filed once: its content must be the one the user saw (the digest listed with it),
and content already filed in this folder (by the journal, or found in a class folder by the
caller) is refused, so two windows filing the same pile never put a photo in two classes.
A photo inside the data folder is moved (a hard link, then the old name removed; never a
replace), one outside is copied (to a hidden temporary name, then linked in).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from app.core.base.errors import bad_name_reason, os_error_message, shown
from app.core.base.jobs import CancelToken, ProgressCallback, RateMeter, no_progress
from app.core.intake import journal
from app.core.intake.dataset import NOT_CLASSES
from app.core.intake.journal import (
    CHUNK,
    JournalState,
    LabelError,
    Move,
    Operation,
    check_relative,
)
from app.core.intake.tags import current_tags, edit_tags


def _root(data_dir: str | Path) -> Path:
    return Path(data_dir).expanduser().resolve()


def journal_state(data_dir: str | Path) -> JournalState:
    """The data folder's journal: operations and moves in effect, foreign lines (never
    undone), unreadable lines."""
    return journal.read(_root(data_dir))


def moves(data_dir: str | Path) -> list[Move]:
    """The moves and copies in effect that this app made, oldest first."""
    return journal_state(data_dir).moves


def operations(data_dir: str | Path) -> list[Operation]:
    """The operations with something still to undo, oldest first."""
    return journal_state(data_dir).operations


def _digest(path: Path) -> str:
    from app.core.intake.dataset import digest_file

    return digest_file(path)[0]


def create_class(data_dir: str | Path, name: str) -> Path:
    """A new, empty class folder ``name`` in ``data_dir`` (refused for names that cannot be a
    class: hidden, with a separator or a control character, or one that exists as a file)."""
    root = _root(data_dir)
    if (not isinstance(name, str) or not name or name.startswith(".") or "/" in name
            or "\\" in name or name in (".", "..") or bad_name_reason(name)):
        raise LabelError(f"{shown(name)!r} cannot be a class name"
                         + (f": {bad_name_reason(name)}" if isinstance(name, str)
                            and bad_name_reason(name) else ""))
    folder = root / name
    if folder.exists() and not folder.is_dir():
        raise LabelError(f"{shown(folder)} exists and is not a folder")
    folder.mkdir(exist_ok=True)
    return folder


# -- filing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """File ``photo`` under ``cls``; ``digest``: the content the user saw (checked)."""

    photo: str
    cls: str
    digest: str | None = None


@dataclass
class Filing:
    """What one operation did: its id (empty when nothing was filed), the items done, the
    photos refused with why, the photos left alone because their content is filed already
    (with where), and whether it was cancelled part way."""

    operation: str
    kind: str
    title: str
    done: list[Move] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    already: list[tuple[str, str]] = field(default_factory=list)
    cancelled: bool = False
    photos: list[str] = field(default_factory=list)  # the photos filed, as they were asked

    def summary(self) -> str:
        """One line for the page that did it: "Copied 193 photos; 407 were already filed"."""
        moved = sum(m.op == "move" for m in self.done)
        tagged = sum(m.op == "tags" for m in self.done)
        copied = len(self.done) - moved - tagged
        parts = []
        if tagged:
            parts.append(f"tagged {_photos(tagged)}")
        if moved:
            parts.append(f"moved {_photos(moved)}")
        if copied:
            parts.append(f"copied {_photos(copied)}")
        if not parts:
            parts.append("filed no photo" if self.kind != "tag" else "tagged no photo")
        for folder in NOT_CLASSES:  # not a label: say how many went there
            n = sum(m.target.split("/", 1)[0] == folder for m in self.done)
            if n:
                parts[-1] += f" ({n} of them into {folder})"
        if self.already:
            parts.append(f"{_photos(len(self.already))} {_were(len(self.already))} "
                         + ("tagged so already" if self.kind == "tag" else "already filed"))
        if self.refused:
            parts.append(f"{_photos(len(self.refused))} refused")
        if self.cancelled:
            parts.append("cancelled part way (what was filed can be undone)")
        text = "; ".join(parts)
        return text[0].upper() + text[1:]

    def as_dict(self) -> dict:
        return {"operation": self.operation, "kind": self.kind, "title": self.title,
                "done": [{m.op: m.as_dict()} for m in self.done],
                "refused": [{"path": p, "why": w} for p, w in self.refused],
                "already_filed": [{"path": p, "where": w} for p, w in self.already],
                "cancelled": self.cancelled}


def _photos(n: int) -> str:
    return f"{n} photo{'s' if n != 1 else ''}"


def _were(n: int) -> str:
    return "was" if n == 1 else "were"


def _inside(root: Path, image: Path) -> bool:
    parent = image.parent.resolve()
    return parent == root or root in parent.parents


def _relative(root: Path, path: Path, loose: bool = False) -> str:
    """``path`` (an image in a class folder of ``root``, or ``loose`` in ``root`` itself) as
    ``class/file``; the folder is resolved, the file itself is not (a link stays a link)."""
    path = Path(path).expanduser().absolute()
    try:
        rel = (path.parent.resolve() / path.name).relative_to(root)
    except ValueError:
        raise LabelError(f"{shown(path)} is not in the data folder {shown(root)}") from None
    return check_relative(root, rel.as_posix(), loose=loose)


def content_shown(image: Path, expected: str | None) -> str:
    """``image``'s content digest, checked to be the content the user saw (``expected``,
    when known); :class:`LabelError` when it cannot be read or has changed."""
    try:
        digest = _digest(image)
    except OSError as exc:
        raise LabelError(os_error_message(exc, f"{shown(image)} could not be read")
                         + "; nothing was changed") from exc
    if expected is not None and digest != expected:
        raise LabelError(f"{shown(image)} changed since it was listed (not the photo shown); "
                         "nothing was changed: look at it again")
    return digest


def content_key(digest: str, folder: str | None = None) -> str:
    """How filing tells content apart: by its digest (a photo goes into one class), or, for
    a sort by tags (a photo copied into every tag folder it gets), by digest and folder."""
    return digest if folder is None else f"{digest}/{folder}"


def _plan(root: Path, req: Request, copy: bool | None, filed: dict[str, str],
          taken: set[str], per_folder: bool = False) -> tuple[Move, Path]:
    """The item for ``req`` (not yet journaled) and the photo's path, or LabelError: why it
    is refused. Nothing is changed here. A photo waiting in ``_not_sure`` or ``_unknown`` (File
    the rest, a sort) is filed by moving it out of there, whether the request names it or an
    outside copy of the same content: those folders are no classes, and a photo is never left
    in one and a class at once by the app."""
    image = Path(req.photo).expanduser().absolute()
    cls = req.cls
    if not isinstance(cls, str) or not cls or "/" in cls or not (root / cls).is_dir():
        raise LabelError(f"{shown(cls)!r} is not a class folder of {shown(root)}")
    inside = _inside(root, image)
    source = _relative(root, image, loose=True) if inside else str(image)
    waits = inside and source.split("/", 1)[0] in NOT_CLASSES and "/" in source \
        and not per_folder  # one photo copied into several folders never moves
    if inside and not per_folder and (copy is not True or waits):  # a waiting photo moves
        op = "move"
    else:
        source, op = str(image), "copy"
    if image.is_symlink() and op == "move":
        raise LabelError(f"{shown(image)} is a link; the app never moves links")
    if not image.is_file():
        raise LabelError(f"{shown(image)} no longer exists; nothing was changed")
    digest = content_shown(image, req.digest)
    where = filed.get(content_key(digest, cls if per_folder else None))
    if where is not None and where != source and per_folder:
        raise LabelError(f"{shown(image.name)} is in {shown(cls)!r} already, as {shown(where)}")
    if where is not None and where != source:
        in_class = op == "move" and not waits and "/" in source  # a fix on Evaluate
        if where.split("/", 1)[0] not in NOT_CLASSES:
            raise LabelError(f"{shown(image.name)} is filed already as {shown(where)}; "
                             "a photo goes into one class only")
        if not in_class:  # the content waits there: that copy is the one filed
            waiting = root / check_relative(root, where)
            try:
                same = not waiting.is_symlink() and waiting.is_file() and \
                    _digest(waiting) == digest
            except OSError:
                same = False
            if not same:
                raise LabelError(f"{shown(image.name)} is journaled as {shown(where)}, which "
                                 "is no longer that photo; nothing was changed")
            source, op, image = where, "move", waiting
    target = check_relative(root, f"{cls}/{Path(source).name}")
    if op == "move" and source == target:
        raise LabelError(f"{shown(image)} is already in {shown(cls)!r}")
    dst = root / target
    if dst.exists() or dst.is_symlink() or target in taken:
        raise LabelError(f"{shown(dst)} already exists; nothing was changed (rename one of "
                         "them)")
    return Move(source, target, journal.new_id(), op, digest), image


def _rename(root: Path, source: str, target: str) -> None:
    """Rename without ever replacing a file: hard link then unlink (atomic refusal). Both
    names are checked again here, whoever asked."""
    src = root / check_relative(root, source, loose=True)
    dst = root / check_relative(root, target, loose=True)
    if not dst.parent.is_dir():
        raise LabelError(f"class folder {shown(dst.parent.name)!r} no longer exists; nothing "
                         "was changed")
    if not src.is_file():
        raise LabelError(f"{shown(src)} no longer exists; nothing was changed")
    if dst.exists() or dst.is_symlink():
        raise LabelError(f"{shown(dst)} already exists; nothing was changed (rename one of "
                         "them)")
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise LabelError(f"{shown(dst)} already exists; nothing was changed") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP,
                             errno.EOPNOTSUPP):
            raise LabelError(os_error_message(exc, f"{shown(src)} could not be moved")
                             + "; nothing was changed") from exc
        # no hard links here (some file systems): check, then rename
        if dst.exists():
            raise LabelError(f"{shown(dst)} already exists; nothing was changed") from None
        try:
            os.rename(src, dst)
        except OSError as exc:
            raise LabelError(os_error_message(exc, f"{shown(src)} could not be moved")
                             + "; nothing was changed") from exc
        return
    os.unlink(src)


def _copy_in(root: Path, item: Move, image: Path) -> None:
    """Copy ``image`` to the item's target: a hidden temporary name in the class folder,
    checked to hold the journaled content, then linked in (never replacing a file)."""
    dst = root / check_relative(root, item.target)
    journal._clean_dead_copies(dst.parent)
    tmp = dst.with_name(f".{image.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.copy")
    try:
        shutil.copyfile(image, tmp)
        if _digest(tmp) != item.digest:
            raise LabelError(f"{shown(image)} changed while it was being copied; nothing was "
                             "changed")
        os.link(tmp, dst)
    except FileExistsError:
        raise LabelError(f"{shown(dst)} already exists; nothing was changed") from None
    except OSError as exc:
        raise LabelError(os_error_message(exc, f"{shown(image)} could not be copied")
                         + "; nothing was changed") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def file_photos(data_dir: str | Path, requests: Iterable[Request], kind: str = "label",
                title: str = "", copy: bool | None = None,
                already: dict[str, str] | None = None,
                progress: ProgressCallback = no_progress,
                cancel: CancelToken | None = None, per_folder: bool = False) -> Filing:
    """File every request as ONE operation: photos inside the data folder are moved, those
    outside copied (``copy`` forces either way where it can). ``already``: digest -> where,
    content found filed in the folder by the caller (left alone, listed in ``already``). A
    refusal never stops the others; a cancel stops between photos, and everything filed
    until then is one undoable operation. ``per_folder``: content is told apart by digest
    and folder (:func:`content_key`; ``already`` keyed so too): one photo may be copied into
    several folders, once each (a sort by tags); it is always copied, never moved."""
    root = _root(data_dir)
    requests = list(requests)
    filing = Filing("", kind, title or f"Filed {_photos(len(requests))}")
    already = dict(already or {})
    meter = RateMeter(len(requests))
    with journal.locked(root) as lock:
        state = journal.read(root)
        filed = state.filed_digests() if not per_folder else {
            content_key(m.digest, m.target.split("/", 1)[0]): m.target
            for m in state.moves if m.digest and m.op != "tags"}
        operation = journal.new_id()
        lock.begin("file", operation)
        taken: set[str] = set()
        for start in range(0, len(requests), CHUNK):
            if cancel is not None and cancel.cancelled:
                filing.cancelled = True
                break
            planned: list[tuple[Move, Path, str]] = []
            for req in requests[start:start + CHUNK]:
                try:
                    item, image = _plan(root, req, copy, filed, taken, per_folder)
                except LabelError as exc:
                    filing.refused.append((str(req.photo), str(exc)))
                    continue
                key = content_key(item.digest, req.cls if per_folder else None)
                if key in already:
                    filing.already.append((str(req.photo), already[key]))
                    continue
                filed[key] = item.target  # the same content twice: the first only
                taken.add(item.target)
                planned.append((Move(item.source, item.target, item.id, item.op, item.digest,
                                     operation), image, str(req.photo)))
            if not planned:
                continue
            try:
                journal.write_items(root, operation, kind, filing.title,
                                    [m for m, _i, _p in planned])
            except LabelError as exc:  # a full disk: this chunk and the rest are not filed
                filing.refused += [(photo, str(exc)) for _m, _i, photo in planned]
                filing.refused += [(str(r.photo), str(exc))
                                   for r in requests[start + CHUNK:]]
                break
            filing.operation = operation
            failed = []
            for n, (item, image, photo) in enumerate(planned):
                if cancel is not None and cancel.cancelled:
                    failed += [m.id for m, _i, _p in planned[n:]]
                    filing.cancelled = True
                    break
                try:
                    if item.op == "move":
                        _rename(root, item.source, item.target)
                    else:
                        _copy_in(root, item, image)
                except LabelError as exc:
                    failed.append(item.id)
                    filing.refused.append((photo, str(exc)))
                    filed.pop(content_key(item.digest, item.target.split("/", 1)[0]
                                          if per_folder else None), None)
                else:
                    filing.done.append(item)
                    filing.photos.append(photo)
                progress(meter.report("filing", start + n + 1, image.name))
            if failed:
                journal.write_end(root, "abort", failed)
        lock.clear()
    return filing


def _single(data_dir, photo, cls, kind: str, copy: bool | None, digest: str | None,
            title: str) -> Move:
    filing = file_photos(data_dir, [Request(str(photo), cls, digest)], kind, title, copy)
    if filing.refused:
        raise LabelError(filing.refused[0][1])
    if filing.already:
        raise LabelError(f"{shown(photo)} is filed already as {shown(filing.already[0][1])}")
    return filing.done[0]


def move_image(data_dir: str | Path, image: str | Path, new_class: str,
               loose: bool = False) -> Move:
    """Move ``image`` (a photo of the data folder) into the class folder ``new_class``,
    keeping its file name; one operation (a fix on Evaluate). Refused, changing nothing, when
    a file of that name is there."""
    root = _root(data_dir)
    _relative(root, Path(image), loose=loose)  # inside the data folder, or refused
    return _single(root, image, new_class, "fix", False, None,
                   f"Moved {Path(image).name} to {new_class}")


def label_image(data_dir: str | Path, image: str | Path, new_class: str,
                copy: bool | None = None, digest: str | None = None) -> Move:
    """File one unsorted photo under ``new_class`` of ``data_dir`` (moved when inside the data
    folder, copied when outside; ``copy`` forces a copy): one operation."""
    return _single(data_dir, image, new_class, "label", copy, digest,
                   f"Filed {Path(image).name} under {new_class}")


def label_many(data_dir: str | Path, photos: list[str | Path], new_class: str,
               copy: bool | None = None, digests: dict[str, str] | None = None,
               kind: str = "group") -> Filing:
    """File every photo of ``photos`` (a named group, less the ones the user took out of it)
    under ``new_class``: one operation, undone at once."""
    digests = digests or {}
    return file_photos(data_dir, [Request(str(p), new_class, digests.get(str(p)))
                                  for p in photos], kind,
                       f"Filed {_photos(len(photos))} under {new_class}", copy)


# -- undo -------------------------------------------------------------------------------------
class _Kept(Exception):
    """An item that can no longer be put back; the message says why."""


@dataclass
class Undone:
    """What :func:`undo` did: the operation, the items put back, the items left where they
    are (with why), whether it stopped part way (cancelled, or an error: ``note``)."""

    operation: Operation
    undone: list[Move] = field(default_factory=list)
    kept: list[tuple[Move, str]] = field(default_factory=list)
    cancelled: bool = False
    note: str = ""

    @property
    def finished(self) -> bool:
        return not self.cancelled and not self.note

    def summary(self) -> str:
        op = self.operation
        copies = sum(m.op == "copy" for m in self.undone)
        tagged = sum(m.op == "tags" for m in self.undone)
        moved = len(self.undone) - copies - tagged
        parts = [f"Undid \u201c{op.title}\u201d"]
        if tagged:
            parts.append(f"the tags of {_photos(tagged)} set back")
        if moved:
            parts.append(f"{_photos(moved)} put back")
        if copies:
            parts.append(f"{_photos(copies)} copied there removed")
        if self.kept:
            parts.append(f"{_photos(len(self.kept))} left as {_were(len(self.kept))} "
                         f"({self.kept[0][1]})")
        if self.cancelled:
            parts.append("cancelled part way: undo again to finish")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {"operation": self.operation.as_dict(),
                "undone": [{m.op: m.as_dict()} for m in self.undone],
                "kept": [{"path": m.target, "why": w} for m, w in self.kept],
                "cancelled": self.cancelled, "note": self.note}


def _put_back(root: Path, m: Move) -> None:
    """Take back one item, from whatever state a crash or the user left it in; raises
    :class:`_Kept` when it can no longer be, :class:`LabelError` on a failure that may pass
    (a full disk, permissions)."""
    try:
        dst = root / check_relative(root, m.target)
        src = root / check_relative(root, m.source, loose=True) if m.op == "move" else None
    except LabelError as exc:
        raise _Kept(str(exc)) from None
    if m.op == "copy":
        if not dst.exists() and not dst.is_symlink():
            return  # removed already
        if dst.is_symlink() or not dst.is_file() or _digest(dst) != m.digest:
            raise _Kept(f"{shown(dst)} changed since it was copied there; it is left as it is")
        try:
            dst.unlink()
        except OSError as exc:
            raise LabelError(os_error_message(exc, f"{shown(dst)} could not be removed")) \
                from exc
        return
    there, back = dst.is_file(), src.is_file()
    if back and not there:
        return  # put back already
    if back and there:
        if os.path.samefile(src, dst):
            dst.unlink()  # a put-back or a move interrupted between its two steps
            return
        raise _Kept(f"{shown(src)} is another file now, so {shown(dst)} stays where it is")
    if not there:
        raise _Kept(f"{shown(dst)} is no longer there (deleted or moved by hand)")
    if not src.parent.is_dir():
        raise _Kept(f"folder {shown(src.parent.name)!r} no longer exists, so {shown(dst)} "
                    "stays where it is")
    _rename(root, m.target, m.source)


def undo(data_dir: str | Path, operation: str | None = None,
         kind: str | tuple[str, ...] | None = None,
         progress: ProgressCallback = no_progress, cancel: CancelToken | None = None
         ) -> Undone:
    """Take back one operation: ``operation`` (its id), else the latest one (of ``kind``
    or kinds, when given). Items that can no longer be put back are reported in ``kept`` and closed,
    so they never block the operations before it. Cancelling stops between photos; what
    was put back until then is recorded."""
    root = _root(data_dir)
    with journal.locked(root) as lock:
        state = journal.read(root)
        kinds = (kind,) if isinstance(kind, str) else kind
        ops = [o for o in state.operations if kinds is None or o.kind in kinds]
        op = state.operation(operation) if operation else (ops[-1] if ops else None)
        if op is None:
            raise LabelError("nothing to undo" if not operation else
                             "that operation is no longer in effect (undone already, or "
                             "it never happened)")
        lock.begin("undo", op.id)
        result = Undone(op)
        meter = RateMeter(len(op.moves))
        tagged = [m for m in op.moves if m.op == "tags"]
        if tagged:  # the photos never moved: their rows in the tags file, one rewrite
            try:
                result.undone, result.kept = untag(root, tagged)
            except LabelError as exc:
                result.note = f"{exc}; undo again to finish"
        for n, m in enumerate(reversed([m for m in op.moves if m.op != "tags"])):
            if result.note:
                break
            if cancel is not None and cancel.cancelled:
                result.cancelled = True
                break
            try:
                _put_back(root, m)
            except _Kept as exc:
                result.kept.append((m, str(exc)))
            except (LabelError, OSError) as exc:
                result.note = (f"stopped at {shown(m.target)}: {exc}" if isinstance(
                    exc, LabelError) else os_error_message(exc, f"stopped at {m.target}")) \
                    + "; undo again to finish"
                break
            else:
                result.undone.append(m)
            progress(meter.report("undoing", n + 1, m.target))
        ended = [m.id for m in result.undone] + [m.id for m, _ in result.kept]
        why = {m.id: w for m, w in result.kept}
        try:
            for start in range(0, len(ended), CHUNK * 16):
                part = ended[start:start + CHUNK * 16]
                journal.write_end(root, "undo", part, op.id,
                                  [(i, why[i]) for i in part if i in why])
        except LabelError as exc:
            # the files are back; the next writer's recovery closes what the journal missed
            result.note = (f"{len(result.undone)} photo(s) were put back, but {exc.args[0]}"
                           .replace("; nothing was changed", "")
                           + ": the list still shows the operation until the journal can "
                           "be written")
            return result
        lock.clear()
        _drop_emptied(root, result.undone)
    return result


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
            except ValueError as exc:  # it would not read back as meant: left as it is
                raise LabelError(str(exc)) from exc
        undone += back
    return undone, kept


def _tags(tags: tuple[str, ...] | None) -> str:
    if tags is None:
        return "not at all"
    return "; ".join(tags) if tags else "none of these"


def _drop_emptied(root: Path, undone: list[Move]) -> None:
    """The waiting folders (``_not_sure``, ``_unknown``) that an undo left empty go: they
    hold the app's copies, and one left empty after undoing File the rest looked like work
    still to do. ``rmdir`` removes only an empty folder; a file put there since keeps it."""
    emptied = {Path(m.target).parts[0] for m in undone
               if m.op != "tags" and len(Path(m.target).parts) == 2}
    for name in sorted(emptied & set(NOT_CLASSES)):
        with contextlib.suppress(OSError):
            (root / name).rmdir()


FIXES = ("fix", "move")  # the moves made on Evaluate (and single moves of the first format)


def undo_move(data_dir: str | Path, kind: str | tuple[str, ...] | None = None) -> Move:
    """Undo the latest operation (of ``kind``); returns the last item it put back. Raises
    :class:`LabelError` when nothing is left to undo, or when nothing of it could be put back
    (then it is closed, and says why)."""
    result = undo(data_dir, kind=kind)
    if result.note and not result.undone:
        raise LabelError(result.note)
    if not result.undone:
        raise LabelError(f"{result.kept[0][1]}; it is no longer offered for undo")
    return result.undone[-1]
