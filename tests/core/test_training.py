import json

import numpy as np
import pytest

from app.core.base.jobs import CancelToken
from app.core.pipeline.retrain import Retraining
from app.core.training.fit import HISTORY_KEYS, SplitData, TrainSettings, sample_weights, train_head


@pytest.fixture
def cached_run(dataset_dir, cache_dir):
    """A Retraining with its features cached (tiny backbone, random weights)."""
    run = Retraining(dataset_dir, "tiny", "none", cache_dir,
                     TrainSettings(epochs=6, batch_size=8, learning_rate=3e-3, seed=3))
    run.run_cache()
    return run


@pytest.mark.slow  # trains a Keras head
def test_aux_outputs_train_and_every_metric_streams_each_epoch(cached_run):
    seen = []
    cached_run.run_training(progress=lambda p: p.data and not p.data["partial"]
                            and seen.append(p.data))
    hist = cached_run.result.history
    assert len(seen) == len(hist) == cached_run.result.epochs_run == 6
    for rec in hist:
        assert all(rec[k] is not None for k in HISTORY_KEYS)
    for out in ("main", "aux1", "aux2"):
        assert hist[-1][f"{out}_loss"] < hist[0][f"{out}_loss"], out
    ev = cached_run.evaluation
    assert ev.count == len(cached_run.splits["test"])
    assert ev.aux1_accuracy is not None and ev.aux2_accuracy is not None


@pytest.mark.slow  # trains a Keras head
def test_training_uses_only_cached_features(cached_run, monkeypatch):
    import app.core.features.backbones as backbones

    def forbidden(*a, **k):
        raise AssertionError("training ran the backbone")

    monkeypatch.setattr(backbones, "build_backbone", forbidden)
    cached_run.run_training()
    assert cached_run.result.epochs_run == 6


@pytest.mark.slow  # trains a Keras head
def test_seeded_runs_repeat_exactly(cached_run):
    cached_run.run_training()
    first = json.dumps(cached_run.result.history)
    w1 = cached_run.result.head.get_weights()
    cached_run.run_training()
    assert json.dumps(cached_run.result.history) == first
    for a, b in zip(w1, cached_run.result.head.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_aux_weight_zero_turns_aux_outputs_off(cached_run):
    cached_run.settings = TrainSettings(epochs=2, batch_size=8, aux_weight=0.0)
    cached_run.run_training()
    rec = cached_run.result.history[-1]
    assert rec["main_loss"] is not None and rec["aux1_loss"] is None
    assert len(cached_run.result.head.outputs) == 1
    assert cached_run.evaluation.aux1_accuracy is None


@pytest.mark.slow  # trains a Keras head
def test_cancel_mid_epoch_keeps_the_best_model(cached_run):
    token = CancelToken()
    cached_run.settings = TrainSettings(epochs=50, batch_size=2, stream_interval=0.0)
    calls = []

    def progress(p):
        calls.append(p)
        if p.data and p.data.get("partial") and p.data["epoch"] == 2:
            token.cancel()

    cached_run.run_training(progress, token)
    result = cached_run.result
    assert result.cancelled and result.epochs_run <= 2
    assert result.best_epoch >= 1
    assert cached_run.predictor() is not None


def _synthetic(n, labels, seed):
    rng = np.random.default_rng(seed)
    means = np.eye(3, 8) * 4
    return SplitData(
        {"main": (means[labels] + rng.normal(0, 1, (n, 8))).astype(np.float16),
         "aux1": rng.normal(0, 1, (n, 2, 2, 4)).astype(np.float16),
         "aux2": rng.normal(0, 1, (n, 2, 2, 4)).astype(np.float16)},
        labels, [f"img{i}" for i in range(n)])


@pytest.mark.slow  # trains a Keras head
def test_early_stopping_restores_the_best_epoch():
    labels = np.arange(60) % 3
    train = _synthetic(60, labels, 0)
    # validation labels are wrong on purpose: its loss rises as the head learns the train set
    val = _synthetic(30, labels[:30], 1)
    val.labels = (val.labels + 1) % 3
    settings = TrainSettings(epochs=40, batch_size=8, learning_rate=0.01, early_stopping=3,
                             label_smoothing=0.0)
    res = train_head(train, val, ["a", "b", "c"], settings)
    assert res.epochs_run < 40
    losses = [h["val_main_loss"] for h in res.history]
    assert res.best_epoch == 1 + int(np.argmin(losses))
    assert res.epochs_run == res.best_epoch + 3
    probs = res.head.predict({k: val.features[k] for k in ("main", "aux1", "aux2")}, verbose=0)
    onehot = np.eye(3)[val.labels]
    restored = -np.mean(np.sum(onehot * np.log(np.clip(probs["main"], 1e-7, 1)), axis=1))
    # Keras averages per-output losses over batches, so allow a little; the last epoch's
    # weights would be far off
    assert restored == pytest.approx(min(losses), rel=2e-2)
    assert abs(restored - min(losses)) < abs(restored - losses[-1]) / 4


def test_class_weights_balance_unbalanced_data():
    labels = np.array([0] * 30 + [1] * 10)
    w = sample_weights(labels, 2, "auto")
    assert w is not None and w[:30].sum() == pytest.approx(w[30:].sum())
    assert sample_weights(np.array([0, 0, 1, 1]), 2, "auto") is None
    assert sample_weights(labels, 2, "none") is None


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(learning_rate=-1), dict(dropout=1.0),
                                 dict(optimizer="nope"), dict(aux_weight=-0.1)])
def test_bad_settings_are_refused_with_a_message(bad):
    with pytest.raises(ValueError):
        TrainSettings(**bad)


@pytest.mark.slow  # trains a Keras head
def test_a_head_answers_only_on_the_features_it_was_trained_on(cached_run, tmp_path):
    """The weights file a model was trained with, changed on disk since, gives features of
    the same width: pairing the head with them would answer wrong in silence, so it is
    refused. (The model is a value: another backbone or weights chosen since is not its
    business; it keeps its own.)"""
    from app.core.features.backbones import build_backbone, get_spec

    weights = tmp_path / "mine.weights.h5"
    model = build_backbone(get_spec("tiny"), "none")
    model.save_weights(weights)
    cached_run.weights = str(weights)
    cached_run.settings = TrainSettings(epochs=1, batch_size=8)
    cached_run.run_training()
    trained = cached_run.model
    assert trained.predictor() is not None
    model.set_weights([w * 0.5 for w in model.get_weights()])
    model.save_weights(weights)  # the same file, other weights
    with pytest.raises(RuntimeError, match="train again"):
        trained.predictor()
    with pytest.raises(RuntimeError, match="train again"):
        trained.export(tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.slow  # trains a Keras head
def test_cancel_keeps_exactly_the_best_epochs_weights(cached_run):
    """The kept head equals a run of the same seed stopped at the best epoch."""
    token = CancelToken()
    common = dict(batch_size=4, schedule="constant", early_stopping=0, seed=11,
                  stream_interval=0.0)
    cached_run.settings = TrainSettings(epochs=50, **common)

    def progress(p):
        if p.data and p.data.get("partial") and p.data["epoch"] == 5:
            token.cancel()

    cached_run.run_training(progress, token)
    cut = cached_run.result
    assert cut.cancelled and cut.epochs_run == 4 and 1 <= cut.best_epoch <= 4
    losses = [h["val_main_loss"] for h in cut.history]
    assert cut.best_epoch == 1 + int(np.argmin(losses))
    kept = cut.head.get_weights()
    cached_run.settings = TrainSettings(epochs=cut.best_epoch, **common)
    cached_run.run_training()
    assert cached_run.result.best_epoch == cut.best_epoch
    for a, b in zip(kept, cached_run.result.head.get_weights()):
        np.testing.assert_array_equal(a, b)
