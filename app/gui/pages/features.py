"""Step 2: run every image through the frozen backbone once (the feature cache)."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
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

from app.core.base.jobs import Progress
from app.core.features.backbones import BACKBONES, DEFAULT_BACKBONE
from app.gui.pages.compute_on import ComputeOn
from app.gui.pages.train_mode import size_text
from app.gui.widgets import duration, heading, hint

WEIGHTS = (("imagenet", "ImageNet (downloaded once)"), ("file", "Local weights file…"),
           ("none", "None — random, for trying things out"))


NO_DATA = "Open a data folder first (page 1)."


# measured with real weights on both flower sets (docs/benchmarks.md, "Backbones with real
# weights"): what to propose without a GPU and with one
BACKBONE_TIP = (
    "The pretrained network that turns each photo into features.\n"
    "Without a GPU, choose MobileNet v2: it caches as fast as MobileNet v1 (about 120 photos/s "
    "on 2 cores), its cache is 6x smaller, and it was the most accurate on sharp photos "
    "(Oxford-17: 97.3%).\n"
    "With a GPU, choose Xception: the most accurate on small, blurry photos (flowers5: 78.4% "
    "against 75.6%), but 11x slower to cache on a CPU.\n"
    "Inception v3 (the default), EfficientNet and ResNet were not measured here.")


class FeaturesPage(QWidget):
    start_requested = Signal()
    cancel_requested = Signal()
    retry_requested = Signal()  # start again, retrying the files remembered as unreadable
    changed = Signal()  # the user changed the backbone, its weights or where it runs

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.backbone = QComboBox()
        for name, spec in BACKBONES.items():
            if not spec.hidden:
                self.backbone.addItem(f"{spec.title}  ({spec.image_size} px)", name)
        self.backbone.setToolTip(BACKBONE_TIP)
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
        # what is shown belongs to one folder, backbone, weights and mode: another is not it
        self.backbone.currentIndexChanged.connect(lambda _i: self.forget_result())
        self.weights.currentIndexChanged.connect(lambda _i: self.forget_result())
        self.weights_file.textChanged.connect(lambda _t: self.forget_result())
        for signal in (self.backbone.currentIndexChanged, self.weights.currentIndexChanged,
                       self.weights_file.textChanged):
            signal.connect(lambda *_a: self.changed.emit())

        form = QFormLayout()
        form.addRow("&Backbone:", self.backbone)
        form.addRow("&Weights:", self.weights)
        file_label = QLabel("Weights &file:")
        file_label.setBuddy(self.weights_file)
        form.addRow(file_label, file_row)
        self.compute_on = ComputeOn()
        self.compute_on.changed.connect(self.changed)
        form.addRow("Compute on:", self.compute_on)

        self.start = QPushButton("&Start")
        self.start_tip = "Compute the features of every image not cached yet (Ctrl+Return)"
        self.start.setShortcut("Ctrl+Return")
        self.start.clicked.connect(self.start_requested)
        self.cancel = QPushButton("&Cancel")
        self.cancel.setToolTip("Stop after the current batch; what was computed is kept")
        self.cancel.clicked.connect(self.cancel_requested)
        self.retry = QPushButton("&Retry skipped files")
        self.retry.setToolTip("Read the skipped files again (after fixing them, or when they "
                              "could not be read for a passing reason) and cache them")
        self.retry.clicked.connect(self.retry_requested)
        self.bar = QProgressBar()
        self.rate = QLabel("")
        self.counts = QLabel("")
        self.counts.setWordWrap(True)
        self.need = QLabel("")
        self.need.setStyleSheet("color: #a05a00;")
        self.caches = QLabel("")
        self.caches.setWordWrap(True)
        self.set_mode("head")
        row = QHBoxLayout()
        row.addWidget(self.start)
        row.addWidget(self.cancel)
        row.addWidget(self.bar, 1)
        row.addWidget(self.rate)

        self.skipped = QTableWidget(0, 3)
        self.skipped.setHorizontalHeaderLabels(["Skipped file", "Class folder", "Reason"])
        self.skipped.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.skipped.verticalHeader().setVisible(False)
        self.skipped.horizontalHeader().setSectionResizeMode(
            0, QHeaderView.ResizeMode.ResizeToContents)
        self.skipped.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.skipped.setToolTip("Files that were left out, and why")

        layout = QVBoxLayout(self)
        layout.addWidget(heading("3  Features"))
        layout.addWidget(hint("Every image goes through the backbone once; the features are "
                              "cached, so training (and training again) never waits for it. "
                              "Cancel at any time: what was computed is kept."))
        layout.addLayout(form)
        layout.addWidget(self.caches)
        layout.addWidget(self.need)
        layout.addLayout(row)
        layout.addWidget(self.counts)
        layout.addWidget(self.skipped, 1)
        layout.addWidget(self.retry, 0, Qt.AlignmentFlag.AlignLeft)
        self.running = False
        self.missing = NO_DATA  # what must happen before a run can start; "" when nothing
        self._update_buttons()

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

    def choice(self) -> dict:
        """What the page says, as RunChoice fields (weights "" while a file is still to be
        chosen)."""
        try:
            weights = self.weights_value()
        except ValueError:
            weights = ""
        return {"backbone": self.backbone_name(), "weights": weights,
                "engine": self.compute_on.engine(),
                "ray_address": self.compute_on.ray_address() or ""}

    def show_choice(self, choice) -> None:
        """Show ``choice`` (a RunChoice), without announcing it as the user's change."""
        self.blockSignals(True)
        try:
            if choice.backbone != self.backbone_name():
                self.set_backbone(choice.backbone)
            if choice.weights and choice.weights != self.choice()["weights"]:
                self.set_weights(choice.weights)
        finally:
            self.blockSignals(False)

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

    def forget_result(self) -> None:
        """Another folder, backbone, weights or mode than the last run's: its figures are not
        this selection's (a new run says what is ready)."""
        if getattr(self, "running", False) or not hasattr(self, "counts"):
            return
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.rate.setText("")
        self.counts.setText("Press Start to compute what is not cached yet for this folder, "
                            "backbone and weights (what is cached already is reused).")

    def set_mode(self, mode: str) -> None:
        """What Start caches: what the Train page's mode trains from."""
        if getattr(self, "mode", mode) != mode:
            self.forget_result()
        self.mode = mode
        self.caches.setText(
            "Caches the backbone's cut tensor: what the <b>fine-tune</b> mode (Train page) "
            "trains from; larger on disk than pooled features." if mode == "finetune" else
            "Caches pooled features: what the <b>head-only</b> mode (Train page) trains from.")

    # --- running ------------------------------------------------------------------------
    def set_missing(self, what: str) -> None:
        """What to do before caching can start (e.g. :data:`NO_DATA`); "" when ready."""
        self.missing = what
        self._update_buttons()

    def _update_buttons(self) -> None:
        idle = not self.running
        self.start.setEnabled(idle and not self.missing)
        self.start.setToolTip(self.missing or self.start_tip)
        self.need.setText(self.missing)
        self.need.setVisible(bool(self.missing))
        self.cancel.setEnabled(self.running)
        self.retry.setEnabled(idle and not self.missing and self.skipped.rowCount() > 0)

    def set_running(self, running: bool) -> None:
        self.running = running
        for w in (self.backbone, self.weights):
            w.setEnabled(not running)
        self.compute_on.set_running(running)
        if running:
            self.bar.setRange(0, 0)
            self.rate.setText("starting Ray…" if self.compute_on.engine() == "ray"
                              else "starting the backbone…")
            self.counts.setText("")
        else:
            self._weights_changed()
            if self.bar.maximum() == 0:  # still the busy bar: the run ended without a result
                self.bar.setRange(0, 1)
                self.bar.setValue(0)
        self._update_buttons()

    def show_progress(self, p: Progress) -> None:
        if p.stage == "scan":
            self.rate.setText(f"reading files {p.done}/{p.total}")
            return
        if p.stage == "convert":  # the backbone's ONNX graph, made once per backbone
            self.rate.setText(f"making the {p.message}…" if p.done < p.total else p.message)
            return
        self.bar.setRange(0, max(1, p.total))
        self.bar.setValue(p.done)
        self.rate.setText(f"{p.rate:.1f} images/s · ETA {duration(p.eta)}")
        self.counts.setText(f"Computed {p.done} of the {p.total} images still to do…")

    def show_result(self, result) -> None:
        """The run's outcome; after a cancel, how many images are ready and how many not."""
        left = result.to_compute
        ready = result.images - left
        if result.cancelled:
            self.bar.setRange(0, max(1, result.images))
            self.bar.setValue(ready)
            self.rate.setText("cancelled — what was computed is kept")
        else:
            self.bar.setRange(0, 1)
            self.bar.setValue(1)
            self.rate.setText(f"{result.images_per_second:.1f} images/s · "
                              f"{duration(result.seconds)}")
        done = (f"{result.computed} computed, {result.reused} reused from the cache, "
                f"{len(result.skipped)} skipped. Backbone ran on: {result.device}.")
        for note in result.notes:  # why not the fastest engine, a cache moved aside
            done += f" {html.escape(note[:1].upper() + note[1:])}."
        if result.disk_bytes:
            what = "cut tensors" if result.mode == "finetune" else "features"
            done += f" The cached {what} take {size_text(result.disk_bytes)} on disk."
        if left:
            self.counts.setText(f"<b>{ready} of {result.images}</b> images ready, "
                                f"<b>{left} still to compute</b> ({done}) Start again to "
                                "compute the rest.")
        else:
            self.counts.setText(f"<b>{result.images}</b> images ready: {done}")
        self.show_skipped(result.skipped)

    def show_skipped(self, skipped) -> None:
        self.skipped.setRowCount(len(skipped))
        for row, s in enumerate(skipped):
            item = QTableWidgetItem(s.path.rsplit("/", 1)[-1])
            item.setToolTip(s.path)
            self.skipped.setItem(row, 0, item)
            self.skipped.setItem(row, 1, QTableWidgetItem(s.path.rsplit("/", 2)[-2]
                                                          if s.path.count("/") > 1 else ""))
            self.skipped.setItem(row, 2, QTableWidgetItem(s.reason))
        self._update_buttons()

    def show_error(self, message: str = "") -> None:
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.rate.setText("failed — see the message above")
        self.counts.setText(f"Caching failed: {message}" if message else "Caching failed.")
