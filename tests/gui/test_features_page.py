"""Features page: where the backbone ran (engine and device) and why not the fastest engine."""

from __future__ import annotations

from app.core.base.jobs import Progress
from app.core.features.caching import CacheResult
from app.gui.pages.features import FeaturesPage


def _result(device: str, notes: list[str]) -> CacheResult:
    return CacheResult(images=36, computed=36, reused=0, skipped=[], classes={}, split={},
                       seconds=1.0, images_per_second=36.0, device=device, backbone="tiny",
                       model_key="k", notes=notes)


def test_the_engine_and_its_notes_are_shown(qtbot):
    page = FeaturesPage()
    qtbot.addWidget(page)
    page.show_progress(Progress("convert", 0, 1, message="ONNX graph of mobilenet (once)"))
    assert page.rate.text() == "making the ONNX graph of mobilenet (once)…"
    page.show_result(_result("CPU, ONNX Runtime", []))
    assert "Backbone ran on: CPU, ONNX Runtime." in page.counts.text()
    page.show_result(_result("CPU, Keras/TensorFlow",
                             ["ONNX Runtime failed at its first run (<x>): computing with "
                              "Keras instead"]))
    text = page.counts.text()
    assert "Backbone ran on: CPU, Keras/TensorFlow." in text
    assert "ONNX Runtime failed at its first run (&lt;x&gt;)" in text
