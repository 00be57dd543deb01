"""The Ray engine fills the same store as the local engine, with the same numbers."""

import os

import numpy as np
import pytest

from app.core.features.caching import CacheJob
from app.core.intake.dataset import scan_dataset
from app.core.storage.store import FeatureStore

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray, kept for the rest of the session as the app keeps its own: Ray cannot
    start a second local head in a process that shut one down (the window's Ray test runs
    later in the same process)."""
    from app.core.features.engines.ray import RaySession

    if os.environ.get("RAY_ADDRESS"):
        pytest.skip("RAY_ADDRESS names a cluster: these tests start a local Ray")
    with RaySession(None):  # the app's own start of a local Ray
        yield


def test_a_local_ray_computes_at_the_apps_own_priority(local_ray):
    """Ray starts its workers 15 steps nicer: beside `stress --cpu 4` a window's caching on a
    local Ray got ~2 s of CPU in 4.5 minutes. The app's local Ray computes at its priority."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert ray.get(ray.remote(lambda: os.getpriority(os.PRIO_PROCESS, 0)).remote(),
                   timeout=300) == own


def test_ray_fills_the_store_the_local_engine_then_reuses(dataset_dir, cache_dir, tmp_path,
                                                          local_ray):
    (dataset_dir / "red" / "broken.jpg").write_text("not a picture")
    on_ray, _ = CacheJob(dataset_dir, "tiny", "none", cache_dir, batch_size=8,
                         engine="ray").run()
    assert (on_ray.computed, on_ray.images) == (36, 36)
    assert on_ray.device.startswith("Ray (CPU")
    assert [s.path.rsplit("/", 1)[1] for s in on_ray.skipped] == ["broken.jpg"]
    local, _ = CacheJob(dataset_dir, "tiny", "none", cache_dir).run()
    assert (local.computed, local.reused) == (0, 36) and local.model_key == on_ray.model_key

    reference, _ = CacheJob(dataset_dir, "tiny", "none", tmp_path / "local-cache").run()
    digests = [r.digest for r in scan_dataset(dataset_dir).images]
    with FeatureStore(cache_dir) as a, FeatureStore(tmp_path / "local-cache") as b:
        for tap in ("main", "aux1", "aux2"):
            x = getattr(a.load_features(on_ray.model_key, digests), tap).astype(np.float32)
            y = getattr(b.load_features(reference.model_key, digests), tap).astype(np.float32)
            np.testing.assert_allclose(x, y, rtol=2e-3, atol=2e-3)  # float16 rounding


def test_a_cancelled_ray_run_resumes_with_what_was_merged(dataset_dir, cache_dir, local_ray):
    from app.core.base.jobs import CancelToken

    token = CancelToken()

    def progress(p):
        if p.stage == "cache" and p.done:
            token.cancel()

    first, _ = CacheJob(dataset_dir, "tiny", "none", cache_dir, batch_size=8,
                        engine="ray").run(progress, token)
    assert first.cancelled and 0 < first.computed <= 36
    with FeatureStore(cache_dir) as store:  # what the cancelled run says it kept, it kept
        assert len(store.cached_digests(first.model_key)) == first.computed
    again, _ = CacheJob(dataset_dir, "tiny", "none", cache_dir, batch_size=8,
                        engine="ray").run()
    # shards the actors finished after the cancel are merged, never computed twice
    assert again.reused >= first.computed and again.reused + again.computed == 36


def test_the_fine_tune_cut_through_ray(dataset_dir, cache_dir, local_ray):
    on_ray, _ = CacheJob(dataset_dir, "tiny", "none", cache_dir, batch_size=8,
                         engine="ray", mode="finetune").run()
    assert on_ray.computed == 36 and on_ray.disk_bytes > 0
    local, _ = CacheJob(dataset_dir, "tiny", "none", cache_dir, mode="finetune").run()
    assert local.computed == 0


def test_a_shard_written_but_not_merged_is_merged_at_the_next_start(dataset_dir, cache_dir,
                                                                    local_ray):
    """A job killed after an actor wrote its Parquet shard but before the merge: the next run
    merges that shard and computes only the rest; a file the app did not write is left alone."""
    from app.core.base import device
    from app.core.features.backbones import get_spec
    from app.core.features.engines import ray as ray_engine
    from app.core.features.keys import features_key

    device.configure()
    key = features_key(get_spec("tiny"), "none", "head", device.compute_signature())
    first = scan_dataset(dataset_dir).images[:8]
    with FeatureStore(cache_dir) as store:
        folder = ray_engine.results_dir(store, key)
    actor = ray_engine.ExtractActor("tiny", "none", "float32", False, key, str(folder))
    batch = ray_engine.decode_batch({"digest": [r.digest for r in first],
                                     "path": [r.path for r in first]},
                                    get_spec("tiny").input_size)
    actor(batch)  # the actor's real write path, as on a worker
    assert len(list(folder.glob("*.parquet"))) == 1
    foreign = folder / "notes.parquet"
    foreign.write_text("the user's, not ours")

    again, _ = CacheJob(dataset_dir, "tiny", "none", cache_dir, batch_size=8,
                        engine="ray").run()
    assert again.model_key == key
    assert (again.reused, again.computed) == (8, 28)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.parquet"]
    with FeatureStore(cache_dir) as store:
        merged = store.load_features(key, [r.digest for r in first]).main.astype(np.float32)
    np.testing.assert_allclose(merged, actor.features(batch)["main"].astype(np.float32))


OUTLIVES = """
import threading, sys
import ray
from app.core.features.engines.ray import RaySession

def job():  # what the window's worker thread does: start Ray, run, end
    with RaySession(None):
        pass

t = threading.Thread(target=job)
t.start()
t.join()  # the thread that asked for Ray has ended
node = ray._private.worker._global_node
dead = [name for name, infos in node.all_processes.items()
        for info in infos if info.process.poll() is not None]
print("dead:", dead, flush=True)
print("answer:", ray.get(ray.remote(lambda: 42).remote(), timeout=120), flush=True)
"""


def test_a_local_ray_outlives_the_thread_that_started_it(tmp_path):
    """Ray's head processes die with the thread that started them (Linux's parent-death
    signal): the window starts it from a job's thread, which ends; Ray must not."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, RAY_ADDRESS="", PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", OUTLIVES], capture_output=True, text=True,
                         timeout=300, env=env, cwd=tmp_path)
    assert "dead: []" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "answer: 42" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize(("address", "preset", "expected"), [
    (None, None, "0"),           # a local Ray the app starts: the app's priority
    (None, "7", "7"),            # the user's own setting wins
    ("head-node:6379", None, None),  # a cluster's workers are the cluster's business
])
def test_the_worker_priority_is_set_only_for_a_local_ray_and_never_over_the_users(
        monkeypatch, address, preset, expected):
    from app.core.features.engines import ray as engine

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_worker_niceness", preset or "")  # restored after the test
    if preset is None:
        monkeypatch.delenv("RAY_worker_niceness")

    class FakeRay:
        started: list = []

        def is_initialized(self):
            return False

    fake = FakeRay()
    monkeypatch.setattr(engine, "_import_ray", lambda: fake)
    monkeypatch.setattr(engine, "_connected", None)
    monkeypatch.setattr(engine, "_init_from_lasting_thread",
                        lambda ray, **kw: fake.started.append(
                            os.environ.get("RAY_worker_niceness")))
    engine.RaySession(address).__enter__()
    assert fake.started == [expected]
