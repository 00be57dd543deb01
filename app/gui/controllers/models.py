"""The current model's comings and goings: a model folder opened, the last model reopened at
launch, Export, and what every page shows when the current model changes. Handed its
collaborators, never the window."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QFileDialog, QMessageBox, QStatusBar, QWidget

from app.core.base.paths import last_model_dir
from app.core.delivery.export import clean_leftovers, is_model_folder
from app.gui.activity import say_while
from app.gui.widgets import dialog_folder

if TYPE_CHECKING:
    from app.gui.activity import ActivityLabel
    from app.gui.controllers.evaluate import EvaluateControl
    from app.gui.errors import ErrorBanner
    from app.gui.last_model import LastModel
    from app.gui.pages.evaluate import EvaluatePage
    from app.gui.pages.predict import PredictPage
    from app.gui.pages.train import TrainPage
    from app.gui.preferences import Preferences
    from app.gui.session import Session
    from app.gui.worker import Jobs, Worker


class ModelsControl(QObject):
    def __init__(self, session: Session, jobs: Jobs, prefs: Preferences, banner: ErrorBanner,
                 status: QStatusBar, activity: ActivityLabel, last_model: LastModel,
                 predict: PredictPage, train: TrainPage, evaluate: EvaluatePage,
                 review: EvaluateControl, show_page: Callable[[str], None],
                 closing_underway: Callable[[], bool], dialog_parent: QWidget,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session, self.jobs, self.prefs = session, jobs, prefs
        self.banner, self.status, self.activity = banner, status, activity
        self.last_model, self.predict, self.train, self.evaluate = (last_model, predict,
                                                                    train, evaluate)
        self.review, self.show_page = review, show_page
        self.closing_underway, self.dialog_parent = closing_underway, dialog_parent
        train.export_requested.connect(self.choose_export)
        evaluate.export_requested.connect(self.choose_export)
        predict.open_model_requested.connect(self.choose_model)
        session.slot.changed.connect(self.model_changed)

    def model_changed(self) -> None:
        """Another model is the current one: every page shows it."""
        slot = self.session.slot
        self.predict.set_model(slot.source, slot.model.multi_label)
        if not slot.model.reviewable:  # its curves, where the folder keeps them
            self.train.show_model_history(slot.history, slot.source)
        if slot.tag_scores is not None:  # several tags a photo: the folder's per-tag scores
            self.evaluate.show_tag_scores(slot.tag_scores, slot.source, slot.evaluation_note)
        else:
            self.evaluate.show_model(slot.evaluation, slot.source, slot.evaluation_note,
                                     not slot.empty)
        self.review.show_review()  # its review, or why the slider cannot move yet
        if slot.review is None and slot.model.reviewable and slot.evaluation is not None \
                and not self.closing_underway():
            self.review.start_review()

    # --- opening ------------------------------------------------------------------------
    def reopen_last(self) -> None:
        """The last trained model, kept at quit, if any."""
        model = last_model_dir()
        clean_leftovers(model.parent)  # what a killed save of it left, never anything else
        if is_model_folder(model):
            self.open_model(str(model), show=False,
                            source=f"the last model trained, reopened from {model}")

    def choose_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.dialog_parent, "Model folder",
                                                  dialog_folder(self.prefs.last_model_folder))
        if folder:
            self.open_model(folder)

    def open_model(self, folder: str, show: bool = True, source: str | None = None) -> Worker:
        if show:
            self.show_page("Predict")
        generation = self.session.slot.generation

        def opened(model) -> None:
            slot = self.session.slot
            if slot.generation != generation:
                return  # a newer model meanwhile
            self.session.apply_model(model, source)
            if Path(folder) == last_model_dir():
                self.last_model.opened(slot.generation, slot.threshold)

        worker = self.jobs.start("opening the model", self.session.open_model_job(folder),
                                 on_result=opened, slot="opening a model")
        say_while(self.status, worker, f"Loading the model in {folder}…")
        self.activity.track(worker, "Loading the model…")
        return worker

    # --- export -------------------------------------------------------------------------
    def choose_export(self) -> None:
        if self.session.slot.empty:
            self.banner.show_warning("Train a model or open a model folder first: Export "
                                     "writes the current model.")
            return
        start = Path(export_suggestion(self.prefs.last_model_folder, self.session.data_dir))
        if start.is_dir():  # a save dialog would open inside it and nest a second copy
            if is_model_folder(start) and self.confirm_replace(
                    f"{start} holds a model this app exported earlier. Replace it with this "
                    "one? (No: choose another folder)"):
                self.export_to(str(start))
                return
            start = next(start.with_name(f"{start.name}-{n}") for n in range(2, 1000)
                         if not start.with_name(f"{start.name}-{n}").exists())
        folder, _ = QFileDialog.getSaveFileName(self.dialog_parent, "Export model folder",
                                                str(start))
        if folder:
            self.export_to(folder)

    def confirm_replace(self, text: str) -> bool:
        """Ask before replacing a model folder (tests replace this method)."""
        return QMessageBox.question(self.dialog_parent, "Replace the model?", text) == \
            QMessageBox.StandardButton.Yes

    def export_to(self, folder: str) -> Worker | None:
        try:
            job = self.session.export_job(folder)
        except RuntimeError as exc:
            self.banner.show_warning(str(exc))
            return None
        worker = self.jobs.start("export", job, on_result=self._exported)
        say_while(self.status, worker, f"Exporting to {folder}…")
        self.activity.track(worker, "Exporting…")
        return worker

    def _exported(self, report) -> None:
        """The status bar says where; a warning says when parity could not be checked."""
        folder = report.folder
        self.prefs.last_model_folder = str(Path(folder).parent)
        forms = " and ".join({"keras": "Keras", "onnx": "ONNX"}.get(f, f) for f in report.formats)
        self.status.showMessage(f"Model exported to {folder} ({forms})", 10000)
        if report.parity_note:
            self.banner.show_warning(f"Model exported to {folder}, but: {report.parity_note}")


def export_suggestion(last_parent: str, data_dir: Path | None) -> str:
    """Where Export proposes to write: ``<data folder name>-model`` beside the data folder
    (or in the folder last exported to); never the app's own folder."""
    name = f"{data_dir.name}-model" if data_dir is not None else "image-model"
    if last_parent and Path(last_parent).is_dir():
        return str(Path(last_parent) / name)
    if data_dir is not None:
        return str(data_dir.parent / name)
    return str(Path(dialog_folder("")) / name)
