"""Step 1: choose a folder; see its classes, thumbnails, validation report and split sizes."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.intake.dataset import Dataset, DatasetError
from app.gui.session import FolderChange
from app.gui.widgets import folder_urls, heading, hint


class DataPage(QWidget):
    choose_requested = Signal()
    new_requested = Signal()
    folder_dropped = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.choose = QPushButton("&Choose folder…")
        self.choose.setToolTip("A folder with one sub-folder of photos per class, or photos "
                               "with a labels.csv of their tags (several tags a photo); you "
                               "can also drop a folder onto the window")
        self.choose.clicked.connect(self.choose_requested)
        self.new = QPushButton("&New data folder…")
        self.new.setToolTip("Start from unsorted photos: an empty folder, classes created as "
                            "you label on the Label page")
        self.new.clicked.connect(self.new_requested)
        self.folder = QLabel("No folder yet — choose one, or drop a folder here.")
        self.folder.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.busy = QProgressBar()
        self.busy.setMinimumWidth(self.fontMetrics().horizontalAdvance("000,000 / 000,000 "
                                                                       "files read") + 24)
        self.busy.setVisible(False)
        top = QHBoxLayout()
        top.addWidget(self.choose)
        top.addWidget(self.new)
        top.addWidget(self.folder, 1)
        top.addWidget(self.busy)

        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Class", "Images", "Examples"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.splits = QLabel("")
        self.report = QLabel("")
        self.report.setWordWrap(True)
        self.report.setTextFormat(Qt.TextFormat.RichText)
        self.report.setAlignment(Qt.AlignmentFlag.AlignTop)

        layout = QVBoxLayout(self)
        layout.addWidget(heading("1  Data"))
        layout.addWidget(hint("Point at a folder that holds one sub-folder of photos per class, "
                              "or photos and a labels.csv at its top that lists each photo's "
                              "tags (file,tags; tags joined by ';'). Images are checked by "
                              "content; broken files are skipped, never fatal."))
        layout.addLayout(top)
        layout.addWidget(self.table, 3)
        layout.addWidget(self.splits)
        layout.addWidget(QLabel("<b>Checks</b>"))
        layout.addWidget(self.report, 1)

    def set_busy(self, folder: str) -> None:
        self.folder.setText(f"Reading {folder} …")
        self.busy.setTextVisible(False)
        self.busy.setRange(0, 0)
        self.busy.setVisible(True)
        self.choose.setEnabled(False)
        self.new.setEnabled(False)

    def show_reading(self, done: int, total: int) -> None:
        """A new folder's files being read: how many of how many."""
        self.busy.setRange(0, max(total, 1))
        self.busy.setValue(done)
        self.busy.setFormat(f"{done:,} / {total:,} files read")
        self.busy.setTextVisible(True)

    def set_idle(self) -> None:
        self.busy.setVisible(False)
        self.choose.setEnabled(True)
        self.new.setEnabled(True)

    def show_scan(self, result: FolderChange) -> None:
        ds = result.dataset
        summary = result.summary
        self.folder.setText(str(ds.root))
        counts = summary.class_counts
        names = result.names
        tagged = result.tagged is not None
        self.table.setHorizontalHeaderLabels(["Tag" if tagged else "Class",
                                              "Photos" if tagged else "Images", "Examples"])
        self.table.setRowCount(len(names))
        for row, c in enumerate(names):
            self.table.setItem(row, 0, QTableWidgetItem(c))
            n = QTableWidgetItem(str(counts[c]))
            n.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(row, 1, n)
            strip = QLabel()
            image = result.strips.get(c)
            if image is not None:
                strip.setPixmap(QPixmap.fromImage(image))
            self.table.setCellWidget(row, 2, strip)
            self.table.setRowHeight(row, 64)
        s = summary.split_counts
        self.splits.setText(f"<b>Split</b>: {len(ds.images)} images — {s['train']} to train, "
                            f"{s['validation']} to validate, {s['test']} to test")
        self.report.setText(report_html(ds) if not tagged else tags_report_html(result.tagged))

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if folder_urls(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        folders = folder_urls(event.mimeData())
        if folders:
            event.acceptProposedAction()
            self.folder_dropped.emit(folders[0])


def report_html(ds: Dataset) -> str:
    """The validation report in plain words; an all-clear line when there is nothing to say."""
    if not ds.findings:
        return "✔ No problems found: every class has enough readable images."
    lines = [_finding_html(f) for f in ds.findings]
    if not ds.errors:
        try:
            ds.for_training()
            lines.append("You can go on to <b>Features</b>.")
        except DatasetError:
            lines.append("Its features can be cached, but training needs two classes with 2 "
                         "or more images each: add a class folder, or label photos on the "
                         "<b>Label</b> page.")
    return "<br>".join(lines)


def tags_report_html(tagged) -> str:
    """A tagged folder's checks: that it is read as several tags a photo, from which file,
    then what the tags file's and the photos' checks found."""
    lines = [f"<b>Several tags a photo</b>, read from {_escape(tagged.tags_file.name)}: each "
             "photo may carry any of the tags, or none (\u201cnone of these\u201d)."]
    lines += [_finding_html(f) for f in tagged.findings]
    if not tagged.errors:
        lines.append("You can go on to <b>Features</b>.")
    return "<br>".join(lines)


def _finding_html(f) -> str:
    """One finding: its level, its message and the first few file names (escaped)."""
    mark = {"error": "✖ Must fix", "warning": "⚠ Note"}.get(f.level, "Info")
    extra = ""
    if f.paths:
        shown = ", ".join(p.rsplit("/", 1)[-1] for p in f.paths[:4])
        more = f" and {len(f.paths) - 4} more" if len(f.paths) > 4 else ""
        extra = f" <i>({_escape(shown)}{more})</i>"
    return f"<b>{mark}:</b> {_escape(f.message)}{extra}"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
