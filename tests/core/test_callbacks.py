"""The training callbacks' hooks, called by hand on a dummy model (Keras' own callback tests'
style): each concern in milliseconds, no training."""

from __future__ import annotations

import math

from app.core.base.jobs import CancelToken
from app.core.training.callbacks import (
    HonourCancel,
    KeepBest,
    RunState,
    StopEarly,
    StopOnDivergence,
    StreamMetrics,
    run_callbacks,
)


class Dummy:
    """What the callbacks touch of a Keras model."""

    def __init__(self) -> None:
        self.stop_training = False
        self.weights = [0]

    def get_weights(self):
        return list(self.weights)


def _attach(callbacks, model):
    for cb in callbacks:
        cb.set_model(model)
    return callbacks


def _logs(loss, val=None):
    logs = {"main_loss": loss, "main_accuracy": 0.5}
    if val is not None:
        logs.update(val_main_loss=val, val_main_accuracy=0.5)
    return logs


def test_the_best_epoch_and_its_weights_are_kept_and_early_stopping_counts_from_it():
    state, model, seen = RunState("val_main_loss"), Dummy(), []
    cbs = _attach(run_callbacks(state, CancelToken(), seen.append, epochs=10, patience=2,
                                interval=0.0), model)
    for epoch, (val, w) in enumerate([(1.0, "a"), (0.5, "b"), (0.7, "c"), (0.6, "d")]):
        model.weights = [w]
        for cb in cbs:
            cb.on_epoch_begin(epoch)
        for cb in cbs:
            cb.on_epoch_end(epoch, _logs(1.0, val))
        if model.stop_training:
            break
    assert (state.best_epoch, state.best, state.best_weights) == (2, 0.5, ["b"])
    assert model.stop_training and state.stopped_early and epoch == 3  # two epochs worse
    assert [p.done for p in seen if not p.data["partial"]] == [1, 2, 3, 4]
    assert all(p.data["best_epoch"] <= 2 for p in seen)


def test_a_cancel_within_an_epoch_stops_and_that_epoch_is_no_epoch():
    state, model, token = RunState("main_loss"), Dummy(), CancelToken()
    cancel, keep = HonourCancel(state, token), KeepBest(state)
    _attach([cancel, keep], model)
    cancel.on_train_batch_end(0)
    assert not model.stop_training
    token.cancel()
    cancel.on_train_batch_end(1)
    keep.on_epoch_end(0, _logs(0.1))
    assert model.stop_training and state.interrupted and state.best_epoch == 0


def test_a_cancel_after_the_last_batch_keeps_that_epoch():
    state, model, token = RunState("main_loss"), Dummy(), CancelToken()
    cancel, keep = _attach([HonourCancel(state, token), KeepBest(state)], model)
    token.cancel()
    cancel.on_epoch_end(0, _logs(0.3))
    keep.on_epoch_end(0, _logs(0.3))
    assert model.stop_training and not state.interrupted and state.best_epoch == 1


def test_a_non_finite_loss_stops_and_is_never_the_best():
    state, model = RunState("main_loss"), Dummy()
    diverge, keep = _attach([StopOnDivergence(state), KeepBest(state)], model)
    for epoch, loss in enumerate([0.9, math.nan]):
        diverge.on_epoch_end(epoch, _logs(loss))
        keep.on_epoch_end(epoch, _logs(loss))
    assert model.stop_training and state.diverged == 2 and state.best_epoch == 1


def test_partial_metrics_stream_at_most_every_interval():
    state, seen = RunState("main_loss"), []
    stream = StreamMetrics(state, seen.append, epochs=3, interval=3600.0)
    stream.on_epoch_begin(0)
    for batch in range(5):
        stream.on_train_batch_end(batch, _logs(0.5))
    assert seen == []  # not an hour yet
    stream.interval = 0.0
    stream.on_train_batch_end(5, _logs(0.4))
    assert seen[-1].data == {"partial": True, "epoch": 1, "main_loss": 0.4,
                             "main_accuracy": 0.5}


def test_no_early_stop_without_patience():
    state, model = RunState("main_loss"), Dummy()
    stop = _attach([StopEarly(state, 0, 10, CancelToken())], model)[0]
    state.since_best = 50
    stop.on_epoch_end(0, {})
    assert not model.stop_training
