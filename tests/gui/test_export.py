"""Export from the window: where it went, a warning when parity could not be checked, and a
folder that is not ours is refused with one line and left as it was. Training's left-out
classes show on the Train page."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.delivery.export import is_model_folder
from tests.conftest import make_dataset, make_image
from tests.gui.conftest import open_folder, train, use_tiny


def export(qtbot, win, folder):
    worker = win.models.export_to(str(folder))
    assert worker is not None
    assert win.statusBar().currentMessage().startswith("Exporting to")
    assert "Exporting…" in win.activity.text()
    qtbot.waitUntil(worker.isFinished, timeout=60000)
    qtbot.waitUntil(lambda: "Exporting" not in win.activity.text())
    assert not win.statusBar().currentMessage().startswith("Exporting to")


@pytest.mark.slow  # trains in a TensorFlow child process
def test_export_refuses_a_folder_that_is_not_ours_then_warns_when_parity_unchecked(
        qtbot, window, tmp_path):
    data = make_dataset(tmp_path / "photos", per_class=12)
    open_folder(qtbot, window, data)
    use_tiny(window)
    train(qtbot, window, epochs=1)

    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "thesis.txt").write_text("four years of work")
    export(qtbot, window, documents)
    assert window.banner.isVisible() and window.banner.level == "error"
    message = window.banner.text.text()
    assert "Export failed" in message and str(documents) in message
    assert sorted(p.name for p in documents.iterdir()) == ["thesis.txt"]
    assert (documents / "thesis.txt").read_text() == "four years of work"

    window.banner.hide()
    good = tmp_path / "model"
    export(qtbot, window, good)
    assert is_model_folder(good)
    # the window writes the ONNX form too (checked against the app at export)
    assert window.statusBar().currentMessage() == f"Model exported to {good} (Keras and ONNX)"
    assert (good / "model.onnx").is_file()
    assert window.banner.isHidden()

    for record in window.session.slot.model.dataset.subset("validation"):
        Path(record.path).unlink()  # parity has nothing left to compare
    export(qtbot, window, good)
    assert window.banner.isVisible() and window.banner.level == "warning"
    note = window.banner.text.text()
    assert f"Model exported to {good}" in note and "parity" in note.lower()


@pytest.mark.slow  # trains in a TensorFlow child process
def test_left_out_classes_show_on_the_train_page(qtbot, window, tmp_path):
    data = make_dataset(tmp_path / "photos", per_class=8)
    lonely = data / "purple"
    make_image(lonely / "only.png", (120, 40, 160))
    open_folder(qtbot, window, data)
    use_tiny(window)
    assert window.train.warnings.isHidden()
    train(qtbot, window, epochs=1)
    assert window.train.warnings.isVisibleTo(window.train)
    assert "purple" in window.train.warnings.text()
    assert "left out" in window.train.warnings.text()


@pytest.mark.slow  # trains in a TensorFlow child process
def test_a_second_export_asks_to_replace_and_never_nests(qtbot, window, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    data = make_dataset(tmp_path / "photos", per_class=12)
    open_folder(qtbot, window, data)
    use_tiny(window)
    train(qtbot, window, epochs=1)
    first = tmp_path / "photos-model"
    export(qtbot, window, first)
    assert window.prefs.last_model_folder == str(tmp_path)

    starts = []
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        lambda *a, **k: (starts.append(a[2]), ("", ""))[1])
    asked = []
    window.models.confirm_replace = lambda text: asked.append(text) or False
    window.models.choose_export()  # No: the dialog opens beside it, on a new name
    assert asked and str(first) in asked[0]
    assert starts == [str(tmp_path / "photos-model-2")]
    window.models.confirm_replace = lambda text: True
    before = (first / "metadata.json").stat().st_mtime_ns
    window.models.choose_export()  # Yes: replaced in place, no dialog, nothing nested
    qtbot.waitUntil(lambda: (first / "metadata.json").stat().st_mtime_ns != before,
                    timeout=60000)
    qtbot.waitUntil(lambda: "Exporting" not in window.activity.text(), timeout=60000)
    assert len(starts) == 1 and not (first / "photos-model").exists() and is_model_folder(first)
