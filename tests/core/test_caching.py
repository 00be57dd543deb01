import numpy as np
import pytest

from app.core.base.jobs import CancelToken
from app.core.features.backbones import build_backbone, get_spec
from app.core.features.caching import CacheJob, cache_features
from app.core.features.extract import keras_extractor
from app.core.features.keys import model_key
from app.core.intake.dataset import DatasetError, scan_dataset
from app.core.storage.store import FeatureStore
from tests.conftest import make_image


def _cache(data, cache_dir, **kw):
    return cache_features(data, "tiny", kw.pop("weights", "none"), cache_dir, **kw)


def test_cold_then_warm_then_incremental(dataset_dir, cache_dir):
    cold = _cache(dataset_dir, cache_dir)
    assert (cold.images, cold.computed, cold.reused) == (36, 36, 0)
    assert cold.classes == {"blue": 12, "green": 12, "red": 12}
    assert sum(cold.split.values()) == 36 and cold.device.startswith("CPU, ")
    warm = _cache(dataset_dir, cache_dir)
    assert (warm.computed, warm.reused) == (0, 36)
    make_image(dataset_dir / "red" / "new.png", (210, 30, 30), seed=99)
    (dataset_dir / "blue" / "blue_000.jpg").rename(dataset_dir / "blue" / "renamed.jpg")
    (dataset_dir / "green" / "green_001.png").unlink()
    inc = _cache(dataset_dir, cache_dir)
    assert (inc.images, inc.computed, inc.reused) == (36, 1, 35)


def test_features_have_tap_shapes_and_match_a_direct_forward_pass(dataset_dir, cache_dir):
    result = _cache(dataset_dir, cache_dir)
    ds = scan_dataset(dataset_dir)
    from app.core.features.backbones import build_extractor
    from app.core.intake.imaging import load_rgb

    spec = get_spec("tiny")
    model = build_extractor(spec, "none")
    rec = ds.images[0]
    direct = model.predict_on_batch(load_rgb(rec.path, spec.input_size)[None].astype("float32"))
    with FeatureStore(cache_dir) as store:
        feats = store.load_features(result.model_key, [rec.digest])
    assert feats.main.shape == (1, 32) and feats.aux1.shape == (1, 4, 4, 16)
    assert feats.main.dtype == np.float16
    for got, want in zip((feats.main, feats.aux1, feats.aux2), direct):
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-3)


def test_other_weights_never_reuse_rows(dataset_dir, cache_dir, tmp_path):
    _cache(dataset_dir, cache_dir)
    weights = tmp_path / "tiny.weights.h5"
    model = build_backbone(get_spec("tiny"), "none")
    model.set_weights([w * 0.5 for w in model.get_weights()])
    model.save_weights(weights)
    other = _cache(dataset_dir, cache_dir, weights=str(weights))
    assert (other.computed, other.reused) == (36, 0)
    assert model_key(get_spec("tiny"), str(weights)) != model_key(get_spec("tiny"), "none")


def test_corrupt_files_are_skipped_reported_and_remembered(dataset_dir, cache_dir):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, "JPEG")
    (dataset_dir / "red" / "truncated.jpg").write_bytes(buf.getvalue()[:300])
    (dataset_dir / "red" / "text.jpg").write_text("hello")
    (dataset_dir / "blue" / "zero.jpg").write_bytes(b"")
    first = _cache(dataset_dir, cache_dir)
    reasons = {s.path.rsplit("/", 1)[1]: s.reason for s in first.skipped}
    assert set(reasons) == {"truncated.jpg", "text.jpg", "zero.jpg"}
    assert "truncated" in reasons["truncated.jpg"] or "corrupt" in reasons["truncated.jpg"]
    assert first.images == 36 and first.computed == 36
    second = _cache(dataset_dir, cache_dir)
    assert {s.path for s in second.skipped} == {s.path for s in first.skipped}
    assert second.computed == 0


def test_cancel_keeps_finished_batches_and_resumes(dataset_dir, cache_dir):
    token = CancelToken()
    seen = []

    def progress(p):
        if p.stage == "cache":
            seen.append(p.done)
            token.cancel()

    first = _cache(dataset_dir, cache_dir, batch_size=8, progress=progress, cancel=token)
    assert first.cancelled and 0 < first.computed < 36
    second = _cache(dataset_dir, cache_dir, batch_size=8)
    assert second.reused == first.computed and second.computed == 36 - first.computed


def test_a_folder_without_images_raises(tmp_path, cache_dir):
    (tmp_path / "d" / "empty").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no usable images"):
        _cache(tmp_path / "d", cache_dir)


def test_class_counts_never_stop_caching(tmp_path, cache_dir):
    make_image(tmp_path / "d" / "only" / "a.png", (1, 1, 1))
    (tmp_path / "d" / "empty").mkdir()
    (tmp_path / "d" / "unreadable").mkdir()
    (tmp_path / "d" / "unreadable" / "x.jpg").write_text("not a picture")
    result = _cache(tmp_path / "d", cache_dir)
    assert (result.images, result.computed) == (1, 1)
    messages = [f.message for f in result.findings]
    assert any("class 'empty' has 0 usable" in m for m in messages), messages
    assert any("class 'unreadable' has 0 usable" in m for m in messages), messages


def test_job_returns_dataset_with_bad_images_removed(dataset_dir, cache_dir):
    (dataset_dir / "red" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    result, ds = CacheJob(dataset_dir, "tiny", "none", cache_dir).run()
    assert all(not r.path.endswith("bad.png") for r in ds.images)
    assert any(s.path.endswith("bad.png") for s in result.skipped)


def test_out_of_memory_halves_the_batch_until_every_image_is_computed(dataset_dir, cache_dir,
                                                                      monkeypatch):
    """A GPU that only fits 4 images: 16 -> 8 -> 4 halves twice; every image still gets its
    features, equal to a direct forward pass."""
    from app.core.features.backbones import build_extractor
    from app.core.intake.imaging import load_rgb

    batches = []

    class SmallGpu:
        def __init__(self, inner):
            self.inner, self.names, self.shapes = inner, inner.names, inner.shapes

        def predict(self, x):
            batches.append(len(x))
            if len(x) > 4:
                raise RuntimeError("RESOURCE_EXHAUSTED: OOM when allocating tensor")
            return self.inner.predict(x)

    result = _cache(dataset_dir, cache_dir, batch_size=16,
                    extractor=lambda *a: SmallGpu(keras_extractor(*a)))
    assert (result.computed, result.to_compute, len(result.skipped)) == (36, 0, 0)
    assert batches[:3] == [16, 8, 4] and set(batches[3:]) == {4}
    ds = scan_dataset(dataset_dir)
    spec = get_spec("tiny")
    direct = build_extractor(spec, "none").predict_on_batch(
        np.stack([load_rgb(r.path, spec.input_size) for r in ds.images]).astype("float32"))
    with FeatureStore(cache_dir) as store:
        feats = store.load_features(result.model_key, [r.digest for r in ds.images])
    np.testing.assert_allclose(feats.main.astype(np.float32), direct[0], rtol=2e-3, atol=2e-3)


def test_other_errors_are_not_mistaken_for_out_of_memory(dataset_dir, cache_dir, monkeypatch):

    class Broken:
        def __init__(self, inner):
            self.names, self.shapes = inner.names, inner.shapes

        def predict(self, x):
            raise ValueError("shapes do not match")

    with pytest.raises(ValueError, match="shapes do not match"):
        _cache(dataset_dir, cache_dir, batch_size=8,
               extractor=lambda *a: Broken(keras_extractor(*a)))


def test_a_batch_is_one_transaction(cache_dir):
    from app.core.storage.store import FeatureBatch

    with FeatureStore(cache_dir) as store:
        store.db.execute("CREATE TRIGGER boom BEFORE INSERT ON features WHEN NEW.digest='c' "
                         "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        z = np.zeros((3, 2), np.float16)
        with pytest.raises(Exception, match="disk full"):
            store.put_features("k", FeatureBatch(["a", "b", "c"], z, z, z))
        assert store.db.execute("SELECT count(*) FROM features").fetchone()[0] == 0
        store.put_features("k", FeatureBatch(["a", "b"], z[:2], z[:2], z[:2]))
        assert store.cached_digests("k") == {"a", "b"}


def test_a_transient_read_failure_is_retried_next_run(dataset_dir, cache_dir, tmp_path):
    """A file that cannot be opened during one run (moved away, a network share hiccup) is
    skipped with its reason, but not remembered as bad content."""
    with FeatureStore(cache_dir) as store:
        ds = scan_dataset(dataset_dir, store)
    victim = dataset_dir / "red" / "red_002.jpg"
    victim.rename(tmp_path / "away.jpg")
    first, _ = CacheJob(ds, "tiny", "none", cache_dir).run()
    assert [s.reason.split(":")[0] for s in first.skipped] == ["cannot read file"]
    (tmp_path / "away.jpg").rename(victim)
    second = _cache(dataset_dir, cache_dir)
    assert (second.computed, second.images, second.skipped) == (1, 36, [])


def test_retry_skipped_tries_remembered_bad_files_again(dataset_dir, cache_dir):
    from app.core.intake.imaging import PREPROCESS_VERSION

    with FeatureStore(cache_dir) as store:
        ds = scan_dataset(dataset_dir, store)
        store.mark_bad(PREPROCESS_VERSION, [(ds.images[0].digest, "decoder missing")])
    plain = _cache(dataset_dir, cache_dir)
    assert [s.reason for s in plain.skipped] == ["decoder missing"] and plain.images == 35
    again = _cache(dataset_dir, cache_dir, retry_skipped=True)
    assert (again.retried, again.computed, again.images, again.skipped) == (1, 1, 36, [])
    assert _cache(dataset_dir, cache_dir).skipped == []


def test_model_key_names_backend_and_precision(dataset_dir, cache_dir, monkeypatch):
    """Mixed-precision rows (a GPU's) are never reused as float32 rows (a CPU's)."""
    spec = get_spec("tiny")
    assert model_key(spec, "none").endswith("|tensorflow-float32")
    cpu = _cache(dataset_dir, cache_dir)
    monkeypatch.setenv("BOTTLENECK_STUDIO_PRECISION", "mixed_float16")
    assert model_key(spec, "none").endswith("|tensorflow-mixed_float16")
    mixed = _cache(dataset_dir, cache_dir)
    assert (mixed.computed, mixed.reused) == (36, 0) and mixed.model_key != cpu.model_key
    with FeatureStore(cache_dir) as store:
        digests = [r.digest for r in scan_dataset(dataset_dir).images]
        a = store.load_features(cpu.model_key, digests).main.astype(np.float32)
        b = store.load_features(mixed.model_key, digests).main.astype(np.float32)
    assert 0 < np.abs(a - b).max() < 0.05  # really computed in float16, and close


def test_a_wrong_precision_guess_rekeys_before_storing(dataset_dir, cache_dir, monkeypatch):
    """The key's precision is guessed without TensorFlow; the device's truth wins."""
    from app.core.base import device

    monkeypatch.setattr(device.os.path, "exists", lambda p: p == "/dev/nvidia0")
    monkeypatch.setattr(device, "_configured", None)
    result = _cache(dataset_dir, cache_dir)  # guessed mixed_float16, the device is a CPU
    assert result.model_key.endswith("-float32") and result.computed == 36
    with FeatureStore(cache_dir) as store:
        keys = [r[0] for r in store.db.execute("SELECT DISTINCT model_key FROM features")]
    assert keys == [result.model_key]


def test_bulk_writes_keep_the_wal_bounded_with_checkpoints_beside_them(cache_dir):
    import time

    from app.core.storage import store as store_module
    from app.core.storage.store import FeatureBatch

    every = 8  # pages; the writer itself checkpoints only past 4x that
    rng = np.random.default_rng(0)
    main, aux = rng.normal(size=(240, 1024)), rng.normal(size=(240, 4, 4, 256))
    digests = [f"{i:064x}" for i in range(240)]

    def put(store, i):  # 4 rows of ~18 KB: over 4 pages of 16 KB
        store.put_features("k", FeatureBatch(digests[i:i + 4], main[i:i + 4], aux[i:i + 4],
                                             aux[i:i + 4]))

    with FeatureStore(cache_dir) as store:
        store.register_model("k", {"backbone": "b", "shapes": {"main": [1024],
                                   "aux1": [4, 4, 256], "aux2": [4, 4, 256]},
                                   "image_size": 32, "prep": 1})
        wal = store.path.with_name(store.path.name + "-wal")
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # an empty WAL to start from
        start = store.path.stat().st_size
        biggest = 0
        with store.background_checkpoints(every):
            put(store, 0)  # 8 pages or more: past `every`, short of the writer's own
            put(store, 4)
            deadline = time.monotonic() + 10
            while store.path.stat().st_size <= start and time.monotonic() < deadline:
                time.sleep(0.01)  # the other thread copies the WAL into the file
            assert store.path.stat().st_size > start, "nothing was checkpointed beside"
            for i in range(8, 240, 4):  # ~500 pages in all
                put(store, i)
                biggest = max(biggest, wal.stat().st_size)
        back = store.load_features("k", digests)  # every row intact, in the file or the WAL
    np.testing.assert_array_equal(back.main, main.astype(np.float16))
    np.testing.assert_array_equal(back.aux2, aux.astype(np.float16))
    # bounded by the writer's own checkpoints past 4x `every` (and a batch or two while the
    # two overlap), never the whole run's ~500 pages
    assert biggest < 100 * (store_module.PAGE_SIZE + 24), biggest
