"""The Train page's live curves: loss above accuracy, main/aux1/aux2 in three colours, solid
train and dashed validation, the best epoch marked.

The legend sits in its own row above both plots, so no curve and no "best" marker can ever be
under it; its samples are wide and carry no symbol, so a dashed line reads as dashed. Axis pens
and text follow the palette (light or dark theme). Epochs are whole numbers from 1.
Importing pyqtgraph costs ~0.4 s, so the widget is built on first use.
"""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtCore import QEvent, QRectF, Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QWidget

OUTPUT_COLOURS = {"main": "#1f77b4", "aux1": "#ff7f0e", "aux2": "#2ca02c"}
METRICS = ("loss", "accuracy")
SPLITS = ("train", "val")
BEST_COLOUR = "#d62728"
PROBE_TIP = ("{o}: in head-only mode a probe — a classifier on an intermediate layer that "
             "trains alone and does not change the main output")
SHAPING_TIP = ("{o}: an auxiliary classifier on a trainable backbone block; its loss "
               "(times the aux weight) shapes layers the main output uses")


def curve_key(output: str, metric: str, split: str) -> str:
    """The history key of one curve (``val_`` for validation)."""
    return f"{output}_{metric}" if split == "train" else f"val_{output}_{metric}"


class EpochAxis(pg.AxisItem):
    """Whole epochs only, from 1; at most ~10 labelled ticks."""

    def tickValues(self, minVal, maxVal, size):  # noqa: N802, N803
        lo, hi = max(1, math.ceil(minVal)), math.floor(maxVal)
        if hi < lo:
            return []
        step = max(1, math.ceil((hi - lo + 1) / 10))
        first = 1 + math.ceil((lo - 1) / step) * step
        return [(float(step), [float(v) for v in range(first, hi + 1, step)])]

    def tickStrings(self, values, scale, spacing):  # noqa: N802
        return [str(int(round(v))) for v in values]


class WideSample(pg.ItemSample):
    """A legend sample 36 px wide with only the line: dashes stay visible."""

    WIDTH = 36

    def __init__(self, item) -> None:
        super().__init__(item)
        self.setFixedWidth(self.WIDTH)

    def boundingRect(self):  # noqa: N802
        return QRectF(0, 0, self.WIDTH, 20)

    def paint(self, p, *args) -> None:
        p.setRenderHint(p.RenderHint.Antialiasing)
        p.setPen(pg.mkPen(self.item.opts["pen"]))
        p.drawLine(2, 11, self.WIDTH - 2, 11)


class TrainPlots(pg.GraphicsLayoutWidget):
    """Two plots and their twelve curves, created once; :meth:`show_history` only setData."""

    tags_task = False  # before any curve: the data folder gives several tags a photo

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        pg.setConfigOptions(antialias=True)
        self.setBackground(None)
        self.curves: dict[tuple[str, str, str], pg.PlotDataItem] = {}
        self.best_lines: list[pg.InfiniteLine] = []
        self.plot_items: dict[str, pg.PlotItem] = {}
        self.legend = pg.LegendItem(offset=None, colCount=5, labelTextSize="9pt",
                                    sampleType=WideSample)
        self.addItem(self.legend, row=0, col=0)
        self._legend_samples: list[pg.PlotDataItem] = []
        for row, metric in enumerate(METRICS, start=1):
            plot = self.addPlot(row=row, col=0, axisItems={"bottom": EpochAxis("bottom")})
            plot.setLabel("left", metric.capitalize())
            plot.setLabel("bottom", "Epoch")
            plot.showGrid(x=True, y=True, alpha=0.2)
            plot.setMouseEnabled(x=False, y=False)
            plot.hideButtons()
            plot.getAxis("left").enableAutoSIPrefix(False)
            plot.getAxis("left").setWidth(52)  # one width: the two plots' epochs line up
            if metric == "accuracy":
                plot.setYRange(-0.08, 1.08, padding=0)  # room for the 0 and 1.0 labels
                plot.getAxis("left").setTicks([  # fixed: 0 and 1.0 are always labelled
                    [(v / 5, f"{v / 5:.1f}" if v else "0") for v in range(6)],
                    [(v / 10, "") for v in range(1, 10, 2)]])
            self.plot_items[metric] = plot
            for output, colour in OUTPUT_COLOURS.items():
                for split in SPLITS:
                    style = Qt.PenStyle.SolidLine if split == "train" else Qt.PenStyle.DashLine
                    curve = plot.plot([], [], pen=pg.mkPen(colour, width=2, style=style),
                                      symbol="o", symbolSize=4, symbolBrush=colour,
                                      symbolPen=None)
                    self.curves[(output, metric, split)] = curve
            # the text goes where the curves have left by the best epoch: loss falls away
            # from the top, accuracy rises away from the bottom
            line = pg.InfiniteLine(angle=90, movable=False,
                                   pen=pg.mkPen(BEST_COLOUR, width=1, style=Qt.PenStyle.DotLine),
                                   label="best",
                                   labelOpts={"position": 0.92 if metric == "loss" else 0.08,
                                              "color": BEST_COLOUR})
            line.setVisible(False)
            plot.addItem(line)
            self.best_lines.append(line)
        self.ci.layout.setRowStretchFactor(1, 1)
        self.ci.layout.setRowStretchFactor(2, 1)
        self._fill_legend()
        self.set_mode("head")
        self.apply_palette()
        self.show_history([], 1)

    def _fill_legend(self) -> None:
        for output, colour in OUTPUT_COLOURS.items():
            self._add_legend(output, pg.mkPen(colour, width=4))
        self._train_pen = pg.mkPen(width=2)
        self._val_pen = pg.mkPen(width=2, style=Qt.PenStyle.DashLine)
        self._add_legend("train", self._train_pen)
        self._add_legend("validation", self._val_pen)
        self.ci.layout.setRowFixedHeight(0, self.legend.boundingRect().height())

    def _add_legend(self, name: str, pen) -> None:
        sample = pg.PlotDataItem([], [], pen=pen)  # never drawn: only the legend's sample
        self._legend_samples.append(sample)
        self.legend.addItem(WideSample(sample), name)

    # --- look -----------------------------------------------------------------------------
    def apply_palette(self) -> None:
        """Axis lines, tick text, labels and the legend in the window's palette colours."""
        pal = self.palette()
        text = pal.color(QPalette.ColorRole.WindowText)
        base = pal.color(QPalette.ColorRole.Base)
        for plot in self.plot_items.values():
            for name in ("left", "bottom"):
                axis = plot.getAxis(name)
                axis.setPen(pg.mkPen(text))
                axis.setTextPen(pg.mkPen(text))
                axis.setLabel(axis.labelText, color=text.name())
        for pen in (self._train_pen, self._val_pen):
            pen.setColor(text)
        self.legend.setBrush(pg.mkBrush(base))  # opaque
        for line in self.best_lines:  # an early curve passing behind the text stays readable
            line.label.fill = pg.mkBrush(base)
            line.label.update()
        self.legend.setPen(pg.mkPen(text.lighter(150) if text.lightness() < 128
                                    else text.darker(150)))
        self.legend.setLabelTextColor(text)
        for _, label in self.legend.items:
            label.setText(label.text, color=text.name())
        self.legend.update()

    def changeEvent(self, event) -> None:  # noqa: N802
        if (event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange)
                and hasattr(self, "legend")):
            self.apply_palette()
        super().changeEvent(event)

    def set_mode(self, mode: str) -> None:
        """Tooltips of the aux curves say what the aux outputs are in ``mode``."""
        tip = SHAPING_TIP if mode == "finetune" else PROBE_TIP
        for (output, _, _), curve in self.curves.items():
            curve.setToolTip(tip.format(o=output) if output != "main" else
                             "main: the classifier the exported model uses")

    # --- data -----------------------------------------------------------------------------
    def show_history(self, history: list[dict], epochs: int) -> None:
        """Draw every curve from the epoch records; x from 1 to ``epochs`` (or further)."""
        # a model of several tags a photo records mAP (Keras' PR-AUC per tag, averaged)
        # where one of one class a photo records accuracy: the lower plot shows which
        tagged = any("main_map" in h for h in history) or (not history and self.tags_task)
        axis, want = self.plot_items["accuracy"].getAxis("left"), "mAP" if tagged else "Accuracy"
        if axis.labelText != want:
            axis.setLabel(want, color=self.palette().color(QPalette.ColorRole.WindowText).name())
        for (output, metric, split), curve in self.curves.items():
            key = curve_key(output, "map" if tagged and metric == "accuracy" else metric,
                            split)
            points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
            curve.setData([e for e, _ in points], [v for _, v in points])
        last = max([epochs, *(h["epoch"] for h in history)])
        for plot in self.plot_items.values():
            plot.setXRange(1, max(2, last), padding=0.02)
        loss = self.plot_items["loss"]
        values = [v for (_, m, _), c in self.curves.items() if m == "loss"
                  for v in (c.getData()[1] if c.getData()[1] is not None else [])]
        top = max(1.0, max(values, default=1.0))
        loss.setYRange(-0.08 * top, 1.08 * top, padding=0)  # room for the edge labels
        best = history[-1].get("best_epoch") if history else 0
        for line in self.best_lines:
            line.setVisible(bool(best))
            if best:
                line.setValue(best)
