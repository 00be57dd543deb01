"""Step 5: drop images (or a folder) anywhere on the page and see what the model says.

Dropped or added images join the list (Clear empties it). An image the model calls unknown
reads "Unknown — closest: daisy (41%)", not a confident wrong label. A model of several tags a
photo reads "Tags: car, person" (or "None of its tags") above its top tags, a ✓ on each given."""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.operations import OperationBar
from app.gui.session import Predicted, predictions_csv
from app.gui.widgets import dialog_folder, heading, hint, local_paths


class PredictPage(QWidget):
    predict_requested = Signal(list)  # paths (files or folders)
    open_model_requested = Signal()
    saved = Signal(str)  # the CSV file written
    sort_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.multi_label = False  # the current model gives tag sets
        self.setAcceptDrops(True)
        self.model = QLabel("No model yet: train one, or open an exported model folder.")
        self.model.setWordWrap(True)
        self.open_model = QPushButton("&Open model folder…")
        self.open_model.setToolTip("Use a model folder exported earlier (File ▸ Open model)")
        self.open_model.clicked.connect(self.open_model_requested)
        self.add = QPushButton("&Add images…")
        self.add.setToolTip("Choose images to classify (or drop images or a folder here)")
        self.add.clicked.connect(self._choose)
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 20)
        self.top_k.setValue(3)
        self.top_k.setPrefix("top ")
        self.top_k.setToolTip("How many labels to show per image (every row, and the CSV)")
        self.top_k.valueChanged.connect(lambda _v: self.refresh())
        self.copy = QPushButton("&Copy")
        self.copy.setToolTip("Copy the results as tab-separated text")
        self.copy.clicked.connect(self._copy)
        self.save = QPushButton("Save &CSV…")
        self.save.setToolTip("Save the results as a CSV file")
        self.save.clicked.connect(self._save)
        self.sort = QPushButton("&Sort into folder…")
        self.sort.setToolTip(SORT_TIP)
        self.sort.clicked.connect(self.sort_requested)
        self.ops = OperationBar("Undo sort")  # the last sort: what it did, its Undo
        self.ops.undo.setToolTip("Remove the copies the last sort made (only copies still "
                                 "unchanged)")
        self.work = None  # FileWork, set by the window
        self.clear = QPushButton("C&lear")
        self.clear.setToolTip("Empty the list")
        self.clear.clicked.connect(lambda: self.show_results([]))
        self.saved_note = QLabel("")
        self.saved_note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.saved_note.setVisible(False)
        self.bar = QProgressBar()
        self.bar.setVisible(False)
        row = QHBoxLayout()
        for w in (self.add, self.top_k, self.open_model):
            row.addWidget(w)
        row.addWidget(self.bar, 1)
        row.addStretch(0)
        row.addWidget(self.copy)
        row.addWidget(self.save)
        row.addWidget(self.sort)
        row.addWidget(self.clear)

        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Image", "File", "Labels"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Fixed)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.table.setColumnWidth(0, 84)
        self.table.setColumnWidth(1, 260)
        self.table.setToolTip("Drop images or a folder anywhere on this page")
        layout = QVBoxLayout(self)
        layout.addWidget(heading("6  Predict"))
        layout.addWidget(hint("Drop one or many images, or a folder, anywhere on this page."))
        layout.addWidget(self.model)
        layout.addLayout(row)
        layout.addWidget(self.saved_note)
        layout.addWidget(self.ops)
        layout.addWidget(self.table, 1)
        self.results: list[Predicted] = []
        self.images_dir = ""  # the folder images were last added from
        self.data_dir = ""  # the open data folder: where "Add images…" opens before that
        self.save_dir = ""  # the folder a CSV was last saved to
        self.sort_dir = ""  # where the last sort's folder is
        self._update_buttons()

    def set_model(self, source: str, multi_label: bool = False) -> None:
        """A new model: the answers shown so far were another model's, so they go.
        ``multi_label``: it gives tag sets (the CSV has a ``tags`` column whatever the rows)."""
        self.model.setText(f"Model: <b>{html.escape(source)}</b>")
        self.multi_label = multi_label
        self.show_results([])

    def set_running(self, running: bool) -> None:
        self.bar.setVisible(running)
        self.bar.setRange(0, 0)
        self.add.setEnabled(not running)

    def show_progress(self, p) -> None:
        self.bar.setRange(0, max(1, p.total))
        self.bar.setValue(p.done)

    def refresh(self) -> None:
        """Draw every row again (e.g. after the unknown threshold moved)."""
        results, self.results = self.results, []
        self.show_results(results)

    def add_results(self, results: list[Predicted]) -> None:
        """More answers: they join the list (newest last)."""
        self.show_results(self.results + list(results))

    def show_results(self, results: list[Predicted]) -> None:
        old = len(self.results) if results[:len(self.results)] == self.results else 0
        self.results = list(results)
        self.saved_note.setVisible(False)
        self.table.setRowCount(len(results))
        for row, r in enumerate(results):
            if row < old:
                continue  # already shown
            pred = r.prediction
            picture = QLabel()
            picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
            if r.image is not None:
                picture.setPixmap(QPixmap.fromImage(r.image))
            self.table.setCellWidget(row, 0, picture)
            name = QTableWidgetItem(pred.path.rsplit("/", 1)[-1])
            name.setToolTip(pred.path)
            self.table.setItem(row, 1, name)
            k = self.top_k.value()
            self.table.setCellWidget(row, 2, _labels(pred, k))
            lines = 2 if pred.unknown else min(k, len(pred.top)) + (pred.tags is not None)
            self.table.setRowHeight(row, max(80, 26 * max(1, lines) + 8))
        if len(results) > old:
            self.table.scrollToBottom()
        self._update_buttons()

    def _update_buttons(self) -> None:
        for w in (self.copy, self.save, self.sort, self.clear):
            w.setEnabled(bool(self.results))
        self.sort.setToolTip(SORT_TAGS_TIP if self.multi_label else SORT_TIP)

    def _choose(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Images to classify", dialog_folder(self.images_dir, self.data_dir),
            "Images (*.jpg *.jpeg *.png *.bmp *.gif *.webp *.tif *.tiff);;All files (*)")
        if paths:
            self.images_dir = str(Path(paths[0]).parent)
            self.predict_requested.emit(paths)

    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(predictions_csv(
            self.results, "\t", self.top_k.value(), tagged=self.multi_label))

    def _save(self) -> None:
        folder = Path(dialog_folder(self.save_dir, self.images_dir))
        data = Path(self.data_dir).resolve() if self.data_dir else None
        if data is not None and (folder.resolve() == data or data in folder.resolve().parents):
            folder = data.parent  # never suggest a class folder of the training data
        start = folder / "predictions.csv"
        path, _ = QFileDialog.getSaveFileName(self, "Save predictions", str(start),
                                              "CSV (*.csv)")
        if path:
            self.save_csv(path)

    def save_csv(self, path: str) -> None:
        """Write the list as CSV to ``path`` and say where it went."""
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(predictions_csv(self.results, top_k=self.top_k.value(),
                                    tagged=self.multi_label))
        self.save_dir = str(Path(path).parent)
        self.saved_note.setText(f"✔ Saved {len(self.results)} rows to {path}")
        self.saved_note.setVisible(True)
        self.saved.emit(path)

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if local_paths(event.mimeData()):
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:  # noqa: N802
        if local_paths(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        paths = local_paths(event.mimeData())
        if paths:
            event.acceptProposedAction()
            self.predict_requested.emit(paths)


SORT_TIP = ("Copy the photos listed into a folder's <class>/ and _unknown/ sub-folders by "
            "these answers (a preview of the counts first; never overwrites; undoable)")
SORT_TAGS_TIP = ("Copy each photo listed into a folder's <tag>/ sub-folder for every tag it "
                 "gets, and _unknown/ (a preview of the counts first; never overwrites; "
                 "undoable). Save CSV keeps each photo's tag set as a tags file's rows.")


def _labels(pred, k: int = 3) -> QWidget:
    """The answer: the top ``k`` classes as bars; for an unknown image one readable line that
    says it is none of the classes and what it resembles (a 98% bar under an "Unknown"
    heading read as a confident answer)."""
    box = QWidget()
    layout = QVBoxLayout(box)
    layout.setContentsMargins(4, 4, 4, 4)
    layout.setSpacing(2)
    if pred.error:
        error = QLabel(f"⚠ cannot read this file: {pred.error}")
        error.setWordWrap(True)
        error.setStyleSheet("color: #d62728;")
        layout.addWidget(error)
        return box
    if pred.unknown and pred.top:
        best = pred.top[0]
        unknown = QLabel(f"<b>Unknown</b> — closest: {html.escape(best['label'])} "
                         f"({best['probability']:.0%})")
        unknown.setToolTip("This image does not look like the training classes enough "
                           "(its score is below the threshold set on the Evaluate page); "
                           "the closest classes are what it resembles, not an answer")
        layout.addWidget(unknown)
        rest = ", ".join(f"{t['label']} {t['probability']:.0%}" for t in pred.top[1:k])
        if rest:
            others = QLabel(f"then {rest}")
            others.setTextFormat(Qt.TextFormat.PlainText)  # labels are the model folder's
            others.setStyleSheet("color: #444;")
            layout.addWidget(others)
        if pred.tags:  # a tag model's set is still what the CSV keeps: said, not hidden
            tags = QLabel("its tags would be: " + ", ".join(t["label"] for t in pred.tags))
            tags.setTextFormat(Qt.TextFormat.PlainText)
            tags.setStyleSheet("color: #444;")
            layout.addWidget(tags)
        return box
    given = None if pred.tags is None else {t["label"] for t in pred.tags}
    if given is not None:  # several tags a photo: the set first, then the top k tags
        names = ", ".join(html.escape(t["label"]) for t in pred.tags)  # the folder's names
        heading = QLabel(f"<b>Tags:</b> {names}" if names else
                         "<b>None of its tags</b>")
        heading.setToolTip("Each tag is given when its calibrated probability reaches that "
                           "tag's threshold, chosen on the validation photos (the model "
                           "folder's metadata.json lists them)")
        layout.addWidget(heading)
    for t in pred.top[:k]:
        bar = QProgressBar()
        bar.setRange(0, 1000)
        bar.setValue(int(round(t["probability"] * 1000)))
        mark = "" if given is None else ("✓ " if t["label"] in given else "   ")
        bar.setFormat(f"{mark}{t['label']}  {t['probability']:.1%}")
        bar.setTextVisible(True)
        bar.setMaximumHeight(22)
        layout.addWidget(bar)
    return box
