"""GUI fixtures: settings in a temporary file, a main window that is closed (and its jobs
joined) after every test, helpers to drive it."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QSettings


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


@pytest.fixture
def window(qtbot, gui_settings, tmp_path):
    from app.gui.window import MainWindow

    win = MainWindow(settings=gui_settings, preload=False, cache_dir=str(tmp_path / "cache"))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.close()
    assert not win.jobs.running or all(w.isFinished() for w in win.jobs.running)


def use_tiny(win) -> None:
    win.features.set_backbone("tiny")
    win.features.set_weights("none")


def open_folder(qtbot, win, folder) -> None:
    win.load_folder(str(folder))
    qtbot.waitUntil(lambda: win.session.retraining is not None
                    and win.data.choose.isEnabled(), timeout=20000)


def wait_idle(qtbot, win, timeout=60000) -> None:
    qtbot.waitUntil(lambda: win.heavy is None, timeout=timeout)
