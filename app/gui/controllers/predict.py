"""The Predict page's controller: photos classified by the current model (off the GUI thread,
answers of a model replaced meanwhile dropped), re-flagged when the "unknown" threshold moves,
and sorted into a folder by their answers as one undoable operation (a preview first; progress,
Cancel and the result on the page)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QFileDialog, QMessageBox, QStatusBar, QWidget

from app.gui.operations import FileWork
from app.gui.widgets import dialog_folder

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.gui.activity import ActivityLabel
    from app.gui.errors import ErrorBanner
    from app.gui.pages.predict import PredictPage
    from app.gui.session import Session
    from app.gui.worker import Jobs, Worker

MAX_TOP = 20  # answers kept per image: the Predict page's "top k" shows any k up to this


class PredictControl(QObject):
    def __init__(self, session: Session, jobs: Jobs, page: PredictPage, banner: ErrorBanner,
                 status: QStatusBar, activity: ActivityLabel,
                 show_page: Callable[[str], None], reload_folder: Callable[[str], None],
                 dialog_parent: QWidget, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session, self.jobs, self.page, self.banner = session, jobs, page, banner
        self.status, self.activity, self.show_page = status, activity, show_page
        self.reload_folder, self.dialog_parent = reload_folder, dialog_parent
        self.sorted_into: str | None = None
        self.work = page.work = FileWork(jobs, page.ops, banner.show_warning, self)
        page.predict_requested.connect(self.predict_paths)
        page.sort_requested.connect(self.choose_sort_folder)
        page.ops.undo_requested.connect(self.undo_sort)
        page.saved.connect(lambda path: status.showMessage(f"Predictions saved to {path}",
                                                           10000))
        session.slot.threshold_changed.connect(self._reflag)
        session.folder_changed.connect(lambda change: setattr(page, "data_dir",
                                                              str(change.root)))

    def predict_paths(self, paths: list[str]) -> Worker | None:
        self.show_page("Predict")
        try:
            job = self.session.predict_job(paths, MAX_TOP)  # the page shows its top k
        except RuntimeError as exc:
            self.banner.show_warning(str(exc))
            return None
        self.page.set_running(True)
        worker = self.jobs.start("prediction", job, on_result=self._predicted,
                                 on_progress=self.page.show_progress,
                                 on_done=lambda: self.page.set_running(False))
        self.activity.track(worker, "Predicting…")
        return worker

    def _predicted(self, outcome) -> None:
        if self.session.apply_predictions(outcome):
            self.page.add_results(outcome.results)
        else:
            self.status.showMessage("The model changed while those images were being "
                                    "classified: add them again for the new model's answers.",
                                    10000)

    def _reflag(self, _threshold=None) -> None:
        if self.session.slot.flag(self.page.results):
            self.page.refresh()

    # --- sorting a folder by the answers ------------------------------------------------
    def choose_sort_folder(self) -> None:
        """A folder to sort into: an existing one, or a new one made with the dialog's New
        Folder button. (A save dialog took a new name but no existing folder: a folder's path
        typed and Enter opened it, and an open folder cannot be saved as.)"""
        photos = [r.prediction.path for r in self.page.results if r.prediction.path]
        near = str(Path(photos[0]).parent.parent) if photos else ""
        data = self.session.data_dir
        start = dialog_folder(self.page.sort_dir, near, str(data.parent) if data else "",
                              self.page.save_dir)
        path = QFileDialog.getExistingDirectory(
            self.dialog_parent, "Sort the photos into this folder (New Folder makes one)",
            start)
        if not path:
            return
        self.sort_predictions(path)

    def sort_predictions(self, out: str) -> Worker | None:
        """Preview (off the GUI thread: which photos are filed in ``out`` already, by
        content), ask, then copy the listed photos into ``out``/<class>/ and
        ``out``/_unknown/ by their answers as one undoable operation."""
        from app.core.intake.sorting import filed_in, sort_plan, tag_sort_plan

        predictions = [r.prediction for r in self.page.results]
        by_tags = self.page.multi_label  # the model's task, as the page shows it: a photo is
        # copied into every tag folder it gets
        if not any(p.top and not p.error for p in predictions):
            self.banner.show_warning("None of the photos listed has an answer to sort by.")
            return None
        cache_dir = self.session.cache_dir

        def plan_job(progress, cancel):
            from app.core.base.paths import user_cache_dir
            from app.core.storage.store import FeatureStore

            with FeatureStore(cache_dir or user_cache_dir()) as store:
                filed = filed_in(out, store, progress, cancel, per_folder=by_tags)
            return (tag_sort_plan if by_tags else sort_plan)(predictions, out, filed)

        return self.work.run("the sort's preview", f"Looking at {out}…", plan_job,
                             lambda plan: self._confirm_sort(out, plan))

    def _confirm_sort(self, out: str, plan) -> None:
        from app.core.intake.sorting import sort_into

        if not plan.to_file:
            self.page.ops.finish(f"Nothing to copy into {out}: " + (
                f"the {len(plan.already)} photo(s) are filed there already"
                if plan.already else "no photo has a tag" if plan.untagged
                else "no photo has an answer"))
            return
        if not self.confirm_sort(plan.preview(out)):
            self.page.ops.finish("Sort cancelled: nothing was copied.")
            return
        self.page.sort_dir = str(Path(out).parent)
        self.work.run("the sort", f"Copying {plan.to_file} photo(s) into {out}…",
                      lambda progress, cancel: sort_into(out, plan, progress=progress,
                                                         cancel=cancel),
                      lambda filing: self._sorted(out, filing, plan))

    def confirm_sort(self, text: str) -> bool:
        """Ask before sorting (tests replace this method)."""
        return QMessageBox.question(self.dialog_parent, "Sort into folder", text) == \
            QMessageBox.StandardButton.Yes

    def _sorted(self, out: str, filing, plan=None) -> None:
        for _path, why in filing.refused[:3]:
            self.banner.show_warning(why)
        self.sorted_into = out
        untagged = len(plan.untagged) if plan is not None else 0
        self.page.ops.finish(f"{filing.summary()} in {out}" + (
            f"; {untagged} photo(s) with none of the tags not sorted." if untagged else "."))
        self._show_sort_operations()
        self._reread_if_data(out)

    def _reread_if_data(self, out: str) -> None:
        data = self.session.data_dir
        if data is not None and Path(out).resolve() == Path(data).resolve():
            self.reload_folder(out)

    def _show_sort_operations(self) -> None:
        from app.core.intake.filing import LabelError, operations

        out = self.sorted_into
        try:
            ops = [o for o in operations(out) if o.kind == "sort"] if out else []
        except LabelError as exc:
            self.banner.show_warning(str(exc))
            ops = []
        self.page.ops.set_operations(ops)

    def undo_sort(self, operation: str = "") -> Worker | None:
        """Take back one sort into the folder last sorted into (the latest, or the one
        picked): exactly the copies it made, only while unchanged."""
        from app.core.intake.filing import undo

        out = self.sorted_into
        if not out:
            return None

        def done(result) -> None:
            self.page.ops.finish(f"{result.summary()}.")
            self._show_sort_operations()
            self._reread_if_data(out)

        return self.work.run(
            "undoing the sort", f"Undoing the sort into {out}…",
            lambda progress, cancel: undo(out, operation or None, kind="sort",
                                          progress=progress, cancel=cancel), done)
