"""The Features and Train pages' controller: the user's choices of backbone, weights, where the
backbone runs and the training settings (into the session's RunChoice), and the one heavy run at
a time, caching or training, from Start to the outcome applied.

It is handed what it works with (the session, the job runner, the two pages, the preferences,
the banner, the status bar, the activity label and the kept last model) and never the window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QMessageBox, QStatusBar

from app.core.base.errors import SettingsError
from app.gui.activity import progress_text, say_while
from app.gui.pages.features import NO_DATA
from app.gui.pages.train_mode import TrainContext

if TYPE_CHECKING:
    from app.gui.activity import ActivityLabel
    from app.gui.errors import ErrorBanner
    from app.gui.last_model import LastModel
    from app.gui.pages.features import FeaturesPage
    from app.gui.pages.train import TrainPage
    from app.gui.preferences import Preferences
    from app.gui.session import CacheOutcome, Session, TrainOutcome
    from app.gui.worker import Jobs, Worker


class RunControl(QObject):
    heavy_changed = Signal(bool)  # a caching or training run started (True) or ended

    def __init__(self, session: Session, jobs: Jobs, features: FeaturesPage, train: TrainPage,
                 prefs: Preferences, banner: ErrorBanner, status: QStatusBar,
                 activity: ActivityLabel, last_model: LastModel,
                 closing_underway: Callable[[], bool], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session, self.jobs, self.features, self.train = session, jobs, features, train
        self.prefs, self.banner, self.status, self.activity = prefs, banner, status, activity
        self.last_model, self.closing_underway = last_model, closing_underway
        self.heavy: Worker | None = None  # the caching or training run
        features.start_requested.connect(self.start_caching)
        features.retry_requested.connect(lambda: self.start_caching(retry_skipped=True))
        features.cancel_requested.connect(lambda: self.cancel("caching"))
        features.changed.connect(self._features_changed)
        train.start_requested.connect(self.start_training)
        train.stop_requested.connect(lambda: self.cancel("training"))
        train.changed.connect(self._settings_changed)
        train.mode.changed.connect(features.set_mode)
        session.folder_changed.connect(self._folder_changed)
        session.cache_changed.connect(features.show_result)
        session.cache_changed.connect(lambda _c: self.describe())
        session.choice_changed.connect(self._choice_changed)
        session.trained.connect(self._show_trained)

    # --- the choices --------------------------------------------------------------------
    def restore(self) -> None:
        """The choices remembered from the last session, on the pages and in the session."""
        p = self.prefs
        from pathlib import Path

        from app.core.features.weights import resources_dir

        shipped = resources_dir() / "weights"
        gone = (p.weights == "file" and p.weights_file and not Path(p.weights_file).exists()
                and Path(p.weights_file).parent.parent == shipped)  # an update renamed it
        if not p.backbone or gone:  # a first launch: the backbone whose weights came with it
            from app.core.features.backbones import BACKBONES
            from app.core.features.weights import bundled_choice

            bundled = bundled_choice([n for n, s in BACKBONES.items() if not s.hidden])
            if bundled is not None:
                p.backbone, p.weights, p.weights_file = bundled[0], "file", str(bundled[1])
        if p.backbone:
            self.features.set_backbone(p.backbone)
        if p.weights_file:
            self.features.weights_file.setText(p.weights_file)
        if p.weights:
            self.features.set_weights(p.weights if p.weights != "file" else p.weights_file)
        self.features.compute_on.set_engine(p.compute_engine, p.ray_address)
        self.train.set_settings(p.training)
        self.features.set_mode(self.train.mode.mode())
        self._features_changed()
        self._settings_changed()
        self.describe()

    def save(self) -> None:
        p, choice = self.prefs, self.session.choice
        p.backbone = choice.backbone
        p.weights = self.features.weights.currentData()
        p.weights_file = self.features.weights_file.text()
        p.compute_engine = self.features.compute_on.chosen()
        p.ray_address = self.features.compute_on.address.text().strip()
        p.training = choice.settings

    def _features_changed(self) -> None:
        self.session.set_choice(**self.features.choice())

    def _settings_changed(self) -> None:
        try:
            settings = self.train.settings()
        except SettingsError:
            return  # e.g. warm-up epochs not below the epochs: said when Start is pressed
        self.session.set_choice(settings=settings)

    def _choice_changed(self, choice) -> None:
        self.features.show_choice(choice)
        self.describe()

    def _folder_changed(self, change) -> None:
        try:  # a tagged folder's settings start at that task's defaults (and back again)
            settings = self.train.settings()
        except (ValueError, TypeError):
            settings = None
        if settings is not None:
            wanted = settings.for_other_task(change.tagged is not None)
            if wanted != settings:
                self.train.set_settings(wanted)
        self.train.set_task(change.tagged is not None)
        missing = "" if self.session.has_data else NO_DATA
        self.features.set_missing(missing)
        self.train.set_missing(missing)
        self.features.show_skipped(change.dataset.skipped)
        self.features.forget_result()
        self.train.forget_status()
        self.describe()

    def describe(self) -> None:
        """Tell the Train page what the chosen backbone and mode cost on this folder."""
        choice, folder = self.session.choice, self.session.folder
        cache = self.session.cache_for(choice)
        summary = folder.summary if folder is not None else None
        self.train.describe(TrainContext(
            backbone=choice.backbone,
            images=summary.unique_images if summary else 0,
            train_images=summary.split_counts["train"] if summary else 0,
            cache=cache if cache is not None and not cache.cancelled else None,
            seconds_per_image={m: self.prefs.epoch_seconds_per_image(choice.backbone, m)
                               for m in ("head", "finetune")},
            layers=self.prefs.trainable_layers(choice.backbone)))

    # --- the one heavy run --------------------------------------------------------------
    def refused_while_busy(self, action: str) -> bool:
        """True (and says why) while caching or training runs: files and folders stay as
        they are until it ends."""
        if self.heavy is None:
            return False
        self.banner.show_warning(f"Stop {self.heavy.name} before {action}.")
        return True

    def _start(self, name: str, make_job, page, on_result) -> Worker | None:
        if self.heavy is not None:
            self.banner.show_warning(f"{self.heavy.name.capitalize()} is still running; "
                                     "stop it first.")
            return None
        if not self.session.choice.weights:
            self.banner.show_warning("Choose a weights file for the backbone (Features page, "
                                     "or Weights file… on the Label page), or pick ImageNet.")
            return None
        try:
            self.train.settings() if name == "training" else None
            job = make_job()
        except (ValueError, RuntimeError) as exc:
            self.banner.show_warning(str(exc))
            return None
        self.banner.hide()
        page.set_running(True)

        def done():
            self.heavy = None
            page.set_running(False)
            self.heavy_changed.emit(False)

        def progressed(p):
            page.show_progress(p)
            self.activity.update_text(worker, progress_text(name, p))

        def finished(result):  # the run has ended: its page shows what is kept, not a run
            page.set_running(False)
            on_result(result)

        worker = self.jobs.start(name, job, on_result=finished, on_progress=progressed,
                                 on_error=page.show_error, on_done=done)
        self.activity.track(worker, f"{name.capitalize()}…")
        self.heavy = worker
        self.heavy_changed.emit(True)
        return worker

    def start_caching(self, retry_skipped: bool = False) -> Worker | None:
        return self._start("caching", lambda: self.session.cache_job(retry_skipped),
                           self.features, self._cached)

    def _cached(self, outcome: CacheOutcome) -> None:
        if self.session.apply_cache(outcome) and outcome.cache.cancelled:
            self.status.showMessage("Caching cancelled: what was computed is kept", 5000)

    def start_training(self) -> Worker | None:
        return self._start("training", self.session.train_job, self.train, self._trained)

    def cancel(self, name: str | None = None) -> None:
        """Cancel the running caching or training run (only the one named, when named)."""
        worker = self.heavy
        if worker is None or (name is not None and worker.name != name):
            return  # a late click: that run has ended
        worker.cancel()
        say_while(self.status, worker, f"Cancelling {worker.name}…")

    def _trained(self, outcome: TrainOutcome) -> None:
        session = self.session
        before = session.slot.generation
        if not session.apply_training(outcome):
            return
        self._remember_run(outcome)
        if session.stopped is not None and not self.closing_underway():
            if self.confirm_use_stopped(self._stopped_question(outcome.model)):
                session.adopt_stopped()
            else:
                session.stopped = None
                self.status.showMessage("Kept the model you had; the stopped run was not "
                                        "saved", 10000)
                slot = session.slot  # the page shows the model kept, not the one dropped
                self.train.show_model_history(slot.history, slot.source)
                self.train.status.setText(self.train.status.text() + " The stopped run was "
                                          "not kept.")
        self.train.export.setEnabled(not session.slot.empty)
        if session.slot.generation != before:  # the run's model became the current one
            self.last_model.save(session.slot.model, session.slot.generation)
        if getattr(outcome.model, "folder", None):  # a tag run: the older run folders go
            self.jobs.start("tidying runs", session.prune_runs_job(), slot="prune-runs")

    def _show_trained(self, outcome: TrainOutcome) -> None:
        """The Train and Features pages follow a training run's outcome."""
        if outcome.model is None:
            self.train.show_stopped_before_an_epoch()
            return
        self.train.show_result(outcome.model.result)
        self.train.show_warnings(list(outcome.model.training_warnings))
        if outcome.cache is not None:
            self.features.show_result(outcome.cache)

    def _stopped_question(self, model) -> str:
        def acc(value) -> str:
            return "" if value is None else f" ({value:.1%})"

        new = acc(model.evaluation.main_accuracy if model.evaluation is not None else None)
        return (f"Training was stopped after {model.result.epochs_run} epoch(s). Use the "
                f"stopped run{new} instead of the current model"
                f"{acc(self.session.slot.accuracy)}? (No keeps the model you had.)")

    def confirm_use_stopped(self, text: str) -> bool:
        """Ask about a stopped run (tests replace this method)."""
        return QMessageBox.question(self.train, "Use the stopped run?", text) == \
            QMessageBox.StandardButton.Yes

    def _remember_run(self, outcome: TrainOutcome) -> None:
        """Measured time per epoch (per training image) and the layers a fine-tune run
        trained, for the expectations shown before the next Start."""
        model = outcome.model
        if model is None:
            return
        result = model.result
        per_epoch = self.train.clock.per_epoch()
        if per_epoch is not None:
            self.prefs.remember_epoch_seconds(result.backbone, result.settings.mode, per_epoch,
                                              model.train_count)
        if result.trainable_backbone_layers:
            self.prefs.remember_trainable_layers(result.backbone,
                                                 result.trainable_backbone_layers)
        self.describe()
