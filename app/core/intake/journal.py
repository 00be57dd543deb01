"""The move journal: every file the app files, moves or copies in a user's data folder, as
*operations* (one user action each: a filing, a named group, a bulk accept, a sort, a move on
Evaluate), so that an undo takes back exactly one operation and nothing another one wrote.

The journal is a JSON-lines file in the data folder. A data folder can come from someone else
with a journal of its own, so nothing in it is trusted:

- Each line the app writes carries an HMAC (SHA-256) keyed by a secret kept in the user's
  config folder (32 random bytes, mode 0600; a damaged, short, foreign-readable or odd key file
  is refused, never replaced), over the line *and the data folder's resolved path*. A line
  that does not verify (written by someone else, by another user, for another folder, or
  edited) is *foreign*: counted, never undone.
- Every path in a line, verified or not, must be ``class/file`` relative to the data folder:
  no absolute part, no ``..``, no hidden part, and inside the data folder after resolving
  links. The file operations check this again right before they touch a file.
- Lines that are not JSON objects of the expected shape are skipped and counted; the file is
  read as a stream, so no size limit decides which operation is the latest, and a line too
  long to be ours is skipped without being held in memory.

Writing: an operation's items are journaled (written, flushed, fsynced) *before* their files
change, under an exclusive lock on the data folder (one filer at a time, between processes
too), and the lock file names the operation in progress. A crash at any point is recovered by
the next writer: a move half done (hard link made, old name not yet removed) is finished, an
item never done is closed with an ``abort`` line, an undo half done is finished. Reading is
incremental: a process keeps what it parsed and reads only the lines appended since.

Line formats (``v`` 2; lines of the first format, one move per line, are still read, each
its own operation):

- ``file``: ``operation`` (its id), ``kind``, ``title``, ``items``: ``[{id, op: move|copy,
  source, target, digest}]``, or for a photo tagged (several tags a photo: the photo never
  moves, the tags file is the truth) ``{id, op: tags, source: the tags file, target: the
  photo's row, digest, before: its tags before (null: not listed), after: its tags}``; an
  operation may span several lines.
- ``undo``: ``operation``, ``items`` (the ids it ended), ``kept`` (``[{id, why}]`` among
  them: not put back, and why).
- ``abort``: ``items``: ids whose file change never happened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from app.core.base.errors import UserError, os_error_message, shown
from app.core.base.paths import user_config_dir

JOURNAL = ".bottleneck-studio-moves.jsonl"  # in the data folder (hidden: never a class)
LOCK = ".bottleneck-studio-moves.lock"  # beside it: one writer at a time, and what it does
KEY_FILE = "journal.key"
KEY_BYTES = 32
OPS = ("move", "copy", "undo", "abort", "file")
KINDS = ("label", "group", "accept", "rest", "sort", "fix", "move", "tag")
MAX_LINE = 1 << 20  # longer lines are not ours (a line holds at most CHUNK items)
CHUNK = 256  # items a ``file`` line holds
FOREIGN_KEPT = 100  # foreign lines kept for showing; all are counted
log = logging.getLogger("app.core")


class LabelError(UserError):
    """A move or undo that was refused; nothing was changed. The message says why."""


class JournalKeyError(LabelError):
    """The journal's secret cannot be used (damaged, too open, not a file)."""


@dataclass(frozen=True)
class Move:
    source: str  # relative to the data folder, "class/file.jpg" (a copy: an absolute path)
    target: str
    id: str = field(default="", compare=False)
    op: str = field(default="move", compare=False)  # "move" (a rename) or "copy"
    digest: str = field(default="", compare=False)  # the content filed
    operation: str = field(default="", compare=False)  # the operation it belongs to
    # a "tags" item: ``source`` the tags file, ``target`` the photo's row in it
    before: tuple[str, ...] | None = field(default=None, compare=False)  # None: not listed
    after: tuple[str, ...] = field(default=(), compare=False)

    def as_dict(self) -> dict:
        if self.op == "tags":
            return {"tags_file": self.source, "file": self.target, "tags": list(self.after),
                    "before": None if self.before is None else list(self.before)}
        return {"source": self.source, "target": self.target}


@dataclass(frozen=True)
class Operation:
    """One user action in the journal, with its items still in effect (oldest first)."""

    id: str
    kind: str
    title: str
    time: str
    moves: tuple[Move, ...]

    @property
    def copies(self) -> int:
        return sum(m.op == "copy" for m in self.moves)

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "title": self.title, "time": self.time,
                "photos": len(self.moves)}


@dataclass
class JournalState:
    """What a data folder's journal says: the moves in effect (oldest first), grouped in
    operations (oldest first), the lines that are not ours (never undone; the first
    ``FOREIGN_KEPT`` kept, all counted) and how many lines could not be read at all."""

    moves: list[Move] = field(default_factory=list)
    foreign: list[dict] = field(default_factory=list)
    malformed: int = 0
    operations: list[Operation] = field(default_factory=list)
    foreign_count: int = 0

    def operation(self, op_id: str) -> Operation | None:
        return next((o for o in self.operations if o.id == op_id), None)

    def filed_digests(self) -> dict[str, str]:
        """Digest -> target of every photo filed in a class folder by an item in effect."""
        return {m.digest: m.target for m in self.moves if m.digest and m.op != "tags"}


# -- the secret ---------------------------------------------------------------------------
def key_path() -> Path:
    return user_config_dir() / KEY_FILE


def _refuse_key(path: Path, why: str) -> JournalKeyError:
    return JournalKeyError(
        f"the journal key {shown(path)} {why}: nothing was changed. Fix it, or move it away "
        "to make a new one (the undo history signed with it then shows as not yours)")


def _key() -> bytes:
    """The user's journal secret, created on first use (readable by the user alone). A key
    file that is there but unusable is refused with :class:`JournalKeyError`, never replaced:
    a silent new key would disown every undo the user has."""
    path = key_path()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return _new_key(path)
    except OSError as exc:
        raise _refuse_key(path, f"cannot be read ({exc.strerror})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise _refuse_key(path, "is not a regular file")
    if os.name == "posix" and st.st_mode & 0o077:
        raise _refuse_key(path, f"can be read by others (mode {stat.S_IMODE(st.st_mode):o}; "
                                "chmod 600 it if it is yours)")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_NOFOLLOW", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _refuse_key(path, "is not a regular file")
            raw = os.read(fd, 4 * KEY_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _refuse_key(path, f"cannot be read ({exc.strerror})") from exc
    text = raw.decode("ascii", "replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES or len(text) != 2 * KEY_BYTES:
        raise _refuse_key(path, f"is damaged (not {KEY_BYTES} bytes in hex)")
    return key


def _new_key(path: Path) -> bytes:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{KEY_FILE}.{uuid.uuid4().hex[:8]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_hex(KEY_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # never replaces a key another process created meanwhile
            except FileExistsError:
                pass
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise LabelError(os_error_message(exc, f"the journal key {shown(path)} could not be "
                                               "made") + "; nothing was changed") from exc
    return _key()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _mac_v1(root: Path, entry: dict, key: bytes) -> str:
    fields = {k: entry.get(k) for k in ("op", "id", "source", "target", "time", "ref",
                                        "digest")}
    message = json.dumps([str(root), fields], sort_keys=True, ensure_ascii=True)
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _mac(root: Path, entry: dict, key: bytes) -> str:
    body = {k: v for k, v in entry.items() if k != "mac"}
    message = json.dumps([str(root), body], sort_keys=True, ensure_ascii=True)
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


# -- paths ----------------------------------------------------------------------------------
def check_relative(root: Path, rel: object, loose: bool = False) -> str:
    """``rel`` as ``class/file`` inside ``root`` (resolved), or :class:`LabelError`. The same
    rule for what the user moves and for what a journal line names. ``loose``: a file directly
    in ``root`` (an unsorted photo beside the class folders) is allowed too."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise LabelError(f"{shown(rel)!r} is not an image path in a class folder of {root}")
    parts = PurePosixPath(rel).parts
    if (PurePosixPath(rel).is_absolute() or len(parts) not in ((1, 2) if loose else (2,))
            or any(p in ("", ".", "..") or p.startswith(".") for p in parts)):
        raise LabelError(f"{shown(rel)!r} is not an image path in a class folder of {root}")
    if len(parts) == 1:
        if (root / rel).is_symlink():
            raise LabelError(f"{shown(rel)!r} is a link; the app never moves links")
        return rel
    folder = root / parts[0]
    if folder.is_symlink() or folder.resolve().parent != root:
        raise LabelError(f"class folder {shown(parts[0])!r} is a link out of the data folder "
                         f"{root}: the app never moves files there")
    return rel


# -- reading --------------------------------------------------------------------------------
@dataclass
class _Parsed:
    """What one process has read of one journal so far (appended lines are read on top)."""

    dev: int = -1
    ino: int = -1
    offset: int = 0
    key: bytes = b""
    seen: bytes = b""  # the first and the last bytes read: the same file, only appended to
    items: dict[str, Move] = field(default_factory=dict)  # in effect, in journal order
    ops: dict[str, list] = field(default_factory=dict)  # id -> [kind, title, time]
    foreign: list[dict] = field(default_factory=list)
    foreign_count: int = 0
    malformed: int = 0


_PARSED: dict[str, _Parsed] = {}
_PARSED_LOCK = threading.Lock()


def read(root: Path) -> JournalState:
    """The journal of the data folder ``root`` (resolved), every line checked."""
    key = _key()
    with _PARSED_LOCK:
        parsed = _PARSED.get(str(root))
        try:
            fh = open(root / JOURNAL, "rb")
        except FileNotFoundError:
            _PARSED.pop(str(root), None)
            return JournalState()
        except OSError as exc:
            log.warning("%s", os_error_message(exc, f"the move journal of {root} cannot be "
                                                    "read"))
            return JournalState()
        with fh:
            st = os.fstat(fh.fileno())
            if (parsed is None or parsed.key != key or (parsed.dev, parsed.ino)
                    != (st.st_dev, st.st_ino) or st.st_size < parsed.offset
                    or _seen(fh, parsed.offset) != parsed.seen):
                parsed = _Parsed(st.st_dev, st.st_ino, 0, key)  # rewritten: read it all
            before = parsed.malformed
            _parse(root, fh, parsed)
            parsed.seen = _seen(fh, parsed.offset)
            _PARSED[str(root)] = parsed
        if parsed.malformed > before:
            log.warning("%d line(s) of %s could not be read and were skipped",
                        parsed.malformed - before, root / JOURNAL)
        return _state(parsed)


def _seen(fh, offset: int) -> bytes:
    """The first and the last 64 bytes before ``offset``: a file rewritten in place (not
    appended to) differs there, and is read again from its start."""
    if offset <= 0:
        return b""
    fh.seek(0)
    head = fh.read(min(64, offset))
    fh.seek(max(0, offset - 64))
    return head + fh.read(min(64, offset))


def forget(root: Path) -> None:
    """Drop what this process read of ``root``'s journal (the next read starts over)."""
    with _PARSED_LOCK:
        _PARSED.pop(str(root), None)


def _parse(root: Path, fh, parsed: _Parsed) -> None:
    fh.seek(parsed.offset)
    while True:
        line = fh.readline(MAX_LINE)
        if not line:
            return
        if not line.endswith(b"\n"):
            if len(line) < MAX_LINE:
                return  # the last line, still being written (or torn): read it next time
            while line and not line.endswith(b"\n"):  # far too long to be ours: skip it
                line = fh.readline(MAX_LINE)
            parsed.malformed += 1
            parsed.offset = fh.tell()
            continue
        parsed.offset = fh.tell()
        if line.strip():
            _take(root, line, parsed)


def _foreign(parsed: _Parsed, entry: dict) -> None:
    parsed.foreign_count += 1
    if len(parsed.foreign) < FOREIGN_KEPT:
        parsed.foreign.append(entry)


def _take(root: Path, line: bytes, parsed: _Parsed) -> None:
    try:
        entry = json.loads(line.decode("utf-8", "replace"))
    except ValueError:
        parsed.malformed += 1  # a torn line after a crash, or not ours
        return
    if not (isinstance(entry, dict) and entry.get("op") in OPS
            and all(isinstance(entry.get(k), str) for k in ("id", "mac"))):
        if isinstance(entry, dict) and isinstance(entry.get("op"), str):
            _foreign(parsed, entry)
        else:
            parsed.malformed += 1
        return
    v2 = entry.get("v") == 2
    mac = (_mac if v2 else _mac_v1)(root, entry, parsed.key)
    if not hmac.compare_digest(entry["mac"].encode("utf-8", "replace"), mac.encode()):
        _foreign(parsed, entry)
        return
    try:
        if v2:
            _take_v2(root, entry, parsed)
        else:
            _take_v1(root, entry, parsed)
    except (LabelError, TypeError, KeyError, ValueError, AttributeError):
        _foreign(parsed, entry)


def row_name(rel: object) -> str:
    """``rel`` as a tags file's row (a photo's path from the tags file's folder), or
    :class:`LabelError`: relative, nothing leading out, no control character."""
    if not isinstance(rel, str) or not rel.strip() or any(c in rel for c in "\x00\r\n\\"):
        raise LabelError(f"{shown(rel)!r} is not a photo's row in a tags file")
    path = PurePosixPath(rel)
    if path.is_absolute() or any(p in ("", ".", "..") for p in path.parts):
        raise LabelError(f"{shown(rel)!r} is not a photo's row in a tags file")
    return rel


def _tag_list(value: object, none: bool) -> tuple[str, ...] | None:
    if value is None and none:
        return None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise LabelError("not a tag list")
    return tuple(value)


def _item(root: Path, raw: dict, operation: str) -> Move:
    op = raw.get("op")
    if op == "tags" and isinstance(raw.get("id"), str):
        return Move(check_relative(root, raw.get("source"), loose=True),
                    row_name(raw.get("target")), raw["id"], "tags",
                    str(raw.get("digest", "")), operation,
                    _tag_list(raw.get("before"), True), _tag_list(raw.get("after"), False))
    if op not in ("move", "copy") or not isinstance(raw.get("id"), str):
        raise LabelError("not an item")
    digest = raw.get("digest", "")
    if not isinstance(digest, str) or (op == "copy" and not digest):
        raise LabelError("a copy names its content")
    if op == "copy":  # a copy's source is outside the folder, only ever read: never checked
        if not isinstance(raw.get("source"), str):
            raise LabelError("a copy names its source")
        source = raw["source"]
    else:
        source = check_relative(root, raw.get("source"), loose=True)
    return Move(source, check_relative(root, raw.get("target")), raw["id"], op, digest,
                operation)


def _take_v1(root: Path, entry: dict, parsed: _Parsed) -> None:
    if entry["op"] in ("move", "copy"):
        move = _item(root, {**entry, "digest": entry.get("digest", "")
                            if entry["op"] == "copy" else ""}, entry["id"])
        parsed.ops[entry["id"]] = ["move" if entry["op"] == "move" else "label",
                                   f"{'Moved' if entry['op'] == 'move' else 'Copied'} "
                                   f"{move.target}", str(entry.get("time", ""))]
        parsed.items[move.id] = move
    elif entry["op"] in ("undo", "abort"):
        parsed.items.pop(str(entry.get("ref")), None)
    else:
        raise LabelError("not a first-format line")


def _take_v2(root: Path, entry: dict, parsed: _Parsed) -> None:
    op = entry["op"]
    if op == "file":
        operation = entry["operation"]
        if not isinstance(operation, str) or not isinstance(entry.get("items"), list):
            raise LabelError("not a file line")
        items = [_item(root, raw, operation) for raw in entry["items"]]
        parsed.ops.setdefault(operation, [str(entry.get("kind", "")),
                                          str(entry.get("title", "")),
                                          str(entry.get("time", ""))])
        for move in items:
            parsed.items[move.id] = move
    elif op in ("undo", "abort"):
        ids = entry.get("items")
        if not isinstance(ids, list):
            raise LabelError("not an undo line")
        for i in ids:
            parsed.items.pop(str(i), None)
    else:
        raise LabelError("not a second-format line")


def _state(parsed: _Parsed) -> JournalState:
    by_op: dict[str, list[Move]] = {}
    for move in parsed.items.values():
        by_op.setdefault(move.operation, []).append(move)
    operations = []
    for op_id, info in parsed.ops.items():  # in the order they first appeared
        if op_id in by_op:
            operations.append(Operation(op_id, info[0], info[1], info[2], tuple(by_op[op_id])))
    return JournalState(list(parsed.items.values()), list(parsed.foreign), parsed.malformed,
                        operations, parsed.foreign_count)


# -- writing --------------------------------------------------------------------------------
def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def new_id() -> str:
    return uuid.uuid4().hex


def write(root: Path, entry: dict) -> str:
    """Append one signed line (flushed and fsynced); returns its id. Raises
    :class:`LabelError` when it cannot be written (a full disk): the caller then changes
    nothing."""
    entry = {"v": 2, "id": new_id(), "time": _now(), **entry}
    entry["mac"] = _mac(root, entry, _key())
    text = json.dumps(entry, ensure_ascii=False) + "\n"
    path = root / JOURNAL
    try:
        with open(path, "ab+") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell():
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    text = "\n" + text  # end a line torn by a crash first
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise LabelError(os_error_message(exc, f"the journal {shown(path)} could not be "
                                               "written") + "; nothing was changed") from exc
    return entry["id"]


def item_dict(move: Move) -> dict:
    out = {"id": move.id, "op": move.op, "source": move.source, "target": move.target,
           "digest": move.digest}
    if move.op == "tags":
        out.update(before=None if move.before is None else list(move.before),
                   after=list(move.after))
    return out


def write_items(root: Path, operation: str, kind: str, title: str, moves: list[Move]) -> None:
    write(root, {"op": "file", "operation": operation, "kind": kind, "title": title,
                 "items": [item_dict(m) for m in moves]})


def write_end(root: Path, op: str, ids: list[str], operation: str = "",
              kept: list[tuple[str, str]] = ()) -> None:
    """An ``undo`` (with the ids it ended, ``kept``: (id, why) among them not put back) or
    an ``abort`` line (ids whose change never happened)."""
    entry: dict = {"op": op, "items": list(ids)}
    if operation:
        entry["operation"] = operation
    if kept:
        entry["kept"] = [{"id": i, "why": w} for i, w in kept]
    write(root, entry)


def append(root: Path, op: str, move: Move | None = None, ref: str = "") -> str:
    """One item as its own operation (``op`` move or copy), or the end of one (``undo``,
    ``abort`` with ``ref``); returns the item's id. What a single filing writes."""
    if op in ("undo", "abort"):
        write_end(root, op, [ref])
        return ref
    item = Move(move.source, move.target, new_id(), move.op if op == "move" else op,
                move.digest, move.operation or new_id())
    write_items(root, item.operation, "move" if item.op == "move" else "label",
                f"{'Moved' if item.op == 'move' else 'Copied'} {item.target}", [item])
    return item.id


# -- one writer at a time --------------------------------------------------------------------
@contextlib.contextmanager
def locked(root: Path) -> Iterator[_Lock]:
    """Exclusive use of ``root``'s journal and files, between threads and processes; on
    entry, what a writer killed during its work left is recovered (:func:`recover`)."""
    path = root / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        raise LabelError(os_error_message(exc, f"{shown(root)} cannot be locked for filing")
                         + "; nothing was changed") from exc
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # Windows: one window at a time files photos
            pass
        lock = _Lock(fd)
        pending = lock.pending()
        if pending:
            recover(root, pending)
            lock.clear()
        yield lock
    finally:
        os.close(fd)  # releases the lock


class _Lock:
    """The held lock; its file names the work in progress (``file ID`` / ``undo ID``) so a
    crash in the middle can be recovered by the next writer."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def pending(self) -> str:
        try:
            return os.pread(self.fd, 200, 0).decode("ascii", "replace").strip()
        except OSError:
            return ""

    def begin(self, what: str, operation: str) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{what} {operation}".encode("ascii"), 0)

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)


def recover(root: Path, pending: str) -> None:
    """Finish or roll back what a killed writer left half done (``pending``: ``file ID`` or
    ``undo ID`` from the lock file): a photo found under both names (a hard link made, the
    other name not yet removed) keeps the name the step was going to; an item whose file never
    changed is closed with ``abort`` (filing) or ``undo`` (an undo that did put it back).
    Nothing else is touched."""
    what, _, operation = pending.partition(" ")
    forget(root)
    try:
        state = read(root)
    except LabelError:
        return
    op = state.operation(operation)
    if op is None or what not in ("file", "undo"):
        return
    never, back, finished = [], [], 0
    tagged = [m for m in op.moves if m.op == "tags"]
    if tagged:
        from app.core.intake.tags import current_tags

        for source in dict.fromkeys(m.source for m in tagged):
            items = [m for m in tagged if m.source == source]
            with contextlib.suppress(OSError, LabelError):
                now = current_tags(root / check_relative(root, source, loose=True),
                                   [m.target for m in items])
                for m in items:  # the file is replaced whole: all or none of them changed
                    at = now.get(m.target)
                    if what == "file" and at != m.after and at == m.before:
                        never.append(m.id)
                    elif what == "undo" and at == m.before:
                        back.append(m.id)
    for m in op.moves:
        if m.op == "tags":
            continue
        dst = root / m.target
        src = root / m.source if m.op == "move" else None
        with contextlib.suppress(OSError, LabelError):
            check_relative(root, m.target)
            if src is not None:
                check_relative(root, m.source, loose=True)
            both = src is not None and dst.is_file() and src.is_file() \
                and os.path.samefile(src, dst)
            if what == "file":
                if both:
                    os.unlink(src)  # the move's last step
                    finished += 1
                elif not dst.exists() and (src is None or src.exists()):
                    never.append(m.id)
            else:
                if both:
                    os.unlink(dst)  # the undo's last step
                    finished += 1
                    back.append(m.id)
                elif not dst.exists() and (src is None or src.exists()):
                    back.append(m.id)
        _clean_dead_copies(dst.parent)
    if never:
        write_end(root, "abort", never)
    if back:
        write_end(root, "undo", back, operation)
    log.warning("recovered an interrupted %s in %s: %d step(s) finished, %d item(s) closed",
                what, root, finished, len(never) + len(back))


def _clean_dead_copies(folder: Path) -> None:
    """Remove half-made copies (hidden, of this app's own naming) whose writer died."""
    import re

    from app.core.base.jobs import dead_leftovers

    for entry, _m in dead_leftovers(folder, re.compile(
            r"^\..+\.(?P<pid>\d+)-[0-9a-f]{8}\.copy$")):
        if entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
