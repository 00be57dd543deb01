"""The model kept for the next start: after each training run that becomes the current
model, it is exported into ``last_model_dir()`` in the background, and the "unknown"
threshold the user moves to is written into that folder once the slider rests.

One write at a time: a newer model waits for the save in progress (only the newest waits),
a threshold waits for both, and every write replaces by rename (the core's export), so a
crash leaves the old folder or the new one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject

from app.core.base.paths import last_model_dir
from app.gui.closing import REMEMBERING, SAVING

if TYPE_CHECKING:
    from app.gui.activity import ActivityLabel
    from app.gui.session import Session
    from app.gui.worker import Jobs, Worker


class LastModel(QObject):
    """Which model the kept folder holds is a value: the slot ``generation`` of the model it
    was written from (a newer model has another)."""

    def __init__(self, session: Session, jobs: Jobs, activity: ActivityLabel,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session, self.jobs, self.activity = session, jobs, activity
        self._saving: Worker | None = None
        self._writing: Worker | None = None  # the threshold being written
        self._next: tuple[Any, int] | None = None  # a model waiting for the write to end
        self.holds: int | None = None  # the slot generation of the model the folder holds
        self._written: float | None = None  # the threshold that folder answers with

    @property
    def busy(self) -> bool:
        return self._saving is not None or self._writing is not None

    def opened(self, generation: int, threshold: float | None) -> None:
        """The current model (of ``generation``) was opened from that folder: moving its
        threshold writes there."""
        self.holds, self._written = generation, threshold

    def save(self, model, generation: int) -> Worker | None:
        """Keep ``model`` (the slot's model of ``generation``) for the next start, waiting
        for a write in progress."""
        if self.busy:
            self._next = (model, generation)
            return None
        slot = self.session.slot
        current = generation == slot.generation
        threshold = slot.threshold if current else None  # what the save writes

        def saved(_report) -> None:
            self.holds, self._written = generation, threshold

        def done() -> None:
            self._saving = None
            self._free()

        job = self.session.export_job(last_model_dir(), model, threshold,
                                      slot.review if current else None)
        self._saving = self.jobs.start(SAVING, job, on_result=saved, on_done=done)
        self.activity.track(self._saving, "Saving the model for the next start…")
        return self._saving

    def remember_threshold(self) -> Worker | None:
        """Write the threshold now in use into the kept folder, when it holds the current
        model and answers with another threshold."""
        slot = self.session.slot
        if (slot.empty or slot.generation != self.holds or self.busy
                or slot.threshold is None or slot.threshold == self._written):
            return None
        threshold, folder = slot.threshold, last_model_dir()

        def job(progress, cancel) -> bool:
            from app.core.delivery.export import set_unknown_threshold

            return set_unknown_threshold(folder, threshold)

        def done() -> None:  # tried once: a failure shows as an error, not as a retry loop
            self._writing, self._written = None, threshold
            self._free()

        self._writing = self.jobs.start(REMEMBERING, job, on_done=done)
        return self._writing

    def _free(self) -> None:
        """A write ended: a newer model waiting is saved, else a threshold moved meanwhile is
        written."""
        following, self._next = self._next, None
        if following is not None:
            self.save(*following)
        else:
            self.remember_threshold()
