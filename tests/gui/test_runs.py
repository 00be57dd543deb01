"""Running jobs as the user sees them: separate Start and Stop, a late Stop does nothing, the
status bar's messages end with their job, a background job is visible from every page, and a
failed caching run stops its busy bar."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from tests.conftest import make_dataset
from tests.gui.conftest import open_folder, use_tiny, wait_idle


@pytest.mark.slow  # trains in a TensorFlow child process
def test_a_late_stop_click_does_nothing(qtbot, window, tmp_path):
    open_folder(qtbot, window, make_dataset(tmp_path / "photos", per_class=8))
    use_tiny(window)
    window.show_page("Train")
    assert not window.train.stop.isEnabled()
    window.train.fields["epochs"].setValue(2)
    window.train.start.click()
    assert window.train.stop.isEnabled() and not window.train.start.isEnabled()
    wait_idle(qtbot, window, 90000)
    history = list(window.train.history)
    curve = window.train.curves[("main", "loss", "train")]
    xs = list(curve.getData()[0])
    assert len(history) == 2 and xs == [1, 2]

    qtbot.mouseClick(window.train.stop, Qt.MouseButton.LeftButton)  # after the run ended
    window.train.stop_requested.emit()  # even a click that was already on its way
    assert window.run_control.heavy is None
    assert window.train.history == history
    assert list(curve.getData()[0]) == xs
    assert window.train.start.isEnabled() and not window.train.stop.isEnabled()


@pytest.mark.slow  # trains in a TensorFlow child process
def test_training_is_visible_from_every_page_and_messages_end_with_their_job(
        qtbot, window, tmp_path):
    open_folder(qtbot, window, make_dataset(tmp_path / "photos", per_class=8))
    use_tiny(window)
    window.train.fields["epochs"].setValue(3)
    window.train.start.click()
    window.show_page("Data")
    assert window.activity.isVisible()
    qtbot.waitUntil(lambda: "Training… epoch" in window.activity.text(), timeout=90000)
    assert "/3" in window.activity.text()
    wait_idle(qtbot, window, 90000)
    qtbot.waitUntil(lambda: not window.jobs.running, timeout=60000)  # the model saved too
    assert not window.activity.isVisible()


def test_cancelling_message_ends_when_caching_ends(qtbot, window, tmp_path):
    open_folder(qtbot, window, make_dataset(tmp_path / "photos", per_class=24))
    use_tiny(window)
    worker = window.run_control.start_caching()

    def cancel_on_first_batch(p):
        if p.stage == "cache" and not window.run_control.heavy.is_cancelled:
            window.features.cancel.click()
            assert window.statusBar().currentMessage() == "Cancelling caching…"
            assert "Caching…" in window.activity.text()

    worker.progressed.connect(cancel_on_first_batch)
    wait_idle(qtbot, window)
    assert worker.is_cancelled
    assert window.statusBar().currentMessage() != "Cancelling caching…"
    assert not window.activity.isVisible()


def test_loading_message_ends_when_the_model_fails_to_load(qtbot, window, tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    worker = window.models.open_model(str(folder))
    assert window.statusBar().currentMessage().startswith("Loading the model")
    assert "Loading the model…" in window.activity.text()
    qtbot.waitUntil(worker.isFinished, timeout=30000)
    qtbot.waitUntil(lambda: not window.activity.isVisible())
    assert not window.statusBar().currentMessage().startswith("Loading the model")
    assert "is not a model folder" in window.banner.text.text()


def test_a_failed_caching_run_stops_the_busy_bar(qtbot, window, tmp_path):
    open_folder(qtbot, window, make_dataset(tmp_path / "photos", per_class=4))
    window.features.set_backbone("tiny")
    window.features.set_weights(str(tmp_path / "missing.weights.h5"))
    window.run_control.start_caching()
    wait_idle(qtbot, window)
    assert window.banner.isVisible() and "Caching failed" in window.banner.text.text()
    assert window.features.bar.maximum() > 0, "the busy bar still spins"
    assert "failed" in window.features.rate.text()
    assert window.features.start.isEnabled()


def test_retry_skipped_files(qtbot, window, tmp_path):
    data = make_dataset(tmp_path / "photos", per_class=6)
    good = (data / "red" / "red_000.jpg").read_bytes()
    (data / "red" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    open_folder(qtbot, window, data)
    use_tiny(window)
    assert not window.features.retry.isEnabled()
    window.run_control.start_caching()
    wait_idle(qtbot, window)
    assert window.session.cache.skipped
    assert window.features.retry.isEnabled()

    qtbot.mouseClick(window.features.retry, Qt.MouseButton.LeftButton)
    assert window.run_control.heavy is not None and not window.features.retry.isEnabled()
    wait_idle(qtbot, window)
    cache = window.session.cache
    assert cache.retried == 1  # tried again (and still truncated, so skipped again)
    assert [s.path.rsplit("/", 1)[-1] for s in cache.skipped] == ["truncated.jpg"]


@pytest.mark.slow  # trains in a TensorFlow child process
def test_a_stopped_run_never_replaces_the_model_unasked(qtbot, window, tmp_path):
    from tests.gui.conftest import train

    open_folder(qtbot, window, make_dataset(tmp_path / "photos", per_class=8))
    use_tiny(window)
    train(qtbot, window, epochs=2)
    first = window.session.slot.model
    assert first is window.session.slot.model and first.result.epochs_run == 2
    generation = window.session.slot.generation
    asked = []

    def stop_after_three_epochs(answer):
        window.run_control.confirm_use_stopped = lambda text: asked.append(text) or answer
        window.train.fields["epochs"].setValue(500)
        window.train.fields["early_stopping"].setValue(0)
        window.train.start.click()
        # past the kept model's 2 epochs: its curves and the run's differ in length
        qtbot.waitUntil(lambda: len(window.train.history) >= 3, timeout=90000)
        window.train.stop.click()
        wait_idle(qtbot, window, 90000)

    stop_after_three_epochs(False)
    assert asked and asked[0].startswith("Training was stopped after")
    assert "instead of the current model" in asked[0]
    assert window.session.slot.model is first and window.session.slot.generation == generation
    # the page shows the model kept, not the run dropped, and Export exports it
    assert [(h["epoch"], h["main_loss"]) for h in window.train.history] == [
        (h["epoch"], h["main_loss"]) for h in first.result.history]
    assert [h["epoch"] for h in window.train.history] == [1, 2]
    assert "not kept" in window.train.status.text() and window.train.export.isEnabled()
    assert "left" not in window.train.timing.text()  # no time left for epochs never run
    assert "Model: <b>the model just trained</b>" in window.evaluate.note.text()
    stop_after_three_epochs(True)
    stopped = window.session.slot.model
    assert stopped is not first and stopped.result.cancelled
    assert window.session.slot.generation > generation and window.train.export.isEnabled()
    assert "the stopped run, chosen over the earlier model" in window.evaluate.note.text()
