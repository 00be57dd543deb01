"""The whole path through the window on a small generated dataset with the tiny backbone:
folder -> cache -> train 2 epochs -> plots -> drop an image -> its prediction."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QLabel, QProgressBar

from tests.conftest import make_dataset
from tests.gui.conftest import open_folder, use_tiny, wait_idle


def drop(widget, paths: list[Path]) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = QPointF(widget.rect().center())
    event = QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    widget.dropEvent(event)  # what Qt calls when a drag ends over the widget
    assert event.isAccepted()


def xs_of(curve) -> list:
    xs = curve.getData()[0]
    return [] if xs is None else list(xs)


@pytest.mark.slow  # trains in a TensorFlow child process
def test_whole_path(qtbot, window, tmp_path):
    data = make_dataset(tmp_path / "photos", per_class=12)
    open_folder(qtbot, window, data)
    assert window.data.table.rowCount() == 3
    assert window.data.table.item(0, 0).text() == "blue"
    assert window.data.table.item(0, 1).text() == "12"
    assert "to train" in window.data.splits.text()
    assert "class 'blue' has only 12 images" in window.data.report.text()

    use_tiny(window)
    window.show_page("Features")
    qtbot.mouseClick(window.features.start, Qt.MouseButton.LeftButton)
    assert window.features.cancel.isEnabled() and not window.features.start.isEnabled()
    wait_idle(qtbot, window)
    cache = window.session.cache
    assert cache.computed == 36 and not cache.cancelled
    assert "36 computed" in window.features.counts.text()

    window.show_page("Train")
    window.train.fields["epochs"].setValue(2)
    assert window.train.fields["aux_weight"].value() == 0.3
    qtbot.mouseClick(window.train.start, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    assert window.session.slot.model.result.epochs_run == 2
    drawn = {key: xs_of(curve) for key, curve in window.train.curves.items()}
    assert {o for o, _, _ in drawn} == {"main", "aux1", "aux2"}
    assert {(m, s) for _, m, s in drawn} == {(m, s) for m in ("loss", "accuracy")
                                            for s in ("train", "val")}
    assert all(xs == [1, 2] for xs in drawn.values()), drawn  # one point per epoch, from 1
    history = window.session.slot.model.result.history
    xs, ys = window.train.curves[("aux2", "accuracy", "val")].getData()
    assert list(ys) == [h["val_aux2_accuracy"] for h in history]
    assert window.train.best_lines[0].isVisible()
    assert window.train.export.isEnabled()
    labels = [label.text for _, label in window.train.plots.legend.items]
    assert labels == ["main", "aux1", "aux2", "train", "validation"]

    window.train.fields["aux_weight"].setValue(0.0)  # no aux outputs: no aux curves
    window.train.fields["epochs"].setValue(1)
    window.train.start.click()
    wait_idle(qtbot, window)
    assert window.session.slot.model.result.epochs_run == 1
    for (output, _, _), curve in window.train.curves.items():
        assert xs_of(curve) == ([1] if output == "main" else []), output

    ev = window.session.slot.model.evaluation
    assert window.evaluate.scores["main_accuracy"].text().endswith("%")
    assert window.evaluate.confusion.rowCount() == 3
    assert window.evaluate.per_class.rowCount() == 3
    assert ev is not None

    window.show_page("Predict")
    image = data / "red" / "red_000.jpg"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    drop(window.predict, [image, broken])
    qtbot.waitUntil(lambda: window.predict.table.rowCount() == 2 or window.banner.isVisible(),
                    timeout=60000)
    assert window.banner.isHidden(), window.banner.text.text()
    qtbot.waitUntil(window.predict.bar.isHidden)
    assert window.predict.table.item(0, 1).text() == "red_000.jpg"
    bars = window.predict.table.cellWidget(0, 2).findChildren(QProgressBar)
    assert len(bars) == 3 and bars[0].format().split()[0] in ("red", "green", "blue")
    error = window.predict.table.cellWidget(1, 2).findChildren(QLabel)[0].text()
    assert "cannot read" in error
    assert window.predict.table.cellWidget(0, 0).pixmap() is not None
    assert "red_000.jpg" in window.predict.results[0].prediction.path


def test_cancel_during_caching_keeps_what_was_computed(qtbot, window, tmp_path):
    data = make_dataset(tmp_path / "photos", per_class=24)
    open_folder(qtbot, window, data)
    use_tiny(window)
    window.features.start.click()
    worker = window.run_control.heavy
    first = []

    def cancel_on_first_batch(p):
        if p.stage == "cache" and not first:
            first.append(p.done)
            window.features.cancel.click()

    worker.progressed.connect(cancel_on_first_batch)
    wait_idle(qtbot, window)
    cache = window.session.cache
    assert cache.cancelled
    assert 0 < cache.computed < 72
    assert "cancelled" in window.features.rate.text()
    ready = cache.computed
    assert cache.to_compute == 72 - ready
    assert (f"{ready} of 72</b> images ready, <b>{72 - ready} still to compute"
            in window.features.counts.text())
    assert window.features.start.isEnabled() and not window.features.cancel.isEnabled()

    window.features.start.click()
    wait_idle(qtbot, window)
    again = window.session.cache
    assert not again.cancelled and again.reused == cache.computed
    assert again.computed + again.reused == 72


def test_corrupt_file_shows_in_skipped_list(qtbot, window, tmp_path):
    data = make_dataset(tmp_path / "photos", per_class=8)
    good = (data / "red" / "red_000.jpg").read_bytes()
    (data / "red" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (data / "green" / "notes.jpg").write_bytes(b"hello, not a picture")
    open_folder(qtbot, window, data)
    names = {window.features.skipped.item(r, 0).text()
             for r in range(window.features.skipped.rowCount())}
    assert "notes.jpg" in names
    use_tiny(window)
    window.features.start.click()
    wait_idle(qtbot, window)
    table = window.features.skipped
    rows = {table.item(r, 0).text(): (table.item(r, 1).text(), table.item(r, 2).text())
            for r in range(table.rowCount())}
    assert "notes.jpg" in rows and "truncated.jpg" in rows, rows
    assert rows["truncated.jpg"][0] == "red" and rows["notes.jpg"][0] == "green"
    assert rows["truncated.jpg"][1]
    assert "2 skipped" in window.features.counts.text()
