"""Claims between processes: a live claim stays live while its owner computes; a dead owner's
claim is taken over at once."""

import socket
import subprocess
import sys
import threading
import time

import pytest

from app.core.features.backbones import get_spec
from app.core.features.caching import CacheJob
from app.core.features.extract import keras_extractor
from app.core.features.keys import model_key
from app.core.intake.dataset import scan_dataset
from app.core.storage.store import FeatureStore, StoreError
from app.core.storage.store import common as store_common


def test_a_store_that_cannot_be_opened_says_so(tmp_path):
    (tmp_path / "features.sqlite3").mkdir()  # a folder where the file should be
    with pytest.raises(StoreError, match="not a usable feature cache"):
        FeatureStore(tmp_path)


def test_a_dead_owners_claim_is_taken_over_at_once(dataset_dir, cache_dir):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    key = model_key(get_spec("tiny"), "none")
    digests = [r.digest for r in scan_dataset(dataset_dir).images]
    with FeatureStore(cache_dir, owner=f"{socket.gethostname()}:{dead.pid}:dead") as store:
        assert len(store.claim(key, digests)) == 36

    def progress(p):
        assert "waiting for another process" not in p.message, "waited for a dead owner"

    result, _ = CacheJob(dataset_dir, "tiny", "none", cache_dir).run(progress)
    assert result.computed == 36


def test_a_live_claim_is_refreshed_while_its_owner_is_slow(dataset_dir, cache_dir,
                                                          monkeypatch):
    """A slow start (weights download, a long batch) must not let another process take the
    images over as stale and compute them twice."""
    monkeypatch.setattr(store_common, "CLAIM_STALE_SECONDS", 0.6)
    monkeypatch.setattr(store_common, "CLAIM_REFRESH_SECONDS", 0.1)
    release = threading.Event()

    def slow_build(*args):
        release.wait(30)
        return keras_extractor(*args)

    key = model_key(get_spec("tiny"), "none")
    outcome = {}
    job = threading.Thread(target=lambda: outcome.update(
        result=CacheJob(dataset_dir, "tiny", "none", cache_dir, batch_size=8,
                        extractor=slow_build).run()[0]))
    job.start()
    try:
        with FeatureStore(cache_dir) as other:
            deadline = time.monotonic() + 30
            while not other.db.execute("SELECT count(*) FROM claims").fetchone()[0]:
                assert time.monotonic() < deadline, "no claim appeared"
                time.sleep(0.02)
            time.sleep(3 * store_common.CLAIM_STALE_SECONDS)  # claims would be stale by now
            claimed = [r[0] for r in other.db.execute("SELECT digest FROM claims")]
            assert other.claim(key, claimed) == []
    finally:
        release.set()
        job.join(60)
    assert outcome["result"].computed == 36
