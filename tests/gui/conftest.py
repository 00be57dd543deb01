"""GUI fixtures: settings in a temporary file, a main window that is closed (and its jobs
joined) after every test, helpers to drive it."""

from __future__ import annotations

import inspect
import os

import pytest
from PySide6.QtCore import QSettings
from pytestqt.exceptions import TimeoutError as QtTimeoutError

# How many times longer than on an idle machine a wait may take before it fails. A wait ends
# as soon as what it waits for happens, so a high ceiling costs nothing when things work; on a
# machine loaded by other work (load 6-17 on 2 cores, a TensorFlow child training) the 60 s
# ceilings ran out. BOTTLENECK_TEST_PATIENCE=1 gives the ceilings as written.
PATIENCE = float(os.environ.get("BOTTLENECK_TEST_PATIENCE", "5"))


def _what(callback) -> str:
    try:
        return inspect.getsource(callback).strip().splitlines()[0][:160]
    except (OSError, TypeError):
        return repr(callback)


@pytest.fixture(autouse=True)
def patient_waits(qtbot, monkeypatch):
    """Every wait of a window test waits for its event with a ceiling scaled by
    :data:`PATIENCE`, and a wait that runs out says what it waited for."""
    wait_until, wait_signal = qtbot.waitUntil, qtbot.waitSignal

    def until(callback, *, timeout=5000):
        try:
            return wait_until(callback, timeout=int(timeout * PATIENCE))
        except QtTimeoutError as exc:
            raise QtTimeoutError(f"waited {timeout * PATIENCE / 1000:.0f} s for: "
                               f"{_what(callback)}") from exc

    def signal(sig=None, *, timeout=5000, **kwargs):
        return wait_signal(sig, timeout=int(timeout * PATIENCE) if timeout else timeout,
                           **kwargs)

    monkeypatch.setattr(qtbot, "waitUntil", until)
    monkeypatch.setattr(qtbot, "waitSignal", signal)


@pytest.fixture(autouse=True)
def private_qsettings(tmp_path_factory):
    """Even a default QSettings() lands in a temporary folder, never the user's."""
    folder = str(tmp_path_factory.mktemp("qsettings"))
    for fmt in (QSettings.Format.IniFormat, QSettings.Format.NativeFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, folder)
        QSettings.setPath(fmt, QSettings.Scope.SystemScope, folder)
    return folder


@pytest.fixture
def gui_settings(tmp_path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


def close_window(qtbot, win, timeout=60000) -> None:
    """Close and wait until it really closed: closing waits for the jobs to end (for every
    job to end, not for a fixed time)."""
    win.close()
    qtbot.waitUntil(lambda: not win.isVisible() and not win.jobs.running, timeout=timeout)


@pytest.fixture
def new_window(qtbot, gui_settings, tmp_path):
    """Makes shown main windows that answer 'yes' to the quit question (a test may replace
    ``confirm_quit``); each is closed, its jobs ended, after the test. Not registered with
    qtbot: its teardown would delete a window whose jobs still run."""
    made = []

    def make(settings=None, **kwargs):
        from app.gui.window import MainWindow

        win = MainWindow(settings=settings or gui_settings, preload=False,
                         cache_dir=str(tmp_path / "cache"), **kwargs)
        win.confirm_quit = lambda text: True
        made.append(win)
        win.show()
        qtbot.waitExposed(win)
        return win

    yield make
    for win in made:
        win.confirm_quit = lambda text: True
        if win.isVisible():
            close_window(qtbot, win)
        win.deleteLater()


@pytest.fixture
def window(new_window):
    return new_window()


def use_tiny(win) -> None:
    win.features.set_backbone("tiny")
    win.features.set_weights("none")


def open_folder(qtbot, win, folder) -> None:
    win.data_control.load_folder(str(folder))
    qtbot.waitUntil(lambda: win.session.folder is not None
                    and win.data.choose.isEnabled(), timeout=20000)


def wait_idle(qtbot, win, timeout=180000) -> None:
    # generous: training starts a child process that imports TensorFlow (~6 s idle, several
    # times that on a loaded 2-core machine); a hang still fails, only later
    qtbot.waitUntil(lambda: win.run_control.heavy is None, timeout=timeout)


def train(qtbot, win, epochs=2, timeout=90000) -> None:
    """Train through the Train page's Start button and wait until the run is applied."""
    win.show_page("Train")
    win.train.fields["epochs"].setValue(epochs)
    win.train.start.click()
    assert win.run_control.heavy is not None and win.run_control.heavy.name == "training"
    wait_idle(qtbot, win, timeout)


def open_fake_model(win, predictor, name: str) -> None:
    """Make ``predictor`` (a stand-in with ``classes``, ``unknown`` and ``predict``) the
    current model, as opening a model folder without a kept evaluation does."""
    from app.core.pipeline.opened import OpenedModel

    win.session.apply_model(OpenedModel(name, predictor, None, "a stand-in model"))
