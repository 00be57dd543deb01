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

from app.core.storage.store.claims import _Claims
from app.core.storage.store.common import (  # noqa: F401  (the store's API)
    CHECKPOINT_EVERY_PAGES,
    CLAIM_REFRESH_SECONDS,
    CLAIM_STALE_SECONDS,
    CUT,
    DB_NAME,
    PAGE_SIZE,
    SCHEMA_VERSION,
    SHARDS,
    SQLITE_AUTOCHECKPOINT,
    TAPS,
    CorruptFeatures,
    FeatureBatch,
    NonFiniteFeatures,
    StoreError,
    finite_rows,
)
from app.core.storage.store.connection import _Connection
from app.core.storage.store.lists import _Lists
from app.core.storage.store.rows import _Rows
from app.core.storage.store.shards import _Shards


class FeatureStore(_Connection, _Lists, _Rows, _Shards, _Claims):
    """One open cache file. Not shared between threads: open one per thread or process.

``read_only``: open without ever writing (None: when the folder or file is not writable),
e.g. a cache on a read-only mount; anything that must write raises a StoreError saying
"read-only". ``check``: the caching job's open, which also runs SQLite's ``quick_check``,
moves a damaged file aside and rebuilds it (see ``notes``), and removes shards a dead
writer left half-written.

    Its parts, one job each: the connection (``connection.py``), the small lists
    (``lists.py``), the pooled rows (``rows.py``), the cut's shards (``shards.py``) and the
    claims (``claims.py``).
    """
