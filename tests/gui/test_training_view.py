"""The Train page as a new user reads it: the mode choice and what it costs, plots whose legend,
axes and ticks say what they show, per-epoch lines that name their numbers, early stopping
named, and a fine-tune run through the window."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor, QPalette

from app.core.training.fit import TrainSettings
from app.core.training.metrics import epoch_text
from app.gui.epoch_clock import EpochClock
from app.gui.pages.train import TrainPage
from app.gui.pages.train_mode import FINETUNE_TEXT, HEAD_TEXT, TrainContext
from tests.conftest import make_dataset
from tests.gui.conftest import open_folder, use_tiny, wait_idle


def record(epoch: int, aux: bool = True, best: int = 1) -> dict:
    rec = {"epoch": epoch, "best_epoch": best}
    for o in ("main", "aux1", "aux2"):
        on = aux or o == "main"
        for prefix in ("", "val_"):
            rec[f"{prefix}{o}_loss"] = 1.0 / epoch if on else None
            rec[f"{prefix}{o}_accuracy"] = 0.5 + epoch / 100 if on else None
    return rec


def xs_of(curve) -> list:
    xs = curve.getData()[0]
    return [] if xs is None else list(xs)


def page_with_plots(qtbot) -> TrainPage:
    page = TrainPage()
    qtbot.addWidget(page)
    page.resize(1100, 700)
    page.show()
    qtbot.waitExposed(page)
    return page


def test_legend_shows_solid_train_dashed_validation_on_an_opaque_box(qtbot):
    plots = page_with_plots(qtbot).plots
    entries = {label.text: sample.item.opts["pen"] for sample, label in plots.legend.items}
    assert list(entries) == ["main", "aux1", "aux2", "train", "validation"]
    assert entries["train"].style() == Qt.PenStyle.SolidLine
    assert entries["validation"].style() == Qt.PenStyle.DashLine
    for output in ("main", "aux1", "aux2"):  # the curves themselves: solid train, dashed val
        assert plots.curves[(output, "loss", "train")].opts["pen"].style() == \
            Qt.PenStyle.SolidLine
        assert plots.curves[(output, "loss", "val")].opts["pen"].style() == Qt.PenStyle.DashLine
    assert all(sample.item.opts.get("symbol") is None for sample, _ in plots.legend.items)
    brush = plots.legend.opts["brush"]
    assert brush.style() == Qt.BrushStyle.SolidPattern and brush.color().alpha() == 255


def test_legend_is_outside_both_plots_so_never_under_the_best_marker(qtbot):
    page = page_with_plots(qtbot)
    page.plots.show_history([record(e, best=e) for e in range(1, 15)], 40)
    legend, views = page.plots.legend, [p.vb for p in page.plots.plot_items.values()]
    assert page.plots.ci.layout.itemAt(0, 0) is legend  # a row of its own, above the plots
    for line in page.plots.best_lines:
        assert line.isVisible() and line.value() == 14 and line.parentItem() is not None
    qtbot.waitUntil(lambda: legend.sceneBoundingRect().width() > 0 and not any(
        legend.sceneBoundingRect().intersects(v.sceneBoundingRect()) for v in views))


def test_best_marker_text_stays_off_the_curves_late_in_a_run(qtbot):
    """Late in a run accuracy sits near 1.0 and loss near 0: the "best" text on each plot is
    on the side the curves have left, on an opaque box, so it never covers them."""
    page = page_with_plots(qtbot)
    history = []
    for e in range(1, 31):
        rec = {"epoch": e, "best_epoch": min(e, 20)}  # early stopping ends it at 30
        for k, o in enumerate(("main", "aux1", "aux2")):
            for prefix in ("", "val_"):  # aux below main, validation below training
                gap = k + (prefix == "val_")
                rec[f"{prefix}{o}_loss"] = 2.0 / e + 0.05 + 0.1 * gap
                rec[f"{prefix}{o}_accuracy"] = 1.0 - 0.4 / e - 0.03 * gap
        history.append(rec)
    page.plots.show_history(history, 40)
    def placed(plot, line):  # the text drawn beside the line at epoch 20, not where it began
        rect, x = line.label.sceneBoundingRect(), plot.vb.mapViewToScene(pg.Point(20, 0)).x()
        return rect.width() > 0 and rect.left() - 20 < x < rect.right() + 20

    qtbot.waitUntil(lambda: all(placed(p, ln) for p, ln in zip(
        page.plots.plot_items.values(), page.plots.best_lines)))
    for plot, line in zip(page.plots.plot_items.values(), page.plots.best_lines):
        text = line.label.sceneBoundingRect()
        for (_, m, _), curve in page.plots.curves.items():
            if curve.getViewBox() is not plot.vb:
                continue
            xs, ys = curve.getData()
            dense_x = np.linspace(xs[0], xs[-1], 2000)  # the drawn line, not only its points
            for x, y in zip(dense_x, np.interp(dense_x, xs, ys)):
                point = plot.vb.mapViewToScene(pg.Point(x, y))
                assert not text.contains(point), (m, x, y)
    for line in page.plots.best_lines:
        assert line.label.fill.style() == Qt.BrushStyle.SolidPattern


def test_axes_follow_the_palette_light_and_dark(qtbot):
    page = page_with_plots(qtbot)
    for colour in ("#101010", "#e6e6e6"):
        pal = QPalette(page.plots.palette())
        pal.setColor(QPalette.ColorRole.WindowText, QColor(colour))
        pal.setColor(QPalette.ColorRole.Base, QColor("#1f1f1f" if colour != "#101010"
                                                     else "#ffffff"))
        page.plots.setPalette(pal)
        for plot in page.plots.plot_items.values():
            for name in ("left", "bottom"):
                axis = plot.getAxis(name)
                assert axis.textPen().color().name() == colour, (name, colour)
                assert axis.pen().color().name() == colour
        assert page.plots.legend.opts["labelTextColor"].name() == colour


def test_accuracy_reaches_one_and_epochs_are_whole_numbers_from_one(qtbot):
    page = page_with_plots(qtbot)
    page.plots.show_history([record(e) for e in range(1, 4)], 40)
    accuracy = page.plots.plot_items["accuracy"]
    low, high = accuracy.vb.viewRange()[1]
    assert low <= 0 and high >= 1.0
    axis = accuracy.getAxis("bottom")
    for lo, hi in ((0.6, 40.4), (0.98, 3.02), (-2, 7.5)):
        ticks = [v for _, values in axis.tickValues(lo, hi, 600) for v in values]
        assert ticks and ticks[0] == 1 and all(v == int(v) and v >= 1 for v in ticks), ticks
    assert axis.tickStrings([1.0, 2.0], 1, 1) == ["1", "2"]
    assert accuracy.vb.viewRange()[0][0] >= 0.0  # no epoch 0


def test_curves_hold_one_point_per_epoch_and_none_for_missing_aux(qtbot):
    plots = page_with_plots(qtbot).plots
    plots.show_history([record(e, aux=False) for e in (1, 2, 3)], 3)
    for (output, _, _), curve in plots.curves.items():
        assert xs_of(curve) == ([1, 2, 3] if output == "main" else []), output
    plots.show_history([record(e) for e in (1, 2)], 3)
    for key, curve in plots.curves.items():
        assert xs_of(curve) == [1, 2], key


def test_epoch_line_names_loss_and_accuracy():
    rec = {"epoch": 3, "main_loss": 0.4123, "main_accuracy": 0.912,
           "val_main_loss": 0.5, "val_main_accuracy": 0.88,
           "aux1_loss": 0.7, "aux1_accuracy": 0.8, "val_aux1_loss": None}
    text = epoch_text(rec, 40)
    assert text.startswith("Epoch 3 of 40 — main: loss 0.412, accuracy 91.2% "
                           "(validation: loss 0.500, accuracy 88.0%)")
    assert "aux1: loss 0.700, accuracy 80.0%" in text
    assert "aux2" not in text


def test_early_stopping_is_named_when_it_ends_a_run(qtbot):
    page = page_with_plots(qtbot)
    result = SimpleNamespace(epochs_run=14, best_epoch=4, cancelled=False, seconds=3.0,
                             stopped_early=True, settings=TrainSettings(early_stopping=10),
                             history=[record(e) for e in range(1, 15)],
                             trainable_backbone_layers=[])
    page.show_result(result)
    assert ("stopped early at epoch 14: no better validation loss for 10 epochs"
            in page.status.text())
    result.stopped_early = False
    page.show_result(result)
    assert "early" not in page.status.text()


def test_epoch_clock_measures_and_never_invents():
    now = [100.0]
    clock = EpochClock(lambda: now[0])
    clock.start()
    assert clock.per_epoch() is None and clock.eta(10) is None
    now[0] = 112.0  # first epoch: 12 s with starting up
    clock.epoch_ended()
    assert clock.per_epoch() == 12.0 and clock.eta(10) == 108.0
    for t in (114.0, 116.5, 118.0):
        now[0] = t
        clock.epoch_ended()
    assert clock.per_epoch() == 2.0  # later epochs only
    assert clock.eta(10) == 12.0


def test_mode_choice_says_what_each_mode_does_and_costs(qtbot):
    page = TrainPage()
    qtbot.addWidget(page)
    texts = [w.text() for w in page.mode.findChildren(type(page.status))]
    assert HEAD_TEXT in texts and FINETUNE_TEXT in texts
    finetune_only = (page.fields["backbone_lr_scale"], page.fields["augment"])
    assert page.mode.mode() == "head" and not any(w.isEnabled() for w in finetune_only)
    assert "the answer averages" in page.fields["aux_weight"].toolTip()  # the head-only tip
    context = TrainContext(backbone="mobilenet", images=60, train_images=48,
                           seconds_per_image={"head": None, "finetune": 0.05})
    page.describe(context)
    assert "unknown until the first epoch" in page.mode.time.text()

    page.mode.buttons["finetune"].click()
    assert page.settings().mode == "finetune"
    assert all(w.isEnabled() for w in finetune_only)
    assert "shapes the layers" in page.fields["aux_weight"].toolTip()
    assert "about 2.4 s" in page.mode.time.text()  # 0.05 s an image x 48 images
    assert "conv_pw_10_relu" in page.mode.layers.text()  # the cut spec, before any run
    assert "about 12.0 MB" in page.mode.cache.text()  # 14x14x512 float16 x 60 images
    page.describe(TrainContext(backbone="mobilenet", images=60, train_images=48,
                               cache=SimpleNamespace(mode="finetune", disk_bytes=123_456,
                                                     ready=60),
                               layers=["conv_dw_11", "conv_pw_11"]))
    assert "123.5 KB on disk" in page.mode.cache.text()
    assert "conv_dw_11, conv_pw_11" in page.mode.layers.text()
    page.ensure_plots()
    assert "shapes layers" in page.curves[("aux1", "loss", "val")].toolTip()
    page.mode.buttons["head"].click()
    assert "probe" in page.curves[("aux1", "loss", "val")].toolTip()
    assert "estimate" in page.mode.cache.text()  # the cached cut is not what head mode needs


@pytest.mark.slow  # trains in a TensorFlow child process
def test_fine_tune_run_through_the_window(qtbot, window, tmp_path):
    open_folder(qtbot, window, make_dataset(tmp_path / "photos", per_class=10))
    use_tiny(window)
    window.show_page("Train")
    button = window.train.mode.buttons["finetune"]
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton, pos=QPoint(8, button.height() // 2))
    assert "unknown until the first epoch" in window.train.mode.time.text()
    assert "Caches the backbone's cut tensor" in window.features.caches.text()
    window.train.fields["epochs"].setValue(3)
    window.train.fields["early_stopping"].setValue(0)
    window.train.start.click()
    qtbot.waitUntil(lambda: "per epoch" in window.train.timing.text(), timeout=90000)
    wait_idle(qtbot, window, 90000)
    run = window.session.slot.model
    assert run.result.settings.mode == "finetune" and run.result.epochs_run == 3
    for output in ("main", "aux1", "aux2"):
        for metric in ("loss", "accuracy"):
            for split in ("train", "val"):
                assert xs_of(window.train.curves[(output, metric, split)]) == [1, 2, 3]
    layers = run.result.trainable_backbone_layers
    assert layers and "tiny_block3" in layers
    assert f"Backbone layers trained: {', '.join(layers)}" in window.train.status.text()
    assert "Measured:" in window.train.timing.text()
    # what the next Start expects: measured, not invented; the layers by name
    assert "Expected time per epoch: about" in window.train.mode.time.text()
    assert "tiny_block3" in window.train.mode.layers.text()
    assert "on disk" in window.train.mode.cache.text()
    assert "cut tensors take" in window.features.counts.text()


def test_every_setting_of_the_table_has_its_widget_with_the_tables_range(qtbot):
    from PySide6.QtWidgets import QComboBox

    from app.core.training.settings import table
    from app.gui.pages.train import TrainPage

    page = TrainPage()
    qtbot.addWidget(page)
    shown = {n: (d, k, s) for n, d, k, s in table() if s.shown and n != "mode"}
    assert set(page.fields) == set(shown)
    page.mode.set_mode("finetune")
    want = {}
    for name, (default, kind, spec) in shown.items():
        w = page.fields[name]
        if spec.choices:
            assert [w.itemText(i) for i in range(w.count())] == list(spec.choices)
            want[name] = next(c for c in spec.choices if c != default)
            w.setCurrentText(want[name])
        else:
            assert not isinstance(w, QComboBox)
            assert (w.minimum(), w.maximum()) == spec.range
            want[name] = 3 if name == "warmup_epochs" else kind(spec.range[1])
            w.setValue(want[name])
    got = page.settings()
    assert {n: getattr(got, n) for n in want} == want and got.mode == "finetune"
