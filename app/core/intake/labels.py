"""Fixing labels where the mistakes are: move an image to another class folder (a real rename
in the user's folder, journaled and undoable), exclude an image from training (a list beside
the feature cache; the file stays where it is), and the training images the model finds
hardest (highest loss), where mislabelled photos usually are.

The cache is keyed by content, so after a move or an exclusion retraining computes no
features again. What a move may touch, and what a journal from someone else may not, is in
:mod:`app.core.intake.journal`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from app.core.base.errors import bad_name_reason, os_error_message, shown
from app.core.base.jobs import dead_leftovers
from app.core.intake import journal
from app.core.intake.journal import JOURNAL, JournalState, LabelError, Move, check_relative

__all__ = ["JOURNAL", "LabelError", "Move", "create_class", "excluded",
           "journal_state", "label_image", "label_many", "move_image", "moves", "set_excluded",
           "sort_into", "sort_plan", "undo_all", "undo_move"]

EXCLUDED = "excluded.json"  # in the cache folder: {data folder: {digest: path}}


def _root(data_dir: str | Path) -> Path:
    return Path(data_dir).expanduser().resolve()


def _relative(root: Path, path: Path, loose: bool = False) -> str:
    """``path`` (an image in a class folder of ``root``, or ``loose`` in ``root`` itself) as
    ``class/file``; the folder is resolved, the file itself is not (a link stays a link)."""
    path = Path(path).expanduser().absolute()
    try:
        rel = (path.parent.resolve() / path.name).relative_to(root)
    except ValueError:
        raise LabelError(f"{shown(path)} is not in the data folder {shown(root)}") from None
    return check_relative(root, rel.as_posix(), loose=loose)


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


def journal_state(data_dir: str | Path) -> JournalState:
    """The data folder's journal: moves in effect, foreign lines (never undone), unreadable
    lines."""
    return journal.read(_root(data_dir))


def moves(data_dir: str | Path) -> list[Move]:
    """The moves in effect that this app made, oldest first (undone ones left out)."""
    return journal_state(data_dir).moves


def move_image(data_dir: str | Path, image: str | Path, new_class: str,
               loose: bool = False) -> Move:
    """Move ``image`` into the class folder ``new_class`` of ``data_dir`` (which must exist,
    inside the data folder), keeping its file name; refused, changing nothing, when a file of
    that name is there. Journaled before the rename."""
    root = _root(data_dir)
    source = _relative(root, Path(image), loose=loose)
    if not isinstance(new_class, str) or not new_class or "/" in new_class \
            or not (root / new_class).is_dir():
        raise LabelError(f"{shown(new_class)!r} is not a class folder of {shown(root)}")
    target = check_relative(root, f"{new_class}/{Path(source).name}")
    move = Move(source, target)
    if move.source == move.target:
        raise LabelError(f"{shown(image)} is already in {shown(new_class)!r}")
    if (root / target).exists():
        raise LabelError(f"{shown(root / target)} already exists; nothing was changed "
                         "(rename one of them)")
    move_id = journal.append(root, "move", move)
    try:
        _rename(root, move.source, move.target)
    except BaseException:
        with contextlib.suppress(LabelError):
            journal.append(root, "abort", ref=move_id)
        raise
    return Move(move.source, move.target, move_id)


def undo_move(data_dir: str | Path) -> Move:
    """Undo the latest move still in effect that this app made; returns it. Refused when
    nothing is left to undo or the original name has been taken since. A move whose rename
    never happened (a crash between journal and rename) is closed and the one before it is
    undone."""
    root = _root(data_dir)
    done = moves(root)
    while done:
        last = done.pop()
        if last.op == "copy":
            if not (root / last.target).exists():
                journal.append(root, "abort", ref=last.id)  # the copy never happened
                continue
            _remove_copy(root, last)
        else:
            if not (root / last.target).exists() and (root / last.source).exists():
                journal.append(root, "abort", ref=last.id)
                continue
            _rename(root, last.target, last.source)
        journal.append(root, "undo", ref=last.id)
        return last
    raise LabelError("no move to undo")


def _digest(path: Path) -> str:
    from app.core.intake.dataset import digest_file

    return digest_file(path)[0]


def _remove_copy(root: Path, move: Move) -> None:
    """Undo a copy: remove the copy, only if it is still exactly what the app wrote."""
    target = root / check_relative(root, move.target)
    if target.is_symlink() or not target.is_file() or _digest(target) != move.digest:
        raise LabelError(f"{shown(target)} changed since it was copied there; it is left as it "
                         "is (remove it yourself if you want)")
    target.unlink()


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


_COPYING = re.compile(r"^\..+\.(?P<pid>\d+)-[0-9a-f]{8}\.copy$")


def _clean_dead_copies(folder: Path) -> None:
    """Remove half-made copies (hidden, of this app's own naming) whose writer died: a kill
    during a copy must not leave litter in the user's class folder. Nothing else."""
    for entry, _m in dead_leftovers(folder, _COPYING):
        if entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def label_image(data_dir: str | Path, image: str | Path, new_class: str,
                copy: bool | None = None) -> Move:
    """File an unsorted photo under ``new_class`` of ``data_dir``: a photo inside the data
    folder (loose beside the class folders, or in a class folder) is moved, one outside it is
    copied (``copy`` forces either; a photo outside can only be copied). Never overwrites,
    journaled before the file appears, undoable with :func:`undo_move`."""
    root = _root(data_dir)
    image = Path(image).expanduser().absolute()
    inside = root in image.parent.resolve().parents or image.parent.resolve() == root
    if inside and not copy:
        return move_image(root, image, new_class, loose=True)
    if not image.is_file():
        raise LabelError(f"{shown(image)} is not a file")
    if not (root / new_class).is_dir():
        raise LabelError(f"{shown(new_class)!r} is not a class folder of {shown(root)}")
    target = check_relative(root, f"{new_class}/{image.name}")
    dst = root / target
    if dst.exists() or dst.is_symlink():
        raise LabelError(f"{shown(dst)} already exists; nothing was changed (rename one of "
                         "them)")
    _clean_dead_copies(dst.parent)
    tmp = dst.with_name(f".{image.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.copy")
    try:
        shutil.copyfile(image, tmp)
        move = Move(str(image), target, op="copy", digest=_digest(tmp))
        move_id = journal.append(root, "copy", move)
        try:
            os.link(tmp, dst)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            journal.append(root, "abort", ref=move_id)
            raise LabelError(f"{shown(dst)} already exists; nothing was changed") from None
        except OSError as exc:
            journal.append(root, "abort", ref=move_id)
            raise LabelError(os_error_message(exc, f"{shown(image)} could not be copied")
                             + "; nothing was changed") from exc
    except OSError as exc:
        raise LabelError(os_error_message(exc, f"{shown(image)} could not be copied")
                         + "; nothing was changed") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return Move(move.source, move.target, move_id, "copy", move.digest)


def _excluded_file(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / EXCLUDED


def _read_excluded(file: Path) -> dict[str, dict[str, str]]:
    """The whole exclusion list; :class:`LabelError` when it exists but cannot be read or is
    not of its shape (never taken for empty: that would drop every exclusion)."""
    try:
        text = file.read_text("utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{shown(file)} cannot be read ({exc}); exclusions are "
                         "unchanged") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LabelError(f"{shown(file)} is damaged ({exc}); fix or remove it to change "
                         "exclusions") from exc
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, dict)
            and all(isinstance(d, str) and isinstance(p, str) for d, p in v.items())
            for k, v in data.items()):
        raise LabelError(f"{shown(file)} is damaged (not a map of data folders to "
                         "{digest: path}); fix or remove it to change exclusions")
    return data


@contextlib.contextmanager
def _locked(file: Path):
    """An exclusive lock beside ``file`` for a read-modify-write between processes."""
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file.with_name(f".{file.name}.lock"), "a") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; one window at a time writes the list
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def excluded(cache_dir: str | Path, data_dir: str | Path) -> dict[str, str]:
    """Digest -> path of the images of ``data_dir`` excluded from training; raises
    :class:`LabelError` when the list is damaged."""
    data = _read_excluded(_excluded_file(cache_dir))
    return dict(data.get(str(_root(data_dir)), {}))


def set_excluded(cache_dir: str | Path, data_dir: str | Path, digest: str, path: str,
                 exclude: bool = True) -> None:
    """Exclude an image (by content, so a renamed or moved file stays excluded) from
    training on ``data_dir``, or include it again. Locked, and replaced by rename."""
    file = _excluded_file(cache_dir)
    with _locked(file):
        data = _read_excluded(file)
        entry = data.setdefault(str(_root(data_dir)), {})
        if exclude:
            entry[digest] = str(path)
        else:
            entry.pop(digest, None)
        tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(data, indent=1, ensure_ascii=False))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, file)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise LabelError(os_error_message(exc, f"{shown(file)} could not be written")
                             + "; exclusions are unchanged") from exc


def label_many(data_dir: str | Path, photos: list[str | Path], new_class: str,
               copy: bool | None = None) -> tuple[list[Move], list[tuple[str, str]]]:
    """File every photo of ``photos`` (a named group, less the ones the user took out of it)
    under ``new_class``, each on its own (journaled, undoable one by one); returns what was
    done and what was refused with why. A refusal never stops the others."""
    done, refused = [], []
    for photo in photos:
        try:
            done.append(label_image(data_dir, photo, new_class, copy))
        except LabelError as exc:
            refused.append((str(photo), str(exc)))
    return done, refused


UNKNOWN_FOLDER = "_unknown"  # where sorting by prediction files the photos that are none


@dataclass
class SortPlan:
    """Where sorting by prediction files each photo: ``{folder: [photo, ...]}`` (a class, or
    ``_unknown``), and the photos it cannot file (they could not be read)."""

    folders: dict[str, list[str]]
    errors: list[tuple[str, str]]

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.folders.items()}


def sort_plan(predictions) -> SortPlan:
    """The preview: each prediction's folder (its top class, or ``_unknown``)."""
    folders: dict[str, list[str]] = {}
    errors = []
    for p in predictions:
        if p.error or not p.top:
            errors.append((p.path, p.error or "no answer"))
            continue
        folders.setdefault(UNKNOWN_FOLDER if p.unknown else p.top[0]["label"], []).append(p.path)
    return SortPlan(dict(sorted(folders.items())), errors)


def sort_into(out: str | Path, plan: SortPlan, move: bool = False
              ) -> tuple[list[Move], list[tuple[str, str]]]:
    """Carry out ``plan`` in ``out``: copies (photos inside ``out`` are moved when ``move``);
    never overwrites, each file journaled in ``out`` and undoable (:func:`undo_all`)."""
    Path(out).expanduser().mkdir(parents=True, exist_ok=True)
    done, refused = [], []
    for folder, photos in plan.folders.items():
        create_class(out, folder)
        d, r = label_many(out, photos, folder, copy=not move)
        done += d
        refused += r
    return done, refused


def undo_all(data_dir: str | Path) -> list[Move]:
    """Undo every move and copy in effect in ``data_dir``'s journal, latest first (a sort
    undone); stops at the first one refused, which it raises."""
    undone = []
    while moves(data_dir):
        undone.append(undo_move(data_dir))
    return undone
