""""Unknown": images of a class the model never saw score low and are called unknown, the
threshold keeps 95% of the known images known (knn scores: validation plus training images
scored leave-one-out), and the exported folder answers the same."""

import json
import subprocess
import sys

import numpy as np
import pytest

from app.core.delivery.predict import Predictor, read_metadata
from app.core.pipeline.retrain import Retraining, evaluate_model_dir
from app.core.training.fit import TrainSettings
from app.core.trust.unknown import METHODS, auroc, fit_detector
from tests.conftest import COLOURS, make_dataset, make_image


def test_auroc_by_hand():
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 3], [2, 2]) == 0.5
    assert auroc([2, 2], [2]) == 0.5


def _clusters(rng, centres, n):
    labels = np.repeat(np.arange(len(centres)), n)
    return np.abs(centres[labels] + rng.normal(0, 0.3, (len(labels), centres.shape[1]))), labels


@pytest.mark.parametrize("method", [m for m in METHODS if m != "max_probability"])
def test_feature_scores_flag_a_class_never_seen(method):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 32))
    known, new = centres[:3], centres[3:]
    train, train_y = _clusters(rng, known, 60)
    val, _ = _clusters(rng, known, 40)
    test, _ = _clusters(rng, known, 40)
    other, _ = _clusters(rng, new, 40)
    probs = np.full((len(val), 3), 1 / 3)  # unused by these scores
    det = fit_detector(method, train, train_y, 3, val, probs)
    if method == "mahalanobis":  # knn pools training images too: see the test below
        assert det.flags(det.score(val, probs)).mean() == pytest.approx(0.05, abs=0.01)
    s_known, s_other = det.score(test, probs[:len(test)]), det.score(other, probs[:len(other)])
    assert auroc(s_known, s_other) > 0.99
    assert det.flags(s_other).mean() > 0.9 and det.flags(s_known).mean() < 0.15


def test_knn_threshold_pools_training_images_scored_without_themselves():
    """With only 20 validation images the 5% quantile rests on one image; the training images,
    each scored against the others, make it hold for new images of the known classes."""
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 1, (3, 32))
    train, train_y = _clusters(rng, centres, 300)
    val, _ = _clusters(rng, centres, 7)
    test, _ = _clusters(rng, centres, 400)
    probs = np.full((len(val), 3), 1 / 3)
    det = fit_detector("knn", train, train_y, 3, val, probs)
    assert "training images" in det.known_images and "training images" in det.metadata()["rule"]
    flagged = det.flags(det.score(test, np.full((len(test), 3), 1 / 3))).mean()
    assert 0.03 <= flagged <= 0.07  # 5% of new known images, not fewer (self-matches) or more
    assert det.metadata()["fitted_threshold"] == det.threshold

    # features of trained blocks (fine-tune mode) bring training images together: not pooled
    trained = fit_detector("knn", train, train_y, 3, val, probs, pool_training=False)
    assert trained.known_images == "the validation images"
    assert trained.flags(trained.score(val, probs)).mean() == pytest.approx(0.05, abs=0.05)


def test_relative_knn_measures_against_the_neighbours_own_spread():
    """One class's photos are all alike, another's vary a lot. A near-miss of the tight class
    is as similar to it as the varied class's photos are to each other: plain knn, one
    threshold for both, cannot tell it from a known photo; relative_knn, which subtracts the
    neighbours' own similarity to theirs, flags it and keeps the varied class known."""
    rng = np.random.default_rng(5)
    tight, varied = np.abs(rng.normal(0, 1, (2, 32))) + 0.5

    def photos(centre, spread, n):
        return np.abs(centre + rng.normal(0, spread, (n, 32)))

    train = np.concatenate([photos(tight, 0.05, 150), photos(varied, 0.5, 150)])
    train_y = np.repeat([0, 1], 150)
    val = np.concatenate([photos(tight, 0.05, 20), photos(varied, 0.5, 20)])
    test = np.concatenate([photos(tight, 0.05, 100), photos(varied, 0.5, 100)])
    near_miss = photos(tight, 0.3, 100)
    probs = np.full((len(val), 2), 0.5)  # unused by these scores
    flagged = {}
    for method in ("knn", "relative_knn"):
        det = fit_detector(method, train, train_y, 2, val, probs)
        flagged[method] = [det.flags(det.score(x, probs)).mean() for x in (test, near_miss)]
    assert flagged["knn"][1] < 0.1  # the plain score misses them
    assert flagged["relative_knn"][1] > 0.4
    assert flagged["relative_knn"][0] <= 0.1  # while the known photos stay known


@pytest.mark.parametrize("method", ["knn", "relative_knn"])
def test_scoring_many_images_holds_a_chunk_of_similarities_at_a_time(method):
    """A 100k folder's validation split is ~10k images against 20k reference rows: all their
    similarities at once took 3.4 GB more (measured). Here 20,000 images against 2,000 rows
    would be 160 MB of float32 similarities (and as much again for the sort)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    train = np.abs(rng.normal(0, 1, (2000, 16))).astype(np.float32)
    probs = np.full((10, 2), 0.5)
    det = fit_detector(method, train, np.zeros(2000, np.int64), 2, train[:10], probs)
    many = np.abs(rng.normal(0, 1, (20000, 16))).astype(np.float32)
    tracemalloc.start()
    try:
        scores = det.score(many, probs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert scores.shape == (20000,)
    assert peak < 20 * 2**20  # a few (256, 2000) blocks, not (20000, 2000)
    one_by_one = np.array([det.score(many[i:i + 1], probs)[0] for i in range(0, 20000, 997)])
    np.testing.assert_allclose(scores[::997], one_by_one, atol=1e-6)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "max_probability"])
def test_the_folders_predict_py_scores_as_the_app_does(method, tmp_path, monkeypatch):
    """The exported predict.py's own numpy scoring (no app import) against the detector
    saved, loaded back and scored in the app: same scores, same flags."""
    from app.core.delivery import standalone_predict
    from app.core.trust.unknown import UnknownDetector

    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (3, 24))
    train, train_y = _clusters(rng, centres, 50)
    val, _ = _clusters(rng, centres, 10)
    probs = np.full((len(val), 3), 1 / 3)
    det = fit_detector(method, train, train_y, 3, val, probs)
    det.save(tmp_path)
    entry = det.metadata()
    loaded = UnknownDetector.load(tmp_path, entry)
    new = np.concatenate([_clusters(rng, centres, 10)[0], rng.normal(0, 1, (30, 24))])
    new_probs = np.full((len(new), 3), 1 / 3)
    in_app = loaded.score(new, new_probs)
    np.testing.assert_array_equal(in_app, det.score(new, new_probs))  # float16 both ways
    arrays = standalone_predict.unknown_arrays(entry, tmp_path)
    there = standalone_predict.unknown_scores(entry, new, new_probs, arrays)
    np.testing.assert_allclose(there, in_app, atol=1e-5)
    assert ((there < entry["threshold"]) == loaded.flags(in_app)).all()


def test_model_folders_with_what_their_score_needs_or_a_clear_error(tmp_path):
    rng = np.random.default_rng(2)
    train, train_y = _clusters(rng, rng.normal(0, 1, (2, 16)), 30)
    probs = np.full((6, 2), 0.5)
    old = fit_detector("knn", train, train_y, 2, train[:6], probs)  # last round's folders
    old.save(tmp_path)
    with np.load(tmp_path / "unknown.npz") as arrays:
        assert set(arrays.files) == {"reference"}
    from app.core.trust.unknown import UnknownDetector
    assert UnknownDetector.load(tmp_path, old.metadata()).method == "knn"
    meta = {**old.metadata(), "method": "relative_knn"}  # says relative, lacks the density
    with pytest.raises(ValueError, match="density"):
        UnknownDetector.load(tmp_path, meta)
    with pytest.raises(ValueError, match="training split is empty"):
        fit_detector("relative_knn", train[:0], train_y[:0], 2, train[:6], probs)


@pytest.fixture(scope="module")
def two_colours(tmp_path_factory):
    """Trained on red and green only; blue is the class it never saw."""
    root = tmp_path_factory.mktemp("unk")
    data = make_dataset(root / "photos", per_class=20, classes=("red", "green"))
    run = Retraining(data, "tiny", "none", root / "cache",
                     TrainSettings(epochs=4, batch_size=8, learning_rate=3e-3))
    run.run_training()
    blue = [make_image(root / "blue" / f"{i}.jpg", COLOURS["blue"], seed=900 + i)
            for i in range(12)]
    known = [make_image(root / "known" / f"{i}.jpg", COLOURS[("red", "green")[i % 2]],
                        seed=700 + i) for i in range(12)]
    return run, root, blue, known


@pytest.mark.slow  # trains a Keras head
def test_the_app_calls_a_class_it_never_saw_unknown(two_colours):
    run, _, blue, known = two_colours
    det = run.trust.detector
    assert det is not None and det.method == "relative_knn"  # the default, with unknown.npz
    val = run.splits["validation"]
    assert len(val) >= 4
    preds = run.predictor().predict(blue + known, top_k=1)
    s_blue = [p.score for p in preds[:12]]
    s_known = [p.score for p in preds[12:]]
    assert auroc(s_known, s_blue) > 0.9
    assert sum(p.unknown for p in preds[:12]) >= 10
    assert sum(p.unknown for p in preds[12:]) <= 3
    assert run.evaluation.unknown_rate is not None


@pytest.mark.slow
def test_the_exported_folder_carries_the_unknown_test(two_colours, tmp_path):
    run, root, blue, known = two_colours
    folder = run.export(tmp_path / "model").folder
    meta = read_metadata(folder)["unknown"]
    assert meta["method"] == "relative_knn" and meta["file"] == "unknown.npz"
    assert meta["threshold"] == pytest.approx(run.trust.detector.threshold)
    with np.load(folder / "unknown.npz") as arrays:
        assert arrays["reference"].dtype == np.float16
        assert len(arrays["reference"]) == len(arrays["density"]) == len(run.splits["train"])
    files = blue[:4] + known[:4]
    here = run.predictor().predict(files)
    there = Predictor.from_dir(folder).predict(files)
    assert [p.unknown for p in here] == [p.unknown for p in there]
    np.testing.assert_allclose([p.score for p in here], [p.score for p in there], atol=2e-3)
    ev = evaluate_model_dir(folder, run.dataset.root, split="all")
    assert ev.unknown_rate is not None and ev.unknown_rate <= 0.2
    out = subprocess.run([sys.executable, "-m", "app", "predict", str(folder), str(blue[0]),
                          "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    entry = json.loads(out.stdout)[0]
    # the command line answers through the user cache (taps as the store keeps them, float16)
    from app.core.base.paths import user_cache_dir

    cli_way = Predictor.from_dir(folder, user_cache_dir()).predict(files[:1])
    assert entry["unknown"] is True and entry["score"] == pytest.approx(cli_way[0].score,
                                                                        abs=1e-5)
    assert entry["score"] == pytest.approx(there[0].score, abs=2e-3)
    ev_json = subprocess.run([sys.executable, "-m", "app", "evaluate", str(folder),
                              str(run.dataset.root), "--json"],
                             capture_output=True, text=True, timeout=300)
    doc = json.loads(ev_json.stdout)
    assert set(doc["calibration"]) == {"temperature", "ece_before", "ece_after"}
    assert 0 <= doc["unknown_rate"] <= 1
