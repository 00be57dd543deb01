"""The fine-tune mode on the tiny backbone: the aux losses really reach layers the main output
uses, the cut is cached once and streamed, and the exported model answers as the app does."""

import numpy as np
import pytest

from app.core.base.jobs import CancelToken
from app.core.delivery.predict import Predictor, read_metadata
from app.core.pipeline.retrain import Retraining
from app.core.storage.store import FeatureStore
from app.core.training.feeds import FeatureSource
from app.core.training.fit import TrainSettings

pytestmark = pytest.mark.slow


def _run(data, cache, **settings):
    base = dict(epochs=3, batch_size=8, learning_rate=3e-3, seed=3, mode="finetune")
    return Retraining(data, "tiny", "none", cache, TrainSettings(**{**base, **settings}))


def _main_weights(run):
    return run.result.head.get_layer("main_logits").get_weights()[0]


@pytest.mark.parametrize("mode", ["head", "finetune"])
def test_aux_weight_changes_the_main_output_only_when_layers_are_shared(dataset_dir, cache_dir,
                                                                        mode):
    """Head-only: three independent probes, the main head comes out bit-identical whatever
    the aux weight. Fine-tune: the aux gradient trains shared blocks, so main differs."""
    trained = {}
    for weight in (0.3, 1.0):
        run = _run(dataset_dir, cache_dir, mode=mode, aux_weight=weight)
        run.run_training()
        trained[weight] = _main_weights(run)
    diff = np.abs(trained[0.3] - trained[1.0]).max()
    if mode == "head":
        assert diff == 0
        assert run.result.trainable_backbone_layers == []
    else:
        assert diff > 1e-6
        assert run.result.trainable_backbone_layers == ["tiny_block3", "tiny_block4"]


def test_the_cut_is_cached_once_in_shards_and_the_backbone_never_runs_again(
        dataset_dir, cache_dir, monkeypatch):
    run = _run(dataset_dir, cache_dir)
    first = run.run_cache()
    assert (first.mode, first.computed) == ("finetune", 36)
    assert first.disk_bytes >= 36 * 16 * 16 * 16 * 2  # float16 16x16x16 a image
    with FeatureStore(cache_dir) as store:
        assert store.db.execute("SELECT count(*) FROM features").fetchone()[0] == 0
        assert store.db.execute("SELECT count(*) FROM arrays").fetchone()[0] == 36
    import app.core.features.cuts as finetune

    monkeypatch.setattr(finetune, "build_cut_extractor",
                        lambda *a, **k: pytest.fail("the frozen part ran again"))
    again = _run(dataset_dir, cache_dir)
    again.run_training()
    assert again.cache.reused == 36 and again.cache.computed == 0
    assert again.result.epochs_run == 3


def test_training_streams_batches_never_whole_splits(dataset_dir, cache_dir, monkeypatch):
    """With no RAM budget, every read is one batch: memory does not grow with the dataset."""
    import app.core.training.feeds as feeds

    monkeypatch.setattr(feeds, "RAM_BUDGET_BYTES", 0)
    reads = []
    real = FeatureStore.load_arrays

    def counted(self, key, digests):
        reads.append(len(digests))
        return real(self, key, digests)

    monkeypatch.setattr(FeatureStore, "load_arrays", counted)
    run = _run(dataset_dir, cache_dir, epochs=2, batch_size=4)
    run.run_training()
    train = len(run.splits["train"])
    assert max(reads) <= 128  # the validation batch; training reads 4 at a time
    assert sum(1 for r in reads if r <= 4) >= 2 * (train // 4)
    assert isinstance(run.splits["train"].source, FeatureSource)
    assert run.splits["train"].features is None


def test_the_feed_casts_on_the_host_only_where_the_model_computes_in_float32(
        dataset_dir, cache_dir, monkeypatch):
    """On a GPU (mixed float16) cut tensors go to the model as the store keeps them and the
    device casts them (on the host that cast was most of a GPU epoch); where the model
    computes in float32 (a CPU) they are cast on the host, at the same cost, so TensorFlow
    is never handed float16 there (oneDNN prints a DT_HALF line without AVX-512). The
    answers are the same."""
    from app.core.base.device import PRECISION_ENV
    from app.core.storage.store import CUT
    from app.core.training.feeds import make_feed

    run = _run(dataset_dir, cache_dir, epochs=1)
    run.run_training()
    train, n = run.splits["train"], len(run.result.classes)

    def first_batch():
        return make_feed(train, (CUT,), ("main",), n, 8, shuffle=True, seed=0)[0][:2]

    monkeypatch.setenv(PRECISION_ENV, "float32")
    x32, y = first_batch()
    assert x32[CUT].dtype == np.float32 and y["main"].dtype == np.float32
    monkeypatch.setenv(PRECISION_ENV, "mixed_float16")
    x16, _ = first_batch()
    assert x16[CUT].dtype == np.float16
    np.testing.assert_array_equal(x16[CUT].astype(np.float32), x32[CUT])
    model = run.result.model
    np.testing.assert_array_equal(np.asarray(model.predict_on_batch(x16)["main"]),
                                  np.asarray(model.predict_on_batch(x32)["main"]))


def test_finetune_export_answers_exactly_as_the_app(dataset_dir, cache_dir, tmp_path):
    run = _run(dataset_dir, cache_dir)
    run.run_training_isolated()  # as the window trains: in a child process
    report = run.export(tmp_path / "model")
    assert report.parity_checked and report.parity.top1_mismatches == 0
    assert report.parity.max_abs_diff <= 1e-3
    meta = read_metadata(report.folder)
    assert meta["mode"] == "finetune"
    assert meta["trainable_backbone_layers"] == ["tiny_block3", "tiny_block4"]
    files = [r.path for r in run.dataset.images[:6]]
    in_app = run.predictor().predict(files, top_k=3)
    exported = Predictor.from_dir(report.folder).predict(files, top_k=3)
    for a, b in zip(in_app, exported):
        assert [t["label"] for t in a.top] == [t["label"] for t in b.top]
        np.testing.assert_allclose([t["probability"] for t in a.top],
                                   [t["probability"] for t in b.top], atol=1e-5)


def test_cancel_mid_epoch_keeps_the_best_finetuned_weights(dataset_dir, cache_dir):
    token = CancelToken()
    common = dict(batch_size=4, schedule="constant", early_stopping=0, seed=11,
                  stream_interval=0.0)
    run = _run(dataset_dir, cache_dir, epochs=50, **common)

    def progress(p):
        if p.data and p.data.get("partial") and p.data["epoch"] == 4:
            token.cancel()

    run.run_training(progress, token)
    cut = run.result
    assert cut.cancelled and cut.epochs_run == 3
    kept = cut.model.get_weights()
    again = _run(dataset_dir, cache_dir, epochs=cut.best_epoch, **common)
    again.run_training()
    for a, b in zip(kept, again.result.model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("warmup", [0, 2])
def test_warm_up_holds_the_blocks_while_the_heads_learn(dataset_dir, cache_dir, warmup):
    """During the warm-up epochs the blocks keep their pretrained weights, whatever their
    learning rate: two runs that differ only in it train the same. Without warm-up they differ."""
    blocks = {}
    for scale in (0.1, 5.0):
        token = CancelToken()
        run = _run(dataset_dir, cache_dir, epochs=4, warmup_epochs=warmup,
                   backbone_lr_scale=scale, early_stopping=0, stream_interval=0.0)

        def progress(p, token=token):
            if p.data and p.data.get("partial") and p.data["epoch"] == 3:
                token.cancel()

        run.run_training(progress, token)
        assert run.result.epochs_run == 2
        blocks[scale] = [w for name in run.result.trainable_backbone_layers
                         for w in run.result.base.get_layer(name).get_weights()]
    same = all(np.array_equal(a, b) for a, b in zip(blocks[0.1], blocks[5.0]))
    assert same == bool(warmup)


def test_warm_up_must_leave_epochs_for_the_blocks():
    with pytest.raises(ValueError, match="warm-up"):
        TrainSettings(mode="finetune", epochs=3, warmup_epochs=3)
    TrainSettings(mode="head", epochs=3, warmup_epochs=3)  # head mode has no blocks to hold


def test_the_stated_feature_shapes_are_the_extractors():
    """The window estimates cache sizes from these tables without building a model."""
    from app.core.features.backbones import BACKBONES, build_extractor
    from app.core.features.cuts import CUT_SHAPES, TAP_SHAPES, build_cut_extractor

    for name, spec in BACKBONES.items():
        taps = build_extractor(spec, "none").outputs
        assert {t: tuple(o.shape[1:]) for t, o in zip(("main", "aux1", "aux2"), taps)} == \
            TAP_SHAPES[name], name
        assert tuple(build_cut_extractor(spec, "none").outputs[0].shape[1:]) == \
            CUT_SHAPES[name], name
