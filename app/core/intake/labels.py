"""Leaving images out of training: an exclusion list beside the feature cache, by content (so a
renamed or moved photo stays excluded); the file stays where it is. Filing and moving photos is
:mod:`app.core.intake.filing`; sorting by a model's answers, :mod:`app.core.intake.sorting`.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

from app.core.base.errors import os_error_message, shown
from app.core.intake.journal import LabelError

__all__ = ["EXCLUDED", "LabelError", "excluded", "set_excluded"]

EXCLUDED = "excluded.json"  # in the cache folder: {data folder: {digest: path}}


def _root(data_dir: str | Path) -> Path:
    return Path(data_dir).expanduser().resolve()


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
