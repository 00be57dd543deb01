"""Step 4: how good is the model on the test images it never saw, how far its probabilities
can be trusted, and the images to fix: misclassified test images, the images behind a
confusion-matrix cell, the hardest training images, and the moves made so far (undoable)."""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.base.errors import shown
from app.gui.pages.evaluate_tags import add_threshold_sliders, show_tag_errors, tag_line
from app.gui.pages.image_grid import ImageDialog, ImageGrid  # noqa: F401  (ImageDialog: API)
from app.gui.pages.trust_panel import TrustPanel
from app.gui.widgets import heading, heat_colour, hint, percent

FEW_IMAGES_TIP = ("Fewer than 5 test images: this class's scores can swing by 20% with one "
                  "image; add photos before trusting them")


def hardest_caption(e: dict) -> str:
    """The folder's label, what the model says when it disagrees, and the loss."""
    says = "" if e["predicted"] == e["true"] else f" (says {e['predicted']})"
    return f"{e['true']}{says}\nloss {max(0.0, e['loss']):.3g}"


# the five figures of a model of one class a photo, and what a model of several tags a photo
# shows in their places (its scores as kept in the model folder)
SCORES = (
    ("main_accuracy", "Accuracy", "Share of test images the model gets right (its answer: "
     "the main and the aux outputs averaged, unless Train's 'Answer' says main)"),
    ("balanced_accuracy", "Balanced accuracy",
     "Mean recall over classes: a weak small class cannot hide here"),
    ("aux1_accuracy", "Aux 1 accuracy", "The auxiliary output on an earlier layer"),
    ("aux2_accuracy", "Aux 2 accuracy", "The auxiliary output on a later layer"),
    ("count", "Test images", "Images held out from training and validation"),
)
TAG_SCORES = (
    ("map", "mAP", "Mean over the tags of the average precision (the area under each tag's "
     "precision-recall curve): how well the model ranks the photos with a tag first"),
    ("micro_f1", "Micro-F1", "F1 of every (photo, tag) decision together, at the tags' "
     "thresholds"),
    ("macro_f1", "Macro-F1", "F1 of each tag, averaged: a weak rare tag cannot hide here"),
    ("exact_match", "Exact match", "Share of test photos whose whole tag set is right"),
    ("count", "Test photos", "Photos held out from training and validation"),
)
CLASS_COLUMNS = ["Class", "Precision", "Recall", "Images"]
TAG_COLUMNS = ["Tag", "Precision", "Recall", "F1", "AP", "Threshold", "Photos"]
CONFUSION_TITLE = "<b>Confusion matrix</b> (rows: true, columns: predicted)"


class EvaluatePage(QWidget):
    export_requested = Signal()
    cell_wanted = Signal(str, str)  # true label, predicted label
    undo_requested = Signal()
    tag_threshold_moved = Signal(str, float)  # a tag's slider: try this threshold
    keep_thresholds_requested = Signal()
    reset_thresholds_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.scores: dict[str, QLabel] = {}
        self.captions: dict[str, QLabel] = {}
        grid = QGridLayout()
        for col, (key, title, tip) in enumerate(SCORES):
            name = QLabel(title)
            name.setToolTip(tip)
            value = QLabel("—")
            font = value.font()
            font.setPointSizeF(font.pointSizeF() * 1.6)
            font.setBold(True)
            value.setFont(font)
            value.setToolTip(tip)
            grid.addWidget(name, 0, col)
            grid.addWidget(value, 1, col)
            self.scores[key] = value
            self.captions[key] = name
        self.interval = QLabel("")
        self.interval.setToolTip("95% Wilson interval: with this few test images the true "
                                 "accuracy on new photos is likely anywhere in this range")
        grid.addWidget(self.interval, 2, 0)
        self.few = QLabel("")
        self.few.setWordWrap(True)
        self.few.setToolTip(FEW_IMAGES_TIP)
        self.few.setStyleSheet("color: #b35900;")
        grid.addWidget(self.few, 2, 1, 1, 4)
        self.export = QPushButton("E&xport model…")
        self.export.setToolTip("Write the model folder (model.keras, labels, metadata)")
        self.export.setEnabled(False)
        self.export.clicked.connect(self.export_requested)
        self.keep_thresholds = QPushButton("&Keep thresholds")
        self.keep_thresholds.setToolTip("Write the tags' thresholds as the sliders stand into "
                                        "the model folder: its answers use them from now on")
        self.keep_thresholds.clicked.connect(self.keep_thresholds_requested)
        self.reset_thresholds = QPushButton("Reset thresholds")
        self.reset_thresholds.setToolTip("Back to the thresholds the model folder holds")
        self.reset_thresholds.clicked.connect(self.reset_thresholds_requested)
        self.sliders: dict = {}  # tag -> its threshold slider (a tag model keeping answers)
        self.note_head = ""  # a tag model's note, before its figures
        top = QHBoxLayout()
        top.addLayout(grid, 1)
        buttons = QVBoxLayout()
        for w in (self.export, self.keep_thresholds, self.reset_thresholds):
            buttons.addWidget(w)
            w.setVisible(w is self.export)
        buttons.addStretch(1)
        top.addLayout(buttons)

        self.confusion = QTableWidget()
        self.confusion.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.confusion.setToolTip("Rows: true class; columns: predicted class. Darker = more "
                                  "images; the diagonal is what the model gets right. Click a "
                                  "cell (or Enter / Space on it) to see its images.")
        self.confusion.cellClicked.connect(self._cell_clicked)
        # keyboard: one Tab stop (arrows move between cells), Enter or Space opens a cell
        self.confusion.setTabKeyNavigation(False)
        self.confusion.cellActivated.connect(self._cell_clicked)
        self.confusion.installEventFilter(self)
        self.per_class = QTableWidget(0, len(CLASS_COLUMNS))
        self.per_class.setHorizontalHeaderLabels(CLASS_COLUMNS)
        self.per_class.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.per_class.verticalHeader().setVisible(False)
        self.per_class.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.per_class.setToolTip("Precision: of the images called this class, how many are. "
                                  "Recall: of the images of this class, how many were found.")
        self.trust = TrustPanel()

        self.wrong = ImageGrid("No misclassified test images.")
        self.wrong.setToolTip("Test images the model got wrong")
        self.cell = ImageGrid("Click a cell of the confusion matrix to see its images.")
        self.hardest = ImageGrid("The training images the model finds hardest show here "
                                 "after training.", hardest_caption)
        self.moves = QListWidget()
        self.moves.setToolTip("Files moved to another class folder here, latest first (Undo "
                              "takes back the first)")
        self.undo = QPushButton("&Undo last move")
        self.undo.setToolTip("Move the last moved file back where it was (Ctrl+Z)")
        self.undo.setEnabled(False)
        self.undo.clicked.connect(self.undo_requested)
        QShortcut(QKeySequence.StandardKey.Undo, self,
                  lambda: self.undo.isEnabled() and self.undo_requested.emit())
        self.fixes_note = hint("Retrain after fixing labels: features are cached by content, "
                               "so nothing is computed again.")
        fixes = QWidget()
        fixes_layout = QVBoxLayout(fixes)
        fixes_layout.addWidget(self.fixes_note)
        fixes_layout.addWidget(self.moves, 1)
        fixes_layout.addWidget(self.undo, 0, Qt.AlignmentFlag.AlignLeft)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.wrong, "Misclassified test images")
        self.tabs.addTab(self.cell, "Confusion cell")
        self.tabs.addTab(self.hardest, "Hardest training images")
        self.tabs.addTab(fixes, "Moves")
        self.tabs.setMinimumHeight(210)  # the same height whichever tab is open; 720 px fit

        tables = self.tables = QHBoxLayout()
        self.confusion_box = QWidget()  # hidden for a tag model: the others take its room
        left = QVBoxLayout(self.confusion_box)
        left.setContentsMargins(0, 0, 0, 0)
        self.confusion_title = QLabel(CONFUSION_TITLE)
        self.confusion_title.setWordWrap(True)  # a long title must not widen its table
        left.addWidget(self.confusion_title)
        left.addWidget(self.confusion)
        middle = QVBoxLayout()
        self.per_title = QLabel("<b>Per class</b>")
        middle.addWidget(self.per_title)
        middle.addWidget(self.per_class)
        tables.addWidget(self.confusion_box, 3)
        tables.addLayout(middle, 2)
        tables.addWidget(self.trust, 3)
        self.confusion.setMinimumHeight(120)
        self.per_class.setMinimumHeight(120)
        layout = QVBoxLayout(self)
        layout.addWidget(heading("5  Evaluate"))
        self.note = hint(self.NO_MODEL)
        layout.addWidget(self.note)
        layout.addLayout(top)
        layout.addLayout(tables, 2)
        layout.addWidget(self.tabs, 3)
        self.labels: list[str] = []
        self.columns: list[str] = []  # the confusion table's columns (a tag model: the tags
        # given wrongly; its rows, self.labels: the true tags)

    @property
    def grids(self) -> tuple[ImageGrid, ...]:
        return (self.wrong, self.cell, self.hardest)

    def show_model(self, ev, source: str, note: str, exportable: bool) -> None:
        """The current model (``source``: which one, in words), its evaluation (None: it
        has none, ``note`` says why) and where its figures come from; Export works on any
        current model."""
        if ev is not None:
            self.show_evaluation(ev)
        else:
            self._clear()
        self.note.setText(f"Model: <b>{_html(source)}</b>. {_html(note)}" if source
                          else self.NO_MODEL)
        self.export.setEnabled(exportable)

    NO_MODEL = "Train a model first; its scores on the held-out test images show here."

    def show_tag_scores(self, scores, source: str, note: str) -> None:
        """A model of several tags a photo (``scores``: its SavedTagScores): mAP, micro- and
        macro-F1, exact match and each tag's precision, recall, F1, AP and threshold."""
        self._clear()
        self._captions(TAG_SCORES, TAG_COLUMNS, "<b>Per tag</b>")
        for (slot, _, _), (key, _, _) in zip(SCORES, TAG_SCORES):  # the same five places
            v = scores.count if key == "count" else scores.scores.get(key)
            self.scores[slot].setText(str(v) if key == "count" else percent(v))
        self.per_class.setRowCount(len(scores.per_tag))
        for row, (tag, pt) in enumerate(scores.per_tag.items()):
            threshold = pt.get("threshold")
            cells = (shown(tag), percent(pt.get("precision")), percent(pt.get("recall")),
                     percent(pt.get("f1")), percent(pt.get("ap")),
                     "—" if threshold is None else f"{threshold:.2f}", str(pt["support"]))
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == 5 and scores.threshold_rule:
                    item.setToolTip("How the thresholds were chosen: "
                                    + _html(scores.threshold_rule))
                self.per_class.setItem(row, col, item)
        self.per_class.resizeColumnsToContents()
        show_tag_errors(self, scores)
        add_threshold_sliders(self, scores)
        self.trust.show_tag_calibration()
        for i, stretch in enumerate((3, 4, 2)):  # the per-tag table and its sliders: room
            self.tables.setStretch(i, stretch)
        self.keep_thresholds.setVisible(False)
        self.reset_thresholds.setVisible(False)
        self.note_head = f"Model: <b>{_html(source)}</b>. {_html(note)}"
        self.note.setText(self.note_head + _html(tag_line(scores)))
        self.export.setEnabled(True)

    def _captions(self, scores, columns: list[str], title: str) -> None:
        for i, stretch in enumerate((3, 2, 3)):
            self.tables.setStretch(i, stretch)
        for (slot, _, _), (_, caption, tip) in zip(SCORES, scores):
            self.captions[slot].setText(caption)
            self.captions[slot].setToolTip(tip)
            self.scores[slot].setToolTip(tip)
        if self.per_class.columnCount() != len(columns):
            self.per_class.setColumnCount(len(columns))
        self.per_class.setHorizontalHeaderLabels(columns)
        self.per_title.setText(title)
        self.confusion_box.setVisible(True)

    def _clear(self) -> None:
        self._captions(SCORES, CLASS_COLUMNS, "<b>Per class</b>")
        for label in self.scores.values():
            label.setText("—")
        self.interval.setText("")
        self.few.setText("")
        self.labels, self.columns, self.sliders = [], [], {}
        self.keep_thresholds.setVisible(False)
        self.reset_thresholds.setVisible(False)
        self.confusion.setRowCount(0)
        self.confusion.setColumnCount(0)
        self.per_class.setRowCount(0)
        self.trust.show_calibration(None, None)
        for grid in self.grids:
            grid.set_items([])
        # no scores: not "no misclassified images", which reads as a perfect model
        self.wrong.empty.setText("No test scores for this model (see above).")
        for i, text in enumerate(("Misclassified test images", "Confusion cell",
                                  "Hardest training images")):
            self.tabs.setTabText(i, text)

    def show_evaluation(self, ev) -> None:
        self.export.setEnabled(True)
        self.note.setText("Scores on the test images, which training never saw.")
        self._captions(SCORES, CLASS_COLUMNS, "<b>Per class</b>")
        for key, label in self.scores.items():
            v = getattr(ev, key)
            label.setText(str(v) if key == "count" else percent(v))
        ci = getattr(ev, "accuracy_interval", None)
        self.interval.setText(f"95% interval: {ci[0]:.0%} – {ci[1]:.0%}" if ci else "")
        few = list(getattr(ev, "few_images", []) or [])
        self.few.setText(f"⚠ Fewer than 5 test images: {', '.join(few)} — too few to judge "
                         "these classes" if few else "")
        self.labels = self.columns = list(ev.labels)
        self.confusion_title.setText(CONFUSION_TITLE)
        n = len(ev.labels)
        self.confusion.setRowCount(n)
        self.confusion.setColumnCount(n)
        self.confusion.setHorizontalHeaderLabels(ev.labels)
        self.confusion.setVerticalHeaderLabels(ev.labels)
        peak = max([max(r) for r in ev.confusion] + [1])
        for i, row in enumerate(ev.confusion):
            for j, value in enumerate(row):
                item = QTableWidgetItem(str(value) if value else "")
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                item.setBackground(QBrush(heat_colour(value / peak, i == j)))
                item.setForeground(QBrush(QColor("white" if value / peak > 0.5 else "black")))
                item.setToolTip(f"true {ev.labels[i]}, predicted {ev.labels[j]}: {value} "
                                "(click to see them)")
                self.confusion.setItem(i, j, item)
        self.confusion.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents)
        self.per_class.setRowCount(n)
        for row, name in enumerate(ev.labels):
            pc = ev.per_class.get(name, {})
            support = str(pc.get("support", 0))
            cells = (name, percent(pc.get("precision")), percent(pc.get("recall")),
                     f"⚠ {support}" if pc.get("few_images") else support)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if pc.get("few_images"):
                    item.setToolTip(FEW_IMAGES_TIP)
                self.per_class.setItem(row, col, item)
        self.trust.show_calibration(getattr(ev, "calibration", None),
                                    getattr(ev, "reliability", None))
        for grid in self.grids:
            grid.set_classes(self.labels)
        self.wrong.empty.setText("No misclassified test images.")
        self.wrong.set_items(ev.misclassified)
        self.tabs.setTabText(0, f"Misclassified test images ({len(ev.misclassified)})")
        self.cell.set_items([])
        self.tabs.setTabText(1, "Confusion cell")

    def show_review(self, review) -> None:
        """The hardest training images of the model just reviewed."""
        self.hardest.set_items(review.hardest)
        self.tabs.setTabText(2, f"Hardest training images ({len(review.hardest)})")

    def show_cell(self, true: str, predicted: str, entries: list[dict]) -> None:
        self.cell.set_items(entries)
        what = ("right" if true == predicted else f"given {predicted} wrongly"
                if entries and entries[0].get("tags") else f"predicted {predicted}")
        self.tabs.setTabText(1, f"{true}, {what} ({len(entries)})")
        self.tabs.setCurrentWidget(self.cell)

    def show_moves(self, state) -> None:
        """``state``: the data folder's journal (app.core.intake.journal.JournalState)."""
        from app.core.intake.filing import FIXES

        self.moves.clear()
        fixes = [m for o in state.operations if o.kind in FIXES for m in o.moves]
        for m in reversed(fixes):  # the one Undo takes back first
            self.moves.addItem(f"{shown(m.source)}  →  {shown(m.target)}")
        others = sum(len(o.moves) for o in state.operations if o.kind not in FIXES)
        notes = ([f"{others} photo(s) filed on the Label page or by a sort: undo those "
                  "there"] if others else [])
        for entry in state.foreign[:5]:
            notes.append(f"not written by this app for this folder, never undone: "
                         f"{shown(entry.get('source'))}  →  {shown(entry.get('target'))}")
        if state.foreign_count > 5:
            notes.append(f"… {state.foreign_count - 5} more line(s) not written by this app "
                         "for this folder: never undone")
        for text in notes:
            item = QListWidgetItem(text)
            item.setForeground(QColor(120, 120, 120))
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            self.moves.addItem(item)
        self.undo.setEnabled(bool(fixes))
        self.tabs.setTabText(3, f"Moves ({len(fixes)})")

    def eventFilter(self, watched, event) -> bool:  # noqa: N802
        """Space on the confusion matrix opens the current cell, as Enter does."""
        if (watched is self.confusion and event.type() == QEvent.Type.KeyPress
                and event.key() == Qt.Key.Key_Space):
            self._cell_clicked(self.confusion.currentRow(), self.confusion.currentColumn())
            return True
        return super().eventFilter(watched, event)

    def _cell_clicked(self, row: int, column: int) -> None:
        if row < len(self.labels) and column < len(self.columns):
            self.cell_wanted.emit(self.labels[row], self.columns[column])


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
