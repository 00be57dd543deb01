"""A model of several tags a photo in the window: its folder opens (the window refused it), the
Predict page gives each photo's tag set as the model folder's own predictor does, the CSV keeps
the tag sets, a sort copies each photo into every tag folder it gets, the Train page draws
the folder's mAP curves and the Evaluate page shows its kept per-tag scores (or why none)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PySide6.QtWidgets import QLabel, QProgressBar

from app.core.delivery.predict import Predictor
from app.core.intake.tags import scan_tagged
from app.core.pipeline.retrain import RunChoice
from app.core.pipeline.tagged import train_tagged
from app.core.training.settings import TrainSettings
from app.gui.widgets import percent
from tests.core.test_multilabel import make_tagged

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlwin")
    data = scan_tagged(make_tagged(root / "photos", per_set=6))
    settings = TrainSettings.for_task(True, epochs=6, batch_size=8, learning_rate=3e-3,
                                      seed=2, hidden_units=32)
    model, _ = train_tagged(RunChoice(str(data.root), "tiny", "none", settings), data,
                            root / "cache")
    model.export(root / "model", ("keras",))
    return root


def test_a_multi_label_model_folder_answers_tag_sets_in_the_window(qtbot, window, model_dir,
                                                                   tmp_path):
    folder = model_dir / "model"
    worker = window.models.open_model(str(folder))
    qtbot.waitUntil(lambda: not window.session.slot.empty, timeout=60000)
    assert worker is not None and window.session.slot.model.multi_label
    photos = [model_dir / "photos" / f"s{s}" / f"p{i}.png" for i, s in enumerate((0, 3, 6))]
    page = window.predict
    assert window.predict_control.predict_paths([str(p) for p in photos]) is not None
    qtbot.waitUntil(lambda: page.table.rowCount() == 3 and not page.bar.isVisible(),
                    timeout=60000)

    expected = Predictor.from_dir(folder).predict([str(p) for p in photos], top_k=3)
    for row, want in enumerate(expected):
        cell = page.table.cellWidget(row, 2)
        names = ", ".join(t["label"] for t in want.tags)
        heading = f"<b>Tags:</b> {names}" if names else "<b>None of its tags</b>"
        assert heading in [w.text() for w in cell.findChildren(QLabel)]
        given = {t["label"] for t in want.tags}
        bars = [b.format() for b in cell.findChildren(QProgressBar)]
        assert len(bars) == 3 and all(b.startswith("✓ ") == (b.split()[-2] in given)
                                      for b in bars)
    assert any(p.tags for p in expected) and any(len(p.tags) < 3 for p in expected)

    out = tmp_path / "answers.csv"
    page.save_csv(str(out))
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["tags"] for r in rows] == [";".join(t["label"] for t in p.tags)
                                         for p in expected]

    # Sort into folder: a copy in every tag folder a photo gets, one operation, undone at once
    assert page.sort.isEnabled() and "for every tag it gets" in page.sort.toolTip()
    asked = []
    window.predict_control.confirm_sort = lambda text: asked.append(text) or True
    out = tmp_path / "sorted"
    assert window.predict_control.sort_predictions(str(out)) is not None
    qtbot.waitUntil(lambda: "Copied" in page.ops.text.text(), timeout=60000)
    copies = [(t["label"], p.path) for p in expected for t in p.tags]
    assert f"{len(copies)} copies of" in asked[0]
    assert sorted((f.parent.name, f.name) for f in out.glob("*/*.png")) == sorted(
        (tag, Path(p).name) for tag, p in copies)
    assert window.predict_control.undo_sort() is not None
    qtbot.waitUntil(lambda: "Undid" in page.ops.text.text(), timeout=60000)
    assert not list(out.glob("*/*.png"))

    plots = window.train.plots
    assert plots is not None
    assert plots.plot_items["accuracy"].getAxis("left").labelText == "mAP"
    xs, _ = plots.curves[("main", "accuracy", "val")].getData()
    assert xs is not None and len(xs) > 0  # the folder's val_main_map curve
    # Evaluate: the folder's kept scores, per tag
    kept = json.loads((folder / "evaluation.json").read_text("utf-8"))
    page = window.evaluate
    assert [page.captions[k].text() for k in ("main_accuracy", "count")] == ["mAP",
                                                                            "Test photos"]
    assert page.scores["main_accuracy"].text() == percent(kept["map"])
    assert page.scores["count"].text() == str(kept["count"])
    table = page.per_class
    header = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    assert header == ["Tag", "Precision", "Recall", "F1", "AP", "Threshold", "Photos"]
    rows = {table.item(r, 0).text(): [table.item(r, c).text() for c in range(1, 7)]
            for r in range(table.rowCount())}
    assert rows == {t: [percent(v["precision"]), percent(v["recall"]), percent(v["f1"]),
                        percent(v["ap"]), f"{v['threshold']:.2f}", str(v["support"])]
                    for t, v in kept["per_tag"].items()}
    assert "Hamming loss" in page.note.text() and not page.confusion_box.isVisibleTo(page)

    # a damaged evaluation.json: no scores, and why; the captions are a class model's again
    (folder / "evaluation.json").write_text('{"task": "multi-label", "count": -1}', "utf-8")
    window.models.open_model(str(folder))
    qtbot.waitUntil(lambda: "damaged" in page.note.text(), timeout=60000)
    assert page.captions["main_accuracy"].text() == "Accuracy"
    assert page.confusion_box.isVisibleTo(page)
    assert page.per_class.rowCount() == 0
    # no scores is not "no misclassified test images" (a perfect model)
    assert "No test scores" in page.wrong.empty.text()
