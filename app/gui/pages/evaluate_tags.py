"""The Evaluate page for a model of several tags a photo: what is confused with what (for each
true tag, the tags given wrongly beside it; a click shows those photos) and the photos behind
every error (the tags given, the true ones), from the scores kept in the model folder. A view:
it shows values (app.core.pipeline.review.SavedTagScores), computes nothing."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QHeaderView, QTableWidgetItem

from app.core.base.errors import shown
from app.core.trust.tags import NO_TAG

TITLE = ("<b>Given wrongly</b> (rows: a photo's true tag, “(none)”: no tag; columns: a tag "
         "it was given that it does not have)")


def show_tag_errors(page, scores) -> None:
    """Fill ``page`` (an EvaluatePage) from ``scores``: the confusion table of the tags
    given wrongly, and the photos with a wrong tag set."""
    from app.gui.pages.evaluate import _heat

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
            item.setBackground(QBrush(_heat(value / peak, False)))
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
