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
    rows = {table.item(r, 0).text(): [table.item(r, c).text() for c in (1, 2, 3, 4, 6)]
            for r in range(table.rowCount())}
    assert rows == {t: [percent(v["precision"]), percent(v["recall"]), percent(v["f1"]),
                        percent(v["ap"]), str(v["support"])]
                    for t, v in kept["per_tag"].items()}
    assert {t: s.value() / 100 for t, s in page.sliders.items()} == {
        t: round(v["threshold"], 2) for t, v in kept["per_tag"].items()}  # a slider a tag
    assert "Hamming loss" in page.note.text()
    # what is confused with what: for each true tag, the tags given wrongly beside it, and
    # the photos behind every error (a click on a cell shows those photos)
    confused = {t: row for t, row in kept["confused"].items() if row}
    conf = page.confusion
    shown_counts = {conf.verticalHeaderItem(r).text(): {
        conf.horizontalHeaderItem(c).text(): int(conf.item(r, c).text())
        for c in range(conf.columnCount()) if conf.item(r, c).text()}
        for r in range(conf.rowCount())}
    assert shown_counts == confused and page.confusion_box.isVisibleTo(page)
    assert page.wrong.entries and len(page.wrong.entries) == len(kept["errors"])
    assert {e["path"] for e in page.wrong.entries} == {e["path"] for e in kept["errors"]}
    true = next(iter(confused))
    given = next(iter(confused[true]))
    page._cell_clicked(page.labels.index(true), page.columns.index(given))
    want = [e["path"] for e in kept["errors"] if given in e["predicted"]
            and given not in e["true"] and (true in e["true"] or not e["true"]
                                             and true == "(none)")]
    assert [e["path"] for e in page.cell.entries] == want
    assert len(want) == confused[true][given]

    # a damaged evaluation.json: no scores, and why; the captions are a class model's again
    (folder / "evaluation.json").write_text('{"task": "multi-label", "count": -1}', "utf-8")
    window.models.open_model(str(folder))
    qtbot.waitUntil(lambda: "damaged" in page.note.text(), timeout=60000)
    assert page.captions["main_accuracy"].text() == "Accuracy"
    assert page.confusion_box.isVisibleTo(page)
    assert page.per_class.rowCount() == 0
    # no scores is not "no misclassified test images" (a perfect model)
    assert "No test scores" in page.wrong.empty.text()


def test_a_tagged_folder_reads_trains_and_answers_tag_sets_in_the_window(qtbot, window,
                                                                        tmp_path):
    """A folder with a labels.csv at its top: the Data page lists its tags, the Train page
    starts at the multi-label defaults and trains it (in a child process) with live mAP
    curves; the model it keeps is a model folder of the app's own, opened as the current
    model: Predict gives tag sets as that folder's predictor does, Evaluate shows its per-tag
    scores; the Label page tags (no photo waits here) and changes nothing."""
    from tests.gui.conftest import open_folder, use_tiny, wait_idle

    data = make_tagged(tmp_path / "photos", per_set=6)
    open_folder(qtbot, window, data)
    assert window.session.folder.tagged is not None
    page = window.data
    assert page.table.horizontalHeaderItem(0).text() == "Tag"
    assert [page.table.item(r, 0).text() for r in range(page.table.rowCount())] == \
        ["blue", "green", "red"]
    assert [page.table.item(r, 1).text() for r in range(3)] == ["18", "18", "18"]
    assert "Several tags a photo" in page.report.text() and "go on to" in page.report.text()
    settings = window.train.settings()
    assert settings.hidden_units == 1024 and settings.answer == "main"  # the task's defaults
    window.train.ensure_plots()  # the lower plot reads mAP before any curve
    assert window.train.plots.plot_items["accuracy"].getAxis("left").labelText == "mAP"
    use_tiny(window)
    window.train.fields["hidden_units"].setValue(32)
    window.train.fields["epochs"].setValue(4)
    from app.core.pipeline.tagged import RUN_PREFIX, runs_dir

    older = []  # runs of earlier days: the newest three runs stay, the oldest two go
    for day in range(1, 5):
        older.append(runs_dir() / f"{RUN_PREFIX}2026110{day}-000000-abcdef")
        older[-1].mkdir(parents=True)
        (older[-1] / "metadata.json").write_text("{}")
    (runs_dir() / "my-notes").mkdir()  # not the app's: never touched
    window.show_page("Train")
    window.train.start.click()
    wait_idle(qtbot, window)
    slot = window.session.slot
    assert not slot.empty and slot.model.multi_label, window.train.status.text()
    folder = slot.folder
    assert folder and "runs" in folder and (Path(folder) / "metadata.json").is_file()
    assert sorted(p.name for p in runs_dir().iterdir()) == sorted(
        [older[2].name, older[3].name, Path(folder).name, "my-notes"])
    assert (Path(folder) / "model.onnx").is_file()  # the forms the window's Export writes
    assert window.train.plots.plot_items["accuracy"].getAxis("left").labelText == "mAP"
    assert [h["epoch"] for h in window.train.history] == [1, 2, 3, 4]
    assert "finished after 4 epoch(s)" in window.train.status.text()
    assert slot.tag_scores is not None  # the Evaluate page's per-tag scores
    photos = [str(data / "s3" / "p1.png"), str(data / "s6" / "p2.png")]
    assert window.predict_control.predict_paths(photos) is not None
    qtbot.waitUntil(lambda: window.predict.table.rowCount() == 2
                    and not window.predict.bar.isVisible(), timeout=60000)
    expected = Predictor.from_dir(folder).predict(photos, top_k=3)
    got = [r.prediction for r in window.predict.results]
    assert [[t["label"] for t in p.tags] for p in got] == \
        [[t["label"] for t in p.tags] for p in expected]
    # Evaluate: a slider a tag measures the kept test answers again; Keep writes it
    page = window.evaluate
    kept = slot.tag_scores
    assert set(page.sliders) == {"blue", "green", "red"} and kept.answers is not None
    assert not page.keep_thresholds.isVisible()
    page.sliders["red"].setValue(99)
    red = list(kept.per_tag).index("red")
    again = kept.at({**kept.thresholds, "red": 0.99})
    assert page.per_class.item(red, 2).text() == percent(again.per_tag["red"]["recall"])
    assert page.scores["balanced_accuracy"].text() == percent(again.scores["micro_f1"])
    assert page.scores["main_accuracy"].text() == percent(kept.scores["map"])  # no threshold
    assert "not kept yet" in page.note.text()
    assert f"Hamming loss {again.scores['hamming_loss']:.3f}" in page.note.text()
    assert [e["path"] for e in page.wrong.entries] == [e["path"] for e in again.errors]
    # a cell shows its photos at the thresholds tried: red given at 0.05 is given wrongly
    # beside other tags, which the kept thresholds never did so often
    page.sliders["red"].setValue(5)
    low = kept.at({**kept.thresholds, "red": 0.05})
    assert "red" in page.columns
    row = next(r for r, t in enumerate(page.labels) if low.confused[t].get("red"))
    page._cell_clicked(row, page.columns.index("red"))
    want = low.error_photos(page.labels[row], "red")
    assert page.cell.entries == want and len(want) > len(
        kept.error_photos(page.labels[row], "red"))
    page.sliders["red"].setValue(99)
    assert page.keep_thresholds.isVisibleTo(page)
    generation = slot.generation
    page.keep_thresholds.click()
    qtbot.waitUntil(lambda: slot.generation > generation and not window.jobs.running,
                    timeout=60000)
    meta = json.loads((Path(folder) / "metadata.json").read_text("utf-8"))
    assert meta["thresholds"]["red"] == 0.99 and meta["fitted_thresholds"] == kept.thresholds
    assert slot.folder == folder and slot.tag_scores.thresholds["red"] == 0.99
    assert slot.tag_scores.per_tag["red"] == again.per_tag["red"]
    answers = slot.predictor.thresholds  # the model's answers use it from now on
    assert answers[slot.predictor.classes.index("red")] == pytest.approx(0.99)
    assert page.sliders["red"].value() == 99 and not page.keep_thresholds.isVisible()
    window.show_page("Label")  # every photo is tagged: none waits
    qtbot.waitUntil(lambda: "0 photos waiting; 42 tagged" in window.label.summary.text(),
                    timeout=60000)
    assert window.label.queue.paths == [] and window.label.list_title.text() == "Tags"
    assert sorted(p.name for p in data.iterdir()) == ["labels.csv", *[f"s{s}" for s in
                                                                      range(7)]]


def test_the_label_page_tags_photos_with_keys_and_enter_and_undoes(qtbot, window, tmp_path):
    """A tagged folder on the Label page: the tags listed with their keys, each waiting photo
    captioned with the set Enter gives (the suggested one, ✓), a tag's key turns it on or off
    in that set, Enter writes exactly that set as the photo's row (the photo never moves),
    Ctrl+Z takes that tagging back and nothing else."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication

    from app.core.intake.tags import read_tags
    from tests.gui.conftest import open_folder, use_tiny

    data = make_tagged(tmp_path / "photos", per_set=4)
    listed = (data / "labels.csv").read_text().splitlines()
    (data / "labels.csv").write_text("\n".join(listed[:15]) + "\n")  # 14 tagged, 14 waiting
    before = (data / "labels.csv").read_text()
    open_folder(qtbot, window, data)
    use_tiny(window)
    window.show_page("Label")
    page = window.label
    qtbot.waitUntil(lambda: page.tags is not None and page.queue.count() > 0, timeout=60000)
    assert page.list_title.text() == "Tags"
    keys = {page.class_list.item(i).data(Qt.ItemDataRole.UserRole):
            page.class_list.item(i).text().split()[0] for i in range(page.class_list.count())}
    assert set(keys) == {"blue", "green", "red"} and all(keys.values())
    grid = page.queue
    grid.setFocus()
    grid.setCurrentRow(0)
    photo = grid.item(0).data(Qt.ItemDataRole.UserRole)
    start = page.tags.chosen(photo)
    assert grid.item(0).text().split("\n")[1].startswith(
        "✓ " + "; ".join(sorted(start)) if start else "none of these")
    red = keys["red"]
    qtbot.keyClick(QApplication.focusWidget(), red)
    assert page.tags.chosen(photo) == start ^ {"red"}
    assert ("red" in grid.item(0).text().split("·")[0]) == ("red" not in start)
    qtbot.keyClick(QApplication.focusWidget(), keys["green"])
    want = start ^ {"red", "green"}
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Return)
    rows = {r.file: r.tags for r in read_tags(data / "labels.csv").rows}
    rel = Path(photo).relative_to(data).as_posix()
    assert rows[rel] == tuple(sorted(want)) and Path(photo).is_file()
    assert grid.item(0).text().endswith("→ " + ("; ".join(sorted(want)) or "none of these"))
    assert "Tagged 1 photo" in page.ops.text.text()
    qtbot.waitUntil(lambda: not window.label_control.work.busy, timeout=30000)
    page.setFocus()
    qtbot.keyClick(page, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: "Undid" in page.ops.text.text(), timeout=30000)
    assert (data / "labels.csv").read_text() == before
