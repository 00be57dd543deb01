"""A damaged, full or read-only cache is reported in one line and repaired by caching again:
never trained on, never a traceback, never deleted."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import traceback

import numpy as np
import pytest

from app.core.features import caching
from app.core.features.caching import CacheJob, cache_features
from app.core.features.engines import local as local_engine
from app.core.features.extract import keras_extractor
from app.core.intake.dataset import scan_dataset
from app.core.storage import store as store_module
from app.core.storage.store import (
    CorruptFeatures,
    FeatureBatch,
    FeatureStore,
    NonFiniteFeatures,
    StoreError,
)
from app.core.storage.store import shards as store_shards
from tests.conftest import make_image


def _cache(data, cache_dir, **kw):
    return cache_features(data, "tiny", "none", cache_dir, **kw)


def _digests(dataset_dir):
    return [r.digest for r in scan_dataset(dataset_dir).images]


def _db(cache_dir) -> sqlite3.Connection:
    return sqlite3.connect(cache_dir / store_module.DB_NAME, isolation_level=None)


# -- 1. non-finite features never enter the store --

def test_non_finite_features_are_refused_before_anything_is_written(cache_dir):
    z = np.zeros((2, 3), np.float32)
    big = z.copy()
    big[1, 2] = 1e6  # finite as float32, inf as float16
    with FeatureStore(cache_dir) as store:
        with pytest.raises(NonFiniteFeatures) as err:
            store.put_features("k", FeatureBatch(["a", "b"], big, z, z))
        assert err.value.digests == ["b"]
        with pytest.raises(NonFiniteFeatures):
            store.put_arrays("k", ["a", "b"], np.stack([z, big * np.nan]))
        assert store.cached_digests("k") == set()
    assert not list((cache_dir / store_module.SHARDS).rglob("*npy*"))


class _Overflowing:
    """The tiny backbone, except that a plain white image's features overflow float16."""

    def __init__(self, inner):
        self.inner, self.names, self.shapes = inner, inner.names, inner.shapes

    def predict(self, x):
        res = self.inner.predict(x)
        flat = x.reshape(len(x), -1)
        white = (flat == flat.max()).all(axis=1) & (flat.max(axis=1) > 0)
        return [np.asarray(r) + np.where(white, 1e6, 0).reshape(-1, *[1] * (r.ndim - 1))
                for r in res]


def test_an_image_whose_features_overflow_is_skipped_and_remembered(dataset_dir, cache_dir,
                                                                   monkeypatch):
    make_image(dataset_dir / "red" / "white.png", (255, 255, 255), noise=0)
    first = _cache(dataset_dir, cache_dir, extractor=lambda *a: _Overflowing(keras_extractor(*a)))
    assert (first.images, first.computed, first.to_compute) == (36, 36, 0)
    assert [s.path.rsplit("/", 1)[1] for s in first.skipped] == ["white.png"]
    assert "not finite" in first.skipped[0].reason
    with FeatureStore(cache_dir) as store:
        feats = store.load_features(first.model_key, [
            r.digest for r in scan_dataset(dataset_dir).images if "white" not in r.path])
        assert np.isfinite(feats.main).all() and np.isfinite(feats.aux1).all()
    again = _cache(dataset_dir, cache_dir,
                   extractor=lambda *a: pytest.fail("nothing should be computed"))
    assert (again.computed, again.reused) == (0, 36)
    assert [s.reason for s in again.skipped] == [first.skipped[0].reason]
    retried = _cache(dataset_dir, cache_dir, retry_skipped=True)  # a real backbone copes
    assert (retried.retried, retried.computed, retried.skipped) == (1, 1, [])


# -- 2. rows and shards carry a check, verified when read and before reuse --

def test_a_garbled_row_is_refused_at_read_and_recomputed(dataset_dir, cache_dir):
    result = _cache(dataset_dir, cache_dir)
    digests = _digests(dataset_dir)
    victim = digests[3]
    with _db(cache_dir) as db:
        db.execute("UPDATE features SET aux1=randomblob(length(aux1)) WHERE digest=?", (victim,))
    with FeatureStore(cache_dir) as store, pytest.raises(CorruptFeatures) as err:
        store.load_features(result.model_key, digests, ("main",))
    assert err.value.digests == [victim] and victim[:12] in str(err.value)
    assert "checksum" in str(err.value)
    again = _cache(dataset_dir, cache_dir)
    assert (again.computed, again.reused) == (1, 35)
    with FeatureStore(cache_dir) as store:
        assert len(store.load_features(result.model_key, digests).main) == 36


@pytest.mark.parametrize("damage", ["garbled", "short"])
def test_a_damaged_row_is_found_before_reuse(dataset_dir, cache_dir, damage):
    _cache(dataset_dir, cache_dir)
    victim = _digests(dataset_dir)[5]
    change = {"garbled": "main=randomblob(length(main))", "short": "aux2=substr(aux2, 1, 10)"}
    with _db(cache_dir) as db:
        db.execute(f"UPDATE features SET {change[damage]} WHERE digest=?", (victim,))
    again = _cache(dataset_dir, cache_dir)
    assert (again.computed, again.reused, again.repaired) == (1, 35, 1)


def test_rows_of_an_older_cache_without_checksums_are_still_checked(dataset_dir, cache_dir):
    result = _cache(dataset_dir, cache_dir)
    digests = _digests(dataset_dir)
    with _db(cache_dir) as db:
        db.execute("ALTER TABLE features DROP COLUMN crc")  # as an older version wrote it
    assert _cache(dataset_dir, cache_dir).reused == 36  # the column comes back, rows NULL
    with _db(cache_dir) as db:
        assert db.execute("SELECT count(*) FROM features WHERE crc IS NULL").fetchone()[0] == 36
        inf = np.full(32, np.inf, np.float16).tobytes()
        db.execute("UPDATE features SET main=? WHERE digest=?", (inf, digests[0]))
    with FeatureStore(cache_dir) as store:
        assert len(store.load_features(result.model_key, digests[1:]).main) == 35
        with pytest.raises(CorruptFeatures, match="inf or NaN"):
            store.load_features(result.model_key, digests)


def _full_shard(cache_dir):
    """A shard of a whole batch (8 rows), not the short last one."""
    with _db(cache_dir) as db:
        name = db.execute("SELECT shard FROM arrays GROUP BY shard HAVING count(*)=8 "
                          "ORDER BY shard").fetchone()[0]
    return next((cache_dir / store_module.SHARDS).rglob(name))


@pytest.mark.parametrize("damage", ["deleted", "truncated", "wrong shape", "garbled"])
def test_a_damaged_shard_is_refused_and_recomputed(dataset_dir, cache_dir, damage):
    first = _cache(dataset_dir, cache_dir, mode="finetune", batch_size=8)
    digests = _digests(dataset_dir)
    shard = _full_shard(cache_dir)
    with _db(cache_dir) as db:
        in_shard = {r[0] for r in db.execute("SELECT digest FROM arrays WHERE shard=?",
                                             (shard.name,))}
    assert len(in_shard) == 8
    data = shard.read_bytes()
    if damage == "deleted":
        shard.unlink()
    elif damage == "truncated":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "wrong shape":
        np.save(shard, np.zeros((8, 2, 2, 2), np.float16))
    else:
        arr = np.load(shard)
        arr[3].flat[7] += 1  # a flipped value: same size, same header
        np.save(shard, arr)
    if damage == "garbled":  # only a full read sees it: caching checks size and header
        assert _cache(dataset_dir, cache_dir, mode="finetune").reused == 36
    with FeatureStore(cache_dir) as store, pytest.raises(CorruptFeatures) as err:
        store.load_arrays(first.model_key, digests)
    assert set(err.value.digests) == in_shard
    again = _cache(dataset_dir, cache_dir, mode="finetune", batch_size=8)
    assert (again.computed, again.reused) == (8, 28)
    assert again.repaired == 0  # reading removed them already: plainly missing now
    with FeatureStore(cache_dir) as store:
        assert np.isfinite(store.load_arrays(first.model_key, digests)).all()


@pytest.mark.parametrize("damage", ["deleted", "truncated", "wrong shape"])
def test_a_damaged_shard_is_found_before_reuse(dataset_dir, cache_dir, damage):
    _cache(dataset_dir, cache_dir, mode="finetune", batch_size=8)
    shard = _full_shard(cache_dir)
    data = shard.read_bytes()
    if damage == "deleted":
        shard.unlink()
    elif damage == "truncated":
        shard.write_bytes(data[:-100])
    else:
        np.save(shard, np.zeros((4, 16, 16, 16), np.float16))
    with _db(cache_dir) as db:
        rows = db.execute("SELECT count(*) FROM arrays WHERE shard=?", (shard.name,)).fetchone()
    again = _cache(dataset_dir, cache_dir, mode="finetune", batch_size=8)
    assert (again.computed, again.repaired, again.reused) == (rows[0], rows[0], 36 - rows[0])


# -- 3. a damaged SQLite file is moved aside and rebuilt --

@pytest.mark.parametrize("damage", ["header", "features", "files"])
def test_a_damaged_database_is_moved_aside_and_rebuilt(dataset_dir, cache_dir, damage):
    from app.core.pipeline.retrain import load_splits

    first = _cache(dataset_dir, cache_dir)
    path = cache_dir / store_module.DB_NAME
    with _db(cache_dir) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name=?",
                          (damage,)).fetchone()
    offset = 0 if damage == "header" else (root[0] - 1) * page  # a page in the middle
    raw = bytearray(path.read_bytes())
    raw[offset : offset + page] = np.random.default_rng(0).bytes(page)
    path.write_bytes(bytes(raw))
    def train_reads():
        with FeatureStore(cache_dir) as store:
            store.load_features(first.model_key, _digests(dataset_dir))

    if damage != "files":  # training reads no file index
        with pytest.raises(StoreError, match="damaged|not a usable"):
            train_reads()
    again = _cache(dataset_dir, cache_dir)
    assert (again.computed, again.reused) == (36, 0)
    assert len(again.notes) == 1 and "moved it aside" in again.notes[0]
    aside = [p for p in cache_dir.iterdir() if ".damaged-" in p.name]
    assert {p.name.split(".damaged-")[0] for p in aside} == {store_module.DB_NAME}
    main = [p for p in aside if not p.name.endswith(("-wal", "-shm"))]
    assert len(main) == 1 and main[0].read_bytes() == bytes(raw)  # kept as it was
    assert _cache(dataset_dir, cache_dir).notes == []
    assert len(load_splits(scan_dataset(dataset_dir), first.model_key, cache_dir)) == 3


# -- 4. a read-only cache is read, and says "read-only" when it must be written --

def test_a_read_only_cache_reads_and_refuses_writes_in_one_line(dataset_dir, cache_dir):
    first = _cache(dataset_dir, cache_dir)
    path = cache_dir / store_module.DB_NAME
    before = path.read_bytes()
    result, _ = CacheJob(dataset_dir, "tiny", "none", cache_dir, read_only=True).run()
    assert (result.computed, result.reused) == (0, 36)
    with FeatureStore(cache_dir, read_only=True) as store:
        assert len(store.load_features(first.model_key, _digests(dataset_dir)).main) == 36
        with pytest.raises(StoreError, match="read-only"):
            store.mark_bad(1, [("x", "y")])
    make_image(dataset_dir / "red" / "new.png", (210, 30, 30), seed=99)
    with pytest.raises(StoreError, match="read-only"):
        CacheJob(dataset_dir, "tiny", "none", cache_dir, read_only=True).run()
    assert path.read_bytes() == before
    wal = cache_dir / f"{store_module.DB_NAME}-wal"
    assert not wal.exists() or wal.stat().st_size == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod a-w")
def test_a_folder_without_write_permission_opens_read_only(dataset_dir, cache_dir):
    _cache(dataset_dir, cache_dir)
    os.chmod(cache_dir / store_module.DB_NAME, 0o444)
    os.chmod(cache_dir, 0o555)
    try:
        assert _cache(dataset_dir, cache_dir).reused == 36
        make_image(dataset_dir / "red" / "new.png", (210, 30, 30), seed=99)
        with pytest.raises(StoreError, match="read-only"):
            _cache(dataset_dir, cache_dir)
    finally:
        os.chmod(cache_dir, 0o755)


# -- 5. a full disk is one line, and the cleanup after it does not hide it --

def test_a_full_database_is_one_line_and_the_store_stays_usable(cache_dir):
    rows = np.random.default_rng(0).normal(size=(400, 256)).astype(np.float16)
    with FeatureStore(cache_dir) as store:
        store.put_features("k", FeatureBatch(["a"], rows[:1], rows[:1], rows[:1]))
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count={pages + 2}")  # a real sqlite size limit
        with pytest.raises(StoreError, match="the disk holding the cache is full"):
            store.put_features("k", FeatureBatch([str(i) for i in range(400)], rows, rows, rows))
        assert store.cached_digests("k") == {"a"}
        store.put_features("k", FeatureBatch(["b"], rows[:1], rows[:1], rows[:1]))


def test_a_full_disk_while_caching_reports_the_first_failure(dataset_dir, cache_dir,
                                                            monkeypatch):
    class FullDisk(FeatureStore):
        """Every statement that frees a claim fails as on a full disk: the batch's commit and
        the cleanup in the job's finally."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.db.execute("CREATE TEMP TRIGGER full BEFORE DELETE ON main.claims "
                            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")

    monkeypatch.setattr(caching, "FeatureStore", FullDisk)
    monkeypatch.setattr(local_engine, "FeatureStore", FullDisk)  # its writer's connection
    with pytest.raises(StoreError, match="the disk holding the cache is full") as err:
        _cache(dataset_dir, cache_dir)
    assert "\n" not in str(err.value)
    frames = [f.name for f in traceback.extract_tb(err.tb)]
    assert "put_features" in frames and "release_claims" not in frames


def test_a_shard_write_on_a_full_disk_is_one_line_and_leaves_no_partial_file(cache_dir,
                                                                            monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with FeatureStore(cache_dir) as store:
        monkeypatch.setattr(store_shards.os, "fsync", no_space)
        with pytest.raises(StoreError, match="the disk is full"):
            store.put_arrays("k", ["a"], np.zeros((1, 4), np.float16))
        monkeypatch.undo()
        assert store.cached_digests("k") == set()
        assert os.listdir(store.shard_dir("k")) == []


# -- 6. partial shard files name their writer; a dead writer's are removed --

def test_partial_shards_of_dead_writers_are_removed_and_nothing_else(cache_dir):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = socket.gethostname()
    name = "0123456789abcdef0123456789abcdef.npy"
    with FeatureStore(cache_dir) as store:
        folder = store.shard_dir("k")
    folder.mkdir(parents=True)
    files = {
        f".{name}.{host}.{dead.pid}.partial": False,  # ours, writer dead: removed
        f".{name}.{host}.{live.pid}.partial": True,  # writer alive
        f".{name}.elsewhere.{dead.pid}.partial": True,  # another host's pid says nothing
        f".{name}.partial": True,  # no writer in the name
        f"notes.{host}.{dead.pid}.partial": True,  # not the app's pattern
        name: True,
    }
    for f in files:
        (folder / f).write_bytes(b"x")
    try:
        with FeatureStore(cache_dir):  # a plain open (training) touches nothing
            assert len(os.listdir(folder)) == len(files)
        with FeatureStore(cache_dir, check=True):  # a caching job's open
            pass
    finally:
        live.kill()
        live.wait()
    assert sorted(os.listdir(folder)) == sorted(f for f, keep in files.items() if keep)
