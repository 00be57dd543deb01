"""The Evaluate page's answers a user can act on: a reliability diagram before and after
calibration, the accuracy's interval and the classes too small to judge, the unknown slider
(its effect on the validation images, and on the next predictions), the images behind a
confusion cell a page at a time; fixing labels (move, undo, exclude) and retraining with no
feature computed again."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

from app.core.intake.labels import excluded
from tests.conftest import make_dataset
from tests.gui.conftest import close_window, open_folder, train, use_tiny
from tests.gui.test_path import drop


def trained(qtbot, window, tmp_path, per_class=16):
    data = make_dataset(tmp_path / "photos", per_class=per_class)
    open_folder(qtbot, window, data)
    use_tiny(window)
    train(qtbot, window, epochs=2)
    qtbot.waitUntil(lambda: window.session.slot.review is not None, timeout=60000)
    window.show_page("Evaluate")
    return data


@pytest.mark.slow  # trains in a TensorFlow child process
def test_trust_panel_slider_and_confusion_cells(qtbot, window, tmp_path, monkeypatch):
    monkeypatch.setattr("app.gui.pages.image_grid.PAGE", 1)  # one thumbnail at a time
    trained(qtbot, window, tmp_path)
    page, run = window.evaluate, window.session.slot.model
    ev = run.evaluation

    bins = ev.reliability
    for key in ("before", "after"):
        xs, ys = page.trust.curves[key].getData()
        used = [b for b in bins[key] if b["count"]]
        assert list(xs) == [b["confidence"] for b in used]
        assert list(ys) == [b["accuracy"] for b in used]
    cal = ev.calibration
    assert f"{cal['ece_before']:.3f}" in page.trust.ece.text()
    assert f"{cal['ece_after']:.3f}" in page.trust.ece.text()
    assert f"T = {cal['temperature']:.2f}" in page.trust.ece.text()
    lo, hi = ev.accuracy_interval
    assert page.interval.text() == f"95% interval: {lo:.0%} – {hi:.0%}"
    assert ev.few_images and all(c in page.few.text() for c in ev.few_images)

    # the slider: its effect on the validation images, and the session's predictor
    slot = window.session.slot
    default = slot.threshold
    assert default == run.trust.detector.fitted_threshold
    scores = slot.review.validation_scores
    assert len(scores) == len(run.splits["validation"])
    page.trust.slider.setValue(page.trust.slider.maximum())
    assert slot.threshold == page.trust.scale.hi > max(scores)
    assert f"100.0%</b> of the {len(scores)} validation images" in page.trust.effect.text()
    page.trust.slider.setValue(0)
    assert slot.threshold == page.trust.scale.lo < min(scores)
    assert "<b>0.0%</b>" in page.trust.effect.text()
    page.trust.reset.click()
    assert slot.threshold == default
    page.trust.slider.setValue(page.trust.slider.maximum())  # everything is unknown now

    window.show_page("Predict")
    drop(window.predict, [tmp_path / "photos" / "red" / "red_000.jpg"])
    qtbot.waitUntil(lambda: window.predict.table.rowCount() == 1, timeout=60000)
    pred = window.predict.results[0].prediction
    assert pred.unknown is True
    texts = [w.text() for w in window.predict.table.cellWidget(0, 2).findChildren(QLabel)]
    assert (f"<b>Unknown</b> — closest: {pred.top[0]['label']} "
            f"({pred.top[0]['probability']:.0%})") in texts
    page.trust.slider.setValue(0)  # the answers shown follow the threshold
    assert pred.unknown is False
    texts = [w.text() for w in window.predict.table.cellWidget(0, 2).findChildren(QLabel)]
    assert not any("Unknown" in t for t in texts)

    # a confusion cell: its images, one page of thumbnails at a time
    counts = [(v, i, j) for i, row in enumerate(ev.confusion) for j, v in enumerate(row)]
    value, i, j = max(counts)
    assert value >= 2
    page.confusion.cellClicked.emit(i, j)
    grid = page.cell
    assert page.tabs.currentWidget() is grid
    assert len(grid.entries) == value
    assert {(e["true"], e["predicted"]) for e in grid.entries} == {(ev.labels[i],
                                                                    ev.labels[j])}
    assert grid.shown == 1 and grid.more.isVisibleTo(grid)
    assert f"({value - 1} left)" in grid.more.text()
    qtbot.waitUntil(lambda: grid.has_icon(0), timeout=30000)
    grid.more.click()
    assert grid.shown == 2
    qtbot.waitUntil(lambda: grid.has_icon(1), timeout=30000)


@pytest.mark.slow  # trains in a TensorFlow child process
def test_moved_threshold_is_kept_for_the_next_start(qtbot, new_window, tmp_path):
    """The model reopened at the next start answers "unknown" with the threshold the user
    left the slider at, not the fitted one."""
    import json

    from app.core.base.paths import last_model_dir

    win = new_window()
    trained(qtbot, win, tmp_path)
    meta_file = last_model_dir() / "metadata.json"
    qtbot.waitUntil(meta_file.is_file, timeout=120000)  # the model saved for the next start
    fitted = win.session.slot.threshold
    assert fitted == win.session.slot.model.trust.detector.threshold
    win.evaluate.trust.slider.setValue(win.evaluate.trust.slider.maximum())
    moved = win.session.slot.threshold
    assert moved > fitted
    assert win.session.slot.model.trust.detector.threshold == fitted  # never moved

    def written():
        return json.loads(meta_file.read_text("utf-8"))["unknown"]

    qtbot.waitUntil(lambda: written()["threshold"] == moved, timeout=60000)
    assert written()["fitted_threshold"] == fitted
    assert written()["threshold_set_by"] == "the user (Evaluate page)"
    close_window(qtbot, win)

    again = new_window()  # reopens the last model
    qtbot.waitUntil(lambda: again.session.slot.predictor is not None, timeout=120000)
    assert again.session.slot.predictor.unknown.threshold == moved
    drop(again.predict, [tmp_path / "photos" / "red" / "red_000.jpg"])
    qtbot.waitUntil(lambda: again.predict.table.rowCount() == 1, timeout=60000)
    assert again.predict.results[0].prediction.unknown is True  # everything is unknown now


@pytest.mark.slow  # trains in a TensorFlow child process
def test_move_undo_exclude_then_retrain_computes_nothing(qtbot, window, tmp_path):
    data = trained(qtbot, window, tmp_path, per_class=12)
    page = window.evaluate
    hardest = page.hardest
    assert hardest.entries, "no hardest training images"
    losses = [e["loss"] for e in hardest.entries]
    assert losses == sorted(losses, reverse=True)
    entry = hardest.entries[0]
    source = Path(entry["path"])
    target_class = next(c for c in ("red", "green", "blue") if c != entry["true"])
    hardest.select(str(source))
    assert hardest.move.isEnabled()
    assert not hardest.move_action(entry["true"]).isEnabled()  # not into its own folder
    before = dict(window.session.dataset.class_counts())

    hardest.move_action(target_class).trigger()
    moved = data / target_class / source.name
    assert moved.is_file() and not source.exists()
    assert page.moves.count() == 1 and source.name in page.moves.item(0).text()
    assert entry["path"] == str(moved) and "moved to" in hardest.list.item(0).text()
    qtbot.waitUntil(lambda: window.session.dataset.class_counts()[target_class]
                    == before[target_class] + 1, timeout=30000)
    assert window.stack.currentWidget() is page  # the rescan did not leave the page

    page.undo.click()
    assert source.is_file() and not moved.exists()
    assert page.moves.count() == 0 and not page.undo.isEnabled()
    qtbot.waitUntil(lambda: window.session.dataset.class_counts() == before,
                    timeout=30000)

    hardest.select(str(source))
    hardest.move_action(target_class).trigger()  # the fix we keep
    qtbot.waitUntil(lambda: window.session.dataset.class_counts()[target_class]
                    == before[target_class] + 1, timeout=30000)
    other = hardest.entries[1]
    hardest.select(other["path"])
    hardest.exclude.click()
    left_out = excluded(tmp_path / "cache", data)
    assert list(left_out.values()) == [other["path"]]
    assert "excluded" in window.statusBar().currentMessage()

    train(qtbot, window, epochs=1)
    run, cache = window.session.slot.model, window.session.cache
    assert cache.computed == 0 and cache.reused == cache.images
    digests = {d for s in run.splits.values() for d in s.digests}
    assert other["digest"] not in digests
    labels = dict(zip(run.splits["train"].paths, run.splits["train"].labels))
    labels.update(zip(run.splits["validation"].paths, run.splits["validation"].labels))
    labels.update(zip(run.splits["test"].paths, run.splits["test"].labels))
    assert run.result.classes[labels[str(moved)]] == target_class


def test_a_shipped_journal_is_listed_greyed_and_never_undone(qtbot, window, tmp_path):
    import json

    from app.core.intake.journal import JOURNAL

    data = make_dataset(tmp_path / "photos", per_class=2)
    (data / JOURNAL).write_text(json.dumps(
        {"op": "move", "source": "red/x.jpg", "target": "/home/me/.ssh/id_ed25519"}) + "\n")
    open_folder(qtbot, window, data)
    page = window.evaluate
    qtbot.waitUntil(lambda: page.moves.count() == 1)
    item = page.moves.item(0)
    assert "never undone" in item.text() and ".ssh" in item.text()
    assert not item.flags() & Qt.ItemFlag.ItemIsEnabled
    assert not page.undo.isEnabled() and page.tabs.tabText(3) == "Moves (0)"


def test_the_confusion_matrix_is_one_tab_stop_and_opens_a_cell_from_the_keyboard(qtbot):
    from types import SimpleNamespace

    from PySide6.QtCore import QEvent
    from PySide6.QtGui import QKeyEvent
    from PySide6.QtWidgets import QApplication

    from app.gui.pages.evaluate import EvaluatePage

    page = EvaluatePage()
    qtbot.addWidget(page)
    labels = [f"c{i}" for i in range(17)]
    ev = SimpleNamespace(count=17, main_accuracy=1.0, balanced_accuracy=1.0,
                         aux1_accuracy=None, aux2_accuracy=None, labels=labels,
                         confusion=[[int(i == j) for j in range(17)] for i in range(17)],
                         per_class={}, misclassified=[], calibration=None, reliability=None)
    page.show_evaluation(ev)
    page.show()
    qtbot.waitExposed(page)
    opened = []
    page.cell_wanted.connect(lambda t, p: opened.append((t, p)))
    page.confusion.setFocus()
    page.confusion.setCurrentCell(2, 3)
    qtbot.keyClick(page.confusion, Qt.Key.Key_Space)
    page.confusion.setCurrentCell(4, 4)
    qtbot.keyClick(page.confusion, Qt.Key.Key_Return)
    assert opened == [("c2", "c3"), ("c4", "c4")]
    page.confusion.event(QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Tab,
                                   Qt.KeyboardModifier.NoModifier))
    assert (page.confusion.currentRow(), page.confusion.currentColumn()) == (4, 4)
    assert QApplication.focusWidget() is not page.confusion  # Tab left the matrix


def test_the_reliability_diagram_shows_how_many_images_each_bin_holds(qtbot):
    from app.gui.pages.trust_panel import TrustPanel

    panel = TrustPanel()
    qtbot.addWidget(panel)

    def b(conf, acc, n):
        return {"confidence": conf, "accuracy": acc, "count": n}

    bins = {"before": [b(0.55, 0.5, 3), b(0.95, 0.8, 40)],
            "after": [b(0.35, 1.0, 2), b(0.85, 0.84, 41), b(0.0, 0.0, 0)]}
    panel.show_calibration({"temperature": 1.4, "ece_before": 0.1, "ece_after": 0.04}, bins)
    sizes = panel.curves["after"].opts["symbolSize"]
    assert len(sizes) == 2 and sizes[0] < sizes[1]  # a bin of 2 images is a small dot
    assert [lab.toPlainText() for lab in panel.count_labels] == ["2", "41"]
    panel.show_calibration(None, {"before": [], "after": [b(0.9, 0.9, 5)]})
    assert [lab.toPlainText() for lab in panel.count_labels] == ["5"]  # the old ones are gone


def test_open_says_so_when_no_program_opens_the_image(qtbot, window, monkeypatch, tmp_path):
    from PySide6.QtGui import QDesktopServices

    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: False)  # no image viewer
    window.evaluate_control.open({"path": str(tmp_path / "a.jpg")})
    assert window.banner.isVisible() and "No program to open" in window.banner.text.text()


@pytest.mark.parametrize("method, words", [
    ("max_probability", "top probability"),
    ("knn", "similarity to the nearest training images"),
    ("relative_knn", "minus how alike those images are among themselves"),
    ("mahalanobis", "Mahalanobis distance"),
])
def test_the_threshold_is_said_in_words_for_every_score(qtbot, method, words):
    """Every unknown score has its own words in the window (mahalanobis had none)."""
    import numpy as np

    from app.core.pipeline.review import ThresholdScale
    from app.gui.pages.trust_panel import TrustPanel

    panel = TrustPanel()
    qtbot.addWidget(panel)
    scores = np.linspace(-3.0, 0.9, 50)
    panel.set_threshold_range(ThresholdScale.for_scores(method, scores, 0.5), 0.5, method)
    panel.show_effect({"threshold": 0.5, "fraction": 0.05, "count": 120, "flagged": 6})
    assert words in panel.effect.text() and "120 validation images" in panel.effect.text()
    assert f"{method} score" not in panel.effect.text()
