"""The headless path a power user drives: train -> evaluate -> predict, as subprocesses."""

import json
import subprocess
import sys

import pytest

from app.core.training.fit import HISTORY_KEYS
from tests.conftest import make_dataset

pytestmark = pytest.mark.slow


def _run(*args, timeout=600):
    out = subprocess.run([sys.executable, "-m", "app", *map(str, args)], capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_train_evaluate_predict_json(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=10)
    (data / "green" / "bad.jpg").write_text("nope")
    model = tmp_path / "model"
    common = ["--backbone", "tiny", "--weights", "none", "--cache-dir", tmp_path / "c"]
    out = _run("train", data, "--out", model, *common, "--epochs", "2", "--seed", "5", "--json")
    doc = json.loads(out.stdout)
    assert doc["classes"] == ["blue", "green", "red"] and doc["epochs_run"] == 2
    assert len(doc["history"]) == 2 and set(HISTORY_KEYS) <= set(doc["history"][0])
    for k in ("main_accuracy", "balanced_accuracy", "aux1_accuracy", "aux2_accuracy", "count"):
        assert k in doc["test"]
    assert doc["model_dir"] == str(model.resolve())
    # the per-epoch line on stderr shows main and aux metrics, train and validation
    epoch_lines = [ln for ln in out.stderr.splitlines() if ln.startswith("Epoch ")]
    assert len(epoch_lines) == 2 and epoch_lines[0].startswith("Epoch 1 of 2 — main: loss ")
    assert "aux1: loss" in epoch_lines[0] and "(validation: loss" in epoch_lines[0]
    # stderr holds the app's lines only: on a CPU without AVX-512, float16 rows handed to
    # TensorFlow printed oneDNN's "supports DT_HALF only on platforms with AVX-512"
    assert "DT_HALF" not in out.stderr and "oneDNN" not in out.stderr

    ev = json.loads(_run("evaluate", model, data, "--json").stdout)
    for k in ("count", "main_accuracy", "balanced_accuracy", "labels", "confusion", "per_class",
              "misclassified"):
        assert k in ev
    assert ev["count"] == doc["test"]["count"]
    assert ev["main_accuracy"] == doc["test"]["main_accuracy"]

    preds = json.loads(_run("predict", model, data / "red", data / "green" / "bad.jpg",
                            "--top", "2", "--json").stdout)
    assert len(preds) == 11
    good = [p for p in preds if p["error"] is None]
    assert len(good) == 10 and all(len(p["top"]) == 2 for p in good)
    assert [p for p in preds if p["error"]][0]["path"].endswith("bad.jpg")


def test_predict_sorts_a_folder_previews_and_undoes(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=10)
    model = tmp_path / "model"
    common = ["--backbone", "tiny", "--weights", "none", "--cache-dir", tmp_path / "c"]
    _run("train", data, "--out", model, *common, "--epochs", "2")
    camera = make_dataset(tmp_path / "camera", per_class=2)
    out = tmp_path / "sorted"
    plan = json.loads(_run("predict", model, camera, "--sort-into", out, "--dry-run",
                           "--json").stdout)
    assert sum(plan["plan"].values()) == 6 and not out.exists()
    doc = json.loads(_run("predict", model, camera, "--sort-into", out, "--json").stdout)
    assert doc["done"] == 6 and doc["plan"] == plan["plan"]
    filed = sorted(p.name for p in out.rglob("*.*") if not p.name.startswith("."))
    assert filed == sorted(p.name for p in camera.rglob("*.*"))
    assert len(list(camera.rglob("*.*"))) == 6  # copied, the originals stay
    _run("predict", model, camera, "--sort-into", out, "--undo")
    assert [p for p in out.rglob("*.*") if not p.name.startswith(".")] == []
