"""Step 3: training settings, Start/Stop, and live loss/accuracy plots of every output."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.core.jobs import Progress
from app.core.training import TrainSettings
from app.gui.widgets import heading, hint

if TYPE_CHECKING:
    import pyqtgraph as pg

OUTPUT_COLOURS = {"main": "#1f77b4", "aux1": "#ff7f0e", "aux2": "#2ca02c"}
METRICS = ("loss", "accuracy")
CURVES = tuple((o, m, v) for m in METRICS for o in OUTPUT_COLOURS for v in ("train", "val"))

TIPS = {
    "epochs": "How many passes over the training images (early stopping may end sooner)",
    "batch_size": "Images per training step",
    "optimizer": "Adam works almost everywhere; SGD with momentum and RMSprop are alternatives",
    "learning_rate": "Step size of the optimizer; lower it when the loss jumps around",
    "schedule": "Cosine lowers the learning rate smoothly towards the end",
    "label_smoothing": "Softens the targets a little; helps against over-confidence",
    "dropout": "Fraction of features dropped while training; fights over-fitting",
    "hidden_units": "0 = a linear head on the features; more adds a hidden layer",
    "aux_weight": "Weight of the two auxiliary outputs (GoogLeNet style) in the loss; 0 = off",
    "class_weights": "Auto balances classes when their sizes differ a lot",
    "early_stopping": "Stop after this many epochs without a better validation loss; 0 = off",
    "seed": "Same seed, same data: same model",
}


class TrainPage(QWidget):
    start_requested = Signal()
    stop_requested = Signal()
    export_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        d = TrainSettings()
        self.fields: dict[str, QWidget] = {
            "epochs": _spin(1, 10000, d.epochs),
            "batch_size": _spin(1, 4096, d.batch_size),
            "optimizer": _combo(("adam", "sgd", "rmsprop"), d.optimizer),
            "learning_rate": _dspin(1e-6, 1.0, d.learning_rate, 6, 1e-4),
            "schedule": _combo(("cosine", "constant"), d.schedule),
            "label_smoothing": _dspin(0.0, 0.99, d.label_smoothing, 2, 0.05),
            "dropout": _dspin(0.0, 0.95, d.dropout, 2, 0.05),
            "hidden_units": _spin(0, 4096, d.hidden_units),
            "aux_weight": _dspin(0.0, 10.0, d.aux_weight, 2, 0.05),
            "class_weights": _combo(("auto", "none", "balanced"), d.class_weights),
            "early_stopping": _spin(0, 1000, d.early_stopping),
            "seed": _spin(0, 2**31 - 1, d.seed),
        }
        form = QFormLayout()
        for name, widget in self.fields.items():
            widget.setToolTip(TIPS[name])
            form.addRow(f"&{name.replace('_', ' ').capitalize()}:", widget)
        self.defaults = QPushButton("Reset to &defaults")
        self.defaults.setToolTip("Put every setting back to its default")
        self.defaults.clicked.connect(lambda: self.set_settings(TrainSettings()))
        form.addRow(self.defaults)

        self.start = QPushButton("&Start training")
        self.start_tip = "Train a new head on the cached features (caches first if needed)"
        self.start.clicked.connect(self.start_requested)
        self.stop = QPushButton("S&top")
        self.stop.setToolTip("Stop after the current batch; the model keeps its best epoch")
        self.stop.clicked.connect(self.stop_requested)
        self.export = QPushButton("E&xport model…")
        self.export.setToolTip("Write the model folder (model.keras, labels, metadata)")
        self.export.setEnabled(False)
        self.export.clicked.connect(self.export_requested)
        self.bar = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.need = QLabel("")
        self.need.setStyleSheet("color: #a05a00;")
        self.warnings = QLabel("")
        self.warnings.setWordWrap(True)
        self.warnings.setStyleSheet("color: #a05a00;")
        self.warnings.hide()

        self.plot_area = QVBoxLayout()
        self.plots = None  # built on first use: importing pyqtgraph costs ~0.4 s at launch
        self.curves: dict[tuple[str, str, str], pg.PlotDataItem] = {}
        self.best_lines: list[pg.InfiniteLine] = []
        self.plot_items: list[pg.PlotItem] = []
        self.history: list[dict] = []

        left = QVBoxLayout()
        left.addLayout(form)
        left.addStretch(1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start)
        buttons.addWidget(self.stop)
        buttons.addWidget(self.bar, 1)
        buttons.addWidget(self.export)
        right = QVBoxLayout()
        right.addWidget(self.need)
        right.addLayout(buttons)
        right.addWidget(self.status)
        right.addWidget(self.warnings)
        right.addLayout(self.plot_area, 1)
        body = QHBoxLayout()
        body.addLayout(left)
        body.addLayout(right, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(heading("3  Train"))
        layout.addWidget(hint("Solid lines: training images; dashed: validation images. "
                              "Main output in blue, auxiliary outputs in orange and green."))
        layout.addLayout(body, 1)
        self.running = False
        self.missing = "Open a data folder first (page 1)."
        self._update_buttons()

    def ensure_plots(self) -> None:
        """Create the two plots and their twelve curves once; later updates only setData."""
        if self.plots is not None:
            return
        import pyqtgraph as pg

        pg.setConfigOptions(antialias=True)
        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setBackground(None)
        for row, metric in enumerate(METRICS):
            plot = self.plots.addPlot(row=row, col=0)
            plot.setLabel("left", metric.capitalize())
            plot.setLabel("bottom", "Epoch")
            plot.showGrid(x=True, y=True, alpha=0.2)
            for axis in ("left", "bottom"):
                plot.getAxis(axis).enableAutoSIPrefix(False)
            if metric == "loss":  # one legend is enough: same colours and dashes below
                plot.addLegend(offset=(-70, 10), labelTextSize="9pt")
            else:
                plot.setYRange(0, 1, padding=0.02)
            self.plot_items.append(plot)
            for output, colour in OUTPUT_COLOURS.items():
                for split in ("train", "val"):
                    pen = pg.mkPen(colour, width=2,
                                   style=Qt.PenStyle.SolidLine if split == "train"
                                   else Qt.PenStyle.DashLine)
                    name = f"{output} {'train' if split == 'train' else 'validation'}"
                    self.curves[(output, metric, split)] = plot.plot(
                        [], [], pen=pen, name=name, symbol="o", symbolSize=4,
                        symbolBrush=colour, symbolPen=None)
            line = pg.InfiniteLine(angle=90, movable=False,
                                   pen=pg.mkPen("#d62728", width=1, style=Qt.PenStyle.DotLine),
                                   label="best", labelOpts={"position": 0.5, "color": "#d62728"})
            line.setVisible(False)
            plot.addItem(line)
            self.best_lines.append(line)
        self.plot_area.addWidget(self.plots)

    def showEvent(self, event) -> None:  # noqa: N802
        self.ensure_plots()
        super().showEvent(event)

    # --- settings -----------------------------------------------------------------------
    def settings(self) -> TrainSettings:
        values = {}
        for name, w in self.fields.items():
            values[name] = w.currentText() if isinstance(w, QComboBox) else w.value()
        return TrainSettings(**values)

    def set_settings(self, s: TrainSettings) -> None:
        for name, w in self.fields.items():
            v = getattr(s, name)
            if isinstance(w, QComboBox):
                w.setCurrentText(str(v))
            else:
                w.setValue(v)

    # --- running ------------------------------------------------------------------------
    def set_missing(self, what: str) -> None:
        """What to do before training can start; "" when it can."""
        self.missing = what
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.start.setEnabled(not self.running and not self.missing)
        self.start.setToolTip(self.missing or self.start_tip)
        self.need.setText(self.missing)
        self.need.setVisible(bool(self.missing))
        self.stop.setEnabled(self.running)

    def set_running(self, running: bool) -> None:
        self.running = running
        for w in self.fields.values():
            w.setEnabled(not running)
        self.defaults.setEnabled(not running)
        if running:
            self.export.setEnabled(False)
            self.clear()
            self.warnings.hide()
            self.bar.setRange(0, 0)
            self.status.setText("Preparing…")
        elif self.bar.maximum() == 0:  # still the busy bar: the run ended without a result
            self.bar.setRange(0, 1)
            self.bar.setValue(0)
        self._update_buttons()

    def show_error(self, message: str) -> None:
        self.status.setText(f"Training failed: {message}")

    def show_warnings(self, warnings: list[str]) -> None:
        """What training left out (e.g. classes with fewer than 2 usable images)."""
        self.warnings.setText("<br>".join(f"⚠ {_escape(w)}" for w in warnings))
        self.warnings.setVisible(bool(warnings))

    def clear(self) -> None:
        self.ensure_plots()
        self.history = []
        for c in self.curves.values():
            c.setData([], [])
        for line in self.best_lines:
            line.setVisible(False)

    def show_progress(self, p: Progress) -> None:
        if p.stage != "train":
            self.status.setText(f"Caching features first: {p.done}/{p.total} "
                                f"({p.rate:.1f} images/s)")
            return
        self.bar.setRange(0, max(1, p.total))
        self.bar.setValue(p.done)
        data = p.data or {}
        if data.get("partial"):
            self.status.setText(f"Epoch {data.get('epoch')} of {p.total}: {p.message}")
            return
        self.history.append(data)
        self.status.setText(p.message)
        self._redraw()

    def _redraw(self) -> None:
        self.ensure_plots()
        epochs = [h["epoch"] for h in self.history]
        for (output, metric, split), curve in self.curves.items():
            key = f"{output}_{metric}" if split == "train" else f"val_{output}_{metric}"
            points = [(e, h[key]) for e, h in zip(epochs, self.history) if h.get(key) is not None]
            curve.setData([e for e, _ in points], [v for _, v in points])
        step = max(1, math.ceil(len(epochs) / 10))
        for plot in self.plot_items:
            plot.getAxis("bottom").setTickSpacing(step, step)
        best = self.history[-1].get("best_epoch") if self.history else 0
        for line in self.best_lines:
            line.setVisible(bool(best))
            if best:
                line.setValue(best)

    def show_result(self, result) -> None:
        self.bar.setRange(0, 1)
        self.bar.setValue(1)
        if not result.epochs_run:
            self.status.setText("Training stopped before its first epoch ended: no model was "
                                "kept.")
            return
        how = "stopped" if result.cancelled else "finished"
        self.status.setText(f"Training {how} after {result.epochs_run} epoch(s) in "
                            f"{result.seconds:.1f} s; the model keeps the weights of the best "
                            f"epoch ({result.best_epoch}). Try it on the Evaluate and Predict "
                            "pages.")
        self.export.setEnabled(True)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _spin(lo: int, hi: int, value: int) -> QSpinBox:
    w = QSpinBox()
    w.setRange(lo, hi)
    w.setValue(value)
    return w


def _dspin(lo: float, hi: float, value: float, decimals: int, step: float) -> QDoubleSpinBox:
    w = QDoubleSpinBox()
    w.setDecimals(decimals)
    w.setRange(lo, hi)
    w.setSingleStep(step)
    w.setValue(value)
    return w


def _combo(items: tuple[str, ...], value: str) -> QComboBox:
    w = QComboBox()
    w.addItems(items)
    w.setCurrentText(value)
    return w
