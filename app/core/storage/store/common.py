"""What every part of the feature store shares: the schema, the errors, the row check, the
batch of features a caching run hands over."""

from __future__ import annotations

import re
import sqlite3
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.base.errors import UserError, shown

SCHEMA_VERSION = 1
PAGE_SIZE = 16384  # for new cache files
SQLITE_AUTOCHECKPOINT = 1000  # pages: SQLite's default, where a connection checkpoints itself
CHECKPOINT_EVERY_PAGES = 1000  # bulk writes: the background checkpointer's step
DB_NAME = "features.sqlite3"
CLAIM_STALE_SECONDS = 120.0
CLAIM_REFRESH_SECONDS = 20.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    digest TEXT NOT NULL, format TEXT
);
CREATE TABLE IF NOT EXISTS models (model_key TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS features (
    model_key TEXT NOT NULL, digest TEXT NOT NULL,
    main BLOB NOT NULL, aux1 BLOB NOT NULL, aux2 BLOB NOT NULL,
    PRIMARY KEY (model_key, digest)
);
CREATE TABLE IF NOT EXISTS arrays (
    model_key TEXT NOT NULL, digest TEXT NOT NULL, shard TEXT NOT NULL, row INTEGER NOT NULL,
    PRIMARY KEY (model_key, digest)
);
CREATE TABLE IF NOT EXISTS bad (
    digest TEXT NOT NULL, prep INTEGER NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (digest, prep)
);
CREATE TABLE IF NOT EXISTS claims (
    model_key TEXT NOT NULL, digest TEXT NOT NULL, owner TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (model_key, digest)
);
CREATE TABLE IF NOT EXISTS shards (
    model_key TEXT NOT NULL, shard TEXT NOT NULL, bytes INTEGER NOT NULL, crc INTEGER NOT NULL,
    shape TEXT NOT NULL,
    PRIMARY KEY (model_key, shard)
);
CREATE TABLE IF NOT EXISTS unusable (
    model_key TEXT NOT NULL, digest TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (model_key, digest)
);
"""
# Added to ``features`` when missing (keeps SCHEMA_VERSION 1: older rows have NULL there and
# are still checked for length and finiteness).
_CRC_COLUMN = "ALTER TABLE features ADD COLUMN crc INTEGER"
# A shard being written: ``.<name>.npy.<host>.<pid>.partial``, so a leftover's writer is known.
_PARTIAL = re.compile(r"^\.(?P<name>[0-9a-f]{32}\.npy)\.(?P<host>.+)\.(?P<pid>\d+)\.partial$")
_DAMAGED = ("malformed", "not a database", "file is encrypted", "database corrupt")

TAPS = ("main", "aux1", "aux2")
CUT = "cut"  # the tensor kind stored in shards rather than in the features table
SHARDS = "shards"


class StoreError(UserError):
    """The cache file cannot be used (wrong version, not a cache, unwritable)."""


class CorruptFeatures(StoreError):
    """Stored features failed their integrity check; their index entries were removed, so the
    next caching run recomputes them. ``digests``: the images affected."""

    def __init__(self, digests: Sequence[str], what: str, removed: bool = True) -> None:
        self.digests = list(digests)
        first = ", ".join(d[:12] for d in self.digests[:3])
        more = f" and {len(self.digests) - 3} more" if len(self.digests) > 3 else ""
        then = ("they were removed from the cache: cache the images again to recompute them"
                if removed else "the cache is read-only, so they stay until it can be written")
        super().__init__(f"the cached features of {len(self.digests)} images are damaged "
                         f"({what}; images {first}{more}): {then}")


class NonFiniteFeatures(StoreError):
    """Features with inf or NaN (a float32 value beyond float16's 65504 becomes inf) are never
    stored: training on them would only produce NaN losses."""

    def __init__(self, digests: Sequence[str]) -> None:
        self.digests = list(digests)
        super().__init__(f"{len(self.digests)} images have features that are not finite "
                         f"(inf or NaN; first: {self.digests[0][:12] if self.digests else '-'})")


def finite_rows(*arrays: np.ndarray) -> np.ndarray:
    """Per image (axis 0), whether every value of every array is finite once cast to float16,
    the precision the store keeps."""
    ok = np.ones(len(arrays[0]) if arrays else 0, bool)
    for a in arrays:
        with np.errstate(over="ignore"):  # beyond float16's range is inf: not finite
            a16 = np.ascontiguousarray(a, np.float16)
        # inf and NaN are the float16 values whose exponent bits are all ones; testing the
        # bits is ~10x faster than np.isfinite on float16 (which numpy emulates)
        bits = a16.view(np.uint16).reshape(len(a16), -1) & 0x7FFF
        ok &= bits.max(axis=1, initial=0) < 0x7C00
    return ok


def _row_crc(main: bytes, aux1: bytes, aux2: bytes) -> int:
    return zlib.crc32(aux2, zlib.crc32(aux1, zlib.crc32(main)))


def _is_damaged(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.DatabaseError) and any(w in str(exc) for w in _DAMAGED)


def _sqlite_message(exc: sqlite3.Error, path: Path, what: str) -> str:
    """One line for an sqlite error while doing ``what``, naming the usual causes."""
    text = str(exc)
    if "disk is full" in text or "database or disk is full" in text:
        return (f"{what}: the disk holding the cache is full ({shown(path.parent)}); "
                "free some space or use another --cache-dir")
    if "readonly" in text or "read-only" in text:
        return f"{what}: the cache folder {shown(path.parent)} is read-only"
    if _is_damaged(exc):
        return (f"{what}: the cache file {shown(path)} is damaged ({text}); caching again "
                "moves it aside and rebuilds it")
    return f"{what}: {text} ({shown(path)})"


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran order, data offset) of an .npy file, reading only its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        return tuple(shape), dtype, fortran, f.tell()


@dataclass
class FeatureBatch:
    """Features of many images, each tap one float16 array with the images along axis 0."""

    digests: list[str]
    main: np.ndarray
    aux1: np.ndarray
    aux2: np.ndarray


def _chunks(seq: Sequence, n: int = 500) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
