"""Training in a child process (what the window uses) gives the in-process results."""

import json

import numpy as np
import pytest

from app.core.isolation import ChildFailed, run_isolated
from app.core.jobs import CancelToken
from app.core.retrain import Retraining
from app.core.training import TrainSettings

pytestmark = pytest.mark.slow


def test_isolated_training_matches_in_process_training(dataset_dir, cache_dir):
    settings = TrainSettings(epochs=3, batch_size=8, learning_rate=3e-3, seed=7)
    here = Retraining(dataset_dir, "tiny", "none", cache_dir, settings)
    here.run_training()
    away = Retraining(dataset_dir, "tiny", "none", cache_dir, settings)
    seen = []
    away.run_training_isolated(progress=seen.append)
    assert json.dumps(away.result.history) == json.dumps(here.result.history)
    assert [p.done for p in seen if p.stage == "train" and not p.data["partial"]] == [1, 2, 3]
    assert away.evaluation == here.evaluation
    for a, b in zip(away.result.head.get_weights(), here.result.head.get_weights()):
        np.testing.assert_array_equal(a, b)
    files = [r.path for r in here.dataset.images[:4]]
    pa = away.predictor().predict(files)
    pb = here.predictor().predict(files)
    assert [p.top for p in pa] == [p.top for p in pb]


def test_cancel_reaches_the_child(dataset_dir, cache_dir):
    token = CancelToken()
    run = Retraining(dataset_dir, "tiny", "none", cache_dir,
                     TrainSettings(epochs=200, batch_size=2, stream_interval=0.0))
    run.run_cache()

    def progress(p):
        if p.stage == "train":
            token.cancel()

    run.run_training_isolated(progress, token)
    assert run.result.cancelled and run.result.epochs_run < 200


def test_a_failure_in_the_child_is_raised_with_its_message():
    with pytest.raises(ChildFailed, match="is not a folder"):
        run_isolated("app.core.caching:cache_features",
                     {"data": "/nonexistent-folder-for-test", "backbone": "tiny",
                      "weights": "none"})
