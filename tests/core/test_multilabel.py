"""Several tags a photo, end to end on the tiny backbone: a tagged folder trained (a sigmoid
per tag on every output), its thresholds and scores, the export in every form checked against
the app's answers, the model folder's tag sets in the app, in its own predict.py and on the
command line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.core.delivery.predict import Predictor
from app.core.intake.tags import read_tags, scan_tagged
from app.core.pipeline.retrain import RunChoice
from app.core.pipeline.tagged import tag_answer, train_tagged
from app.core.training.fit import MULTI_LABEL_HISTORY_KEYS
from app.core.training.settings import TrainSettings
from tests.conftest import COLOURS

pytestmark = pytest.mark.slow

SETS = [("red",), ("green",), ("blue",), ("red", "green"), ("green", "blue"), ("red", "blue"),
        ()]


def make_tagged(root: Path, per_set: int = 8) -> Path:
    """Photos made of one vertical band per tag's colour (grey for no tag), and labels.csv."""
    rng = np.random.default_rng(0)
    rows = ["file,tags"]
    for s, tags in enumerate(SETS):
        for i in range(per_set):
            colours = [COLOURS[t] for t in tags] or [(128, 128, 128)]
            arr = np.concatenate([np.full((48, 64 // len(colours), 3), c, np.float64)
                                  for c in colours], axis=1)
            arr = np.clip(arr + rng.normal(0, 25, arr.shape), 0, 255).astype(np.uint8)
            name = f"s{s}/p{i}.png"
            (root / f"s{s}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / name)
            rows.append(f"{name},{';'.join(tags)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n", "utf-8")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml")
    data = scan_tagged(make_tagged(root / "photos"))
    settings = TrainSettings.for_task(True, epochs=8, batch_size=8, learning_rate=3e-3,
                                      seed=2, hidden_units=32)
    model, _ = train_tagged(RunChoice(str(data.root), "tiny", "none", settings), data,
                            root / "cache")
    return root, data, model


def test_training_gives_a_sigmoid_per_tag_and_judges_it(trained):
    _, data, model = trained
    result = model.result
    assert result.multi_label and model.tags == ["blue", "green", "red"]
    assert result.settings.answer == "main"  # the multi-label default
    rec = result.history[-1]
    assert rec["main_map"] is not None and rec["val_main_map"] is not None
    assert "main_accuracy" not in rec and rec["aux1_map"] is not None
    assert all(rec[k] is not None for k in MULTI_LABEL_HISTORY_KEYS)
    ev = model.evaluation
    assert ev.count == len(model.splits["test"]) > 0
    assert set(ev.per_tag) == {"blue", "green", "red"} and ev.map is not None
    assert len(model.trust.thresholds) == len(model.trust.temperatures) == 3
    # the probabilities are per tag, not one distribution: rows need not sum to 1
    _, z = tag_answer(result, model.splits["test"])
    probs = model.trust.calibrated(z)
    assert probs.shape == (ev.count, 3) and not np.allclose(probs.sum(axis=1), 1.0)


def test_the_export_answers_tag_sets_as_the_app_in_every_form(trained):
    root, _, model = trained
    forms = ("keras", "savedmodel", "tflite", "onnx")
    report = model.export(root / "model", forms)
    meta = json.loads((report.folder / "metadata.json").read_text())
    assert meta["task"] == "multi-label" and list(meta["thresholds"]) == model.tags
    assert meta["parity"]["checked"] and meta["parity"]["top1_mismatches"] == 0
    assert meta["onnx"]["checked"] is True
    for form in ("savedmodel", "tflite", "onnx"):
        assert meta["preprocessing"]["plain_decode"]["other_forms"][form]["images"] > 0
    test = model.splits["test"]
    _, z = tag_answer(model.result, test)
    in_app = model.trust.decide(model.trust.calibrated(z))
    predictor = Predictor.from_dir(report.folder)
    preds = predictor.predict(test.paths, top_k=3)
    for p, row in zip(preds, in_app):
        assert {t["label"] for t in p.tags} == {model.tags[j] for j in np.flatnonzero(row)}
        assert all(t["probability"] >= meta["thresholds"][t["label"]] for t in p.tags)
    # the folder's thresholds decide: one moved by hand moves the answers
    probs = np.array([[{t["label"]: t["probability"] for t in p.top}[c] for c in model.tags]
                      for p in preds])
    moved = float(np.median(probs[:, 0]))
    meta["thresholds"]["blue"] = moved
    (report.folder / "metadata.json").write_text(json.dumps(meta))
    again = Predictor.from_dir(report.folder).predict(test.paths, top_k=3)
    assert [any(t["label"] == "blue" for t in p.tags) for p in again] == \
        (probs[:, 0] >= moved).tolist()
    # the folder's own predict.py, with Keras and with ONNX Runtime alone
    for runtime in ("keras", "onnx"):
        out = subprocess.run([sys.executable, "predict.py", *test.paths[:4], "--json",
                              "--runtime", runtime], cwd=report.folder, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        alone = json.loads(out.stdout)
        assert [[t["label"] for t in r["tags"]] for r in alone] == \
            [[t["label"] for t in p.tags] for p in again[:4]]


def test_train_and_predict_tag_sets_on_the_command_line(tmp_path):
    data = make_tagged(tmp_path / "photos", per_set=6)
    # a PNG cut short: its header passes the scan, its decoding fails while caching; listed,
    # it is reported and skipped, and training goes on without it
    (data / "s0" / "bad.png").write_bytes((data / "s0" / "p0.png").read_bytes()[:120])
    with open(data / "labels.csv", "a", encoding="utf-8") as f:
        f.write("s0/bad.png,red\n")
    run = [sys.executable, "-m", "app"]
    common = ["--backbone", "tiny", "--weights", "none", "--cache-dir", str(tmp_path / "c")]
    out = subprocess.run([*run, "train", str(data), "--multi-label", "--out",
                          str(tmp_path / "m"), *common, "--epochs", "3", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["mode"] == "multi-label" and doc["tags"] == ["blue", "green", "red"]
    assert doc["training"]["settings"]["hidden_units"] == 1024  # the multi-label default
    assert set(doc["test"]) >= {"map", "micro_f1", "macro_f1", "exact_match", "hamming_loss",
                                "per_tag", "confused", "errors"}
    assert doc["data"]["tags_per_photo"] == {"0": 6, "1": 18, "2": 18}
    assert "Epoch 1 of 3 — main: loss " in out.stderr and "mAP" in out.stderr
    assert "skipped" in out.stderr and "bad.png" in out.stderr
    out = subprocess.run([*run, "evaluate", str(tmp_path / "m"), str(data), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    ev = json.loads(out.stdout)
    assert ev["mode"] == "multi-label" and ev["count"] == doc["test"]["count"]
    assert ev["map"] == pytest.approx(doc["test"]["map"], abs=2e-3)  # decoded, not cached
    assert ev["thresholds"] == doc["thresholds"]["per_tag"]
    out = subprocess.run([*run, "predict", str(tmp_path / "m"), str(data / "s3"), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    preds = json.loads(out.stdout)
    assert len(preds) == 6 and all(isinstance(p["tags"], list) for p in preds)
    # the tag sets as a tags file, ready to read back (and refused over an existing file)
    tags_csv = data / "predicted.csv"
    for expect in (0, 2):
        out = subprocess.run([*run, "predict", str(tmp_path / "m"), str(data / "s3"),
                              "--tags-csv", str(tags_csv)], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == expect, out.stderr[-2000:]
    assert "exists" in out.stderr
    back = {r.file: r.tags for r in read_tags(tags_csv).rows}
    assert back == {f"s3/{Path(p['path']).name}": tuple(sorted(t["label"] for t in p["tags"]))
                    for p in preds}
    # sorted by tags: a copy in every tag folder a photo gets (one operation), undone at once
    sort = [*run, "predict", str(tmp_path / "m"), str(data / "s3"), "--sort-into",
            str(tmp_path / "sorted")]
    out = subprocess.run([*sort, "--move"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "copies each photo" in out.stderr
    out = subprocess.run([*sort, "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    sorted_doc = json.loads(out.stdout)
    copies = [(folder, Path(p["path"]).name) for p in preds
              for folder in (["_unknown"] if p["unknown"] else [t["label"] for t in p["tags"]])]
    assert sorted_doc["done"] == len(copies) > 0
    assert all((tmp_path / "sorted" / f / n).is_file() for f, n in copies)
    out = subprocess.run([*sort, "--undo"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not any((tmp_path / "sorted" / f / n).exists() for f, n in copies)


def test_the_fine_tune_mode_trains_tags_and_exports_them(tmp_path):
    """The cut in the same store, the top blocks trained by the per-tag losses, the tag
    temperatures in the exported model: its answers are the app's."""
    data = scan_tagged(make_tagged(tmp_path / "photos", per_set=6))
    settings = TrainSettings.for_task(True, epochs=2, batch_size=8, mode="finetune",
                                      hidden_units=16, seed=4)
    model, cache = train_tagged(RunChoice(str(data.root), "tiny", "none", settings), data,
                                tmp_path / "cache")
    assert cache.mode == "finetune" and model.result.multi_label
    assert model.result.trainable_backbone_layers  # the top blocks trained
    meta = json.loads((model.export(tmp_path / "m").folder / "metadata.json").read_text())
    assert meta["mode"] == "finetune" and meta["task"] == "multi-label"
    assert meta["parity"]["checked"] and meta["parity"]["max_abs_diff"] <= 1e-3
