"""Step 3: training settings, Start/Stop, and live loss/accuracy plots of every output."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.core.base.jobs import Progress
from app.core.training.metrics import epoch_text
from app.core.training.settings import TrainSettings, table
from app.gui.epoch_clock import EpochClock
from app.gui.pages.train_mode import ModeBox, TrainContext, seconds_text
from app.gui.widgets import heading, hint

if TYPE_CHECKING:
    import pyqtgraph as pg

    from app.gui.pages.train_plots import TrainPlots

class TrainPage(QWidget):
    start_requested = Signal()
    stop_requested = Signal()
    export_requested = Signal()
    changed = Signal()  # the user changed a setting or the mode

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # one widget a setting of the table (app.core.training.settings), the mode aside
        self.settings_table = {name: (default, kind, spec) for name, default, kind, spec
                               in table() if spec.shown}
        self.fields: dict[str, QWidget] = {
            name: _widget(default, kind, spec)
            for name, (default, kind, spec) in self.settings_table.items() if name != "mode"}
        self.mode = ModeBox()
        self.mode.changed.connect(self._mode_changed)
        self.mode.changed.connect(lambda _m: self.changed.emit())
        for w in self.fields.values():
            (w.currentIndexChanged if isinstance(w, QComboBox) else w.valueChanged).connect(
                lambda *_a: self.changed.emit())
        self.clock = EpochClock()
        form = QFormLayout()
        form.setVerticalSpacing(2)  # sixteen settings and the plots fit a 1280x720 screen
        for name, widget in self.fields.items():
            spec = self.settings_table[name][2]
            widget.setToolTip(spec.help + (" (fine-tune only)" if spec.finetune_only else ""))
            form.addRow(spec.label or f"{name.replace('_', ' ').capitalize()}:", widget)
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
        self.timing = QLabel("")
        self.timing.setWordWrap(True)
        self.need = QLabel("")
        self.need.setStyleSheet("color: #a05a00;")
        self.warnings = QLabel("")
        self.warnings.setWordWrap(True)
        self.warnings.setStyleSheet("color: #a05a00;")
        self.warnings.hide()

        self.plot_area = QVBoxLayout()
        self.plots: TrainPlots | None = None  # built on first use: pyqtgraph costs ~0.4 s
        self.curves: dict[tuple[str, str, str], pg.PlotDataItem] = {}
        self.best_lines: list[pg.InfiniteLine] = []
        self.history: list[dict] = []
        self.epochs = TrainSettings().epochs
        self.tags_task = False  # the data folder gives several tags a photo: its score is mAP

        settings = QWidget()
        left_inner = QVBoxLayout(settings)
        left_inner.setContentsMargins(0, 0, 0, 0)
        left_inner.addWidget(self.mode)
        left_inner.addLayout(form)
        left_inner.addStretch(1)
        # the settings scroll when the window is short (a 720-px screen with a message shown):
        # they never make the window taller than the screen
        scroll = QScrollArea()
        scroll.setWidget(settings)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(settings.sizeHint().width()
                               + scroll.verticalScrollBar().sizeHint().width())
        left = QVBoxLayout()
        left.addWidget(scroll)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start)
        buttons.addWidget(self.stop)
        buttons.addWidget(self.bar, 1)
        buttons.addWidget(self.export)
        right = QVBoxLayout()
        right.addWidget(self.need)
        right.addWidget(self.mode.details)
        right.addLayout(buttons)
        right.addWidget(self.status)
        right.addWidget(self.timing)
        right.addWidget(self.warnings)
        right.addLayout(self.plot_area, 1)
        body = QHBoxLayout()
        body.addLayout(left)
        body.addLayout(right, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(heading("4  Train"))
        layout.addWidget(hint("Solid lines: training images; dashed: validation images. "
                              "Main output in blue, auxiliary outputs in orange and green. "
                              "The dotted red line marks the best epoch, the one the model "
                              "keeps."))
        layout.addLayout(body, 1)
        self.running = False
        self.missing = "Open a data folder first (page 1)."
        self._mode_changed(self.mode.mode())
        self._update_buttons()

    def ensure_plots(self) -> None:
        """Create the plots and their twelve curves once; later updates only setData."""
        if self.plots is not None:
            return
        from app.gui.pages.train_plots import TrainPlots

        self.plots = TrainPlots()
        self.plots.tags_task = self.tags_task
        self.plots.set_mode(self.mode.mode())
        self.curves, self.best_lines = self.plots.curves, self.plots.best_lines
        self.plot_area.addWidget(self.plots)
        if self.tags_task:  # its score's name from the start
            self.plots.show_history(self.history, self.epochs)

    def showEvent(self, event) -> None:  # noqa: N802
        self.ensure_plots()
        super().showEvent(event)

    # --- settings -----------------------------------------------------------------------
    def settings(self) -> TrainSettings:
        values: dict = {"mode": self.mode.mode()}
        for name, w in self.fields.items():
            values[name] = w.currentText() if isinstance(w, QComboBox) else w.value()
        return TrainSettings(**values)

    def set_settings(self, s: TrainSettings) -> None:
        self.mode.set_mode(s.mode)
        for name, w in self.fields.items():
            v = getattr(s, name)
            if isinstance(w, QComboBox):
                w.setCurrentText(str(v))
            else:
                w.setValue(v)

    def _mode_changed(self, mode: str) -> None:
        """Fine-tune-only fields follow the mode; help that depends on the mode follows it."""
        for name, widget in self.fields.items():
            spec = self.settings_table[name][2]
            if spec.finetune_only:
                widget.setEnabled(mode == "finetune" and not self.running)
            if spec.mode_help:
                widget.setToolTip(spec.help_for(mode))
        if self.plots is not None:
            self.plots.set_mode(mode)

    def describe(self, context: TrainContext) -> None:
        """What the chosen mode trains, caches and costs (see :class:`ModeBox`)."""
        self.mode.describe(context)

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
        self.mode.setEnabled(not running)
        self._mode_changed(self.mode.mode())
        self.defaults.setEnabled(not running)
        if running:
            self.export.setEnabled(False)
            self.epochs = self.fields["epochs"].value()
            self.clear()
            self.warnings.hide()
            self.bar.setRange(0, 0)
            self.status.setText("Preparing…")
            self.timing.setText("Time per epoch: unknown until the first epoch ends.")
            self.clock.start()
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

    def forget_status(self) -> None:
        """A new folder: the last run's failure or result line was about another one."""
        if not self.running:
            self.status.setText("")

    def set_task(self, tags: bool) -> None:
        """The data folder's task: the lower plot reads mAP for several tags a photo before
        any curve says so."""
        self.tags_task = tags
        if self.plots is not None:
            self.plots.tags_task = tags
            if not self.history:
                self.plots.show_history([], self.epochs)

    def clear(self) -> None:
        self.ensure_plots()
        self.history = []
        self.plots.show_history([], self.epochs)

    def show_progress(self, p: Progress) -> None:
        if p.stage != "train":
            self.clock.start()  # the epochs' clock starts after caching
            self.status.setText(f"Caching features first: {p.done}/{p.total} "
                                f"({p.rate:.1f} images/s)")
            return
        self.bar.setRange(0, max(1, p.total))
        self.bar.setValue(p.done)
        data = p.data or {}
        if data.get("partial"):
            self.status.setText(f"Epoch {data.get('epoch')} of {p.total} running… "
                                f"({p.message})")
            return
        self.clock.epoch_ended()
        self.history.append(data)
        self.status.setText(epoch_text(data, p.total))
        self.timing.setText(self._timing_text(p.total))
        self.ensure_plots()
        self.plots.show_history(self.history, p.total)

    def _timing_text(self, epochs: int) -> str:
        per, eta = self.clock.per_epoch(), self.clock.eta(epochs)
        if per is None:
            return "Time per epoch: unknown until the first epoch ends."
        first = " (the first epoch, with starting up)" if len(self.clock.ends) == 1 else ""
        left = f"about {seconds_text(eta)} left" if eta else "done"
        return f"Measured: {seconds_text(per)} per epoch{first} · {left}."

    def show_model_history(self, history: list[dict], source: str) -> None:
        """The current model's curves (trained in this window, kept from the last start, or
        kept in the model folder opened), not a run that was discarded; Export exports it."""
        if self.running:
            return
        self.history = list(history)
        self.ensure_plots()
        self.plots.show_history(self.history, max([self.epochs, *(h["epoch"] for h in
                                                                   self.history)]))
        self.status.setText(f"Curves of the current model ({_escape(source)})" if history else
                            f"The current model ({_escape(source)}) keeps no curves." if source
                            else "")
        self.export.setEnabled(bool(source))

    def show_stopped_before_an_epoch(self) -> None:
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.status.setText("Training stopped before its first epoch ended: no model was "
                            "kept.")

    def show_result(self, result) -> None:
        self.bar.setRange(0, 1)
        self.bar.setValue(1)
        if not result.epochs_run:
            self.status.setText("Training stopped before its first epoch ended: no model was "
                                "kept.")
            return
        if result.stopped_early:
            watched = ("validation loss" if any(h.get("val_main_loss") is not None
                                                for h in result.history) else "training loss")
            how = (f"stopped early at epoch {result.epochs_run}: no better {watched} for "
                   f"{result.settings.early_stopping} epochs")
        elif result.cancelled:
            how = f"stopped after {result.epochs_run} epoch(s)"
        else:
            how = f"finished after {result.epochs_run} epoch(s)"
        text = (f"Training {how}, in {result.seconds:.1f} s; the model keeps the weights of "
                f"the best epoch ({result.best_epoch}). Try it on the Evaluate and Predict "
                "pages.")
        if result.trainable_backbone_layers:
            text += ("<br>Backbone layers trained: "
                     f"{_escape(', '.join(result.trainable_backbone_layers))}.")
        self.status.setText(text)
        # the run is over: no time left (an early stop or a Stop left an estimate for the
        # epochs that never ran)
        self.timing.setText(self._timing_text(result.epochs_run))
        self.export.setEnabled(True)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _widget(default, kind: type, spec) -> QWidget:
    """The editor of one setting, from its table entry."""
    if spec.choices is not None:
        w = QComboBox()
        w.addItems(spec.choices)
        w.setCurrentText(default)
        return w
    if kind is int:
        w = QSpinBox()
        w.setRange(int(spec.range[0]), int(spec.range[1]))
    else:
        w = QDoubleSpinBox()
        w.setDecimals(spec.decimals or 2)
        w.setRange(spec.range[0], spec.range[1])
        w.setSingleStep(spec.step or 0.1)
    w.setValue(default)
    return w
