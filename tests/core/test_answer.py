"""The model answers with the mean of its main and aux outputs (TrainSettings.answer
"average", the default), or with the main output alone ("main"): the evaluation, the
in-app predictor and the exported model all answer the same way, in both modes."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.delivery.predict import Predictor
from app.core.intake.imaging import load_rgb
from app.core.pipeline.retrain import Retraining
from app.core.training.fit import TrainSettings, predict_split


def _trained(data, cache, **settings):
    base = dict(epochs=3, batch_size=8, learning_rate=3e-3, seed=3)
    run = Retraining(data, "tiny", "none", cache, TrainSettings(**{**base, **settings}))
    run.run_training()
    return run


@pytest.mark.parametrize("mode", ["head", "finetune"])
def test_the_answer_is_the_mean_of_the_outputs_everywhere(dataset_dir, cache_dir, tmp_path,
                                                          mode):
    run = _trained(dataset_dir, cache_dir, mode=mode)
    assert run.result.averages
    test = run.splits["test"]
    outputs = predict_split(run.result, test)
    assert set(outputs) == {"main", "aux1", "aux2"}
    mean = sum(outputs.values()) / 3
    ev = run.evaluation
    assert ev.main_accuracy == pytest.approx(float((mean.argmax(1) == test.labels).mean()),
                                             abs=1e-4)
    # the in-app predictor and the exported model answer with the (calibrated) mean too
    pixels = np.stack([load_rgb(p, (64, 64)) for p in test.paths[:6]])
    in_app = run.predictor().probabilities(pixels)
    folder = run.export(tmp_path / "model").folder
    exported = Predictor.from_dir(folder).probabilities(pixels)
    np.testing.assert_allclose(exported, in_app, atol=1e-5)
    assert Predictor.from_dir(folder).model.get_layer("answer").temperature == \
        pytest.approx(run.trust.temperature)


def test_main_alone_when_asked(dataset_dir, cache_dir, tmp_path):
    run = _trained(dataset_dir, cache_dir, answer="main")
    assert not run.result.averages
    test = run.splits["test"]
    main = predict_split(run.result, test)["main"]
    assert run.evaluation.main_accuracy == pytest.approx(
        float((main.argmax(1) == test.labels).mean()), abs=1e-4)
    folder = run.export(tmp_path / "model").folder
    names = {layer.name for layer in Predictor.from_dir(folder).model.layers}
    assert "answer" not in names and "aux1_tap" not in names
