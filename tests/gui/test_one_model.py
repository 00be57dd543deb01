"""One current model, on every page: the model kept at quit reopens on Evaluate (its scores,
its confusion matrix, the threshold slider where it was left), on Predict and for Export,
exactly as it was before quitting; a model folder opened without a kept evaluation says so
instead of showing another model's."""

from __future__ import annotations

import json
import shutil

import pytest

from app.core.base.paths import last_model_dir
from app.core.delivery.export import is_model_folder
from tests.conftest import make_dataset
from tests.gui.conftest import close_window, open_folder, train, use_tiny
from tests.gui.test_path import drop

pytestmark = pytest.mark.slow  # trains in a TensorFlow child process, as the window does


def _kept_threshold() -> float:
    return json.loads((last_model_dir() / "metadata.json").read_text("utf-8"))["unknown"][
        "threshold"]


def test_the_model_kept_at_quit_is_the_current_model_on_every_page(qtbot, new_window,
                                                                   tmp_path):
    data = make_dataset(tmp_path / "photos", per_class=16)
    win = new_window()
    open_folder(qtbot, win, data)
    use_tiny(win)
    train(qtbot, win, epochs=2)
    slot = win.session.slot
    qtbot.waitUntil(lambda: slot.review is not None, timeout=60000)
    page = win.evaluate
    accuracy = page.scores["main_accuracy"].text()
    page.trust.slider.setValue(page.trust.slider.maximum())  # "everything unknown"
    moved = slot.threshold
    qtbot.waitUntil(lambda: is_model_folder(last_model_dir()) and _kept_threshold() == moved,
                    timeout=120000)
    labels = list(slot.evaluation.labels)
    close_window(qtbot, win)

    again = new_window()  # reopens the data folder and the model kept at quit
    slot = again.session.slot
    qtbot.waitUntil(lambda: slot.folder is not None, timeout=120000)
    page = again.evaluate
    # Evaluate shows the reopened model, says where its figures come from
    assert page.scores["main_accuracy"].text() == accuracy != "—"
    assert "kept in the model folder" in page.note.text()
    assert page.confusion.rowCount() == len(labels) == page.per_class.rowCount()
    assert page.export.isEnabled()
    # the slider stands where it was left, and can be moved back
    assert slot.threshold == moved
    assert page.trust.slider.isEnabled()
    assert page.trust.slider.value() == page.trust.scale.position(moved)
    drop(again.predict, [data / "red" / "red_000.jpg"])
    qtbot.waitUntil(lambda: again.predict.table.rowCount() == 1, timeout=60000)
    answer = again.predict.results[0].prediction
    assert answer.unknown is True  # the threshold kept: everything is unknown
    page.trust.slider.setValue(0)
    assert slot.threshold < moved and answer.unknown is False  # Predict follows at once
    qtbot.waitUntil(lambda: _kept_threshold() == slot.threshold, timeout=60000)

    # Export (Ctrl+E) works on it: a copy with the threshold now in use and its evaluation
    out = tmp_path / "handed-on"
    worker = again.models.export_to(str(out))
    assert worker is not None
    qtbot.waitUntil(worker.isFinished, timeout=60000)
    assert is_model_folder(out)
    meta = json.loads((out / "metadata.json").read_text("utf-8"))
    assert meta["unknown"]["threshold"] == slot.threshold
    assert (out / "evaluation.json").is_file()
    assert f"Model exported to {out}" in again.statusBar().currentMessage()
    close_window(qtbot, again)


def test_a_model_folder_without_a_kept_evaluation_says_so(qtbot, new_window, tmp_path):
    data = make_dataset(tmp_path / "photos", per_class=12)
    win = new_window()
    open_folder(qtbot, win, data)
    use_tiny(win)
    train(qtbot, win, epochs=1)
    qtbot.waitUntil(lambda: win.session.slot.review is not None, timeout=60000)
    assert win.evaluate.scores["main_accuracy"].text() != "—"
    old = tmp_path / "old-model"
    worker = win.models.export_to(str(old))
    qtbot.waitUntil(worker.isFinished, timeout=60000)
    (old / "evaluation.json").unlink()  # as an earlier version exported it
    worker = win.models.open_model(str(old))
    qtbot.waitUntil(worker.isFinished, timeout=60000)
    qtbot.waitUntil(lambda: win.session.slot.folder == str(old), timeout=10000)
    page = win.evaluate
    assert page.scores["main_accuracy"].text() == "—"  # not the trained run's figures
    assert page.confusion.rowCount() == 0 and page.wrong.entries == []
    assert "holds no evaluation" in page.note.text()
    assert not page.trust.slider.isEnabled()
    assert "keeps no validation scores" in page.trust.effect.text()
    shutil.rmtree(old)
