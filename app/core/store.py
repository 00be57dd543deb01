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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.errors import UserError

SCHEMA_VERSION = 1
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
"""

TAPS = ("main", "aux1", "aux2")
CUT = "cut"  # the tensor kind stored in shards rather than in the features table
SHARDS = "shards"


class StoreError(UserError):
    """The cache file cannot be used (wrong version, not a cache, unwritable)."""


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
    """One open cache file. Not shared between threads: open one per thread or process."""

    def __init__(self, cache_dir: str | Path, timeout: float = 60.0) -> None:
        self.dir = Path(cache_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create cache folder {self.dir}: {exc}") from exc
        self.path = self.dir / DB_NAME
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + timeout
        self.db: sqlite3.Connection | None = None
        while True:
            try:
                self.db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
                self._check_version()
                break
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL or creating its tables while another process
                # does the same answers "locked" at once, without waiting: retry.
                self.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreError(f"{self.path} is not a usable feature cache: {exc}") from exc
                time.sleep(0.05)
            except sqlite3.DatabaseError as exc:
                self.close()
                raise StoreError(f"{self.path} is not a usable feature cache: {exc}") from exc

    def _check_version(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
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
    def _transaction(self) -> Iterator[None]:
        """One write transaction (the connection is in autocommit mode otherwise)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- file index: path + size + mtime -> digest, so a warm scan reads no image bytes --
    def file_index(self) -> dict[str, tuple[int, int, str, str | None]]:
        """path -> (size, mtime_ns, digest, format) as plain tuples, which Python's cyclic
        garbage collector stops tracking: 100k of them add nothing to its full passes (which
        hold every thread, a window's event loop included)."""
        rows = self.db.execute("SELECT path, size, mtime_ns, digest, format FROM files")
        return {r[0]: r[1:] for r in rows}

    def remember_files(self, rows: Iterable[tuple[str, int, int, str, str | None]]) -> None:
        rows = list(rows)
        if rows:
            with self._transaction():
                self.db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?)", rows)

    # -- images that failed to decode (by content, so a rename does not retry them) --
    def bad_reasons(self, prep: int) -> dict[str, str]:
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

    # -- models and their tap shapes --
    def register_model(self, model_key: str, spec: dict) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?)", (model_key, json.dumps(spec))
            )

    def model_spec(self, model_key: str) -> dict | None:
        row = self.db.execute("SELECT spec FROM models WHERE model_key=?", (model_key,)).fetchone()
        return json.loads(row[0]) if row else None

    # -- features --
    def cached_digests(self, model_key: str, digests: Iterable[str] | None = None) -> set[str]:
        """Digests with stored features (pooled taps or cut tensors) for ``model_key``."""
        both = ("SELECT digest FROM features WHERE model_key=?{cond} "
                "UNION ALL SELECT digest FROM arrays WHERE model_key=?{cond}")
        if digests is None:
            rows = self.db.execute(both.format(cond=""), (model_key, model_key))
            return {r[0] for r in rows}
        found: set[str] = set()
        for chunk in _chunks(list(digests)):
            cond = f" AND digest IN ({','.join('?' * len(chunk))})"
            rows = self.db.execute(both.format(cond=cond), (model_key, *chunk, model_key, *chunk))
            found.update(r[0] for r in rows)
        return found

    def put_features(self, model_key: str, batch: FeatureBatch) -> None:
        """Store a batch in one transaction and release this process's claims on it."""
        rows = [
            (
                model_key,
                d,
                np.ascontiguousarray(batch.main[i], np.float16).tobytes(),
                np.ascontiguousarray(batch.aux1[i], np.float16).tobytes(),
                np.ascontiguousarray(batch.aux2[i], np.float16).tobytes(),
            )
            for i, d in enumerate(batch.digests)
        ]
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO features VALUES (?,?,?,?,?)", rows)
            self.db.executemany(
                "DELETE FROM claims WHERE model_key=? AND digest=? AND owner=?",
                [(model_key, d, self.owner) for d in batch.digests],
            )

    def load_features(self, model_key: str, digests: Sequence[str],
                      taps: Sequence[str] = TAPS) -> FeatureBatch:
        """Features for ``digests`` in that order (taps not asked for are empty arrays);
        raises KeyError naming a missing digest."""
        spec = self.model_spec(model_key)
        if spec is None:
            raise KeyError(f"no features cached for model {model_key}")
        shapes = {t: tuple(spec["shapes"][t]) for t in TAPS}
        out = {t: np.empty((len(digests) if t in taps else 0, *shapes[t]), np.float16)
               for t in TAPS}
        columns = ", ".join(taps)
        unique = list(dict.fromkeys(digests))
        seen: set[str] = set()
        positions: dict[str, list[int]] = {}
        for i, d in enumerate(digests):
            positions.setdefault(d, []).append(i)
        for chunk in _chunks(unique):
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT digest, {columns} FROM features "
                f"WHERE model_key=? AND digest IN ({marks})",
                (model_key, *chunk),
            )
            for d, *blobs in rows:
                seen.add(d)
                for tap, blob in zip(taps, blobs):
                    arr = np.frombuffer(blob, np.float16).reshape(shapes[tap])
                    for i in positions[d]:
                        out[tap][i] = arr
        missing = [d for d in unique if d not in seen]
        if missing:
            raise KeyError(f"{len(missing)} images have no cached features (first: {missing[0]})")
        return FeatureBatch(list(digests), out["main"], out["aux1"], out["aux2"])

    # -- large tensors (the fine-tune cut) in shard files --
    def shard_dir(self, model_key: str) -> Path:
        return self.dir / SHARDS / hashlib.sha1(model_key.encode()).hexdigest()[:16]

    def put_arrays(self, model_key: str, digests: Sequence[str], array: np.ndarray) -> None:
        """Store one batch of tensors (images along axis 0) as a new shard, then index it in
        one transaction and release this process's claims on it."""
        folder = self.shard_dir(model_key)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.npy"
        tmp = folder / f".{name}.partial"
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array, np.float16))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO arrays VALUES (?,?,?,?)",
                                [(model_key, d, name, i) for i, d in enumerate(digests)])
            self.db.executemany(
                "DELETE FROM claims WHERE model_key=? AND digest=? AND owner=?",
                [(model_key, d, self.owner) for d in digests],
            )

    def load_arrays(self, model_key: str, digests: Sequence[str]) -> np.ndarray:
        """The tensors of ``digests`` in that order (float16), read from memory-mapped shards;
        raises KeyError naming a missing digest."""
        spec = self.model_spec(model_key)
        if spec is None:
            raise KeyError(f"no tensors cached for model {model_key}")
        out = np.empty((len(digests), *spec["shapes"][CUT]), np.float16)
        where: dict[str, tuple[str, int]] = {}
        for chunk in _chunks(list(dict.fromkeys(digests))):
            marks = ",".join("?" * len(chunk))
            where.update((d, (shard, row)) for d, shard, row in self.db.execute(
                f"SELECT digest, shard, row FROM arrays WHERE model_key=? AND digest IN ({marks})",
                (model_key, *chunk)))
        missing = [d for d in digests if d not in where]
        if missing:
            raise KeyError(f"{len(missing)} images have no cached tensors (first: {missing[0]})")
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for i, d in enumerate(digests):
            shard, row = where[d]
            by_shard.setdefault(shard, []).append((i, row))
        folder = self.shard_dir(model_key)
        for shard, pairs in by_shard.items():
            data = self._shard(folder / shard)
            positions, rows = zip(*pairs)
            out[list(positions)] = data[list(rows)]
        return out

    def _shard(self, path: Path) -> np.ndarray:
        cache = self.__dict__.setdefault("_shards", {})
        if path not in cache:
            if len(cache) > 256:
                cache.clear()
            cache[path] = np.load(path, mmap_mode="r")
        return cache[path]

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
        if host == socket.gethostname():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return False
            except (PermissionError, ValueError):
                return True
        return True
