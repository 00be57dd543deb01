"""The cache file's connection: opening (a damaged file moved aside, never deleted), the schema's
version, the transactions, and checkpoints of the write-ahead log beside a bulk writer."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from app.core.base.errors import os_error_message, shown
from app.core.storage.store.common import (
    _CRC_COLUMN,
    _SCHEMA,
    CHECKPOINT_EVERY_PAGES,
    DB_NAME,
    PAGE_SIZE,
    SCHEMA_VERSION,
    SHARDS,
    SQLITE_AUTOCHECKPOINT,
    StoreError,
    _is_damaged,
    _sqlite_message,
)


class _Connection:
    """One part of :class:`~app.core.storage.store.FeatureStore`: see the module."""

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

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
