"""The rest of the pile, in the window: the unsorted photos come back with the data folder after
a relaunch, any group chosen shows its photos, "File the rest" files every photo in one
undoable operation, and a message goes once its cause is fixed."""

from __future__ import annotations

import pytest

from app.core.intake.filing import moves, operations
from tests.conftest import COLOURS, make_dataset, make_image
from tests.gui.conftest import open_folder, use_tiny


def _view_ready(qtbot, win, before=None):
    control = win.label_control
    qtbot.waitUntil(lambda: control.view is not None and control.view is not before
                    and control.worker is None, timeout=60000)
    return control.view


def _start_labelling(qtbot, win, tmp_path, per_colour=3, per_class=2):
    """A data folder of ``per_class`` photos a class, a pile of ``per_colour`` a colour added
    on the Label page, the tiny backbone."""
    data = make_dataset(tmp_path / "data", per_class=per_class)
    _pile(tmp_path, per_colour=per_colour)
    open_folder(qtbot, win, data)
    use_tiny(win)
    win.show_page("Label")
    win.label_control.add([str(tmp_path / "pile")])


def _pile(tmp_path, per_colour=3):
    return [make_image(tmp_path / "pile" / f"{name}_{i}.png", colour, seed=700 + 10 * j + i)
            for j, (name, colour) in enumerate(COLOURS.items()) for i in range(per_colour)]


@pytest.mark.slow
def test_the_pile_comes_back_after_a_relaunch(qtbot, new_window, gui_settings, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=2)
    _pile(tmp_path)
    win = new_window(settings=gui_settings)
    open_folder(qtbot, win, data)
    use_tiny(win)
    win.show_page("Label")
    win.label_control.add([str(tmp_path / "pile")])
    assert len(_view_ready(qtbot, win).pool.paths) == 9
    win.close()
    qtbot.waitUntil(lambda: not win.isVisible(), timeout=60000)
    again = new_window(settings=gui_settings)  # the same settings: a relaunch
    use_tiny(again)
    qtbot.waitUntil(lambda: again.session.folder is not None, timeout=20000)
    assert again.stack.currentWidget() is again.label  # the page it was left on
    view = _view_ready(qtbot, again)
    assert len(view.pool.paths) == 9 and "9 photos unsorted" in again.label.summary.text()


@pytest.mark.slow
def test_any_group_chosen_shows_its_photos(qtbot, window, tmp_path):
    _start_labelling(qtbot, window, tmp_path, per_colour=4)
    page = window.label
    page.tabs.setCurrentIndex(1)
    page.group_count.setCurrentIndex(page.group_count.findData(3))
    view = _view_ready(qtbot, window)
    _view_ready(qtbot, window, view) if len(view.groups) != 3 else None
    grid = page.group_grid
    for g in range(page.group_pick.count()):  # every group, not only the one shown first
        page.group_pick.setCurrentIndex(g)
        assert grid.count() > 0
        qtbot.waitUntil(lambda: all(not grid.item(i).icon().isNull()
                                    for i in range(grid.count())), timeout=30000)


@pytest.mark.slow
def test_file_the_rest_is_one_operation_undone_at_once(qtbot, window, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=8)  # 24 labels: calibrated
    pile = _pile(tmp_path)
    odd = make_image(tmp_path / "pile" / "odd.png", (250, 0, 250), seed=3)
    open_folder(qtbot, window, data)
    use_tiny(window)
    window.show_page("Label")
    window.label_control.add([str(tmp_path / "pile")])
    view = _view_ready(qtbot, window)
    assert view.suggestions is not None and view.suggestions.calibrated
    page = window.label
    assert page.file_rest.isEnabled()
    asked = []
    window.label_control.confirm = lambda text: asked.append(text) or True
    page.accept_at.setValue(90.0)
    page.file_rest.click()
    qtbot.waitUntil(lambda: not window.label_control.work.busy, timeout=30000)
    assert asked and "_not_sure" in asked[0]
    filed = moves(data)
    assert len(filed) == len(pile) + 1 and len(operations(data)) == 1
    assert {m.target.split("/")[0] for m in filed} <= {"red", "green", "blue", "_not_sure"}
    assert all(p.exists() for p in [*pile, odd])  # copied: the pile was outside
    assert page.ops.text.text().startswith("Copied 10 photos")
    view = _view_ready(qtbot, window, view)
    unsure = [m for m in filed if m.target.startswith("_not_sure/")]
    assert len(view.pool.paths) == len(unsure)  # still to label, here
    page.ops.undo.click()
    qtbot.waitUntil(lambda: not window.label_control.work.busy, timeout=30000)
    assert moves(data) == [] and all(not (data / m.target).exists() for m in filed)


@pytest.mark.slow
def test_a_message_goes_once_its_cause_is_fixed(qtbot, window, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    data = make_dataset(tmp_path / "data", per_class=2)
    _pile(tmp_path, per_colour=1)
    open_folder(qtbot, window, data)
    window.features.set_backbone("tiny")
    bad = tmp_path / "not-weights.h5"
    bad.write_bytes(b"not a weights file")
    window.features.set_weights(str(bad))
    window.show_page("Label")
    window.label_control.add([str(tmp_path / "pile")])
    # the failure reaches the banner and the page as two queued calls: wait for the page's
    qtbot.waitUntil(lambda: window.banner.isVisible() and window.label_control.worker is None,
                    timeout=60000)
    assert "could not be prepared" in window.label.summary.text()
    assert "Weights file" in window.label.summary.text()  # the fix is named, on this page
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: ("", ""))
    use_tiny(window)  # fixed: random weights
    window.label_control.refresh()
    _view_ready(qtbot, window)
    assert not window.banner.isVisible()


def test_a_long_message_never_pushes_the_window_past_a_720_px_screen(qtbot, window):
    window.banner.show_error("a very long message " * 200, "Something failed", "x")
    assert window.minimumSizeHint().height() <= 690


def test_the_refresh_never_searches_the_loaded_libraries_off_the_gui_thread(
        qtbot, window, tmp_path, monkeypatch):
    """The relaunch in the walk froze on a black window: the refresh job's BLAS limit searched
    the loaded libraries (the loader's lock held, calling back into Python) in its worker while
    another worker imported an extension module (the GIL held, waiting for that lock). The
    search is done once on the GUI thread; the job only applies the limit."""
    import threading

    import threadpoolctl

    searched, limited = [], []
    real_init = threadpoolctl.ThreadpoolController.__init__
    real_limit = threadpoolctl.ThreadpoolController.limit

    def init(self, *args, **kwargs):
        searched.append(threading.current_thread() is threading.main_thread())
        real_init(self, *args, **kwargs)

    def limit(self, *args, **kwargs):
        limited.append(threading.current_thread() is threading.main_thread())
        return real_limit(self, *args, **kwargs)

    monkeypatch.setattr(threadpoolctl.ThreadpoolController, "__init__", init)
    monkeypatch.setattr(threadpoolctl.ThreadpoolController, "limit", limit)
    _start_labelling(qtbot, window, tmp_path, per_colour=1)
    assert len(_view_ready(qtbot, window).pool.paths) == 3
    assert limited and not any(limited)  # the refresh ran with the limit, in its worker
    assert all(searched)  # never a search in a worker


def test_overlapping_refreshes_give_the_blas_threads_back():
    """A cancelled refresh still running beside the next one: the limits, restored out of
    order, left the process at one BLAS thread for good. The last refresh to end gives the
    threads back; while any runs, there is one."""
    from app.gui.controllers.label import OneBlasThread

    one = OneBlasThread()

    def threads():
        return one.controller.select(user_api="blas").info()[0]["num_threads"]

    two = one.controller.limit(limits=2, user_api="blas")  # more than one, on any machine
    before = threads()
    assert before == 2
    a, b = OneBlasThread.__enter__, OneBlasThread.__exit__
    a(one)            # refresh A starts
    a(one)            # refresh B starts while A (cancelled) still runs
    assert threads() == 1
    b(one)            # A ends first
    assert threads() == 1  # B still runs: still one
    b(one)            # B ends
    assert threads() == before
    two.restore_original_limits()
