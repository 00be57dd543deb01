"""What every long core job shares: a cancel token and progress reports.

Jobs are plain functions that take ``progress`` (a callable receiving :class:`Progress`) and
``cancel`` (a :class:`CancelToken`); they never know whether a GUI or a terminal is watching.
"""

from __future__ import annotations

import gc
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Keras models are built (or loaded) one at a time in this process, whichever thread asks: a
# random-weights backbone reseeds the global generator and draws its weights from it, which
# any other build or load in between would also draw from (an export's parity check failed
# so when two exports ran at once); and a model built over a trained run's layers (an export,
# a predictor, a review's sub-model) adds nodes to layers another thread may be reading.
KERAS_BUILDS = threading.RLock()


class Cancelled(Exception):
    """Raised inside a job when its token was cancelled; callers see a partial result instead."""


class CancelToken:
    """A thread-safe flag a job checks between units of work (Python threads cannot be killed)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


@dataclass(frozen=True)
class Progress:
    """One progress point: ``done`` of ``total`` units in ``stage``, with a rate and an ETA."""

    stage: str
    done: int
    total: int
    rate: float = 0.0  # units per second
    eta: float | None = None  # seconds
    message: str = ""
    data: dict | None = None  # stage-specific payload (e.g. epoch metrics)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """The default progress callback: ignores every report."""


class RateMeter:
    """Turns a running count into a rate and an ETA, smoothed over the whole run."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.start = time.perf_counter()

    def report(self, stage: str, done: int, message: str = "") -> Progress:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else None
        return Progress(stage, done, self.total, rate, eta, message)


_pause_lock = threading.Lock()
_pauses = 0
_threshold: tuple[int, int, int] | None = None
_freeze = False  # a use that ended (or runs) asked for gc.freeze when the last one ends
NEVER = 1 << 30  # a generation-2 threshold that is never reached


@contextmanager
def long_lived_objects(freeze: bool = True) -> Iterator[None]:
    """For a job that builds many objects meant to live on (100k records of a scanned folder):
    while it runs, Python's cyclic collector makes no full pass (its young generations still
    collect, in a millisecond or two, so most cycles any thread leaves behind die young as
    usual), and with ``freeze`` what exists when the block ends is frozen out of later full
    passes (``gc.freeze``). A full pass walks every tracked object holding the GIL, which stops
    every other thread, a window's event loop included: measured 40-70 ms each, several per
    100k-image scan. Frozen objects are still freed by reference counting; a cycle that is
    garbage but not yet collected when the freeze comes is never collected, so a job that runs
    again and again (the Label page's refresh) pauses the passes without freezing. Nested and
    concurrent uses are counted: full passes come back when the last one ends (with the freeze
    if any of them asked for it)."""
    global _pauses, _threshold, _freeze
    with _pause_lock:
        _pauses += 1
        _freeze = _freeze or freeze
        if _pauses == 1:
            _threshold = gc.get_threshold()
            gc.set_threshold(_threshold[0], _threshold[1], NEVER)
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _threshold is not None:
                if _freeze:
                    gc.freeze()
                _freeze = False
                gc.set_threshold(*_threshold)


def process_alive(pid: int) -> bool:
    """Whether a process of this machine with ``pid`` lives (one we may not signal counts as
    alive): who may remove a leftover file, or take over a claim, asks this."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, OSError):
        return True
    return True


def dead_leftovers(folder: str | os.PathLike, pattern: re.Pattern
                   ) -> list[tuple[os.DirEntry, re.Match]]:
    """The entries of ``folder`` named by ``pattern`` (this app's naming for work in progress,
    with the writer's ``pid``, and ``host`` where the name carries one) whose writer, a
    process of this machine, is dead; links never. What to remove of them is the caller's."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    host = socket.gethostname()
    found = []
    for entry in entries:
        m = pattern.match(entry.name)
        if (m is None or entry.is_symlink()
                or ("host" in pattern.groupindex and m["host"] != host)
                or process_alive(int(m["pid"]))):
            continue
        found.append((entry, m))
    return found
