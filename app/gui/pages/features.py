"""Step 2: run every image through the frozen backbone once (the feature cache)."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.backbones import BACKBONES, DEFAULT_BACKBONE
from app.core.jobs import Progress
from app.gui.widgets import duration, heading, hint

WEIGHTS = (("imagenet", "ImageNet (downloaded once)"), ("file", "Local weights file…"),
           ("none", "None — random, for trying things out"))


class FeaturesPage(QWidget):
    start_requested = Signal()
    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.backbone = QComboBox()
        for name, spec in BACKBONES.items():
            if not spec.hidden:
                self.backbone.addItem(f"{spec.title}  ({spec.image_size} px)", name)
        self.backbone.setToolTip("The pretrained network that turns each photo into features. "
                                 "MobileNet is fastest; Inception v3 and Xception are the "
                                 "most accurate.")
        self.set_backbone(DEFAULT_BACKBONE)
        self.weights = QComboBox()
        for key, title in WEIGHTS:
            self.weights.addItem(title, key)
        self.weights.setToolTip("ImageNet weights give useful features; 'None' gives random "
                                "features, only for trying the app out.")
        self.weights_file = QLineEdit()
        self.weights_file.setPlaceholderText("a .weights.h5 file for the chosen backbone")
        self.weights_file.setToolTip("A Keras weights file without the top (include_top=False) "
                                     "matching the chosen backbone")
        self.browse = QPushButton("&Browse…")
        self.browse.setToolTip("Choose the weights file")
        self.browse.clicked.connect(self._browse)
        file_row = QHBoxLayout()
        file_row.addWidget(self.weights_file, 1)
        file_row.addWidget(self.browse)
        self.weights.currentIndexChanged.connect(self._weights_changed)
        self._weights_changed()

        form = QFormLayout()
        form.addRow("&Backbone:", self.backbone)
        form.addRow("&Weights:", self.weights)
        file_label = QLabel("Weights &file:")
        file_label.setBuddy(self.weights_file)
        form.addRow(file_label, file_row)

        self.start = QPushButton("&Start")
        self.start.setToolTip("Compute the features of every image not cached yet (Ctrl+Return)")
        self.start.setShortcut("Ctrl+Return")
        self.start.clicked.connect(self._start_or_cancel)
        self.bar = QProgressBar()
        self.rate = QLabel("")
        self.counts = QLabel("")
        self.counts.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.start)
        row.addWidget(self.bar, 1)
        row.addWidget(self.rate)

        self.skipped = QTableWidget(0, 2)
        self.skipped.setHorizontalHeaderLabels(["Skipped file", "Reason"])
        self.skipped.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.skipped.verticalHeader().setVisible(False)
        self.skipped.horizontalHeader().setSectionResizeMode(
            0, QHeaderView.ResizeMode.ResizeToContents)
        self.skipped.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.skipped.setToolTip("Files that were left out, and why")

        layout = QVBoxLayout(self)
        layout.addWidget(heading("2  Features"))
        layout.addWidget(hint("Every image goes through the backbone once; the features are "
                              "cached, so training (and training again) never waits for it. "
                              "Cancel at any time: what was computed is kept."))
        layout.addLayout(form)
        layout.addLayout(row)
        layout.addWidget(self.counts)
        layout.addWidget(self.skipped, 1)
        self.running = False

    # --- settings -----------------------------------------------------------------------
    def set_backbone(self, name: str) -> None:
        """Select ``name``; hidden backbones (the test-only 'tiny') are added on request."""
        index = self.backbone.findData(name)
        if index < 0 and name in BACKBONES:
            self.backbone.addItem(BACKBONES[name].title, name)
            index = self.backbone.count() - 1
        if index >= 0:
            self.backbone.setCurrentIndex(index)

    def set_weights(self, weights: str) -> None:
        if weights in ("imagenet", "none"):
            self.weights.setCurrentIndex(self.weights.findData(weights))
        else:
            self.weights.setCurrentIndex(self.weights.findData("file"))
            self.weights_file.setText(weights)

    def backbone_name(self) -> str:
        return self.backbone.currentData()

    def weights_value(self) -> str:
        key = self.weights.currentData()
        if key == "file":
            path = self.weights_file.text().strip()
            if not path:
                raise ValueError("choose a weights file, or pick ImageNet or None")
            return path
        return key

    def _weights_changed(self) -> None:
        on = self.weights.currentData() == "file"
        self.weights_file.setEnabled(on)
        self.browse.setEnabled(on)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Weights file", self.weights_file.text(),
                                              "Keras weights (*.h5 *.keras);;All files (*)")
        if path:
            self.weights_file.setText(path)

    # --- running ------------------------------------------------------------------------
    def _start_or_cancel(self) -> None:
        (self.cancel_requested if self.running else self.start_requested).emit()

    def set_running(self, running: bool) -> None:
        self.running = running
        self.start.setText("&Cancel" if running else "&Start")
        for w in (self.backbone, self.weights):
            w.setEnabled(not running)
        if running:
            self.bar.setRange(0, 0)
            self.rate.setText("starting the backbone…")
            self.counts.setText("")
        else:
            self._weights_changed()

    def show_progress(self, p: Progress) -> None:
        if p.stage == "scan":
            self.rate.setText(f"reading files {p.done}/{p.total}")
            return
        self.bar.setRange(0, max(1, p.total))
        self.bar.setValue(p.done)
        self.rate.setText(f"{p.rate:.1f} images/s · ETA {duration(p.eta)}")
        self.counts.setText(f"Computed {p.done} of {p.total} images still to do…")

    def show_result(self, result) -> None:
        if result.cancelled:
            self.rate.setText("cancelled — what was computed is kept")
        else:
            self.bar.setRange(0, 1)
            self.bar.setValue(1)
            self.rate.setText(f"{result.images_per_second:.1f} images/s · "
                              f"{duration(result.seconds)}")
        self.counts.setText(
            f"<b>{result.images}</b> images ready: {result.computed} computed, "
            f"{result.reused} reused from the cache, {len(result.skipped)} skipped. "
            f"Backbone ran on: {result.device}.")
        self.show_skipped(result.skipped)

    def show_skipped(self, skipped) -> None:
        self.skipped.setRowCount(len(skipped))
        for row, s in enumerate(skipped):
            item = QTableWidgetItem(s.path.rsplit("/", 1)[-1])
            item.setToolTip(s.path)
            self.skipped.setItem(row, 0, item)
            self.skipped.setItem(row, 1, QTableWidgetItem(s.reason))

    def show_error(self) -> None:
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.rate.setText("failed — see the message above")
