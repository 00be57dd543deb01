"""The frozen graph on ONNX Runtime (features/runtime.py): the same taps as Keras, kept and
checked in the cache folder, and Keras whenever ONNX Runtime cannot do the work."""

import json
import sys

import numpy as np
import pytest

from app.core.base.jobs import CancelToken, no_progress
from app.core.features import runtime
from app.core.features.backbones import get_spec
from app.core.features.caching import cache_features
from app.core.features.extract import keras_extractor
from app.core.intake.dataset import scan_dataset
from app.core.intake.imaging import load_rgb
from app.core.storage.store import TAPS, FeatureStore
from tests.conftest import make_image

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

SPEC = get_spec("tiny")


def _keras(cut=False):
    return keras_extractor(SPEC, "none", "float32", cut, no_progress, CancelToken())


def _best(cache_dir, cut=False):
    return runtime.best_extractor(SPEC, "none", "float32", cut, no_progress, CancelToken(),
                                  cache_dir)


def _pixels(dataset_dir):
    return np.stack([load_rgb(r.path, SPEC.input_size)
                     for r in scan_dataset(dataset_dir).images[:16]])


def _graphs(cache_dir):
    return sorted((cache_dir / runtime.GRAPHS).glob("*.onnx"))


def test_the_graph_gives_keras_taps_within_what_the_store_keeps(dataset_dir, cache_dir):
    """The taps and the cut agree with Keras' to far below float16's rounding (the rule in
    keys.py: under a tenth of it, so the engine is not in the model key)."""
    pixels = _pixels(dataset_dir)
    for cut in (False, True):
        onnx, keras = _best(cache_dir, cut), _keras(cut)
        assert isinstance(onnx, runtime.OnnxExtractor) and onnx.device == "CPU, ONNX Runtime"
        assert onnx.names == keras.names and onnx.shapes == keras.shapes
        for a, b in zip(onnx.predict(pixels), keras.predict(pixels)):
            b = np.asarray(b)
            rounding = np.abs(b.astype(np.float16).astype(np.float32) - b).max()
            assert np.abs(a - b).max() <= 0.1 * rounding
    metas = runtime.graph_report(cache_dir)
    assert len(metas) == 2 == len(_graphs(cache_dir))
    for meta in metas:
        assert meta["check"]["images"] == runtime.CHECK_IMAGES
        assert max(meta["check"]["max_abs_diff"].values()) <= runtime.CHECK_TOLERANCE


def test_caching_uses_onnx_runtime_and_stores_what_keras_would(dataset_dir, cache_dir):
    result = cache_features(dataset_dir, "tiny", "none", cache_dir)
    assert result.device == "CPU, ONNX Runtime" and result.computed == 36 and not result.notes
    ds = scan_dataset(dataset_dir)
    direct = _keras().predict(np.stack([load_rgb(r.path, SPEC.input_size) for r in ds.images]))
    with FeatureStore(cache_dir) as store:
        feats = store.load_features(result.model_key, [r.digest for r in ds.images])
    for tap, want in zip(TAPS, direct):
        np.testing.assert_allclose(getattr(feats, tap).astype(np.float32), want,
                                   rtol=2e-3, atol=2e-3)


def test_without_onnxruntime_keras_computes(dataset_dir, cache_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    assert runtime.onnx_runtime() is None
    result = cache_features(dataset_dir, "tiny", "none", cache_dir)
    assert result.device == "CPU, Keras/TensorFlow" and result.computed == 36
    assert not _graphs(cache_dir)


def test_runtime_env_turns_onnx_runtime_off(dataset_dir, cache_dir, monkeypatch):
    monkeypatch.setenv(runtime.RUNTIME_ENV, "keras")
    assert _best(cache_dir).device == "CPU, Keras/TensorFlow"


def test_a_provider_that_fails_at_session_creation_leaves_keras(dataset_dir, cache_dir,
                                                                monkeypatch):
    import onnxruntime

    def refuse(*a, **kw):
        raise RuntimeError("provider cannot start")

    _best(cache_dir)  # the graph, made and checked with a working session
    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    result = cache_features(dataset_dir, "tiny", "none", cache_dir)
    assert result.device == "CPU, Keras/TensorFlow" and result.computed == 36
    assert any("could not start" in n for n in result.notes), result.notes


def test_a_provider_that_fails_at_its_first_run_leaves_keras(dataset_dir, cache_dir,
                                                             monkeypatch):
    import onnxruntime

    made = onnxruntime.InferenceSession

    class Failing:
        def __init__(self, *a, **kw):
            self.inner = made(*a, **kw)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def run(self, *a, **kw):
            raise RuntimeError("kernel not implemented on this device")

    _best(cache_dir)  # the graph, made and checked with a working session
    monkeypatch.setattr(onnxruntime, "InferenceSession", Failing)
    result = cache_features(dataset_dir, "tiny", "none", cache_dir)
    assert result.device == "CPU, Keras/TensorFlow" and result.computed == 36
    assert any("first run" in n for n in result.notes), result.notes
    ds = scan_dataset(dataset_dir)
    direct = _keras().predict(np.stack([load_rgb(r.path, SPEC.input_size) for r in ds.images]))
    with FeatureStore(cache_dir) as store:
        feats = store.load_features(result.model_key, [r.digest for r in ds.images])
    np.testing.assert_allclose(feats.main.astype(np.float32), direct[0], rtol=2e-3, atol=2e-3)


def test_a_damaged_graph_is_made_again_with_a_note(dataset_dir, cache_dir):
    first = cache_features(dataset_dir, "tiny", "none", cache_dir)
    (graph,) = _graphs(cache_dir)
    meta = json.loads(graph.with_suffix(".json").read_text())
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])  # truncated
    make_image(dataset_dir / "red" / "one_more.png", (210, 30, 30), seed=77)
    again = cache_features(dataset_dir, "tiny", "none", cache_dir)
    assert again.computed == 1 and again.device == first.device == "CPU, ONNX Runtime"
    assert any("damaged" in n and "made again" in n for n in again.notes), again.notes
    assert runtime.graph_state(graph.parent, graph.stem, meta["identity"]) == ("ok", "")
    assert json.loads(graph.with_suffix(".json").read_text())["bytes"] == meta["bytes"]


def test_a_graph_file_that_is_not_ours_is_left_alone(dataset_dir, cache_dir):
    ex = _best(cache_dir)
    (graph,) = _graphs(cache_dir)
    graph.with_suffix(".json").unlink()  # what a graph of someone else looks like
    graph.write_bytes(b"someone else's file")
    result = cache_features(dataset_dir, "tiny", "none", cache_dir)
    assert isinstance(ex, runtime.OnnxExtractor)
    assert result.device == "CPU, Keras/TensorFlow" and result.computed == 36
    assert graph.read_bytes() == b"someone else's file"
    assert any("not a graph this app wrote" in n for n in result.notes), result.notes


def test_another_weights_file_makes_another_graph(tmp_path, cache_dir):
    from app.core.features.backbones import build_backbone

    weights = tmp_path / "tiny.weights.h5"
    model = build_backbone(SPEC, "none")
    model.set_weights([w * 0.5 for w in model.get_weights()])
    model.save_weights(weights)
    _best(cache_dir)
    runtime.best_extractor(SPEC, str(weights), "float32", False, no_progress, CancelToken(),
                           cache_dir)
    assert len(_graphs(cache_dir)) == 2
