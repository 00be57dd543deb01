"""Window behaviour: errors as messages (and in the log), remembered settings, closing while
a job runs, TensorFlow loaded in the background."""

from __future__ import annotations

import threading

import pytest
from PySide6.QtCore import Qt

from app.core.base.paths import user_data_dir
from app.core.training.fit import TrainSettings
from app.gui.window import MainWindow
from tests.conftest import make_dataset
from tests.gui.conftest import close_window, open_folder, use_tiny


def test_error_is_a_message_and_logged(qtbot, window, tmp_path):
    window.data_control.load_folder(str(tmp_path / "does-not-exist"))
    qtbot.waitUntil(window.banner.isVisible)
    assert "is not a folder" in window.banner.text.text()
    log = (user_data_dir() / "logs" / "bottleneck-studio.log").read_text()
    assert "is not a folder" in log and "Traceback" in log


def test_start_without_data_says_what_to_do(qtbot, window, tmp_path):
    for page in (window.features, window.train):
        assert not page.start.isEnabled()
        assert "Open a data folder first (page 1)" in page.start.toolTip()
        assert page.need.isVisibleTo(page) and "page 1" in page.need.text()
        qtbot.mouseClick(page.start, Qt.MouseButton.LeftButton)
    assert window.run_control.heavy is None and window.banner.isHidden()

    open_folder(qtbot, window, make_dataset(tmp_path / "photos", per_class=4))
    for page in (window.features, window.train):
        assert page.start.isEnabled() and not page.need.isVisibleTo(page)
        assert "Open a data folder" not in page.start.toolTip()


def test_settings_persist(qtbot, gui_settings):
    first = MainWindow(settings=gui_settings, preload=False, reopen=False)
    qtbot.addWidget(first)
    first.features.set_backbone("mobilenet")
    first.features.set_weights("/tmp/some.weights.h5")
    first.train.set_settings(TrainSettings(epochs=7, aux_weight=0.5, mode="finetune",
                                           warmup_epochs=3))
    first.prefs.last_folder = "/tmp/photos"
    first.close()

    second = MainWindow(settings=gui_settings, preload=False, reopen=False)
    qtbot.addWidget(second)
    assert second.features.backbone_name() == "mobilenet"
    assert second.features.weights_value() == "/tmp/some.weights.h5"
    assert second.train.settings().epochs == 7
    assert second.train.settings().aux_weight == 0.5
    assert second.train.settings().warmup_epochs == 3  # the window had no field: it was lost
    assert second.train.fields["warmup_epochs"].isEnabled()  # fine-tune only
    assert second.prefs.last_folder == "/tmp/photos"
    second.close()


def test_closing_during_caching_cancels_waits_and_keeps_the_cache(qtbot, window, tmp_path):
    data = make_dataset(tmp_path / "photos", per_class=24)
    open_folder(qtbot, window, data)
    use_tiny(window)
    # the caching holds after its first report until it is cancelled: closing always meets
    # it running (a fast machine finished it before the test looked, and the test waited
    # for a progress bar that had come and gone)
    started = threading.Event()
    job = window.session.cache_job

    def held_cache_job(*args, **kwargs):
        real = job(*args, **kwargs)

        def run(progress, cancel):
            def reported(p):
                progress(p)
                if p.stage == "cache":
                    started.set()
                    while not cancel.cancelled:
                        cancel_seen.wait(0.05)
            return real(reported, cancel)

        return run

    cancel_seen = threading.Event()
    window.session.cache_job = held_cache_job
    worker = window.run_control.start_caching()
    qtbot.waitUntil(started.is_set, timeout=60000)
    asked = []
    window.confirm_quit = lambda text: asked.append(text) or True
    close_window(qtbot, window)
    assert asked and asked[0].startswith("Caching is running — stop and quit?")
    assert "already saved" in asked[0]
    assert worker.isFinished() and worker.is_cancelled
    from app.core.features.caching import CacheJob

    result, _ = CacheJob(data, "tiny", "none", tmp_path / "cache").run()
    assert result.reused > 0


def test_tensorflow_loads_in_the_background(qtbot, gui_settings):
    win = MainWindow(settings=gui_settings, preload=False, reopen=False)
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.tensorflow_ready, timeout=60000) as blocker:
        win.preload_tensorflow()
        assert win.statusBar().currentMessage() == "Loading TensorFlow…"
    assert blocker.args[0] in win.device.text()
    assert win.statusBar().currentMessage() == "Ready"
    if blocker.args[0].startswith("CPU"):  # the window says why not on a GPU
        from app.core.base.device import why_cpu

        assert why_cpu() and f"CPU ({why_cpu()})" in win.device.text()
    win.close()


def test_reading_a_new_folder_counts_its_files(qtbot, window, tmp_path):
    """A new folder's files are each read once (minutes for 100k): the Data page's bar and the
    status bar say how many of how many."""
    data = make_dataset(tmp_path / "photos", per_class=30)  # 90 files: two reports
    shown, show = [], window.data.show_reading

    def seen(done, total):
        show(done, total)
        shown.append((done, total, window.data.busy.text(), window.activity.text()))

    window.data.show_reading = seen
    open_folder(qtbot, window, data)
    assert [s[:2] for s in shown] == [(64, 90), (90, 90)]
    assert shown[-1][2] == "90 / 90 files read"
    assert "reading files… 90/90" in shown[-1][3]


def test_a_single_class_folder_says_training_needs_two(tmp_path):
    from app.core.intake.dataset import scan_dataset
    from app.gui.pages.data import report_html

    one = make_dataset(tmp_path / "one", per_class=3, classes=("red",))
    text = report_html(scan_dataset(one))
    assert "training needs two classes" in text and "go on to <b>Features</b>" not in text
    two = make_dataset(tmp_path / "two", per_class=3, classes=("red", "green"))
    assert "go on to <b>Features</b>" in report_html(scan_dataset(two))


def test_features_shows_only_what_is_selected_now(qtbot, window, tmp_path):
    """After a run, another backbone, weights, mode or folder is not what was cached: the
    page stops saying "N images ready" for it (it said so of the old selection)."""
    from tests.gui.conftest import wait_idle

    data = make_dataset(tmp_path / "photos", per_class=4)
    open_folder(qtbot, window, data)
    use_tiny(window)
    worker = window.run_control.start_caching()
    with qtbot.waitSignal(worker.done, timeout=180000):
        pass
    wait_idle(qtbot, window)
    page = window.features
    assert "12</b> images ready" in page.counts.text() and page.bar.value() == 1
    page.set_weights("imagenet")
    assert "images ready" not in page.counts.text() and page.bar.value() == 0
    page.set_weights("none")
    window.train.mode.changed.emit("finetune")
    assert "images ready" not in page.counts.text()

    window.train.show_error("the old folder's failure")
    other = make_dataset(tmp_path / "other", per_class=3)
    open_folder(qtbot, window, other)
    assert "images ready" not in page.counts.text()
    assert "old folder" not in window.train.status.text()


@pytest.mark.slow  # trains in a TensorFlow child process
def test_every_page_fits_a_laptop_screen_after_training(qtbot, window, tmp_path):
    """1280x720 less a title bar: no page, filled with a trained model's review, asks for a
    taller window (Evaluate asked for 786 px, its chart drawn over the threshold heading)."""
    from tests.gui.conftest import train

    data = make_dataset(tmp_path / "photos", per_class=10)
    open_folder(qtbot, window, data)
    use_tiny(window)
    train(qtbot, window, epochs=2)
    qtbot.waitUntil(lambda: window.session.slot.review is not None, timeout=60000)
    for i in range(len(window.pages)):
        window.nav.setCurrentRow(i)
        qtbot.wait(10)  # let the page lay itself out (a real event loop turn, not a sleep)
    sizes = {type(p).__name__: (p.minimumSizeHint().width(), p.minimumSizeHint().height())
             for p in window.pages}
    hint = window.minimumSizeHint()
    assert hint.height() <= 720 - 30 and hint.width() <= 1280, (str(sizes), hint)
