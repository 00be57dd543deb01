"""The local caching pipeline (decode pool, extractor, writer thread) in any interleaving:
every image is computed and stored under its own digest, or reported; a cancel keeps what was
computed and the next run finishes the rest. The decoder and the extractor are handed in
through CacheJob's public parameters, with random delays that reorder the stages."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from app.core.base.jobs import CancelToken
from app.core.features.backbones import get_spec
from app.core.features.caching import CacheJob
from app.core.features.cuts import TAP_SHAPES
from app.core.features.extract import output_names
from app.core.intake.dataset import scan_dataset
from app.core.intake.imaging import ImageError, load_rgb
from app.core.storage.store import FeatureStore


class Jittery:
    """An extractor whose features are a fingerprint of each image's own pixels (its mean and
    its first pixel), after a random delay: rows mixed between images would show."""

    def __init__(self, rng: random.Random, spec, weights, precision, cut, progress, cancel):
        self.rng = rng
        self.names = output_names(cut)
        self.shapes = {n: TAP_SHAPES[spec.name][n] for n in self.names}

    def predict(self, pixels: np.ndarray) -> list[np.ndarray]:
        time.sleep(self.rng.random() * 0.004)
        fp = fingerprint(pixels)
        return [np.broadcast_to(fp.reshape(len(fp), *[1] * len(s)), (len(fp), *s)).copy()
                for s in self.shapes.values()]


def fingerprint(pixels: np.ndarray) -> np.ndarray:
    """Per image, one number that differs between the test's images."""
    flat = pixels.reshape(len(pixels), -1).astype(np.float64)
    return (flat.mean(axis=1) + flat[:, :7].sum(axis=1) / 7).astype(np.float32)


def jittery_decoder(rng: random.Random, broken: set[str]):
    def decode(path, size):
        time.sleep(rng.random() * 0.003)
        if path in broken:
            raise ImageError("cannot decode: damaged on purpose")
        return load_rgb(path, size)
    return decode


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_image_is_stored_under_its_own_digest_or_reported(dataset_dir, cache_dir, seed):
    rng = random.Random(seed)
    ds = scan_dataset(dataset_dir)
    paths = [r.path for r in ds.images]
    broken = set(rng.sample(paths, 3))
    job = CacheJob(dataset_dir, "tiny", "none", cache_dir, batch_size=rng.choice([1, 3, 5, 8]),
                   workers=rng.choice([1, 2, 4]),
                   extractor=lambda *a: Jittery(rng, *a),
                   decoder=jittery_decoder(rng, broken))
    result, after = job.run()
    assert result.computed == 36 - 3 and result.to_compute == 0 and not result.cancelled
    assert sorted(s.path for s in result.skipped) == sorted(broken)
    good = [r for r in ds.images if r.path not in broken]
    with FeatureStore(cache_dir) as store:
        feats = store.load_features(result.model_key, [r.digest for r in good])
    size = get_spec("tiny").input_size
    expected = fingerprint(np.stack([load_rgb(r.path, size) for r in good]))
    np.testing.assert_allclose(feats.main[:, 0].astype(np.float32), expected, rtol=2e-3)
    assert {r.path for r in after.images} == {r.path for r in good}


def test_a_cancel_keeps_what_was_computed_and_the_next_run_does_only_the_rest(dataset_dir,
                                                                           cache_dir):
    rng = random.Random(7)
    cancel = CancelToken()

    def progress(p):
        if p.stage == "cache" and p.done >= 10:
            cancel.cancel()

    first, _ = CacheJob(dataset_dir, "tiny", "none", cache_dir, batch_size=4, workers=2,
                        extractor=lambda *a: Jittery(rng, *a)).run(progress, cancel)
    assert first.cancelled and 10 <= first.computed < 36
    assert first.computed + first.to_compute == 36
    with FeatureStore(cache_dir) as store:
        assert len(store.cached_digests(first.model_key)) == first.computed
        assert not store.db.execute("SELECT count(*) FROM claims").fetchone()[0]
    second, _ = CacheJob(dataset_dir, "tiny", "none", cache_dir, batch_size=4, workers=2,
                         extractor=lambda *a: Jittery(rng, *a)).run()
    assert (second.reused, second.computed, second.to_compute) == (first.computed,
                                                                   36 - first.computed, 0)
