"""The store's small lists: the files' digests by path, size and mtime (so unchanged files are
not read again), the images that do not decode, those a backbone cannot use, and the model
keys' specs."""

from __future__ import annotations

import json
from collections.abc import Iterable

from app.core.storage.store.common import (
    _chunks,
)


class _Lists:
    """One part of :class:`~app.core.storage.store.FeatureStore`: see the module."""

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
