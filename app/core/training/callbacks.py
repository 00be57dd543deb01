"""The training run's Keras callbacks, one concern each (Keras' own style: EarlyStopping,
ModelCheckpoint, ...), sharing what one concern tells the others in a :class:`RunState`:

- :class:`HonourCancel` stops after the batch in which the cancel token was set; the epoch it
  cut short is no epoch (the others ignore it);
- :class:`StopOnDivergence` stops when a loss is not finite: nothing of that epoch is kept;
- :class:`KeepBest` remembers the weights of the epoch with the lowest monitored loss;
- :class:`StreamMetrics` reports partial metrics within an epoch (at most every
  ``stream_interval`` seconds) and each finished epoch's record;
- :class:`StopEarly` stops after ``patience`` epochs without a better monitored loss.

Imported only once Keras is wanted (``app.core.training.fit`` imports it inside
``train_head``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import keras

from app.core.base.jobs import CancelToken, Progress, ProgressCallback
from app.core.training.metrics import METRIC_KEYS, epoch_record, epoch_text, normalise


@dataclass
class RunState:
    """What the callbacks of one run share, and what the run reads when ``fit`` returns."""

    monitor: str  # the loss that decides the best epoch: "val_main_loss" (or "main_loss")
    history: list[dict] = field(default_factory=list)
    best: float = math.inf
    best_epoch: int = 0
    best_weights: list | None = None
    since_best: int = 0  # epochs since the best one
    interrupted: bool = False  # cancelled within an epoch: that epoch does not count
    diverged: int = 0  # the epoch whose loss was not finite (0: none)
    stopped_early: bool = False

    def counts(self) -> bool:
        """Whether the epoch just ended is one (not cut short, not diverged)."""
        return not self.interrupted and not self.diverged


class HonourCancel(keras.callbacks.Callback):
    # Keras then calls the batch hook from its dispatch thread instead of syncing the device
    # after every batch; the hook only reads a flag.
    async_safe = True

    def __init__(self, state: RunState, cancel: CancelToken) -> None:
        super().__init__()
        self.state, self.cancel = state, cancel

    def on_train_batch_end(self, batch, logs=None):
        if self.cancel.cancelled:
            self.model.stop_training = True
            self.state.interrupted = True

    def on_epoch_end(self, epoch, logs=None):
        if self.cancel.cancelled:  # set after the last batch: this epoch counts, no more
            self.model.stop_training = True


class StopOnDivergence(keras.callbacks.Callback):
    def __init__(self, state: RunState) -> None:
        super().__init__()
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        if self.state.interrupted:  # Keras still validates a cut-short epoch
            return
        losses = [v for k, v in (logs or {}).items() if k.endswith("loss")]
        if any(not math.isfinite(float(v)) for v in losses):
            self.state.diverged = epoch + 1  # NaN never "improves": stop, keep nothing
            self.model.stop_training = True


class KeepBest(keras.callbacks.Callback):
    def __init__(self, state: RunState) -> None:
        super().__init__()
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        s = self.state
        if not s.counts():
            return
        value = normalise(logs or {}).get(s.monitor)
        if value is not None and float(value) < s.best:
            s.best, s.best_epoch, s.since_best = float(value), epoch + 1, 0
            s.best_weights = self.model.get_weights()
        else:
            s.since_best += 1


class StreamMetrics(keras.callbacks.Callback):
    async_safe = True  # the batch hook reads the logs only every stream_interval seconds

    def __init__(self, state: RunState, progress: ProgressCallback, epochs: int,
                 interval: float) -> None:
        super().__init__()
        self.state, self.progress, self.epochs, self.interval = state, progress, epochs, interval
        self._epoch = 0
        self._last = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1
        self._last = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        if logs and not self.state.interrupted and now - self._last >= self.interval:
            self._last = now
            partial = {k: float(v) for k, v in normalise(logs).items() if k in METRIC_KEYS}
            self.progress(Progress("train", self._epoch - 1, self.epochs,
                                   message=f"epoch {self._epoch}, batch {batch + 1}",
                                   data={"partial": True, "epoch": self._epoch, **partial}))

    def on_epoch_end(self, epoch, logs=None):
        s = self.state
        if not s.counts():
            return
        rec = epoch_record(epoch + 1, logs or {})
        rec["best_epoch"] = s.best_epoch
        s.history.append(rec)
        self.progress(Progress("train", epoch + 1, self.epochs,
                               message=epoch_text(rec, self.epochs),
                               data={"partial": False, **rec}))


class StopEarly(keras.callbacks.Callback):
    def __init__(self, state: RunState, patience: int, epochs: int, cancel: CancelToken
                 ) -> None:
        super().__init__()
        self.state, self.patience, self.epochs, self.cancel = state, patience, epochs, cancel

    def on_epoch_end(self, epoch, logs=None):
        s = self.state
        if not s.counts() or not self.patience or s.since_best < self.patience:
            return
        if not self.cancel.cancelled:
            s.stopped_early = epoch + 1 < self.epochs
        self.model.stop_training = True


def run_callbacks(state: RunState, cancel: CancelToken, progress: ProgressCallback,
                  epochs: int, patience: int, interval: float) -> list[keras.callbacks.Callback]:
    """The run's callbacks, in the order their concerns depend on each other."""
    return [HonourCancel(state, cancel), StopOnDivergence(state), KeepBest(state),
            StreamMetrics(state, progress, epochs, interval),
            StopEarly(state, patience, epochs, cancel)]
