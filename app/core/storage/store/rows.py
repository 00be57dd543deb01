"""Pooled taps as rows of the ``features`` table, one an image and model key: written a batch at
a time with their check, read back verified (a damaged row is removed and reported)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from app.core.storage.store.common import (
    CUT,
    DB_NAME,
    SHARDS,
    TAPS,
    CorruptFeatures,
    FeatureBatch,
    NonFiniteFeatures,
    _chunks,
    _row_crc,
    finite_rows,
)


class _Rows:
    """One part of :class:`~app.core.storage.store.FeatureStore`: see the module."""

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
