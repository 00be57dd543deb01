"""Closing the window never throws a model away: it asks while training runs, keeps the best
model so far, and the next window reopens that model and the last data folder."""

from __future__ import annotations

import json

import pytest

from app.core.base.paths import last_model_dir
from app.core.delivery.export import is_model_folder
from tests.conftest import make_dataset
from tests.gui.conftest import close_window, open_folder, use_tiny, wait_idle


def start_long_training(qtbot, win, epochs=500):
    """Start training with many epochs and wait until the first epoch ended."""
    win.show_page("Train")
    win.train.fields["epochs"].setValue(epochs)
    win.train.fields["early_stopping"].setValue(0)
    win.train.start.click()
    worker = win.run_control.heavy
    assert worker is not None and worker.name == "training"
    qtbot.waitUntil(lambda: len(win.train.history) >= 2, timeout=90000)
    return worker


@pytest.mark.slow  # trains in a TensorFlow child process
def test_close_while_training_asks_keeps_the_model_and_reopens_it(qtbot, new_window, tmp_path):
    data = make_dataset(tmp_path / "photos", per_class=12)
    win = new_window()
    open_folder(qtbot, win, data)
    use_tiny(win)
    worker = start_long_training(qtbot, win)

    asked = []
    win.confirm_quit = lambda text: asked.append(text) or False  # "No": keep training
    win.close()
    assert asked and asked[0].startswith("Training is running — stop and quit?")
    assert win.isVisible() and win.run_control.heavy is worker and not worker.is_cancelled
    assert win.centralWidget().isEnabled()

    win.confirm_quit = lambda text: asked.append(text) or True  # "Yes"
    epochs_seen = len(win.train.history)
    close_window(qtbot, win)
    assert len(asked) == 2 and worker.is_cancelled
    folder = last_model_dir()
    assert is_model_folder(folder), "the stopped run's best model was not kept"
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["cancelled"] is True
    assert 1 <= meta["best_epoch"] <= epochs_seen + 2

    again = new_window()  # the same settings, cache and data folder
    qtbot.waitUntil(lambda: again.session.slot.predictor is not None
                    and again.session.folder is not None, timeout=60000)
    assert str(again.session.dataset.root) == str(data)
    assert again.data.table.rowCount() == 3
    assert str(folder) in again.predict.model.text()
    assert again.session.slot.predictor.classes == ["blue", "green", "red"]
    qtbot.waitUntil(lambda: not again.activity.isVisible())
    assert "Loading the model" not in again.statusBar().currentMessage()
    # its curves come back too (kept in the folder), and Export exports it
    kept = json.loads((folder / "history.json").read_text())
    assert len(again.train.history) == len(kept) >= 1
    curve = again.train.curves[("main", "loss", "train")].getData()[0]
    assert list(curve) == [h["epoch"] for h in again.train.history]
    assert again.train.export.isEnabled()
    close_window(qtbot, again)


@pytest.mark.slow  # trains in a TensorFlow child process
def test_every_finished_training_run_is_kept_for_the_next_start(qtbot, window, tmp_path):
    open_folder(qtbot, window, make_dataset(tmp_path / "photos", per_class=8))
    use_tiny(window)
    window.train.fields["epochs"].setValue(1)
    window.train.start.click()
    wait_idle(qtbot, window, 90000)
    assert window.session.slot.model is not None
    qtbot.waitUntil(lambda: not window.jobs.running, timeout=60000)
    assert is_model_folder(last_model_dir())
    meta = json.loads((last_model_dir() / "metadata.json").read_text())
    assert meta["cancelled"] is False and meta["classes"] == ["blue", "green", "red"]
