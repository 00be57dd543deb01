"""The move journal: every rename the app makes in a user's data folder, so it can be undone.

The journal is a JSON-lines file in the data folder. A data folder can come from someone else
with a journal of its own, so nothing in it is trusted:

- Each line the app writes carries an HMAC (SHA-256) keyed by a secret kept in the user's
  config folder, over the line's fields *and the data folder's resolved path*. A line that does
  not verify (written by someone else, by another user, for another folder, or edited) is
  *foreign*: listed, never undone.
- Every path in a line, verified or not, must be ``class/file`` relative to the data folder:
  no absolute part, no ``..``, no hidden part, and inside the data folder after resolving
  links. Undo checks this again right before it renames.
- Lines that are not JSON objects of the expected shape are skipped and counted.

A move is journaled *before* its rename (written, flushed and fsynced), and a rename that fails
is followed by an ``abort`` line: a crash or a full disk at any point leaves the move either
done and undoable, or not done. A journal line torn by a crash (no newline at the end) is ended
before the next line is appended, so it can never swallow that line.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from app.core.base.errors import UserError, os_error_message
from app.core.base.paths import user_config_dir

JOURNAL = ".bottleneck-studio-moves.jsonl"  # in the data folder (hidden: never a class)
KEY_FILE = "journal.key"
OPS = ("move", "copy", "undo", "abort")
log = logging.getLogger("app.core")


class LabelError(UserError):
    """A move or undo that was refused; nothing was changed. The message says why."""


@dataclass(frozen=True)
class Move:
    source: str  # relative to the data folder, "class/file.jpg"
    target: str
    id: str = field(default="", compare=False)
    op: str = field(default="move", compare=False)  # "move" (a rename) or "copy"
    digest: str = field(default="", compare=False)  # copy: the content written at target

    def as_dict(self) -> dict:
        return {"source": self.source, "target": self.target}


@dataclass
class JournalState:
    """What a data folder's journal says: the moves in effect (oldest first), the lines that
    are not ours (never undone) and how many lines could not be read at all."""

    moves: list[Move] = field(default_factory=list)
    foreign: list[dict] = field(default_factory=list)
    malformed: int = 0


def _key() -> bytes:
    """The user's journal secret, created on first use (readable by the user alone)."""
    path = user_config_dir() / KEY_FILE
    try:
        return bytes.fromhex(path.read_text("ascii").strip())
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{KEY_FILE}.{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # never replaces a key another process created meanwhile
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return bytes.fromhex(path.read_text("ascii").strip())


def _mac(root: Path, entry: dict, key: bytes) -> str:
    fields = {k: entry.get(k) for k in ("op", "id", "source", "target", "time", "ref",
                                        "digest")}
    message = json.dumps([str(root), fields], sort_keys=True, ensure_ascii=True)
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def check_relative(root: Path, rel: object, loose: bool = False) -> str:
    """``rel`` as ``class/file`` inside ``root`` (resolved), or :class:`LabelError`. The same
    rule for what the user moves and for what a journal line names. ``loose``: a file directly
    in ``root`` (an unsorted photo beside the class folders) is allowed too."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise LabelError(f"{rel!r} is not an image path in a class folder of {root}")
    parts = PurePosixPath(rel).parts
    if (PurePosixPath(rel).is_absolute() or len(parts) not in ((1, 2) if loose else (2,))
            or any(p in ("", ".", "..") or p.startswith(".") for p in parts)):
        raise LabelError(f"{rel!r} is not an image path in a class folder of {root}")
    if len(parts) == 1:
        if (root / rel).is_symlink():
            raise LabelError(f"{rel!r} is a link; the app never moves links")
        return rel
    folder = root / parts[0]
    if folder.is_symlink() or folder.resolve().parent != root:
        raise LabelError(f"class folder {parts[0]!r} is a link out of the data folder {root}: "
                         "the app never moves files there")
    return rel


def read(root: Path) -> JournalState:
    """The journal of the data folder ``root`` (resolved), every line checked."""
    state = JournalState()
    try:
        with open(root / JOURNAL, "rb") as fh:
            raw = fh.read(64 << 20)
    except FileNotFoundError:
        return state
    except OSError as exc:
        log.warning("%s", os_error_message(exc, f"the move journal of {root} cannot be read"))
        return state
    done: dict[str, Move] = {}
    key = _key()  # read once: every line is checked against it
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            state.malformed += 1  # a torn line after a crash, or not ours
            continue
        if not (isinstance(entry, dict) and entry.get("op") in OPS
                and all(isinstance(entry.get(k), str) for k in ("id", "mac"))):
            if isinstance(entry, dict) and isinstance(entry.get("op"), str):
                state.foreign.append(entry)
            else:
                state.malformed += 1
            continue
        if not hmac.compare_digest(entry["mac"].encode("utf-8", "replace"),
                                   _mac(root, entry, key).encode()):
            state.foreign.append(entry)
            continue
        if entry["op"] in ("move", "copy"):
            try:
                copy = entry["op"] == "copy"
                if copy and not (isinstance(entry.get("source"), str)
                                 and isinstance(entry.get("digest"), str)):
                    raise LabelError("a copy names its source and its content")
                # a copy's source is outside the folder, only ever read: never checked here
                source = entry["source"] if copy else check_relative(root, entry.get("source"),
                                                                     loose=True)
                move = Move(source, check_relative(root, entry.get("target")), entry["id"],
                            entry["op"], entry.get("digest", "") if copy else "")
            except LabelError:
                state.foreign.append(entry)
                continue
            done[move.id] = move
        else:  # undo, abort: end the move they name
            done.pop(str(entry.get("ref")), None)
    if state.malformed:
        log.warning("%d line(s) of %s could not be read and were skipped", state.malformed,
                    root / JOURNAL)
    state.moves = list(done.values())
    return state


def append(root: Path, op: str, move: Move | None = None, ref: str = "") -> str:
    """Append one signed line (flushed and fsynced); returns its id. Raises
    :class:`LabelError` when it cannot be written (a full disk): the caller then changes
    nothing."""
    entry = {"op": move.op if move is not None and op == "move" else op, "id": uuid.uuid4().hex,
             "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    if move is not None:
        entry.update(source=move.source, target=move.target)
        if move.op == "copy":
            entry["digest"] = move.digest
    if ref:
        entry["ref"] = ref
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
        raise LabelError(os_error_message(exc, f"the move could not be journaled in {path}")
                         + "; nothing was changed") from exc
    return entry["id"]
