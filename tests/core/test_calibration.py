"""Calibrated probabilities: temperature scaling fixes an over-confident head, the ECE says by
how much, and the exported model outputs the calibrated probabilities itself."""

import numpy as np
import pytest

from app.core.delivery.export import answer_taps, classifier_model
from app.core.delivery.predict import Predictor, read_metadata
from app.core.features.backbones import get_spec
from app.core.intake.imaging import load_rgb
from app.core.pipeline.retrain import Retraining, evaluate_head, evaluate_model_dir
from app.core.training.fit import TrainSettings
from app.core.trust.calibration import ece, fit_temperature, reliability, safe_temperature, softmax
from app.core.trust.fitting import Trust
from tests.conftest import make_dataset


def _overconfident(n=4000, classes=5, seed=0):
    """Labels drawn from softmax(z) (z is calibrated by construction); the head says 4 z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, classes))
    p = softmax(z)
    labels = (rng.random((n, 1)) > p.cumsum(1)).sum(1)
    return z * 4.0, labels


def test_temperature_scaling_fixes_an_overconfident_head():
    logits, labels = _overconfident()
    t = fit_temperature(logits[:2000], labels[:2000])
    before = ece(softmax(logits[2000:]), labels[2000:])
    after = ece(softmax(logits[2000:], t), labels[2000:])
    assert 3.3 < t < 4.7  # the head was made 4x too sharp
    assert before > 0.15 and after < 0.05
    np.testing.assert_array_equal(softmax(logits, t).argmax(1), logits.argmax(1))


def test_thin_evidence_never_sharpens_probabilities():
    """A timid head (logits / 3) on a validation split with every image right: the NLL asks
    for T at its lower bound, which would make every answer ~100% sure; a small split too.
    With enough images and some mistakes the fit is used as it comes."""
    logits, labels = _overconfident()
    timid = logits / 12.0  # 3x too soft
    right = timid.argmax(1) == labels
    all_right = timid[right][:200], labels[right][:200]
    assert fit_temperature(*all_right) < 0.1
    t, note = safe_temperature(*all_right)
    assert t == 1.0 and "no validation image is wrong" in note
    t, note = safe_temperature(timid[:12], labels[:12])
    assert t == 1.0 and "only 12 validation images" in note
    t, note = safe_temperature(timid[:2000], labels[:2000])
    assert 0.25 < t < 0.4 and note == ""


def test_ece_and_reliability_bins_by_hand():
    # 10 images at confidence 0.9 (bin 14 of 15), 6 right; 4 at 0.5 (bin 7), 2 right
    probs = np.array([[0.9, 0.1]] * 10 + [[0.5, 0.5]] * 4)
    labels = np.array([0] * 6 + [1] * 4 + [0, 0, 1, 1])
    bins = reliability(probs, labels)
    assert len(bins) == 15
    full = {i: b for i, b in enumerate(bins) if b["count"]}
    assert sorted(full) == [7, 13]
    assert full[13]["count"] == 10 and full[13]["accuracy"] == pytest.approx(0.6)
    assert full[13]["confidence"] == pytest.approx(0.9)
    assert full[7]["count"] == 4 and full[7]["accuracy"] == pytest.approx(0.5)
    assert ece(probs, labels) == pytest.approx(10 / 14 * 0.3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    data = make_dataset(root / "photos", per_class=12)
    run = Retraining(data, "tiny", "none", root / "cache",
                     TrainSettings(epochs=3, batch_size=8, learning_rate=3e-3))
    run.run_training()
    return run, root


@pytest.mark.slow  # trains a Keras head
def test_training_fits_a_temperature_and_evaluation_scores_calibration(trained):
    run, _ = trained
    # 5 validation images: the fit is made, but it may only soften, never sharpen, and the
    # evaluation says so
    val = run.splits["validation"]
    assert len(val) < 30 and run.trust is not None and run.trust.temperature >= 1.0
    cal = run.evaluation.calibration
    assert cal["temperature"] == run.trust.temperature
    assert {"temperature", "ece_before", "ece_after"} <= set(cal)
    if run.trust.temperature == 1.0:
        assert "not sharpened" in cal["note"]
    before = run.evaluation.reliability["before"]
    assert sum(b["count"] for b in before) == run.evaluation.count


@pytest.mark.slow
def test_the_exported_model_outputs_calibrated_probabilities(trained, tmp_path):
    run, _ = trained
    import dataclasses

    # far from 1, so a missing division shows (the trained model is a value: a new one)
    run.model = dataclasses.replace(run.model, trust=Trust(temperature=2.5))
    folder = run.export(tmp_path / "model").folder
    assert read_metadata(folder)["calibration"]["temperature"] == 2.5
    path = run.splits["validation"].paths[0]
    pixels = load_rgb(path, (64, 64))[None]
    exported = Predictor.from_dir(folder).probabilities(pixels)
    res = run.result
    spec = get_spec("tiny")  # the uncalibrated answer (the mean of the three outputs)
    raw = classifier_model(spec, "none", res.head, aux_layers=answer_taps(spec, res)
                           ).predict_on_batch(pixels.astype(np.float32))
    np.testing.assert_allclose(exported, softmax(np.log(raw) / 2.5), atol=1e-5)
    in_app = run.predictor().probabilities(pixels)
    np.testing.assert_allclose(in_app, exported, atol=1e-5)
    # evaluating the folder recovers the app's own calibration figures on the test split
    ev = evaluate_model_dir(folder, run.dataset.root)
    here = evaluate_head(res, run.splits["test"], run.trust).calibration
    assert ev.calibration["temperature"] == 2.5
    for key in ("ece_before", "ece_after"):
        assert ev.calibration[key] == pytest.approx(here[key], abs=2e-3)
    assert ev.calibration["ece_before"] != ev.calibration["ece_after"]
