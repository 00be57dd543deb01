"""The generic worker: results, errors and cancellation arrive as signals on the GUI thread."""

from __future__ import annotations

import threading

import pytest
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


def test_a_job_in_a_slot_replaces_the_one_before_which_never_reports(qtbot):
    """Starting a job in a slot cancels the one there and cuts it off: its result, progress
    and end reach nobody, even when it finishes after the new one."""
    jobs = Jobs()
    gate = threading.Event()
    heard: list[str] = []

    def slow(progress, cancel):
        assert gate.wait(30)
        progress(Progress("scan", 1, 1))
        return "old folder"

    first = jobs.start("reading the folder", slow, slot="folder",
                       on_result=heard.append, on_progress=lambda p: heard.append("progress"),
                       on_done=lambda: heard.append("old done"))
    jobs.start("reading the folder", lambda p, c: "new folder", slot="folder",
               on_result=heard.append)  # connected before it starts: it cannot be missed
    qtbot.waitUntil(lambda: heard == ["new folder"], timeout=10000)
    assert first.is_cancelled
    with qtbot.waitSignal(first.finished, timeout=10000):
        gate.set()  # the old job ends after the new one, with a result
    qtbot.waitUntil(lambda: not jobs.running, timeout=10000)
    assert heard == ["new folder"]
    jobs.start("thumbnails", lambda p, c: "kept", slot="thumbnails",
               on_result=heard.append)  # another slot is left alone
    qtbot.waitUntil(lambda: heard == ["new folder", "kept"], timeout=10000)
    qtbot.waitUntil(lambda: not jobs.running, timeout=10000)



def _job_and_child_niceness(qtbot) -> tuple[int, int]:
    """The niceness of a window job's thread and of a process that job starts."""
    import os
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread niceness is Linux's")
    jobs = Jobs()
    results = []

    def job(progress, cancel):
        child = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"],
                               capture_output=True, text=True, check=True).stdout
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), int(child)

    with qtbot.waitSignal(jobs.busy_changed, check_params_cb=lambda busy: not busy):
        jobs.start("job", job, on_result=results.append)
    assert len(results) == 1
    return results[0]


def _own_niceness() -> int:
    import os

    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_job_and_the_process_it_starts_run_at_the_windows_own_priority(qtbot):
    """A job thread niced to 10 made the window's caching 11x and training 10x slower on a
    busy machine (and stalled the window on the GIL): jobs, and the children they start, run
    at the app's priority."""
    own = _own_niceness()
    assert _job_and_child_niceness(qtbot) == (own, own)


def test_a_lower_priority_asked_for_reaches_the_job_and_its_child(qtbot, monkeypatch):
    from app.gui import worker

    own = _own_niceness()
    if own > 14:
        pytest.skip("already too nice to be made 5 nicer")
    monkeypatch.setattr(worker, "BACKGROUND_NICE", own + 5)
    assert _job_and_child_niceness(qtbot) == (own + 5, own + 5)

@pytest.mark.parametrize(("value", "nice"), [(None, 0), ("", 0), ("7", 7), (" 19 ", 19),
                                             ("low", 0), ("25", 0), ("-3", 0)])
def test_the_background_niceness_setting_is_read_or_ignored_never_fatal(value, nice):
    from app.gui.worker import background_nice

    assert background_nice(value) == nice


def test_a_job_done_before_its_receivers_connected_still_ends_its_messages(qtbot):
    """On a busy machine a job that fails at once (a folder that is not a model) emitted
    ``done`` before the window connected its "Loading the model…" line to it, and the line
    never ended. A message tracked after the job is done ends at once."""
    from PySide6.QtWidgets import QStatusBar

    from app.gui.activity import ActivityLabel, say_while

    jobs = Jobs()

    def job(progress, cancel):
        raise ValueError("not a model folder")

    worker = jobs.start("opening", job)
    qtbot.waitUntil(worker.isFinished)  # done was emitted, with no receiver of ours yet
    label, bar = ActivityLabel(), QStatusBar()
    qtbot.addWidget(label)
    qtbot.addWidget(bar)
    label.track(worker, "Loading the model…")
    say_while(bar, worker, "Loading the model in X…")
    assert label.isHidden() and label.text() == ""  # nothing more will come: it ended
    assert bar.currentMessage() == ""
