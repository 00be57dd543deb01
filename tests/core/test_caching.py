import numpy as np
import pytest

from app.core.backbones import build_backbone, get_spec, model_key
from app.core.caching import CacheJob, cache_features
from app.core.dataset import DatasetError, scan_dataset
from app.core.jobs import CancelToken
from app.core.store import FeatureStore
from tests.conftest import make_image


def _cache(data, cache_dir, **kw):
    return cache_features(data, "tiny", kw.pop("weights", "none"), cache_dir, **kw)


def test_cold_then_warm_then_incremental(dataset_dir, cache_dir):
    cold = _cache(dataset_dir, cache_dir)
    assert (cold.images, cold.computed, cold.reused) == (36, 36, 0)
    assert cold.classes == {"blue": 12, "green": 12, "red": 12}
    assert sum(cold.split.values()) == 36 and cold.device == "CPU"
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
    from app.core.backbones import build_extractor
    from app.core.imaging import load_rgb

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


def test_unusable_dataset_raises(tmp_path, cache_dir):
    make_image(tmp_path / "d" / "only" / "a.png", (1, 1, 1))
    with pytest.raises(DatasetError):
        _cache(tmp_path / "d", cache_dir)


def test_job_returns_dataset_with_bad_images_removed(dataset_dir, cache_dir):
    (dataset_dir / "red" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    result, ds = CacheJob(dataset_dir, "tiny", "none", cache_dir).run()
    assert all(not r.path.endswith("bad.png") for r in ds.images)
    assert any(s.path.endswith("bad.png") for s in result.skipped)


def test_out_of_memory_halves_the_batch_and_goes_on():
    from app.core.caching import _Runner

    class FakeModel:
        calls = []

        def predict_on_batch(self, x):
            self.calls.append(len(x))
            if len(x) > 4:
                raise RuntimeError("RESOURCE_EXHAUSTED: OOM when allocating tensor")
            flat = x.reshape(len(x), -1)
            return [flat[:, :2], flat[:, :4].reshape(-1, 1, 2, 2), flat[:, :4].reshape(-1, 2, 2, 1)]

    runner = object.__new__(_Runner)
    runner.model, runner.batch_size = FakeModel(), 16
    pixels = np.arange(10 * 3 * 3 * 3, dtype=np.float32).reshape(10, 3, 3, 3)
    main, aux1, aux2 = runner._predict(pixels)
    assert runner.batch_size == 4
    assert main.shape == (10, 2) and aux1.shape == (10, 1, 2, 2)
    np.testing.assert_array_equal(main, pixels.reshape(10, -1)[:, :2].astype(np.float16))


def test_other_errors_are_not_mistaken_for_out_of_memory():
    from app.core.caching import _Runner

    class Broken:
        def predict_on_batch(self, x):
            raise ValueError("shapes do not match")

    runner = object.__new__(_Runner)
    runner.model, runner.batch_size = Broken(), 8
    with pytest.raises(ValueError):
        runner._predict(np.zeros((3, 2, 2, 3), np.float32))


def test_a_batch_is_one_transaction(cache_dir):
    from app.core.store import FeatureBatch

    with FeatureStore(cache_dir) as store:
        store.db.execute("CREATE TRIGGER boom BEFORE INSERT ON features WHEN NEW.digest='c' "
                         "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        z = np.zeros((3, 2), np.float16)
        with pytest.raises(Exception, match="disk full"):
            store.put_features("k", FeatureBatch(["a", "b", "c"], z, z, z))
        assert store.db.execute("SELECT count(*) FROM features").fetchone()[0] == 0
        store.put_features("k", FeatureBatch(["a", "b"], z[:2], z[:2], z[:2]))
        assert store.cached_digests("k") == {"a", "b"}
