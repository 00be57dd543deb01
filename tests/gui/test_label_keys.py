"""Nothing misfiled: every key on the Label page lands where the screen says. Enter files what
the selected photo's caption says, whatever was clicked before; a class keeps its key when
another class is made; every class is reachable from the keyboard, more than ten too."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication

from app.core.labeling import Ask, LabelingView, Pool, Queue, Suggestions
from app.gui.controllers.label import class_keys
from app.gui.pages.label import KEYS, ClassChooser, LabelPage


def _view(classes, suggested, new_class=None):
    """A refresh of ``len(suggested)`` unsorted photos, photo i suggested ``suggested[i]``
    (a class index) at 97%."""
    n = len(suggested)
    paths = [f"/pile/p{i}.jpg" for i in range(n)]
    labels = np.arange(len(classes)).repeat(3)
    pool = Pool(list(classes), [f"/d/{i}.jpg" for i in range(len(labels))], labels,
                np.zeros((len(labels), 2), np.float32), paths, [str(i) for i in range(n)],
                np.zeros((n, 2), np.float32))
    sug = Suggestions(np.array(suggested), np.full(n, 0.97), np.full(n, 0.9),
                      np.array(new_class if new_class is not None else [False] * n), True)
    return LabelingView(pool, sug, Queue([Ask(i, "uncertain") for i in range(n)]), [], True)


@pytest.fixture
def page(qtbot):
    page = LabelPage()
    qtbot.addWidget(page)
    page.show()
    qtbot.waitExposed(page)
    filed = []
    page.assign_requested.connect(lambda paths, cls: filed.append((list(paths), cls)))
    page.filed = filed
    return page


def test_enter_files_the_caption_of_the_selected_photo_after_a_class_was_clicked(qtbot, page):
    """The walk: a class chosen in the list kept the focus, and every later Enter filed
    photos captioned "iris 97%" under the highlighted "bluebell"."""
    classes = ["bluebell", "iris", "tulip"]
    page.show_view(_view(classes, [1, 1, 2]), None)
    grid = page.queue
    grid.setFocus()
    grid.setCurrentRow(0)
    assert "iris 97%" in grid.item(0).text()
    bluebell = next(page.class_list.item(i) for i in range(page.class_list.count())
                    if page.class_list.item(i).data(Qt.ItemDataRole.UserRole) == "bluebell")
    rect = page.class_list.visualItemRect(bluebell)
    for click in (qtbot.mouseClick, qtbot.mouseDClick):  # a real double-click: both events
        click(page.class_list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert page.filed == [(["/pile/p0.jpg"], "bluebell")]  # what the user chose
    assert QApplication.focusWidget() is grid  # the keys go to the photos again
    grid.mark_filed({"/pile/p0.jpg"}, "bluebell")
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Return)
    assert page.filed[-1] == (["/pile/p1.jpg"], "iris")  # what its caption says
    qtbot.mouseClick(page.class_list.viewport(), Qt.MouseButton.LeftButton,
                     pos=rect.center())  # a click to look: the keys stay on the photos
    assert QApplication.focusWidget() is grid


def test_enter_never_files_a_photo_captioned_maybe_a_new_class(qtbot, page):
    page.show_view(_view(["a", "b"], [0, 1], new_class=[True, False]), None)
    assert "maybe a new class" in page.queue.item(0).text()
    page.queue.setFocus()
    page.queue.setCurrentRow(0)
    qtbot.keyClick(page.queue, Qt.Key.Key_Return)
    assert page.filed == []


def test_a_class_keeps_its_key_when_another_class_is_made():
    """The digits re-numbered alphabetically under the user's fingers: "aster" made after
    "bluebell" took its key 1."""
    slots = class_keys([], ["iris", "bluebell", "tulip"])
    assert slots == ["bluebell", "iris", "tulip"]
    slots = class_keys(slots, ["aster", "bluebell", "iris", "tulip"])
    assert slots == ["bluebell", "iris", "tulip", "aster"]
    slots = class_keys(slots, ["aster", "bluebell", "tulip"])  # iris removed: its key is free
    assert slots == ["bluebell", "", "tulip", "aster"]
    assert class_keys(slots, ["aster", "bluebell", "crocus", "tulip"]) == [
        "bluebell", "crocus", "tulip", "aster"]


def test_the_keys_the_page_shows_are_the_keys_that_file(qtbot, page):
    classes = ["aster", "bluebell", "iris", "tulip"]
    slots = ["bluebell", "iris", "tulip", "aster"]
    keys = {c: KEYS[i] for i, c in enumerate(slots)}
    page.show_view(_view(classes, [0, 0]), None, keys)
    rows = [page.class_list.item(i).text() for i in range(page.class_list.count())]
    assert rows == ["1  bluebell (3)", "2  iris (3)", "3  tulip (3)", "4  aster (3)"]
    page.queue.setFocus()
    page.queue.setCurrentRow(0)
    qtbot.keyClick(page.queue, "1")
    assert page.filed == [(["/pile/p0.jpg"], "bluebell")]


def _type_into_chooser(qtbot, text, then=Qt.Key.Key_Return):
    def act():
        chooser = QApplication.activeModalWidget()
        assert isinstance(chooser, ClassChooser)
        qtbot.keyClicks(chooser.edit, text)
        qtbot.keyClick(chooser.edit, then)

    QTimer.singleShot(0, act)


def test_every_class_of_more_than_ten_is_reachable_from_the_keyboard(qtbot, page):
    classes = [f"class{i:02d}" for i in range(10)] + ["windflower", "zinnia"]
    keys = {c: KEYS[i] for i, c in enumerate(sorted(classes)) if i < len(KEYS)}
    page.show_view(_view(classes, [0, 0, 0]), None, keys)
    grid = page.queue
    grid.setFocus()
    grid.setCurrentRow(0)
    qtbot.keyClick(grid, "0")  # the tenth key
    assert page.filed == [(["/pile/p0.jpg"], "class09")]
    grid.mark_filed({"/pile/p0.jpg"}, "class09")
    _type_into_chooser(qtbot, "inn")  # "z" opens the chooser, "inn" narrows it to zinnia
    qtbot.keyClick(grid, "z")
    assert page.filed[-1] == (["/pile/p1.jpg"], "zinnia")
    grid.mark_filed({"/pile/p1.jpg"}, "zinnia")
    made = []
    page.new_class_requested.connect(lambda paths, name: made.append((list(paths), name)))
    _type_into_chooser(qtbot, "oxlip")  # a name no class has: a new class
    qtbot.keyClick(grid, "f")
    assert made == [(["/pile/p2.jpg"], "foxlip")]
    _type_into_chooser(qtbot, "", then=Qt.Key.Key_Escape)  # Esc files nothing
    qtbot.keyClick(grid, "w")
    assert len(page.filed) == 2 and len(made) == 1


def test_the_photo_grid_shows_where_the_keys_go(qtbot, page):
    assert "PhotoGrid:focus" in page.queue.styleSheet()


def test_mnemonics_are_unique_on_every_page(qtbot, window):
    """Alt+S was Start on Features and Train at once... and any two buttons of one page, or a
    page and the menu bar, sharing a letter make Alt+letter do the wrong one."""
    import re

    from PySide6.QtWidgets import QAbstractButton, QLabel

    menus = {re.search(r"&(\w)", a.text()).group(1).lower()
             for a in window.menuBar().actions() if "&" in a.text()}
    for page in window.pages:
        letters = []
        for w in page.findChildren(QAbstractButton) + page.findChildren(QLabel):
            text = w.text() if hasattr(w, "text") else ""
            m = re.search(r"&(\w)", text.replace("&&", ""))
            if m and not (isinstance(w, QLabel) and w.buddy() is None):
                letters.append(m.group(1).lower())
        assert len(letters) == len(set(letters)), (type(page).__name__, sorted(letters))
        assert not set(letters) & menus, (type(page).__name__, set(letters) & menus)


def test_a_tag_refresh_keeps_the_waiting_photos_in_place_and_their_sets():
    """Several tags a photo: a refresh (after every third tagging) keeps the photos still
    waiting where they were, first, and the sets the user was making on them (and the tags
    typed that no photo carries yet); the new asks come after them."""
    from pathlib import Path

    from app.core.labeling.tags import TagPool, TagSuggestions, TagView
    from app.gui.pages.label_tags import TagSets

    def view(paths, asks):
        n = len(paths)
        pool = TagPool(Path("/d/labels.csv"), ["a", "b"], [], np.zeros((0, 2), np.float32),
                       np.zeros((0, 2), np.float32), paths, [str(i) for i in range(n)],
                       np.zeros((n, 2), np.float32))
        sug = TagSuggestions(["a", "b"], np.tile([0.9, 0.2], (n, 1)), True)
        return TagView(pool, sug, Queue([Ask(i, "uncertain") for i in asks]), [])

    first = TagSets(view([f"/p{i}" for i in range(6)], [0, 1, 2]), {"a": "1", "b": "2"})
    assert list(first.asked([])) == ["/p0", "/p1", "/p2"]
    first.toggle(["/p2"], "b")
    first.toggle(["/p2"], "new")
    assert first.chosen("/p2") == {"a", "b", "new"} and first.chosen("/p1") == {"a"}
    # /p0 was tagged (gone from the pool); the refresh asks /p5, /p4, /p1
    paths = ["/p1", "/p2", "/p3", "/p4", "/p5"]
    second = TagSets(view(paths, [4, 3, 0]), {"a": "1", "b": "2"}, first)
    assert list(second.asked(["/p1", "/p2"])) == ["/p1", "/p2", "/p5"]
    assert second.chosen("/p2") == {"a", "b", "new"} and "new" in second.tags
    assert second.caption("/p2").startswith("✓ a; b; new") and "unsure" in \
        second.caption("/p5")
