"""The generic worker: results, errors and cancellation arrive as signals on the GUI thread."""

from __future__ import annotations

import threading

from PySide6.QtCore import QThread

from app.core.base.jobs import Progress
from app.gui.worker import Jobs


def test_result_and_progress_arrive_on_gui_thread(qtbot):
    jobs = Jobs()
    seen = []

    def job(progress, cancel):
        for i in range(3):
            progress(Progress("x", i + 1, 3))
        return threading.get_ident()

    def on_progress(p):
        seen.append((p.done, QThread.currentThread() is jobs.thread()))

    results = []
    with qtbot.waitSignal(jobs.busy_changed, check_params_cb=lambda busy: not busy):
        jobs.start("job", job, on_progress=on_progress, on_result=results.append)
    assert results and results[0] != threading.get_ident()
    assert seen == [(1, True), (2, True), (3, True)]


def test_error_becomes_a_message(qtbot):
    """An expected error (the UserError family) is its one line; anything else is a bug and
    says what kind of exception it was."""
    from app.core.intake.dataset import DatasetError

    jobs = Jobs()

    def job(progress, cancel):
        raise DatasetError("the folder is empty")

    def bug(progress, cancel):
        raise ValueError("the folder is empty")

    with qtbot.waitSignal(jobs.error) as blocker:
        jobs.start("scan", job)
    assert blocker.args == ["scan", "the folder is empty"]
    with qtbot.waitSignal(jobs.error) as blocker:
        jobs.start("scan", bug)
    assert blocker.args == ["scan", "ValueError: the folder is empty"]
    jobs.wait_all()


def test_cancel_reaches_the_job(qtbot):
    jobs = Jobs()
    started = threading.Event()

    def job(progress, cancel):
        started.set()
        while not cancel.cancelled:
            cancel.raise_if_cancelled()
        cancel.raise_if_cancelled()

    cancelled = []
    worker = jobs.start("loop", job)
    worker.cancelled.connect(lambda: cancelled.append(True))
    assert started.wait(5)
    jobs.cancel_all()
    qtbot.waitUntil(lambda: cancelled == [True])
    assert jobs.wait_all(5000)


def test_a_cancelled_job_that_returns_a_result_emits_that_result_only(qtbot):
    """A job that stops early and returns what it has (a cancelled caching run) is one
    succeeded signal carrying a result that says so, never both cancelled and succeeded."""
    jobs = Jobs()
    started = threading.Event()

    def job(progress, cancel):
        started.set()
        while not cancel.cancelled:
            pass
        return {"cancelled": True, "done": 3}

    signals = []
    worker = jobs.start("partial", job)
    worker.cancelled.connect(lambda: signals.append("cancelled"))
    worker.succeeded.connect(lambda result: signals.append(result))
    assert started.wait(5)
    with qtbot.waitSignal(worker.done, timeout=5000):
        worker.cancel()
    qtbot.waitUntil(lambda: bool(signals))
    assert signals == [{"cancelled": True, "done": 3}]
    assert jobs.wait_all(5000)
