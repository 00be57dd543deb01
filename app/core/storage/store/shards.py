"""Large tensors (the fine-tune cut) in float16 ``.npy`` shard files beside the database, one a
computed batch, complete on disk before their index rows commit; read by memory-mapping the
rows asked for, each shard checked."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import uuid
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from app.core.base.errors import os_error_message, shown
from app.core.base.jobs import dead_leftovers
from app.core.storage.store.common import (
    _PARTIAL,
    CUT,
    SHARDS,
    CorruptFeatures,
    NonFiniteFeatures,
    StoreError,
    _chunks,
    _npy_header,
    finite_rows,
)


class _Shards:
    """One part of :class:`~app.core.storage.store.FeatureStore`: see the module."""

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
