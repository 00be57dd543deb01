"""Predict answers photos already in the cache from their cached taps: no decode, no backbone,
and the same answers as computing them."""

import dataclasses

import numpy as np
import pytest

import app.core.delivery.predict as predict_module
from app.core.delivery.predict import Predictor
from app.core.features import runtime
from app.core.pipeline.retrain import Retraining
from app.core.storage.store import FeatureStore
from app.core.training.fit import TrainSettings
from tests.conftest import make_dataset, make_image


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict-cache")
    data = make_dataset(root / "photos", per_class=8)
    run = Retraining(data, "tiny", "none", root / "cache",
                     TrainSettings(epochs=2, batch_size=8, learning_rate=3e-3))
    run.run_training()
    files = sorted(str(p) for p in data.rglob("*") if p.is_file())
    return run, files, root


class Counting:
    """Counts the backbone's batches and the photos decoded."""

    def __init__(self, monkeypatch):
        self.batches = self.decoded = 0
        made = runtime.best_extractor

        def extractor(*a, **kw):
            inner = made(*a, **kw)
            real = inner.predict

            def counted(x):
                self.batches += 1
                return real(x)

            inner.predict = counted
            return inner

        def decode(*a, **kw):
            self.decoded += 1
            return load(*a, **kw)

        load = predict_module.load_rgb
        monkeypatch.setattr(runtime, "best_extractor", extractor)
        monkeypatch.setattr(predict_module, "load_rgb", decode)


def _answers(preds):
    assert all(p.error is None for p in preds)
    return [[(t["label"], t["probability"]) for t in p.top] for p in preds]


def test_cached_photos_are_answered_without_decode_or_backbone(trained, monkeypatch,
                                                               tmp_path):
    run, files, root = trained
    count = Counting(monkeypatch)
    from_cache = run.predictor().predict(files, top_k=3)
    assert (count.batches, count.decoded) == (0, 0)

    # the same photos computed: a cache folder without their rows (the graph is made there)
    computing = run.predictor()
    computing.cached = dataclasses.replace(computing.cached, folder=tmp_path / "empty")
    FeatureStore(tmp_path / "empty").close()
    computed = computing.predict(files, top_k=3)
    assert count.decoded == len(files) and count.batches == -(-len(files) // 32)
    assert _answers(from_cache) == _answers(computed)  # identical, not merely close

    # a new photo among cached ones: only it is decoded and computed
    new = make_image(tmp_path / "new.jpg", (200, 40, 40), seed=123)
    count.batches = count.decoded = 0
    mixed = run.predictor().predict([*files[:5], new], top_k=3)
    assert (count.batches, count.decoded) == (1, 1)
    assert _answers(mixed[:5]) == _answers(from_cache[:5])
    alone = computing.predict([new], top_k=3)
    assert _answers(mixed[5:]) == _answers(alone)


def test_an_exported_folder_answers_from_the_cache_too(trained, monkeypatch):
    run, files, root = trained
    folder = run.export(root / "model").folder
    in_app = run.predictor().predict(files, top_k=3)
    count = Counting(monkeypatch)
    exported = Predictor.from_dir(folder, root / "cache").predict(files, top_k=3)
    assert (count.batches, count.decoded) == (0, 0)
    assert _answers(exported) == _answers(in_app)
    # without the cache folder: the whole model on decoded pixels, within float16's reach
    plain = Predictor.from_dir(folder).predict(files, top_k=3)
    assert count.decoded == len(files)
    for a, b in zip(_answers(plain), _answers(exported)):
        assert [label for label, _ in a] == [label for label, _ in b]
        np.testing.assert_allclose([p for _, p in a], [p for _, p in b], atol=1e-3)


def test_a_damaged_cached_row_is_computed_instead(trained, tmp_path):
    run, files, root = trained
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(root / "cache", cache)
    predictor = run.predictor()
    predictor.cached = dataclasses.replace(predictor.cached, folder=cache)
    want = _answers(predictor.predict(files, top_k=3))
    with FeatureStore(cache) as store:
        store.db.execute("UPDATE features SET main = zeroblob(length(main)) WHERE model_key=?",
                         (predictor.cached.key,))
    assert _answers(predictor.predict(files, top_k=3)) == want
