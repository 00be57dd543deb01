"""Time per epoch as the window sees it: measured from the run's own epochs, never invented.

The first epoch includes starting the training process, importing TensorFlow and compiling
the step, so once a second epoch has ended the clock uses the later epochs only (their median).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


class EpochClock:
    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.started: float | None = None
        self.ends: list[float] = []

    def start(self) -> None:
        """Training (not caching) begins now."""
        self.started, self.ends = self.now(), []

    def epoch_ended(self) -> None:
        if self.started is None:
            self.start()
        self.ends.append(self.now())

    @property
    def durations(self) -> list[float]:
        if self.started is None:
            return []
        marks = [self.started, *self.ends]
        return [b - a for a, b in zip(marks, marks[1:])]

    def per_epoch(self) -> float | None:
        """Seconds per epoch: the first epoch alone, then the median of the later ones."""
        d = self.durations
        if not d:
            return None
        return d[0] if len(d) == 1 else statistics.median(d[1:])

    def eta(self, epochs: int) -> float | None:
        """Seconds left until ``epochs`` epochs ended (early stopping may end sooner)."""
        per = self.per_epoch()
        return None if per is None else per * max(0, epochs - len(self.ends))
