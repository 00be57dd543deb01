"""The Evaluate page's controller: the review job after training, the unknown threshold,
confusion cells, thumbnails a page at a time, and fixing labels (move with undo, exclude,
open). It starts jobs and applies their results on the GUI thread; the computing is in
app.core.

It is handed what it works with (the session, the Evaluate page, the job runner, the banner,
the status bar) and says what the window must do by its signals: remember the threshold,
read the data folder again, re-flag the Predict list."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices

from app.core.intake.journal import LabelError
from app.gui.pages.image_grid import ImageGrid

if TYPE_CHECKING:
    from collections.abc import Callable

    from PySide6.QtWidgets import QStatusBar

    from app.gui.errors import ErrorBanner
    from app.gui.pages.evaluate import EvaluatePage
    from app.gui.session import Session
    from app.gui.worker import Jobs


class EvaluateControl(QObject):
    threshold_resting = Signal()  # the slider rests at a new threshold: remember it
    folder_changed = Signal(str)  # files moved in this data folder: read it again
    model_folder_changed = Signal(str, str)  # its tags' thresholds kept: open it again (source)

    def __init__(self, parent: QObject, session: Session, page: EvaluatePage, jobs: Jobs,
                 banner: ErrorBanner, status: QStatusBar, refused_while_busy: Callable[[str], bool],
                 kept_copies: Callable[[int], list[str]] = lambda _generation: []) -> None:
        super().__init__(parent)
        self.kept_copies = kept_copies  # other folders holding the model of a generation
        self.session, self.page, self.jobs = session, page, jobs
        self.banner, self.status, self._busy = banner, status, refused_while_busy
        self.review_worker = None
        page = self.page
        for grid in page.grids:
            grid.thumbnails_wanted.connect(self.load_thumbnails)
            grid.move_requested.connect(self.move)
            grid.exclude_requested.connect(self.exclude)
            grid.open_requested.connect(self.open)
        page.cell_wanted.connect(self.show_cell)
        page.undo_requested.connect(self.undo)
        page.trust.threshold_moved.connect(self.set_threshold)
        page.tag_threshold_moved.connect(self.try_tag_threshold)
        page.keep_thresholds_requested.connect(self.keep_tag_thresholds)
        page.reset_thresholds_requested.connect(self.reset_tag_thresholds)
        session.slot.changed.connect(lambda: setattr(self, "trying", None))
        self.trying: dict[str, float] | None = None  # the tags' thresholds being tried
        session.slot.reviewed.connect(self.show_review)
        self._remember = QTimer(self, singleShot=True, interval=400)  # once the slider rests
        self._remember.timeout.connect(self.threshold_resting)
        self.session.folder_changed.connect(lambda _change: self.page.show_moves(
            self.session.moves()))

    # --- after training -----------------------------------------------------------------
    def start_review(self):
        try:
            job = self.session.review_job()
        except RuntimeError:
            return None
        self.review_worker = self.jobs.start("reviewing the model", job,
                                             on_result=self.session.apply_review,
                                             slot="review")
        return self.review_worker

    def show_review(self) -> None:
        """The current model's review (the hardest images, the slider over its validation
        scores), or none yet: the slider waits, saying why."""
        from app.core.pipeline.review import ThresholdScale

        slot = self.session.slot
        review = slot.review
        if review is not None:
            self.page.show_review(review)
        scale = None
        if review is not None and review.default_threshold is not None:
            scale = ThresholdScale.for_scores(review.method, review.validation_scores,
                                              slot.threshold if slot.threshold is not None
                                              else review.default_threshold)
        current = slot.threshold if scale is not None else None
        why = ""
        if slot.empty:
            why = "Train a model or open a model folder: its “unknown” threshold is set here."
        elif slot.threshold is None:
            why = "No “unknown” answers: this model has no unknown test (its validation " \
                  "split was empty)."
        elif review is None and slot.model.reviewable:
            why = "Gathering the validation images' scores…"
        elif scale is None:
            why = ("This model folder keeps no validation scores, so the threshold cannot be "
                   "shown against them; it answers with the threshold it was saved with.")
        self.page.trust.set_threshold_range(scale, current, slot.method, why)
        self.page.trust.default = slot.fitted_threshold
        if scale is not None:  # what the threshold in use does: shown, never re-announced
            self.page.trust.show_effect(self.session.threshold_effect())

    def set_threshold(self, threshold: float) -> None:
        """The user moved the slider (or pressed Default)."""
        if self.session.slot.threshold == threshold:
            return
        self.page.trust.show_effect(self.session.set_unknown_threshold(threshold))
        self._remember.start()

    def flush_threshold(self) -> None:
        """Write a threshold the slider moved to now, not after the pause (closing)."""
        if self._remember.isActive():
            self._remember.stop()
            self.threshold_resting.emit()

    # --- a tag model's thresholds --------------------------------------------------------
    def try_tag_threshold(self, tag: str, value: float) -> None:
        """A tag's slider moved: the kept test answers measured at the thresholds tried."""
        from app.gui.pages.evaluate_tags import show_tag_numbers

        kept = self.session.slot.tag_scores
        if kept is None or kept.answers is None:
            return
        fitted = kept.thresholds[tag]  # back where it stood: the exact value kept, not 0.37
        value = fitted if round(fitted * 100) == round(value * 100) else float(value)
        self.trying = {**(self.trying or kept.thresholds), tag: value}
        show_tag_numbers(self.page, kept.at(self.trying), self.trying != kept.thresholds)

    def reset_tag_thresholds(self) -> None:
        slot = self.session.slot
        self.trying = None
        if slot.tag_scores is not None:
            self.page.show_tag_scores(slot.tag_scores, slot.source, slot.evaluation_note)

    def keep_tag_thresholds(self) -> None:
        """Write the thresholds tried into the current model's folder (and the copy kept
        for the next start, when it holds this model), then open it again."""
        from app.core.pipeline.review import THRESHOLDS_BY_HAND

        slot = self.session.slot
        kept, folder, thresholds = slot.tag_scores, slot.folder, self.trying
        if kept is None or not folder or not thresholds or self._busy("changing the model"):
            return
        doc = kept.at(thresholds).as_doc()
        folders = [folder, *self.kept_copies(slot.generation)]

        def job(progress, cancel) -> list[str]:
            from app.core.delivery.export import set_tag_thresholds

            return [f for f in folders
                    if not set_tag_thresholds(f, thresholds, THRESHOLDS_BY_HAND, doc)]

        def done(failed: list[str]) -> None:
            if folder in failed:
                self.banner.show_warning(f"{folder} is not a model folder this app wrote for "
                                         "these tags: its thresholds were not changed")
                return
            if failed:  # the model's own folder has them; the copy for the next start not
                self.banner.show_warning(f"The thresholds are kept in {folder}, but not in "
                                         f"{failed[0]}: the next start opens the old ones "
                                         "until the current model is saved again")
            self.status.showMessage("The tags' thresholds are kept in the model folder", 5000)
            self.model_folder_changed.emit(folder, slot.source)

        self.jobs.start("keeping the tags' thresholds", job, on_result=done)

    def show_cell(self, true: str, predicted: str) -> None:
        from app.core.pipeline.review import cell_images

        tags = self.session.slot.tag_scores
        if tags is not None:  # several tags a photo: the photos given ``predicted`` wrongly,
            if self.trying is not None:  # at the thresholds the table shows
                tags = tags.at(self.trying)
            self.page.show_cell(true, predicted, tags.error_photos(true, predicted))
            return
        review = self.session.slot.review
        if review is None:
            self.status.showMessage("The images behind each cell are still being "
                                             "gathered…", 5000)
            return
        self.page.show_cell(true, predicted, cell_images(review.test, true, predicted))

    def load_thumbnails(self, grid: ImageGrid, ticket: int, start: int, entries: list) -> None:
        self.jobs.start("loading thumbnails", self.session.thumbnails_job(entries),
                            on_result=lambda out: grid.show_thumbnails(ticket, start, out))

    # --- fixing labels ------------------------------------------------------------------
    def _refused(self) -> bool:
        return self._busy("moving files in the data folder")

    def move(self, entry: dict, new_class: str) -> None:
        if self._refused():
            return
        try:
            move = self.session.move_image(entry["path"], new_class)
        except LabelError as exc:
            self.banner.show_warning(str(exc))
            return
        root = self.session.data_dir
        self._relabel(str(root / move.source), str(root / move.target),
                      f"moved to {new_class}")
        self.status.showMessage(f"Moved {move.source} to {move.target}", 10000)
        self.rescan()

    def undo(self) -> None:
        if self._refused():
            return
        try:
            move = self.session.undo_move()
        except LabelError as exc:
            self.banner.show_warning(str(exc))
            return
        root = self.session.data_dir
        self._relabel(str(root / move.target), str(root / move.source), "")
        self.status.showMessage(f"Moved {move.target} back to {move.source}", 10000)
        self.rescan()

    def _relabel(self, old: str, new: str, note: str) -> None:
        for grid in self.page.grids:
            grid.relabel(old, new, note)
        review = self.session.slot.review
        for e in review.test if review is not None else ():
            if e["path"] == old:  # the confusion cells follow the file
                e["path"] = new

    def rescan(self) -> None:
        """List the moves, and read the data folder again (class counts, splits) without
        leaving the page."""
        self.page.show_moves(self.session.moves())
        root = self.session.data_dir
        if root is not None:
            self.folder_changed.emit(str(root))

    def exclude(self, entry: dict) -> None:
        try:
            self.session.exclude(entry)
        except LabelError as exc:
            self.banner.show_warning(str(exc))
            return
        for grid in self.page.grids:
            grid.relabel(entry["path"], entry["path"], "excluded from training")
        n = len(self.session.excluded())
        self.status.showMessage(
            f"{Path(entry['path']).name} is left out of the next training runs "
            f"({n} image{'s' if n != 1 else ''} excluded)", 10000)

    def open(self, entry: dict) -> None:
        """Open the image in the desktop's viewer; say so when there is none (it did nothing,
        silently, on a machine without an image viewer)."""
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(entry["path"])):
            self.banner.show_warning(f"No program to open {entry['path']} with was found "
                                         "on this computer; double-click the thumbnail to see "
                                         "it large here.")
