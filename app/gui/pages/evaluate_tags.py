"""The Evaluate page for a model of several tags a photo: what is confused with what (for each
true tag, the tags given wrongly beside it; a click shows those photos) and the photos behind
every error (the tags given, the true ones), from the scores kept in the model folder. A view:
it shows values (app.core.pipeline.review.SavedTagScores), computes nothing."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QHBoxLayout, QHeaderView, QLabel, QSlider, QTableWidgetItem, QWidget

from app.core.base.errors import shown
from app.core.trust.tags import NO_TAG
from app.gui.widgets import heat_colour

TITLE = ("<b>Given wrongly</b> (rows: a photo's true tag, “(none)”: no tag; columns: a tag "
         "it was given that it does not have)")


def show_tag_errors(page, scores) -> None:
    """Fill ``page`` (an EvaluatePage) from ``scores``: the confusion table of the tags
    given wrongly, and the photos with a wrong tag set."""
    order = list(scores.per_tag)
    rows = [t for t in [*order, NO_TAG] if scores.confused.get(t)]
    cols = [t for t in order if any(t in r for r in scores.confused.values())]
    page.labels, page.columns = rows, cols
    page.confusion_title.setText(TITLE)
    table = page.confusion
    table.setRowCount(len(rows))
    table.setColumnCount(len(cols))
    table.setHorizontalHeaderLabels([shown(c) for c in cols])
    table.setVerticalHeaderLabels([shown(r) for r in rows])
    peak = max([v for r in scores.confused.values() for v in r.values()] + [1])
    for i, true in enumerate(rows):
        for j, given in enumerate(cols):
            value = scores.confused[true].get(given, 0)
            item = QTableWidgetItem(str(value) if value else "")
            item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            item.setBackground(QBrush(heat_colour(value / peak, False)))
            item.setForeground(QBrush(QColor("white" if value / peak > 0.5 else "black")))
            item.setToolTip(f"photos with {shown(true)} given {shown(given)} wrongly: {value} "
                            "(click to see them)")
            table.setItem(i, j, item)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    page.confusion_box.setVisible(True)
    errors = scores.error_photos()
    page.wrong.empty.setText("No test photo was given a wrong tag set." if scores.count else
                             "No test photos were scored.")
    page.wrong.set_items(errors)
    page.tabs.setTabText(0, f"Test photos with a wrong tag set ({len(errors)})")
    page.cell.set_items([])
    page.tabs.setTabText(1, "Confusion cell")


THRESHOLD_COLUMN = 5


def tag_line(scores) -> str:
    """The figures beside the five: Hamming loss, the share given no tag, the share read
    unknown (plain text)."""
    extra = scores.scores
    if extra.get("hamming_loss") is None:
        return ""
    return (f" Hamming loss {extra['hamming_loss']:.3f}"
            + (f"; no tag for {extra['none_rate']:.0%} of the photos"
               if extra.get("none_rate") is not None else "")
            + (f"; {extra['unknown_rate']:.0%} read unknown"
               if extra.get("unknown_rate") is not None else "") + ".")


def add_threshold_sliders(page, scores) -> None:
    """A slider in each tag's Threshold cell (0.01 to 0.99) when the folder keeps the test
    photos' answers: moving it says so (``tag_threshold_moved``); the page's numbers follow
    from what the controller measures (:func:`show_tag_numbers`)."""
    page.sliders = {}
    if scores.answers is None:
        page.per_class.horizontalHeaderItem(THRESHOLD_COLUMN).setToolTip(
            "This model folder keeps no test answers (written by an earlier version), so "
            "its thresholds cannot be moved here; train it again to move them")
        return
    for row, (tag, pt) in enumerate(scores.per_tag.items()):
        cell = QWidget()
        layout = QHBoxLayout(cell)
        layout.setContentsMargins(2, 0, 2, 0)
        slider = QSlider(Qt.Orientation.Horizontal)
        slider.setRange(1, 99)
        slider.setMinimumWidth(80)
        slider.setValue(round(float(pt["threshold"]) * 100))
        slider.setToolTip(f"{shown(tag)} is given at or above this probability: move it to "
                          "see the test scores at another threshold (Keep writes it into the "
                          "model folder)" + (f". Chosen: {shown(scores.threshold_rule)}"
                                             if scores.threshold_rule else ""))
        value = QLabel(f"{slider.value() / 100:.2f}")
        value.setFixedWidth(value.fontMetrics().horizontalAdvance("0.000"))
        slider.valueChanged.connect(lambda v, t=tag, label=value: (
            label.setText(f"{v / 100:.2f}"), page.tag_threshold_moved.emit(t, v / 100)))
        layout.addWidget(slider, 1)
        layout.addWidget(value)
        page.per_class.setItem(row, THRESHOLD_COLUMN, QTableWidgetItem(""))
        page.per_class.setCellWidget(row, THRESHOLD_COLUMN, cell)
        page.sliders[tag] = slider
    page.per_class.setColumnWidth(THRESHOLD_COLUMN, 150)


def show_tag_numbers(page, scores, moved: bool) -> None:
    """The scores at the thresholds the sliders stand at, in place (the sliders stay):
    the figures, each tag's precision, recall, F1 and photos given, the confusions and the
    photos with a wrong set; ``moved``: the thresholds differ from the folder's."""
    from app.gui.widgets import percent

    for slot, key in zip(("main_accuracy", "balanced_accuracy", "aux1_accuracy",
                          "aux2_accuracy"), ("map", "micro_f1", "macro_f1", "exact_match")):
        page.scores[slot].setText(percent(scores.scores.get(key)))
    for row, pt in enumerate(scores.per_tag.values()):
        for col, key in ((1, "precision"), (2, "recall"), (3, "f1")):
            page.per_class.item(row, col).setText(percent(pt.get(key)))
    show_tag_errors(page, scores)
    page.note.setText(page.note_head + tag_line(scores).replace(
        "&", "&amp;").replace("<", "&lt;") + (" <b>At the thresholds the sliders stand at: "
                                               "not kept yet.</b>" if moved else ""))
    page.keep_thresholds.setVisible(moved)
    page.reset_thresholds.setVisible(moved)
