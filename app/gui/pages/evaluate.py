"""Step 4: how good is the model on the test images it never saw."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.widgets import heading, hint, percent


class EvaluatePage(QWidget):
    export_requested = Signal()
    thumbnails_wanted = Signal(list)  # misclassified entries

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.scores: dict[str, QLabel] = {}
        grid = QGridLayout()
        for col, (key, title, tip) in enumerate((
            ("main_accuracy", "Accuracy (main)", "Share of test images the model gets right"),
            ("balanced_accuracy", "Balanced accuracy",
             "Mean recall over classes: a weak small class cannot hide here"),
            ("aux1_accuracy", "Aux 1 accuracy", "The auxiliary output on an earlier layer"),
            ("aux2_accuracy", "Aux 2 accuracy", "The auxiliary output on a later layer"),
            ("count", "Test images", "Images held out from training and validation"),
        )):
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
        self.export = QPushButton("E&xport model…")
        self.export.setToolTip("Write the model folder (model.keras, labels, metadata)")
        self.export.setEnabled(False)
        self.export.clicked.connect(self.export_requested)
        top = QHBoxLayout()
        top.addLayout(grid, 1)
        top.addWidget(self.export, 0, Qt.AlignmentFlag.AlignTop)

        self.confusion = QTableWidget()
        self.confusion.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.confusion.setToolTip("Rows: true class; columns: predicted class. Darker = more "
                                  "images; the diagonal is what the model gets right.")
        self.per_class = QTableWidget(0, 4)
        self.per_class.setHorizontalHeaderLabels(["Class", "Precision", "Recall", "Images"])
        self.per_class.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.per_class.verticalHeader().setVisible(False)
        self.per_class.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.per_class.setToolTip("Precision: of the images called this class, how many are. "
                                  "Recall: of the images of this class, how many were found.")
        self.wrong = QListWidget()
        self.wrong.setViewMode(QListWidget.ViewMode.IconMode)
        self.wrong.setIconSize(QSize(96, 96))
        self.wrong.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.wrong.setMinimumHeight(140)
        self.wrong.setToolTip("Test images the model got wrong; click one to look at it")
        self.wrong.itemActivated.connect(self._open)
        self.wrong.itemClicked.connect(self._open)

        tables = QHBoxLayout()
        left = QVBoxLayout()
        left.addWidget(QLabel("<b>Confusion matrix</b> (rows: true, columns: predicted)"))
        left.addWidget(self.confusion)
        right = QVBoxLayout()
        right.addWidget(QLabel("<b>Per class</b>"))
        right.addWidget(self.per_class)
        tables.addLayout(left, 3)
        tables.addLayout(right, 2)
        self.wrong_title = QLabel("<b>Misclassified test images</b>")
        layout = QVBoxLayout(self)
        layout.addWidget(heading("4  Evaluate"))
        self.note = hint("Train a model first; its scores on the held-out test images show "
                         "here.")
        layout.addWidget(self.note)
        layout.addLayout(top)
        layout.addLayout(tables, 3)
        layout.addWidget(self.wrong_title)
        layout.addWidget(self.wrong, 2)

    def show_evaluation(self, ev) -> None:
        self.export.setEnabled(True)
        self.note.setText("Scores on the test images, which training never saw.")
        for key, label in self.scores.items():
            v = getattr(ev, key)
            label.setText(str(v) if key == "count" else percent(v))
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
                item.setBackground(QBrush(_heat(value / peak, i == j)))
                item.setForeground(QBrush(QColor("white" if value / peak > 0.5 else "black")))
                item.setToolTip(f"true {ev.labels[i]}, predicted {ev.labels[j]}: {value}")
                self.confusion.setItem(i, j, item)
        self.confusion.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents)
        self.per_class.setRowCount(n)
        for row, name in enumerate(ev.labels):
            pc = ev.per_class.get(name, {})
            for col, text in enumerate((name, percent(pc.get("precision")),
                                        percent(pc.get("recall")), str(pc.get("support", 0)))):
                self.per_class.setItem(row, col, QTableWidgetItem(text))
        self.wrong.clear()
        self.wrong_title.setText(f"<b>Misclassified test images</b> ({len(ev.misclassified)}"
                                 "; click one to see it)")
        self.thumbnails_wanted.emit(list(ev.misclassified[:200]))

    def show_thumbnails(self, items) -> None:
        self.wrong.clear()
        for m, image in items:
            icon = QIcon(QPixmap.fromImage(image)) if image is not None else QIcon()
            item = QListWidgetItem(icon, f"{m['predicted']}\n(is {m['true']})")
            item.setData(Qt.ItemDataRole.UserRole, m)
            item.setToolTip(f"{m['path']}\ntrue: {m['true']}\npredicted: {m['predicted']} "
                            f"({m['confidence']:.0%})")
            self.wrong.addItem(item)

    def _open(self, item: QListWidgetItem) -> None:
        m = item.data(Qt.ItemDataRole.UserRole)
        ImageDialog(m, self).open()


class ImageDialog(QDialog):
    """One misclassified image, large, with its true and predicted label."""

    def __init__(self, m: dict, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(m["path"].rsplit("/", 1)[-1])
        picture = QLabel()
        pix = QPixmap(m["path"])
        if not pix.isNull():
            pix = pix.scaled(640, 640, Qt.AspectRatioMode.KeepAspectRatio,
                             Qt.TransformationMode.SmoothTransformation)
        picture.setPixmap(pix)
        picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        text = QLabel(f"True label: <b>{m['true']}</b><br>Predicted: <b>{m['predicted']}</b> "
                      f"({m['confidence']:.0%} sure)<br><small>{m['path']}</small>")
        text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        layout = QVBoxLayout(self)
        layout.addWidget(picture)
        layout.addWidget(text)
        layout.addWidget(close, 0, Qt.AlignmentFlag.AlignRight)
        self.text = text


def _heat(fraction: float, diagonal: bool) -> QColor:
    """White to blue on the diagonal (right), white to red off it (confusions)."""
    if fraction <= 0:
        return QColor(0, 0, 0, 0)
    base = QColor(31, 119, 180) if diagonal else QColor(214, 39, 40)
    t = 0.15 + 0.85 * fraction
    return QColor(int(255 + (base.red() - 255) * t), int(255 + (base.green() - 255) * t),
                  int(255 + (base.blue() - 255) * t))
