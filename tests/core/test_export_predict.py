import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.core.delivery.export import ExportError
from app.core.delivery.predict import ModelDirError, Predictor, read_metadata
from app.core.pipeline.retrain import Retraining, evaluate_model_dir
from app.core.training.fit import TrainSettings
from tests.conftest import make_dataset, make_image


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    data = make_dataset(root / "photos", per_class=12)
    run = Retraining(data, "tiny", "none", root / "cache",
                     TrainSettings(epochs=3, batch_size=8, learning_rate=3e-3))
    run.run_training()
    model_dir = run.export(root / "model").folder
    return run, model_dir, root


@pytest.mark.slow  # trains a Keras head
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
    assert meta["parity"]["checked"] and meta["written_by"] == "Bottleneck Studio"
    assert oct(model_dir.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    assert set(meta["split"]) == {"train", "validation", "test"}
    assert meta["test"]["main_accuracy"] == run.evaluation.main_accuracy
    assert len(json.loads((model_dir / "history.json").read_text())) == run.result.epochs_run
    assert (model_dir / "history.csv").read_text().startswith("epoch,main_loss")


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.slow  # trains a Keras head
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


@pytest.mark.slow  # trains a Keras head
def test_parity_check_catches_wrong_preprocessing(trained, monkeypatch, tmp_path):
    import keras

    import app.core.features.backbones as backbones

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
@pytest.mark.slow  # trains a Keras head
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


@pytest.mark.slow  # trains a Keras head
def test_export_replaces_only_a_model_folder_of_ours(trained, tmp_path):
    run, _, _ = trained
    target = tmp_path / "model"
    first = run.export(target)
    old_created = json.loads((target / "metadata.json").read_text())["created"]
    second = run.export(target)  # ours: replaced
    assert second.folder == first.folder and (target / "model.keras").is_file()
    assert not list(tmp_path.glob(".model*")), "staging or old copy left behind"
    assert json.loads((target / "metadata.json").read_text())["created"] >= old_created

    (target / "my-notes.txt").write_text("mine")  # now it holds a file we did not write
    with pytest.raises(ExportError, match="not a model folder"):
        run.export(target)
    assert (target / "my-notes.txt").read_text() == "mine"

    user = tmp_path / "Documents"
    user.mkdir()
    (user / "letter.txt").write_text("dear user")
    with pytest.raises(ExportError, match="nothing was touched"):
        run.export(user)
    assert [p.name for p in user.iterdir()] == ["letter.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a folder"):
        run.export(tmp_path / "file")


@pytest.mark.slow  # trains a Keras head
def test_a_failed_export_leaves_the_old_model(trained, monkeypatch, tmp_path):
    import keras

    import app.core.features.backbones as backbones

    run, _, _ = trained
    target = tmp_path / "model"
    run.export(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    monkeypatch.setattr(backbones, "scaling_layer",
                        lambda spec: keras.layers.Rescaling(1 / 255.0))
    with pytest.raises(ExportError, match="disagrees"):
        run.export(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


@pytest.mark.slow  # trains a Keras head
def test_a_crash_between_renames_never_leaves_neither(trained, monkeypatch, tmp_path):
    """Without an atomic exchange, the old model is renamed aside before the new one moves
    in; if the second rename fails, the old one comes back."""
    import app.core.delivery.export as export

    run, _, _ = trained
    target = tmp_path / "model"
    run.export(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    monkeypatch.setattr(export.folder, "_exchange", lambda a, b: False)
    real_rename = Path.rename

    def rename(self, dest):
        if Path(dest) == target and self.name.startswith(".model.export-") and \
                (self / "model.keras").exists() and not target.exists():
            raise OSError(5, "Input/output error")
        return real_rename(self, dest)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(ExportError, match="Input/output error"):
        run.export(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    monkeypatch.setattr(Path, "rename", real_rename)
    assert run.export(target).folder == target  # the plain two-rename path works too
    assert not list(tmp_path.glob(".model*"))


@pytest.mark.slow  # trains a Keras head
def test_export_says_when_parity_could_not_be_checked(tmp_path):
    from app.core.intake.dataset import SplitSpec, scan_dataset

    data = make_dataset(tmp_path / "photos", per_class=6)
    run = Retraining(data, "tiny", "none", tmp_path / "cache", TrainSettings(epochs=1))
    run.dataset = scan_dataset(data, split=SplitSpec(0.9, 0.0, 0.1))
    run.run_training()
    assert len(run.splits["validation"]) == 0
    report = run.export(tmp_path / "m1")
    assert report.parity is None and "validation split is empty" in report.parity_note
    assert read_metadata(report.folder)["parity"] == {"checked": False,
                                                      "note": report.parity_note}

    run.dataset = scan_dataset(data)  # 80/10/10: some validation images
    run.run_training()
    (tmp_path / "moved").mkdir()
    for path in map(Path, run.splits["validation"].paths):
        path.rename(tmp_path / "moved" / path.name)
    report = run.export(tmp_path / "m2")
    assert report.parity.images == 0 and not report.parity_checked
    assert "none of the" in report.parity_note and "could be decoded" in report.parity_note


@pytest.mark.slow  # trains a Keras head
def test_mixed_precision_features_export_within_the_stated_tolerance(tmp_path, monkeypatch):
    """GPU features are computed in mixed float16; forced here on the CPU. The exported model
    computes in float32, so parity holds within the tolerance the metadata states."""
    monkeypatch.setenv("BOTTLENECK_STUDIO_PRECISION", "mixed_float16")
    data = make_dataset(tmp_path / "photos", per_class=12)
    run = Retraining(data, "tiny", "none", tmp_path / "cache",
                     TrainSettings(epochs=3, batch_size=8, learning_rate=3e-3))
    run.run_training()
    assert run.result.model_key.endswith("mixed_float16")
    parity = read_metadata(run.export(tmp_path / "m").folder)["parity"]
    assert parity["checked"] and parity["top1_mismatches"] == 0
    assert parity["tolerance"] == 3e-2 and parity["max_abs_diff"] <= 3e-2
