import json
import subprocess
import sys

import numpy as np
import pytest

from app.core.export import ExportError
from app.core.predict import ModelDirError, Predictor, read_metadata
from app.core.retrain import Retraining, evaluate_model_dir
from app.core.training import TrainSettings
from tests.conftest import make_dataset, make_image


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    data = make_dataset(root / "photos", per_class=12)
    run = Retraining(data, "tiny", "none", root / "cache",
                     TrainSettings(epochs=3, batch_size=8, learning_rate=3e-3))
    run.run_training()
    model_dir = run.export(root / "model")
    return run, model_dir, root


def test_export_writes_a_complete_model_folder(trained):
    run, model_dir, _ = trained
    names = {p.name for p in model_dir.iterdir()}
    assert {"model.keras", "labels.txt", "metadata.json", "history.csv", "history.json"} <= names
    meta = read_metadata(model_dir)
    assert meta["classes"] == ["blue", "green", "red"] == (
        (model_dir / "labels.txt").read_text().split())
    assert meta["backbone"] == "tiny" and meta["image_size"] == [64, 64]
    assert meta["parity"]["images"] == len(run.splits["validation"]) > 0
    assert meta["parity"]["top1_mismatches"] == 0 and meta["parity"]["max_abs_diff"] <= 1e-3
    assert set(meta["split"]) == {"train", "validation", "test"}
    assert meta["test"]["main_accuracy"] == run.evaluation.main_accuracy
    assert len(json.loads((model_dir / "history.json").read_text())) == run.result.epochs_run
    assert (model_dir / "history.csv").read_text().startswith("epoch,main_loss")


def test_exported_model_predicts_like_the_app(trained):
    run, model_dir, root = trained
    files = [make_image(root / "new" / f"{i}.jpg", c, seed=50 + i)
             for i, c in enumerate([(200, 40, 40), (40, 190, 60), (40, 60, 200)])]
    bad = root / "new" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    in_app = run.predictor().predict(files + [bad], top_k=3)
    exported = Predictor.from_dir(model_dir).predict(files + [bad], top_k=3)
    for a, b in zip(in_app[:3], exported[:3]):
        assert a.error is None and b.error is None
        assert [t["label"] for t in a.top] == [t["label"] for t in b.top]
        np.testing.assert_allclose([t["probability"] for t in a.top],
                                   [t["probability"] for t in b.top], atol=1e-5)
    assert exported[3].error and not exported[3].top
    assert sum(t["probability"] for t in exported[0].top) == pytest.approx(1.0, abs=1e-4)


def test_parity_check_catches_wrong_preprocessing(trained, monkeypatch, tmp_path):
    import keras

    import app.core.backbones as backbones

    run, _, _ = trained
    monkeypatch.setattr(backbones, "scaling_layer",
                        lambda spec: keras.layers.Rescaling(1 / 255.0))
    with pytest.raises(ExportError, match="disagrees with the app"):
        run.export(tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()
    assert not list(tmp_path.glob(".wrong*"))


def test_evaluate_model_dir_matches_in_app_evaluation(trained):
    run, model_dir, _ = trained
    ev = evaluate_model_dir(model_dir, run.dataset.root)
    assert ev.count == run.evaluation.count
    assert ev.main_accuracy == run.evaluation.main_accuracy
    assert ev.confusion == run.evaluation.confusion


@pytest.mark.parametrize("damage,message", [
    ("missing", "does not exist"),
    ("old", "another version"),
    ("garbled_meta", "damaged"),
    ("garbled_model", "cannot be loaded"),
])
def test_damaged_model_folders_give_one_clear_error(trained, tmp_path, damage, message):
    import shutil

    _, model_dir, _ = trained
    target = tmp_path / "m"
    if damage != "missing":
        shutil.copytree(model_dir, target)
    if damage == "old":
        meta = json.loads((target / "metadata.json").read_text())
        meta["format_version"] = 0
        (target / "metadata.json").write_text(json.dumps(meta))
    elif damage == "garbled_meta":
        (target / "metadata.json").write_text("{not json")
    elif damage == "garbled_model":
        (target / "model.keras").write_bytes(b"PK\x03\x04 nonsense")
    with pytest.raises(ModelDirError, match=message):
        Predictor.from_dir(target)
    out = subprocess.run([sys.executable, "-m", "app", "predict", str(target), "x.jpg"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last
