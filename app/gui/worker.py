"""The one generic worker: runs a core job ``fn(progress, cancel)`` off the GUI thread.

Progress, the result and errors reach the GUI thread as queued signals; cancelling sets the
core :class:`CancelToken`, which the job checks between units of work. :class:`Jobs` keeps every
running worker so that closing the window can cancel and join them all.

A consumer that only ever wants the answer of its latest request (the folder read, the
review of the current model, the model being opened, the photos to label) starts its jobs in
a named *slot* (Orange3's task slot): starting one cancels the job in that slot and
disconnects it first, so a stale result cannot arrive, rather than being recognised and
dropped afterwards.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal

from app.core.base.errors import UserError, os_error_message
from app.core.base.jobs import Cancelled, CancelToken, Progress

log = logging.getLogger("app.gui")

JobFn = Callable[[Callable[[Progress], None], CancelToken], Any]
# The niceness of the window's jobs and of what they start (TensorFlow's threads, the
# decoder's pool, the training child, a local Ray): 0, the app's own priority, unless
# BOTTLENECK_STUDIO_BACKGROUND_NICE asks for a lower one. It was 10, to let the GUI thread win
# the CPU. Measured on Linux (benchmarks/gui_responsiveness.py --nice, docs/benchmarks.md):
# idle, it changed nothing the window shows; beside `stress --cpu 4` the window's caching took
# 11x and its training 10x as long as at 0, the window stalled 750 ms against 66 while caching
# (a niced job thread holding Python's GIL waits for a core while the GUI thread waits for the
# GIL) and 83 ms against 103 while training (a child process: no GIL shared). Elsewhere Qt's
# low thread priority was the same trade, not measured: it follows the same setting.


def background_nice(value: str | None) -> int:
    """The setting's niceness: a whole number from 0 to 19; anything else is 0 (logged)."""
    if value is None or not value.strip():
        return 0
    try:
        nice = int(value)
    except ValueError:
        nice = -1
    if not 0 <= nice <= 19:
        log.warning("BOTTLENECK_STUDIO_BACKGROUND_NICE=%r is not 0-19: jobs run at 0", value)
        return 0
    return nice


BACKGROUND_NICE = background_nice(os.environ.get("BOTTLENECK_STUDIO_BACKGROUND_NICE"))


def lower_thread_priority(thread: QThread) -> None:
    """Run this job thread at :data:`BACKGROUND_NICE` (nothing to do at 0). On Linux the nice
    value is per thread and inherited by the threads and processes it starts; elsewhere Qt's
    low thread priority stands for any value above 0."""
    if BACKGROUND_NICE <= 0:
        return
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
        except OSError:
            pass
    else:
        thread.setPriority(QThread.Priority.LowPriority)


class Worker(QThread):
    """One job on its own thread. Signals are emitted from the job's thread and delivered to
    receivers in the GUI thread through the event loop (queued connections)."""

    progressed = Signal(object)  # Progress
    succeeded = Signal(object)  # the job's return value (a cancelled job's partial result too)
    failed = Signal(str)  # a one-line message for the user
    cancelled = Signal()  # the job stopped without a result (it raised Cancelled)
    done = Signal()  # always last, whatever happened

    def __init__(self, fn: JobFn, name: str = "job", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.fn, self.name = fn, name
        self.token = CancelToken()
        self.setObjectName(name)
        self.ended = False  # set on the job's thread just before ``done`` is emitted

    def when_done(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the GUI thread once this job is done, even if it was done before
        this was asked: a job that fails at once can emit ``done`` before a receiver
        connected after :meth:`Jobs.start` is there (seen on a busy machine: the window's
        "Loading the model…" never ended). ``fn`` may be called twice; it must not mind."""
        self.done.connect(fn)
        if self.ended:  # emitted before the connection: the connection above never fires
            fn()

    def cancel(self) -> None:
        self.token.cancel()

    @property
    def is_cancelled(self) -> bool:
        return self.token.cancelled

    def run(self) -> None:  # the job's thread
        lower_thread_priority(self)
        try:
            result = self.fn(self.progressed.emit, self.token)
        except Cancelled:
            self.cancelled.emit()
        except Exception as exc:  # every failure becomes a message and a log entry
            log.error("%s failed:\n%s", self.name, traceback.format_exc())
            self.failed.emit(describe_error(exc))
        else:  # a result, even after a cancel: it says itself what it holds (CacheResult's
            self.succeeded.emit(result)  # "cancelled", TrainResult's), one signal, not two
        finally:
            self.ended = True
            self.done.emit()


def describe_error(exc: BaseException) -> str:
    """One line a person can read; the traceback goes to the log file only."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, UserError) and text:
        return text
    if isinstance(exc, OSError):
        return os_error_message(exc, "a file could not be read or written")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Jobs(QObject):
    """Starts workers and remembers the running ones."""

    error = Signal(str, str)  # job name, message
    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._running: list[Worker] = []
        self._slots: dict[str, Worker] = {}

    def start(self, name: str, fn: JobFn, *, on_result: Callable[[Any], None] | None = None,
              on_progress: Callable[[Progress], None] | None = None,
              on_error: Callable[[str], None] | None = None,
              on_done: Callable[[], None] | None = None, slot: str | None = None) -> Worker:
        """Run ``fn`` on its own thread; in ``slot``, after cancelling and disconnecting the
        job started there before (it ends on its own, and is still joined at closing)."""
        if slot is not None:
            self.release(slot)
        worker = Worker(fn, name, self)
        if slot is not None:
            self._slots[slot] = worker
        if on_progress:
            worker.progressed.connect(on_progress)
        if on_result:
            worker.succeeded.connect(on_result)
        worker.failed.connect(lambda msg: self.error.emit(name, msg))
        if on_error:
            worker.failed.connect(on_error)
        if on_done:
            worker.done.connect(on_done)
        worker.finished.connect(lambda: self._forget(worker))
        self._running.append(worker)
        worker.start()
        self.busy_changed.emit(True)
        return worker

    def release(self, slot: str) -> None:
        """Cancel the job in ``slot`` and cut it off: nothing it does reaches anyone now."""
        old = self._slots.pop(slot, None)
        if old is None:
            return
        old.cancel()
        with warnings.catch_warnings():  # PySide warns for a signal with no receiver
            warnings.simplefilter("ignore", RuntimeWarning)
            for signal in (old.progressed, old.succeeded, old.failed, old.cancelled, old.done):
                try:
                    signal.disconnect()  # its thread's own 'finished' stays: still joined
                except (RuntimeError, TypeError):
                    pass

    def _forget(self, worker: Worker) -> None:
        for slot, held in list(self._slots.items()):
            if held is worker:
                del self._slots[slot]
        if worker in self._running:
            # 'finished' comes from the thread just before it exits: let it exit before the
            # last reference may go, or Qt aborts ("Destroyed while thread is still running").
            worker.wait()
            self._running.remove(worker)
            worker.setParent(None)  # Python owns it now; freed with its last reference
        self.busy_changed.emit(bool(self._running))

    @property
    def running(self) -> list[Worker]:
        return list(self._running)

    def cancel_all(self) -> None:
        for w in self._running:
            w.cancel()

    def wait_all(self, timeout_ms: int = -1) -> bool:
        """Block until every worker ended; True when all did."""
        ok = True
        for w in list(self._running):
            ok = (w.wait() if timeout_ms < 0 else w.wait(timeout_ms)) and ok
        return ok
