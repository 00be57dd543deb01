"""Claims: two processes caching the same images coordinate through short-lived claims on the
digests each is about to compute; a dead or stale owner's claims lapse."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from app.core.base.jobs import process_alive
from app.core.storage.store import common
from app.core.storage.store.common import (
    _chunks,
)


class _Claims:
    """One part of :class:`~app.core.storage.store.FeatureStore`: see the module."""

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
        if now - at > common.CLAIM_STALE_SECONDS:  # read now: a test may shorten it
            return False
        host, pid, _ = owner.split(":", 2)
        if host == socket.gethostname() and pid.isdigit():
            return process_alive(int(pid))
        return True
