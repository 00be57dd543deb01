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
from app.core.trust.calibration import averaged_logits, softmax


def _trained(data, cache, **settings):
    base = dict(epochs=3, batch_size=8, learning_rate=3e-3, seed=3)
    run = Retraining(data, "tiny", "none", cache, TrainSettings(**{**base, **settings}))
    run.run_training()
    return run


@pytest.mark.parametrize("temperature", [0.05, 1.0, 20.0])
def test_the_built_in_answer_is_the_apps_numpy_answer(tmp_path, temperature):
    """Keras' own layers compute what the app computes in numpy (the mean of the softmaxes,
    floored at 1e-30, logged, divided by T, softmaxed), to float32 rounding, from ordinary
    logits to ones in the thousands where every probability but one underflows; and the
    model they make names no class of the app."""
    import keras

    from app.core.training.answer import average_answer

    n, rng = 6, np.random.default_rng(7)
    inputs = {out: keras.Input((n,), name=out) for out in ("main", "aux1", "aux2")}
    model = keras.Model(inputs, average_answer(inputs, temperature))
    assert "bottleneck_studio" not in model.to_json()
    model.save(tmp_path / "answer.keras")
    model = keras.saving.load_model(tmp_path / "answer.keras", safe_mode=True)
    for scale in (1.0, 30.0, 300.0, 3000.0):
        logits = {out: rng.normal(0, scale, (256, n)).astype(np.float32) for out in inputs}
        got = np.asarray(model.predict_on_batch(logits))
        # as the app: each output's float32 probabilities, then averaged_logits
        reference = averaged_logits([softmax(x).astype(np.float32) for x in logits.values()])
        want = softmax(reference, temperature)
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"scale {scale}")
        top2 = np.sort(reference, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-5  # not a tie in float32
        assert (got.argmax(1) == want.argmax(1))[clear].all()
        if scale >= 300:  # the floor is reached, and the answer keeps it
            assert (reference == np.float32(np.log(1e-30))).any()


@pytest.mark.slow  # trains a Keras head
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
    assert Predictor.from_dir(folder).model.get_layer("answer_temperature").scale == \
        pytest.approx(1 / run.trust.temperature)


@pytest.mark.slow  # trains a Keras head
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
