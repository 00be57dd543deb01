"""The Label page with the keyboard: an empty data folder, unsorted photos dropped in, classes
made, photos filed with digits, a group named with one key after taking a photo out of it,
Ctrl+Z; the files are the truth."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from app.core.intake.filing import create_class, moves
from tests.conftest import COLOURS, make_dataset, make_image
from tests.gui.conftest import open_folder, use_tiny


def _view_ready(qtbot, win, before=None):
    control = win.label_control
    qtbot.waitUntil(lambda: control.view is not None and control.view is not before
                    and control.worker is None, timeout=60000)
    return control.view


@pytest.mark.slow
def test_label_an_unsorted_pile_with_the_keyboard(qtbot, window, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pile = make_dataset(tmp_path / "pile", per_class=4)
    for c in ("blue", "green", "red"):
        create_class(data, c)
    open_folder(qtbot, window, data)
    use_tiny(window)
    window.show_page("Label")
    page = window.label
    window.label_control.add([str(pile)])
    view = _view_ready(qtbot, window)
    assert len(view.pool.paths) == 12 and page.queue.count() > 0
    assert [page.class_list.item(i).text() for i in range(3)] == [
        "1  blue (0)", "2  green (0)", "3  red (0)"]

    # a digit files the selected photo under the class beside it (copied: the pile is outside)
    grid = page.queue
    grid.setFocus()
    grid.setCurrentRow(0)
    first = grid.paths[0]
    cls = first.split("/")[-2]
    qtbot.keyClick(grid, str(page.classes.index(cls) + 1))
    filed = data / cls / first.split("/")[-1]
    assert filed.exists() and "→" in grid.item(0).text()
    assert [m.op for m in moves(data)] == ["copy"]

    # Ctrl+Z puts it back
    qtbot.keyClick(grid, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: not window.label_control.work.busy, timeout=30000)
    assert not filed.exists() and moves(data) == []
    assert window.label.ops.text.text().startswith("Undid")
    view = _view_ready(qtbot, window, view)

    # a group: take one photo out with Delete, then one digit names the rest (two groups of
    # the eleven photos, chosen on the page, so that the group holds several)
    page.tabs.setCurrentIndex(1)
    page.group_count.setCurrentIndex(page.group_count.findData(2))
    view = _view_ready(qtbot, window, view)
    assert len(view.groups) == 2
    groups = page.group_grid
    page.group_pick.setCurrentIndex(0)
    members = list(groups.paths)
    assert len(members) >= 3
    groups.setFocus()
    groups.setCurrentRow(0)
    groups.item(0).setSelected(True)
    taken_out = members[0]
    qtbot.keyClick(groups, Qt.Key.Key_Delete)
    assert groups.paths == members[1:]
    qtbot.keyClick(groups, "1")
    qtbot.waitUntil(lambda: not window.label_control.work.busy, timeout=30000)
    filed = sorted(p.name for p in (data / "blue").iterdir())
    assert filed == sorted(p.split("/")[-1] for p in members[1:])
    assert taken_out.split("/")[-1] not in filed
    view = _view_ready(qtbot, window, view)
    assert len(view.pool.paths) == 12 - len(members[1:])


def test_after_filing_the_next_photo_is_current_and_nothing_filed_stays_selected(qtbot):
    from app.gui.pages.label import PhotoGrid

    grid = PhotoGrid("")
    qtbot.addWidget(grid)
    grid.set_photos([(f"/p/{i}.jpg", "", "") for i in range(4)])
    grid.setCurrentRow(0)
    grid.item(0).setSelected(True)
    grid.mark_filed({"/p/0.jpg"}, "a")
    assert grid.currentRow() == 1 and grid.selected_paths() == ["/p/1.jpg"]
    grid.item(1).setSelected(True)
    grid.item(2).setSelected(True)
    grid.mark_filed({"/p/1.jpg", "/p/2.jpg"}, "b")
    assert grid.currentRow() == 3 and grid.selected_paths() == ["/p/3.jpg"]
    assert [grid.item(i).isSelected() for i in range(3)] == [False, False, False]


def test_a_refresh_never_moves_a_waiting_photo(qtbot):
    """Photos the user is about to label keep their places when the queue is refreshed."""
    import numpy as np

    from app.core.labeling import Ask, LabelingView, Pool, Queue
    from app.gui.pages.label import LabelPage

    page = LabelPage()
    qtbot.addWidget(page)

    def view(paths, asks):
        pool = Pool(["a"], [], np.zeros(0, np.int64), np.zeros((0, 2)), paths,
                    [str(i) for i in range(len(paths))], np.zeros((len(paths), 2)))
        return LabelingView(pool, None, Queue([Ask(paths.index(p), "uncertain")
                                               for p in asks]), [], False)

    paths = [f"/p/{i}.jpg" for i in range(6)]
    page.show_view(view(paths, paths[:3]), None)
    page.queue.mark_filed({paths[0]}, "a")
    rest = paths[1:]
    page.show_view(view(rest, [paths[5], paths[4], paths[1]]), None)
    assert page.queue.paths == [paths[1], paths[2], paths[5]]


def test_new_data_folder_creates_it_and_opens_it_for_labelling(qtbot, window, tmp_path,
                                                             monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    target = tmp_path / "projects" / "my-flowers"
    asked = []

    def save_dialog(parent, caption, start, *args, **kwargs):
        asked.append(start)
        return str(target), ""

    monkeypatch.setattr(QFileDialog, "getSaveFileName", save_dialog)
    window.data.new.click()
    qtbot.waitUntil(lambda: window.session.data_dir is not None
                    and str(window.session.data_dir) == str(target), timeout=20000)
    assert target.is_dir() and list(target.iterdir()) == []
    assert window.stack.currentWidget() is window.label
    assert asked and asked[0].endswith("my-photos")

    # a name that is a file is refused in one line; nothing is created or opened
    (tmp_path / "a-file").write_text("x")
    target = tmp_path / "a-file"
    window.data.new.click()
    assert window.banner.isVisible() and "is a file" in window.banner.text.text()
    assert str(window.session.data_dir) != str(target)


@pytest.mark.slow  # trains in a TensorFlow child process
def test_photos_filed_on_the_label_page_are_what_training_gets(qtbot, window, tmp_path):
    """Leaving the Label page after filing reads the data folder again; until then Train
    says so instead of starting on the old list (it trained on the photos of before)."""
    data = make_dataset(tmp_path / "data", per_class=3)
    pile = tmp_path / "pile"
    for i, (name, colour) in enumerate(COLOURS.items()):  # photos the data folder lacks
        make_image(pile / f"new_{name}.png", colour, seed=500 + i)
    open_folder(qtbot, window, data)
    use_tiny(window)
    window.show_page("Label")
    window.label_control.add([str(pile)])
    view = _view_ready(qtbot, window)
    before = len(window.session.dataset.images)
    photos = [p for p in view.pool.paths if "red" in p or "blue" in p]
    window.label_control.assign(photos, "red")
    qtbot.waitUntil(lambda: not window.label_control.work.busy, timeout=30000)
    window.show_page("Train")
    assert not window.train.start.isEnabled() and "read again" in window.train.need.text()
    qtbot.waitUntil(lambda: len(window.session.dataset.images) == before + 2,
                    timeout=60000)
    qtbot.waitUntil(window.train.start.isEnabled, timeout=10000)
