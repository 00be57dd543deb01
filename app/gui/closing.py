"""What closing the window asks, and which running jobs it stops or waits for.

Training, caching and exporting are worth a question; everything else (reading a folder,
thumbnails, predictions) is cancelled without one. A model being saved for the next start (or
the threshold written into it) and an export are waited for, never cancelled: stopping them
would lose the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from PySide6.QtCore import QObject, QTimer

from app.gui.worker import Jobs

SAVING = "saving the model"  # the job that keeps the last trained model for the next start
REMEMBERING = "remembering the threshold"  # the slider's threshold, into that saved model

QUESTIONS = {
    "training": "Training is running — stop and quit? The best model so far is kept and "
                "opens again at the next start.",
    "export": "A model is being exported — quit once it is written?",
    "caching": "Caching is running — stop and quit? Nothing is lost: every finished batch is "
               "already saved, and the next run goes on from there.",
}
WAITED_FOR = ("export", SAVING, REMEMBERING)


def quit_question(running: Iterable[str]) -> str | None:
    """The question to ask before closing while the named jobs run; None: close at once."""
    names = set(running)
    parts = [text for name, text in QUESTIONS.items() if name in names]
    return "\n\n".join(parts) or None


def stops_on_quit(name: str) -> bool:
    """Whether a job is cancelled when the window closes (the others are waited for)."""
    return name not in WAITED_FOR


class Closing(QObject):
    """Closing the window while jobs run, as a small state machine: "" (open), "waiting"
    (asked and agreed: what can stop is stopped, the rest is waited for, the window is
    disabled but responsive), "ready" (every job ended: the next close goes through).

    ``flush`` starts what a close must not lose (a threshold still waiting to be written:
    a job, then waited for); ``ask(question)`` asks the user (True: quit); ``before`` runs
    once closing goes ahead (remember the settings); ``waiting(names)`` shows that the window
    is finishing; ``close`` closes the window again once the jobs ended."""

    def __init__(self, jobs: Jobs, flush: Callable[[], None], ask: Callable[[str], bool],
                 before: Callable[[], None], waiting: Callable[[set[str]], None],
                 close: Callable[[], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.jobs, self.flush, self.ask, self.before = jobs, flush, ask, before
        self.waiting, self.close = waiting, close
        self.state = ""

    @property
    def underway(self) -> bool:
        return bool(self.state)

    def allows(self) -> bool:
        """Whether the window may close now; when not, closing may have begun."""
        if not self.state:
            self.flush()
        if self.state == "ready" or (not self.state and not self.jobs.running):
            if not self.state:
                self.before()
            return True
        if self.state:
            return False  # already waiting for the jobs to end
        question = quit_question(w.name for w in self.jobs.running)
        if question and not self.ask(question):
            return False
        self.state = "waiting"
        self.before()
        self.waiting({w.name for w in self.jobs.running})
        for worker in self.jobs.running:
            if stops_on_quit(worker.name):
                worker.cancel()
        self.jobs.busy_changed.connect(self._when_idle)
        self._when_idle(bool(self.jobs.running))
        return False

    def _when_idle(self, busy: bool) -> None:
        if not busy and self.state == "waiting":
            self.state = "ready"
            QTimer.singleShot(0, self.close)
