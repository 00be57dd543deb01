"""The feature cache: an SQLite file (WAL mode) that survives kill -9 and shared use.

Rows are keyed by the image's content digest and a *model key* (backbone, weights fingerprint,
preprocessing version), so a changed backbone or weights file never reuses old rows and a
renamed or moved file reuses its own. Features are stored as float16. Every batch is one
transaction: a killed run loses at most the batch in flight.

Large spatial tensors (the fine-tune *cut*, 100-450 KB an image) live outside SQLite in
float16 ``.npy`` shard files, one per computed batch, indexed by the ``arrays`` table: a shard
is complete on disk (written, then renamed) before its index rows commit, so a killed run
leaves at worst an unreferenced shard, and reading memory-maps only the rows asked for.
Pooled taps and cut tensors share one index, one model-key scheme and one claim protocol.

Two processes caching the same images coordinate through short-lived *claims*: a process
claims the digests it is about to compute; another skips them and waits, unless the claim's
owner has died or the claim is stale.

Every row and shard carries a cheap integrity check (a crc32, lengths, a shard's byte size and
shape) written with it and verified when read, so a damaged cache is reported and recomputed
instead of trained on: see :class:`CorruptFeatures`. A damaged SQLite file is moved aside
(never deleted) and rebuilt empty by the caching job's open (``check=True``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from app.core.base.errors import UserError, os_error_message, shown
from app.core.base.jobs import dead_leftovers, process_alive

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


class FeatureStore:
    """One open cache file. Not shared between threads: open one per thread or process.

    ``read_only``: open without ever writing (None: when the folder or file is not writable),
    e.g. a cache on a read-only mount; anything that must write raises a StoreError saying
    "read-only". ``check``: the caching job's open, which also runs SQLite's ``quick_check``,
    moves a damaged file aside and rebuilds it (see ``notes``), and removes shards a dead
    writer left half-written.
    """

    def __init__(self, cache_dir: str | Path, timeout: float = 60.0,
                 read_only: bool | None = None, check: bool = False,
                 owner: str | None = None) -> None:
        self.dir = Path(cache_dir)
        self.path = self.dir / DB_NAME
        self.notes: list[str] = []  # one line each, for the caller to show (a file moved aside)
        self._wrote: Callable[[int], None] | None = None  # background_checkpoints' counter
        if read_only is None:
            read_only = self._looks_read_only()
        self.read_only = read_only
        if not read_only:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create cache folder {self.dir}: {exc}") from exc
        elif not self.path.is_file():
            raise StoreError(f"the cache folder {shown(self.dir)} is read-only and holds no "
                             "feature cache yet")
        # who holds this connection's claims; another connection of the same job (its
        # writer thread) passes the job's owner, so that its writes release the job's claims
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.db: sqlite3.Connection | None = None
        try:
            self._open(timeout, check)
        except sqlite3.DatabaseError as exc:
            self.close()
            if not (check and _is_damaged(exc)) or read_only:
                raise StoreError(f"{self.path} is not a usable feature cache: {exc}") from exc
            self._move_aside(exc)
            self._open(timeout, check=False)
        if check and not read_only:
            self.remove_dead_partials()

    def _looks_read_only(self) -> bool:
        """The folder exists but cannot be written (os.access: root passes it everywhere)."""
        if self.path.exists():
            return not (os.access(self.path, os.W_OK) and os.access(self.dir, os.W_OK))
        return self.dir.is_dir() and not os.access(self.dir, os.W_OK)

    def _open(self, timeout: float, check: bool) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._connect(timeout)
                if check:
                    row = self.db.execute("PRAGMA quick_check").fetchone()
                    if row is None or row[0] != "ok":
                        lines = [ln for ln in (row[0] if row else "-").splitlines()
                                 if not ln.startswith("***")] or ["-"]
                        raise sqlite3.DatabaseError(
                            f"database disk image is malformed: {shown(lines[0])[:120]}")
                return
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL or creating its tables while another process
                # does the same answers "locked" at once, without waiting: retry.
                self.close()
                if _is_damaged(exc):
                    raise
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreError(f"{self.path} is not a usable feature cache: {exc}") from exc
                time.sleep(0.05)
            except BaseException:
                self.close()
                raise

    def _connect(self, timeout: float) -> None:
        if self.read_only:
            uri = self.path.resolve().as_uri()
            try:
                self.db = sqlite3.connect(f"{uri}?mode=ro", timeout=timeout,
                                          isolation_level=None, uri=True)
                self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:
                # a WAL file without its -shm on a read-only mount: read it as immutable
                self.close()
                self.db = sqlite3.connect(f"{uri}?immutable=1", timeout=timeout,
                                          isolation_level=None, uri=True)
        else:
            self.db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            # a new file only (an existing one keeps its page size): a row is ~35 KB of
            # blobs, and 16 KB pages write it ~1.6x faster than 4 KB ones
            self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        if not {"meta", "features", "arrays"} <= tables:
            raise StoreError(f"{self.path} is not a feature cache of this app")
        self._tables = tables
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(features)")}
        if "crc" not in columns and not self.read_only:
            with contextlib.suppress(sqlite3.OperationalError):  # another process added it
                self.db.execute(_CRC_COLUMN)
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(features)")}
        self._has_crc = "crc" in columns
        self._check_version()

    def _move_aside(self, exc: BaseException) -> None:
        """Rename the damaged file (and its -wal/-shm, and the shards it indexed) to
        ``*.damaged-<UTC time>``: never deleted, a person may want it back."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        base, n = stamp, 1
        while any(self.dir.glob(f"*.damaged-{stamp}*")):  # never overwrite an earlier one
            stamp, n = f"{base}-{n}", n + 1
        moved = []
        try:
            for suffix in ("", "-wal", "-shm"):
                src = self.dir / f"{DB_NAME}{suffix}"
                if src.exists():
                    dst = self.dir / f"{DB_NAME}.damaged-{stamp}{suffix}"
                    os.replace(src, dst)
                    moved.append(dst)
            shards = self.dir / SHARDS
            if shards.is_dir():
                os.replace(shards, self.dir / f"{SHARDS}.damaged-{stamp}")
        except OSError as err:
            raise StoreError(os_error_message(
                err, f"the feature cache {shown(self.path)} is damaged ({exc}) and cannot be "
                "moved aside")) from exc
        self.notes.append(f"the feature cache was damaged ({exc}): moved it aside to "
                          f"{shown(moved[0] if moved else self.dir)} and started an empty one; "
                          "its images are computed again")

    def _check_version(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            if self.read_only:
                raise StoreError(f"{self.path} is not a feature cache of this app")
            self.db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by another version of the app "
                f"(schema {row[0]}, expected {SCHEMA_VERSION}); use another --cache-dir"
            )

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    @contextlib.contextmanager
    def background_checkpoints(self, every: int = CHECKPOINT_EVERY_PAGES) -> Iterator[None]:
        """While bulk writing features on this connection: copy the WAL into the database
        from another thread and connection (SQLite's own advice for write-heavy work), so this
        thread does not stop for it. Every ``every`` pages of feature rows this connection
        commits (:meth:`put_features` counts them; the cut's shards are files, not WAL pages)
        it wakes the checkpointer (a PASSIVE checkpoint: it never waits for this writer).
        Every ``4 * every`` pages this connection runs a RESTART checkpoint itself (its own
        automatic ones are off): it copies only what the other has not, waits for it, and has
        the WAL start again from its beginning, so the WAL stays bounded even when the writer
        never pauses (passive checkpoints alone let it grow: measured)."""
        if self.read_only:
            yield
            return
        page = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        wake, stop = threading.Event(), threading.Event()
        one_at_a_time = threading.Lock()  # SQLite answers a second checkpointer "busy" at once

        def copy() -> None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            except sqlite3.Error:
                return  # then this connection's own checkpoints do it
            try:
                while not stop.is_set():
                    wake.wait()
                    wake.clear()
                    with one_at_a_time, contextlib.suppress(sqlite3.Error):
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                db.close()

        thread = threading.Thread(target=copy, name="feature-checkpoints", daemon=True)
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        thread.start()
        written = since_restart = 0

        def wrote(nbytes: int) -> None:
            nonlocal written, since_restart
            pages = -(-nbytes // page)
            written += pages
            since_restart += pages
            if written >= every:
                written = 0
                wake.set()
            if since_restart >= 4 * every:
                since_restart = 0
                with one_at_a_time, contextlib.suppress(sqlite3.Error):  # busy: the next one
                    self.db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

        self._wrote = wrote
        try:
            yield
        finally:
            self._wrote = None
            stop.set()
            wake.set()
            thread.join()
            if self.db is not None:
                self.db.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT}")

    @contextlib.contextmanager
    def _transaction(self, what: str = "cannot write to the feature cache") -> Iterator[None]:
        """One write transaction (the connection is in autocommit mode otherwise); sqlite's
        errors (a full disk, a read-only file) become one-line StoreErrors."""
        if self.read_only:
            raise StoreError(f"{what}: the cache at {shown(self.dir)} is read-only")
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # sqlite may have rolled back already
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
            raise StoreError(_sqlite_message(exc, self.path, what)) from exc

    @contextlib.contextmanager
    def _reading(self, what: str = "cannot read the feature cache") -> Iterator[None]:
        """sqlite's errors while reading (a damaged file) become one-line StoreErrors."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(_sqlite_message(exc, self.path, what)) from exc

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def remove_dead_partials(self) -> int:
        """Remove half-written shards whose writer (this host, by pid) has died; nothing else:
        a name not of the app's own pattern, another host's or a live writer's stays. Returns
        how many were removed."""
        root = self.dir / SHARDS
        if not root.is_dir():
            return 0
        removed = 0
        for folder in root.iterdir():
            if not folder.is_dir():
                continue
            for entry, _m in dead_leftovers(folder, _PARTIAL):
                if entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        removed += 1
        return removed

    # -- file index: path + size + mtime -> digest, so a warm scan reads no image bytes --
    def file_index(self) -> dict[str, tuple[int, int, str, str | None]]:
        """path -> (size, mtime_ns, digest, format) as plain tuples, which Python's cyclic
        garbage collector stops tracking: 100k of them add nothing to its full passes (which
        hold every thread, a window's event loop included)."""
        with self._reading():
            rows = self.db.execute("SELECT path, size, mtime_ns, digest, format FROM files")
            return {r[0]: r[1:] for r in rows}

    def remember_files(self, rows: Iterable[tuple[str, int, int, str, str | None]]) -> None:
        """Remember digests of scanned files; skipped on a read-only cache (the index only
        saves re-reading image bytes, nothing depends on it)."""
        rows = list(rows)
        if rows and not self.read_only:
            with self._transaction():
                self.db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?)", rows)

    # -- images that failed to decode (by content, so a rename does not retry them) --
    def bad_reasons(self, prep: int) -> dict[str, str]:
        with self._reading():
            rows = self.db.execute("SELECT digest, reason FROM bad WHERE prep=?", (prep,))
            return dict(rows.fetchall())

    def mark_bad(self, prep: int, items: Iterable[tuple[str, str]]) -> None:
        with self._transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO bad VALUES (?,?,?)", [(d, prep, r) for d, r in items]
            )

    def forget_bad(self, prep: int, digests: Iterable[str]) -> int:
        """Try these images again next time ("retry skipped files"); how many were known bad."""
        forgotten = 0
        with self._transaction():
            for chunk in _chunks(list(digests)):
                marks = ",".join("?" * len(chunk))
                forgotten += self.db.execute(
                    f"DELETE FROM bad WHERE prep=? AND digest IN ({marks})", (prep, *chunk)
                ).rowcount
        return forgotten

    # -- images whose features came out unusable (inf/NaN) with one model key --
    def unusable_reasons(self, model_key: str, digests: Iterable[str]) -> dict[str, str]:
        """Images this model key cannot represent (by content and key: another backbone may
        do fine, so this is not the decode-failure ``bad`` list)."""
        found: dict[str, str] = {}
        if "unusable" not in self._tables:
            return found
        with self._reading():
            for chunk in _chunks(list(digests)):
                marks = ",".join("?" * len(chunk))
                found.update(self.db.execute(
                    f"SELECT digest, reason FROM unusable WHERE model_key=? AND digest IN "
                    f"({marks})", (model_key, *chunk)))
        return found

    def mark_unusable(self, model_key: str, items: Iterable[tuple[str, str]]) -> None:
        items = list(items)
        if items:
            with self._transaction():
                self.db.executemany("INSERT OR REPLACE INTO unusable VALUES (?,?,?)",
                                    [(model_key, d, r) for d, r in items])

    def forget_unusable(self, digests: Iterable[str]) -> int:
        """Try these images again with every model key; how many were known unusable."""
        forgotten = 0
        if "unusable" not in self._tables:
            return forgotten
        with self._transaction():
            for chunk in _chunks(list(digests)):
                marks = ",".join("?" * len(chunk))
                forgotten += self.db.execute(
                    f"DELETE FROM unusable WHERE digest IN ({marks})", tuple(chunk)).rowcount
        return forgotten

    # -- models and their tap shapes --
    def register_model(self, model_key: str, spec: dict) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?)", (model_key, json.dumps(spec))
            )

    def model_spec(self, model_key: str) -> dict | None:
        with self._reading():
            row = self.db.execute("SELECT spec FROM models WHERE model_key=?",
                                  (model_key,)).fetchone()
        return json.loads(row[0]) if row else None

    # -- features --
    def cached_digests(self, model_key: str, digests: Iterable[str] | None = None) -> set[str]:
        """Digests with stored features (pooled taps or cut tensors) for ``model_key``."""
        both = ("SELECT digest FROM features WHERE model_key=?{cond} "
                "UNION ALL SELECT digest FROM arrays WHERE model_key=?{cond}")
        with self._reading():
            if digests is None:
                rows = self.db.execute(both.format(cond=""), (model_key, model_key))
                return {r[0] for r in rows}
            found: set[str] = set()
            for chunk in _chunks(list(digests)):
                cond = f" AND digest IN ({','.join('?' * len(chunk))})"
                rows = self.db.execute(both.format(cond=cond),
                                       (model_key, *chunk, model_key, *chunk))
                found.update(r[0] for r in rows)
        return found

    def put_features(self, model_key: str, batch: FeatureBatch) -> None:
        """Store a batch in one transaction and release this process's claims on it; raises
        NonFiniteFeatures (storing nothing) when a row holds inf or NaN as float16."""
        with np.errstate(over="ignore"):  # an overflow becomes inf, refused just below
            taps = [np.ascontiguousarray(t, np.float16)
                    for t in (batch.main, batch.aux1, batch.aux2)]
        ok = finite_rows(*taps)
        if not ok.all():
            raise NonFiniteFeatures([d for d, o in zip(batch.digests, ok) if not o])
        rows = []
        for i, d in enumerate(batch.digests):
            blobs = [t[i].tobytes() for t in taps]
            rows.append((model_key, d, *blobs, _row_crc(*blobs)))
        with self._transaction("cannot store features"):
            self.db.executemany("INSERT OR REPLACE INTO features "
                                "(model_key, digest, main, aux1, aux2, crc) VALUES (?,?,?,?,?,?)",
                                rows)
            self.db.executemany(
                "DELETE FROM claims WHERE model_key=? AND digest=? AND owner=?",
                [(model_key, d, self.owner) for d in batch.digests],
            )
        if self._wrote is not None:
            self._wrote(sum(len(b) for row in rows for b in row[2:5]))

    def _tap_bytes(self, spec: dict) -> dict[str, int]:
        return {t: 2 * int(np.prod(spec["shapes"][t])) for t in TAPS}

    def _row_problem(self, sizes: dict[str, int], blobs: Sequence, crc: int | None) -> str | None:
        """Why a features row (main, aux1, aux2 blobs) cannot be used, or None."""
        for tap, blob in zip(TAPS, blobs):
            if not isinstance(blob, bytes) or len(blob) != sizes[tap]:
                return "a row of the wrong length"
        if crc is not None:
            return None if _row_crc(*blobs) == crc else "a row whose checksum does not match"
        for blob in blobs:  # an older row without a checksum: at least finite numbers
            if not np.isfinite(np.frombuffer(blob, np.float16)).all():
                return "a row with inf or NaN"
        return None

    def _forget_rows(self, table: str, model_key: str, digests: Sequence[str]) -> bool:
        """Delete damaged index rows so the next caching run recomputes them; False when the
        cache is read-only (nothing deleted)."""
        if self.read_only or not digests:
            return not self.read_only
        with self._transaction("cannot remove damaged features"):
            for chunk in _chunks(list(digests)):
                marks = ",".join("?" * len(chunk))
                self.db.execute(f"DELETE FROM {table} WHERE model_key=? AND digest IN ({marks})",
                                (model_key, *chunk))
        return True

    def load_features(self, model_key: str, digests: Sequence[str],
                      taps: Sequence[str] = TAPS) -> FeatureBatch:
        """Features for ``digests`` in that order (taps not asked for are empty arrays);
        raises KeyError naming a missing digest, CorruptFeatures for rows that fail their
        check (all three blobs are read for it: the crc covers them together)."""
        spec = self.model_spec(model_key)
        if spec is None:
            raise KeyError(f"no features cached for model {model_key}")
        shapes = {t: tuple(spec["shapes"][t]) for t in TAPS}
        sizes = self._tap_bytes(spec)
        out = {t: np.empty((len(digests) if t in taps else 0, *shapes[t]), np.float16)
               for t in TAPS}
        crc = "crc" if self._has_crc else "NULL"
        unique = list(dict.fromkeys(digests))
        seen: set[str] = set()
        damaged: dict[str, str] = {}
        positions: dict[str, list[int]] = {}
        for i, d in enumerate(digests):
            positions.setdefault(d, []).append(i)
        with self._reading():
            for chunk in _chunks(unique):
                marks = ",".join("?" * len(chunk))
                rows = self.db.execute(
                    f"SELECT digest, main, aux1, aux2, {crc} FROM features "
                    f"WHERE model_key=? AND digest IN ({marks})",
                    (model_key, *chunk),
                )
                for d, *blobs, row_crc in rows:
                    seen.add(d)
                    problem = self._row_problem(sizes, blobs, row_crc)
                    if problem:
                        damaged[d] = problem
                        continue
                    for tap in taps:
                        arr = np.frombuffer(blobs[TAPS.index(tap)], np.float16)
                        arr = arr.reshape(shapes[tap])
                        for i in positions[d]:
                            out[tap][i] = arr
        if damaged:
            removed = self._forget_rows("features", model_key, list(damaged))
            raise CorruptFeatures(list(damaged), next(iter(damaged.values())), removed)
        missing = [d for d in unique if d not in seen]
        if missing:
            raise KeyError(f"{len(missing)} images have no cached features (first: {missing[0]})")
        return FeatureBatch(list(digests), out["main"], out["aux1"], out["aux2"])

    # -- large tensors (the fine-tune cut) in shard files --
    def shard_dir(self, model_key: str) -> Path:
        return self.dir / SHARDS / hashlib.sha1(model_key.encode()).hexdigest()[:16]

    def put_arrays(self, model_key: str, digests: Sequence[str], array: np.ndarray) -> None:
        """Store one batch of tensors (images along axis 0) as a new shard with its size, crc
        and shape, then index it in one transaction and release this process's claims on it.
        Raises NonFiniteFeatures (writing nothing) when a tensor holds inf or NaN as float16."""
        with np.errstate(over="ignore"):  # an overflow becomes inf, refused below
            array = np.ascontiguousarray(array, np.float16)
        ok = finite_rows(array)
        if not ok.all():
            raise NonFiniteFeatures([d for d, o in zip(digests, ok) if not o])
        buf = io.BytesIO()
        np.save(buf, array)
        data = buf.getbuffer()
        folder = self.shard_dir(model_key)
        name = f"{uuid.uuid4().hex}.npy"
        tmp = folder / f".{name}.{socket.gethostname()}.{os.getpid()}.partial"
        if self.read_only:
            raise StoreError(f"cannot store tensors: the cache at {shown(self.dir)} is read-only")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, folder / name)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
        except OSError as exc:
            raise StoreError(os_error_message(
                exc, f"cannot write a shard of the feature cache in {shown(folder)}")) from exc
        shard = (model_key, name, len(data), zlib.crc32(data), json.dumps(list(array.shape)))
        try:
            with self._transaction("cannot store tensors"):
                self.db.execute("INSERT OR REPLACE INTO shards VALUES (?,?,?,?,?)", shard)
                self.db.executemany("INSERT OR REPLACE INTO arrays VALUES (?,?,?,?)",
                                    [(model_key, d, name, i) for i, d in enumerate(digests)])
                self.db.executemany(
                    "DELETE FROM claims WHERE model_key=? AND digest=? AND owner=?",
                    [(model_key, d, self.owner) for d in digests],
                )
        except BaseException:
            with contextlib.suppress(OSError):  # never indexed: nothing refers to it
                (folder / name).unlink()
            raise

    def _shard_records(self, model_key: str, names: Iterable[str]
                       ) -> dict[str, tuple[int, int, tuple[int, ...]]]:
        """shard name -> (bytes, crc, shape) as written; shards of older versions have none."""
        found: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        if "shards" not in self._tables:
            return found
        for chunk in _chunks(list(names)):
            marks = ",".join("?" * len(chunk))
            for name, size, crc, shape in self.db.execute(
                    f"SELECT shard, bytes, crc, shape FROM shards WHERE model_key=? "
                    f"AND shard IN ({marks})", (model_key, *chunk)):
                found[name] = (size, crc, tuple(json.loads(shape)))
        return found

    def _shard_problem(self, path: Path, record: tuple[int, int, tuple[int, ...]] | None,
                       row_shape: tuple[int, ...], max_row: int, full: bool) -> str | None:
        """Why a shard cannot be used, or None: it exists, has its size and an .npy header of
        the right shape and dtype; with ``full``, its bytes match the crc written with it."""
        try:
            size = path.stat().st_size
            shape, dtype, fortran, offset = _npy_header(path)
        except FileNotFoundError:
            return "a shard file is missing"
        except (OSError, ValueError, SyntaxError):
            return "a shard file is not a readable array"
        if record is not None and size != record[0]:
            return "a shard file has the wrong size"
        if (dtype != np.float16 or fortran or len(shape) != 1 + len(row_shape)
                or tuple(shape[1:]) != tuple(row_shape) or shape[0] <= max_row
                or (record is not None and tuple(shape) != record[2])):
            return "a shard file has the wrong shape"
        if size != offset + 2 * int(np.prod(shape)):
            return "a shard file has the wrong size"
        if full and record is not None:
            crc = 0
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    crc = zlib.crc32(block, crc)
            if crc != record[1]:
                return "a shard file whose checksum does not match"
        return None

    def _forget_shard(self, model_key: str, shard: str) -> tuple[list[str], bool]:
        """Remove a damaged shard's index rows (every image in it) and the file (our own);
        returns the images that were in it and whether they could be removed."""
        with self._reading():
            digests = [r[0] for r in self.db.execute(
                "SELECT digest FROM arrays WHERE model_key=? AND shard=?", (model_key, shard))]
        if self.read_only:
            return digests, False
        with self._transaction("cannot remove damaged features"):
            self.db.execute("DELETE FROM arrays WHERE model_key=? AND shard=?", (model_key, shard))
            if "shards" in self._tables:
                self.db.execute("DELETE FROM shards WHERE model_key=? AND shard=?",
                                (model_key, shard))
        with contextlib.suppress(OSError):
            (self.shard_dir(model_key) / shard).unlink()
        self.__dict__.get("_shards", {}).pop(self.shard_dir(model_key) / shard, None)
        return digests, True

    def load_arrays(self, model_key: str, digests: Sequence[str]) -> np.ndarray:
        """The tensors of ``digests`` in that order (float16), read from memory-mapped shards;
        raises KeyError naming a missing digest, CorruptFeatures for a shard or row that fails
        its check (a shard's crc is verified once per connection, the rows read for finiteness).
        """
        spec = self.model_spec(model_key)
        if spec is None:
            raise KeyError(f"no tensors cached for model {model_key}")
        row_shape = tuple(spec["shapes"][CUT])
        out = np.empty((len(digests), *row_shape), np.float16)
        where: dict[str, tuple[str, int]] = {}
        with self._reading():
            for chunk in _chunks(list(dict.fromkeys(digests))):
                marks = ",".join("?" * len(chunk))
                where.update((d, (shard, row)) for d, shard, row in self.db.execute(
                    f"SELECT digest, shard, row FROM arrays "
                    f"WHERE model_key=? AND digest IN ({marks})", (model_key, *chunk)))
        missing = [d for d in digests if d not in where]
        if missing:
            raise KeyError(f"{len(missing)} images have no cached tensors (first: {missing[0]})")
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for i, d in enumerate(digests):
            shard, row = where[d]
            by_shard.setdefault(shard, []).append((i, row))
        folder = self.shard_dir(model_key)
        verified = self.__dict__.setdefault("_verified", set())
        with self._reading():
            records = self._shard_records(model_key, by_shard)
        damaged: list[str] = []
        problem, removed = "", True
        for shard, pairs in by_shard.items():
            path = folder / shard
            positions, rows = zip(*pairs)
            why = None
            if path not in verified:
                why = self._shard_problem(path, records.get(shard), row_shape, max(rows), True)
            if why is None:
                verified.add(path)
                out[list(positions)] = self._shard(path)[list(rows)]
                bad_rows = ~finite_rows(out[list(positions)])
                if bad_rows.any():  # written before rows were checked: only those rows
                    why = "a tensor with inf or NaN"
                    lost = [digests[p] for p, b in zip(positions, bad_rows) if b]
                    removed &= self._forget_rows("arrays", model_key, lost)
                    damaged += lost
            else:
                verified.discard(path)
                removed &= self._forget_shard(model_key, shard)[1]
                damaged += [digests[p] for p in positions]
            problem = problem or why or ""
        if damaged:
            raise CorruptFeatures(list(dict.fromkeys(damaged)), problem, removed)
        return out

    def _shard(self, path: Path) -> np.ndarray:
        cache = self.__dict__.setdefault("_shards", {})
        if path not in cache:
            if len(cache) > 256:
                cache.clear()
            cache[path] = np.load(path, mmap_mode="r")
        return cache[path]

    def verify_reusable(self, model_key: str, digests: Iterable[str]) -> set[str]:
        """Check what a caching run is about to reuse, cheaply: each features row's lengths and
        crc (summed in SQLite by a registered function, no rows copied out), each shard's
        existence, size and header shape (no full crc: that is read's job). Damaged entries are
        removed; returns their digests, to be computed again."""
        digests = list(digests)
        spec = self.model_spec(model_key)
        if spec is None or not digests:
            return set()
        damaged: set[str] = set()
        with self._reading():
            rows = set()
            if CUT not in spec["shapes"]:
                rows = self._damaged_rows(model_key, digests, self._tap_bytes(spec))
            shards: dict[str, int] = {}
            for chunk in _chunks(digests):
                marks = ",".join("?" * len(chunk))
                for shard, top in self.db.execute(
                        f"SELECT shard, max(row) FROM arrays WHERE model_key=? AND digest IN "
                        f"({marks}) GROUP BY shard", (model_key, *chunk)):
                    shards[shard] = max(top, shards.get(shard, -1))
            records = self._shard_records(model_key, shards)
        if shards:
            row_shape = tuple(spec["shapes"].get(CUT, ()))
            folder = self.shard_dir(model_key)
            for shard, top in shards.items():
                if self._shard_problem(folder / shard, records.get(shard), row_shape, top,
                                       False):
                    damaged |= set(self._forget_shard(model_key, shard)[0])
        self._forget_rows("features", model_key, sorted(rows))
        return (damaged | rows) & set(digests)

    def _damaged_rows(self, model_key: str, digests: Sequence[str], sizes: dict[str, int]
                      ) -> set[str]:
        """Digests whose features row fails its length or crc check."""
        def row_ok(main: bytes, aux1: bytes, aux2: bytes, crc: int | None) -> int:
            return self._row_problem(sizes, (main, aux1, aux2), crc) is None

        self.db.create_function("bs_row_ok", 4, row_ok, deterministic=True)
        crc = "crc" if self._has_crc else "NULL"
        found: set[str] = set()
        for chunk in _chunks(digests):
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self.db.execute(
                f"SELECT digest FROM features WHERE model_key=? AND digest IN ({marks}) "
                f"AND NOT bs_row_ok(main, aux1, aux2, {crc})", (model_key, *chunk)))
        return found

    def disk_bytes(self, model_key: str | None = None) -> int:
        """Bytes the cache takes on disk: all of it, or one model key's shards."""
        if model_key is not None:
            folder = self.shard_dir(model_key)
            return sum(p.stat().st_size for p in folder.glob("*.npy")) if folder.is_dir() else 0
        files = [p for p in self.dir.glob(f"{DB_NAME}*")]
        files += list((self.dir / SHARDS).rglob("*.npy"))
        return sum(p.stat().st_size for p in files if p.is_file())

    # -- claims between processes --
    def claim(self, model_key: str, digests: Sequence[str]) -> list[str]:
        """Claim the digests nobody has computed or is computing; returns the ones now ours."""
        now = time.time()
        with self._transaction():
            taken: dict[str, tuple[str, float]] = {}
            done = self.cached_digests(model_key, digests)
            for chunk in _chunks(list(digests)):
                marks = ",".join("?" * len(chunk))
                for d, owner, at in self.db.execute(
                    "SELECT digest, owner, at FROM claims "
                    f"WHERE model_key=? AND digest IN ({marks})",
                    (model_key, *chunk),
                ):
                    taken[d] = (owner, at)
            mine = [
                d
                for d in dict.fromkeys(digests)
                if d not in done and (d not in taken or not self._claim_alive(*taken[d], now))
            ]
            self.db.executemany(
                "INSERT OR REPLACE INTO claims VALUES (?,?,?,?)",
                [(model_key, d, self.owner, now) for d in mine],
            )
        return mine

    def refresh_claims(self, model_key: str, owner: str | None = None) -> int:
        """Mark this owner's claims as fresh: a long batch or a slow weights download must not
        look stale to another process. Returns how many claims were refreshed."""
        with self._transaction():
            return self.db.execute(
                "UPDATE claims SET at=? WHERE model_key=? AND owner=?",
                (time.time(), model_key, owner or self.owner),
            ).rowcount

    def release_claims(self, model_key: str) -> None:
        with self._transaction():
            self.db.execute(
                "DELETE FROM claims WHERE model_key=? AND owner=?", (model_key, self.owner)
            )

    def _claim_alive(self, owner: str, at: float, now: float) -> bool:
        if owner == self.owner:
            return False
        if now - at > CLAIM_STALE_SECONDS:
            return False
        host, pid, _ = owner.split(":", 2)
        if host == socket.gethostname() and pid.isdigit():
            return process_alive(int(pid))
        return True
