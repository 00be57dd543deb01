"""The Predict page as a new user found it: more images join the list and Clear empties it,
"Unknown — closest: …" instead of a confident wrong label, Save CSV says where it went, file
dialogs open in the user's folders (never the app's), Export suggests a name beside the data
folder."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from PySide6.QtWidgets import QLabel, QProgressBar

from app.core.delivery.predict import Prediction
from app.gui.controllers.models import export_suggestion
from app.gui.widgets import dialog_folder
from tests.conftest import make_image
from tests.gui.conftest import open_fake_model, open_folder


class UnknownFirst:
    """Answers 'daisy 41%' for every file, unknown for the files named 'cat*'."""

    classes = ["daisy", "tulip"]
    unknown = None  # flags set here, none for the window to move
    thresholds = None  # one class a photo

    def predict(self, paths, top_k=3, progress=None, cancel=None, threshold=None):
        return [Prediction(str(p), [{"label": "daisy", "probability": 0.41},
                                    {"label": "tulip", "probability": 0.59 - 0.2}],
                           unknown=Path(p).name.startswith("cat"), score=0.41)
                for p in paths]


def predict(qtbot, window, paths):
    rows = window.predict.table.rowCount()
    assert window.predict_control.predict_paths([str(p) for p in paths]) is not None
    qtbot.waitUntil(lambda: window.predict.table.rowCount() == rows + len(paths), timeout=30000)
    qtbot.waitUntil(lambda: not window.predict.bar.isVisible())


def test_list_grows_unknown_reads_unknown_clear_and_save(qtbot, window, tmp_path):
    cat = make_image(tmp_path / "cat.png", (90, 90, 90))
    flower = make_image(tmp_path / "flower.png", (200, 200, 40))
    open_fake_model(window, UnknownFirst(), "fake-model")
    page = window.predict
    assert not page.clear.isEnabled()
    predict(qtbot, window, [cat])
    predict(qtbot, window, [flower])
    assert page.table.rowCount() == 2
    assert [r.prediction.path for r in page.results] == [str(cat), str(flower)]
    first = [w.text() for w in page.table.cellWidget(0, 2).findChildren(QLabel)]
    assert "<b>Unknown</b> — closest: daisy (41%)" in first
    second = [w.text() for w in page.table.cellWidget(1, 2).findChildren(QLabel)]
    assert not any("Unknown" in t for t in second)
    assert len(page.table.cellWidget(1, 2).findChildren(QProgressBar)) == 2

    out = tmp_path / "out" / "answers.csv"
    out.parent.mkdir()
    page.save_csv(str(out))
    assert page.saved_note.isVisibleTo(page) and str(out) in page.saved_note.text()
    assert window.statusBar().currentMessage() == f"Predictions saved to {out}"
    rows = list(csv.DictReader(out.open()))
    assert [r["unknown"] for r in rows] == ["true", "false"]
    assert rows[0]["label_1"] == "daisy" and rows[0]["score"] == "0.410000"
    assert page.save_dir == str(out.parent)

    page.clear.click()
    assert page.table.rowCount() == 0 and page.results == []
    assert not page.save.isEnabled() and not page.clear.isEnabled()


def test_dialogs_start_in_the_users_folders_and_export_beside_the_data(tmp_path):
    home = Path.home()
    source = Path(__file__).resolve().parents[2]
    assert dialog_folder("", str(tmp_path / "gone")) == str(home)  # no Pictures yet
    (home / "Pictures").mkdir(exist_ok=True)
    assert dialog_folder("") == str(home / "Pictures")
    assert dialog_folder(str(tmp_path)) == str(tmp_path)  # the last-used folder wins
    assert dialog_folder("") not in (os.getcwd(), str(source))

    data = tmp_path / "photos"
    data.mkdir()
    assert export_suggestion("", data) == str(tmp_path / "photos-model")
    models = tmp_path / "models"
    models.mkdir()
    assert export_suggestion(str(models), data) == str(models / "photos-model")


def _sorting(qtbot, window, out):
    assert window.predict_control.sort_predictions(str(out)) is not None
    qtbot.waitUntil(lambda: not window.predict.work.busy, timeout=30000)


def test_sort_the_listed_photos_into_a_folder_preview_then_undo(qtbot, window, tmp_path):
    cat = make_image(tmp_path / "cam" / "cat.png", (90, 90, 90))
    flower = make_image(tmp_path / "cam" / "flower.png", (200, 200, 40))
    open_fake_model(window, UnknownFirst(), "fake-model")
    predict(qtbot, window, [cat, flower])
    asked = []
    # "No": nothing happens
    window.predict_control.confirm_sort = lambda text: asked.append(text) or False
    out = tmp_path / "sorted"
    _sorting(qtbot, window, out)
    assert "_unknown: 1" in asked[0] and "daisy: 1" in asked[0] and not out.exists()
    assert "nothing was copied" in window.predict.ops.text.text()
    window.predict_control.confirm_sort = lambda text: True
    _sorting(qtbot, window, out)
    assert (out / "_unknown" / "cat.png").exists() and (out / "daisy" / "flower.png").exists()
    assert cat.exists() and flower.exists()  # copies
    ops = window.predict.ops
    assert ops.text.text().startswith("Copied 2 photos") and ops.undo.isEnabled()
    ops.undo.click()
    qtbot.waitUntil(lambda: not window.predict.work.busy, timeout=30000)
    assert not (out / "_unknown" / "cat.png").exists() and not (out / "daisy" /
                                                              "flower.png").exists()
    assert "Undid" in ops.text.text() and not ops.undo.isEnabled()


def test_undo_sort_into_the_data_folder_never_takes_a_label(qtbot, window, tmp_path):
    """The walk's data loss, in the window: photos labelled from an inbox, the inbox sorted
    into the data folder by the model's answers, more labels, then Undo sort: every label
    stays, and the labelled photos were never copied into a second class."""
    from app.core.intake.filing import create_class, label_many

    data = tmp_path / "data"
    data.mkdir()
    create_class(data, "tulip")
    inbox = [make_image(tmp_path / "inbox" / f"p{i}.png", (200, 30 * i, 40), seed=i)
             for i in range(5)]
    label_many(data, inbox[:3], "tulip")
    open_folder(qtbot, window, data)
    open_fake_model(window, UnknownFirst(), "fake-model")  # answers daisy for each
    predict(qtbot, window, inbox)
    asked = []
    window.predict_control.confirm_sort = lambda text: asked.append(text) or True
    _sorting(qtbot, window, data)
    assert "2 photo(s) would be copied" in asked[0] and "3 already filed" in asked[0]
    assert sorted(p.name for p in (data / "daisy").iterdir()) == ["p3.png", "p4.png"]
    assert "3 photos were already filed" in window.predict.ops.text.text()
    label_many(data, [make_image(tmp_path / "late.png", (1, 2, 3))], "tulip")
    window.predict.ops.undo.click()
    qtbot.waitUntil(lambda: not window.predict.work.busy, timeout=30000)
    assert list((data / "daisy").iterdir()) == []
    assert sorted(p.name for p in (data / "tulip").iterdir()) == ["late.png", "p0.png",
                                                                  "p1.png", "p2.png"]


def test_top_k_redraws_every_row_and_the_csv_and_unknown_rows_read_as_none(qtbot, window,
                                                                           tmp_path):
    cat = make_image(tmp_path / "cat.png", (90, 90, 90))
    flower = make_image(tmp_path / "flower.png", (200, 200, 40))
    open_fake_model(window, UnknownFirst(), "fake-model")
    page = window.predict
    predict(qtbot, window, [cat, flower])
    assert len(page.table.cellWidget(1, 2).findChildren(QProgressBar)) == 2
    assert page.table.cellWidget(0, 2).findChildren(QProgressBar) == []  # unknown: no bars
    page.top_k.setValue(1)  # the rows already shown follow
    assert len(page.table.cellWidget(1, 2).findChildren(QProgressBar)) == 1
    out = tmp_path / "answers.csv"
    page.save_csv(str(out))
    header = out.read_text().splitlines()[0].split(",")
    assert header == ["path", "label_1", "probability_1", "unknown", "score", "error"]


def test_save_csv_never_suggests_a_folder_of_the_training_data(qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    from app.gui.pages.predict import PredictPage

    page = PredictPage()
    qtbot.addWidget(page)
    data = tmp_path / "photos"
    (data / "red").mkdir(parents=True)
    page.data_dir, page.images_dir, page.save_dir = str(data), str(data / "red"), ""
    starts = []
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        lambda *a, **k: (starts.append(a[2]), ("", ""))[1])
    page._save()
    assert starts == [str(tmp_path / "predictions.csv")]


def test_the_sort_folder_is_chosen_among_folders_near_the_photos(qtbot, window, tmp_path,
                                                                 monkeypatch):
    """The walk: the sort's dialog opened in HOME and, a save dialog, could not choose an
    existing folder (its path and Enter opened it). Now a folder dialog (New Folder for a new
    one) that opens beside the photos' folder, and the folder chosen is what is sorted into."""
    from PySide6.QtWidgets import QFileDialog

    from app.core.delivery.predict import Prediction
    from app.gui.session import Predicted

    photos = tmp_path / "trip" / "day1"
    photos.mkdir(parents=True)
    window.predict.results = [Predicted(Prediction(str(photos / "a.jpg"), [
        {"label": "red", "probability": 0.9}]), None)]
    asked, sorted_into = [], []
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        lambda parent, title, start, *a, **k: (asked.append(start),
                                                               str(tmp_path / "out"))[1])
    monkeypatch.setattr(window.predict_control, "sort_predictions", sorted_into.append)
    window.predict_control.choose_sort_folder()
    assert asked == [str(tmp_path / "trip")] and sorted_into == [str(tmp_path / "out")]


class Tagger:
    """A model of several tags a photo whose tag names are markup; 'bad*' files unreadable."""

    classes = ["<i>a&b", "dog"]
    unknown = None
    thresholds = [0.5, 0.5]

    def predict(self, paths, top_k=3, progress=None, cancel=None, threshold=None):
        out = []
        for p in paths:
            if Path(p).name.startswith("bad"):
                out.append(Prediction(str(p), error="cannot identify image file"))
                continue
            top = [{"label": "<i>a&b", "probability": 0.9}, {"label": "dog", "probability": 0.2}]
            out.append(Prediction(str(p), top, tags=top[:1]))
        return out


def test_tag_names_are_text_and_the_csv_keeps_a_tags_column_for_a_tag_model(qtbot, window,
                                                                             tmp_path):
    """Tag names come from a received model folder: shown as text, never as markup; a tag
    model's CSV has its tags column even when every row is an error."""
    open_fake_model(window, Tagger(), "tagger")
    page = window.predict
    predict(qtbot, window, [tmp_path / "bad.png"])
    out = tmp_path / "errors.csv"
    page.save_csv(str(out))
    assert next(csv.reader(out.open(encoding="utf-8")))[:2] == ["path", "tags"]
    photo = make_image(tmp_path / "p.png", (90, 90, 90))
    predict(qtbot, window, [photo])
    texts = [w.text() for w in page.table.cellWidget(1, 2).findChildren(QLabel)]
    assert "<b>Tags:</b> &lt;i&gt;a&amp;b" in texts
