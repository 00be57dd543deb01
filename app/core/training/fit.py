"""Training the head on cached features, with live per-epoch metrics of every output.

Loss = main + w * aux1 + w * aux2 (w = ``aux_weight``, 0.3 by default, 0 turns the aux outputs
off). After every epoch, and at most every ``stream_interval`` seconds within a long one, the
progress callback receives the metrics of main, aux1 and aux2 on the training and validation
splits. Cancelling stops after the current batch and keeps the best weights of the epochs that
finished (an epoch cut short does not count; with none finished there is no model:
:class:`~app.core.base.jobs.Cancelled`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

from app.core.base.errors import SettingsError, UserError
from app.core.base.jobs import Cancelled, CancelToken, Progress, ProgressCallback, no_progress
from app.core.storage.store import CUT
from app.core.training.feeds import SplitData, make_feed
from app.core.training.head import OUTPUTS, HeadShape, build_head

if TYPE_CHECKING:
    import keras

MODES = ("head", "finetune")
METRIC_KEYS = tuple(f"{o}_{m}" for o in OUTPUTS for m in ("loss", "accuracy"))
HISTORY_KEYS = METRIC_KEYS + tuple(f"val_{k}" for k in METRIC_KEYS)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: nothing trained is kept."""


@dataclass
class TrainSettings:
    """Every knob of a training run, with defaults that work on typical photo folders."""

    epochs: int = 40
    batch_size: int = 64
    optimizer: str = "adam"  # "adam" | "sgd" | "rmsprop"
    learning_rate: float = 1e-3
    schedule: str = "cosine"  # "cosine" | "constant"
    label_smoothing: float = 0.1
    dropout: float = 0.4
    hidden_units: int = 0
    aux_weight: float = 0.3
    class_weights: str = "auto"  # "auto" | "none" | "balanced"
    early_stopping: int = 10  # patience in epochs on validation main loss; 0 = off
    seed: int = 1
    stream_interval: float = 1.0  # seconds between within-epoch updates
    mode: str = "head"  # "head": heads on cached taps | "finetune": top blocks train too
    backbone_lr_scale: float = 0.1  # fine-tune: backbone blocks learn this much slower
    warmup_epochs: int = 0  # fine-tune: epochs in which only the heads learn, blocks held
    augment: str = "none"  # fine-tune: "flip" mirrors cached cut tensors left-right

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append("epochs must be at least 1")
        if self.batch_size < 1:
            problems.append("batch size must be at least 1")
        if not 0 < self.learning_rate < 10:
            problems.append("learning rate must be between 0 and 10")
        if not 0 <= self.dropout < 1:
            problems.append("dropout must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            problems.append("label smoothing must be in [0, 1)")
        if not 0 <= self.aux_weight <= 10:  # NaN and infinity fail this too
            problems.append("aux weight must be a number in [0, 10]")
        if self.early_stopping < 0:
            problems.append("early-stopping patience must be at least 0 (0: off)")
        if self.hidden_units < 0:
            problems.append("hidden units must be at least 0")
        if not 0 <= self.stream_interval < 3600:
            problems.append("stream interval must be between 0 and 3600 seconds")
        if self.optimizer not in ("adam", "sgd", "rmsprop"):
            problems.append(f"unknown optimizer {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            problems.append(f"unknown schedule {self.schedule!r}")
        if self.class_weights not in ("auto", "none", "balanced"):
            problems.append(f"unknown class weights {self.class_weights!r}")
        if self.mode not in MODES:
            problems.append(f"unknown mode {self.mode!r}; choose {' or '.join(MODES)}")
        if self.warmup_epochs < 0:
            problems.append("warm-up epochs must be at least 0")
        elif self.mode == "finetune" and self.warmup_epochs >= self.epochs:
            problems.append("warm-up epochs must be fewer than the epochs, or the blocks never "
                            "train")
        if not 0 <= self.backbone_lr_scale <= 10:
            problems.append("backbone learning-rate scale must be in [0, 10]")
        if self.augment not in ("none", "flip"):
            problems.append(f"unknown augmentation {self.augment!r}")
        if problems:
            raise SettingsError("; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict) -> TrainSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    head: keras.Model
    classes: list[str]
    settings: TrainSettings
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    cancelled: bool = False
    seconds: float = 0.0
    shape: HeadShape | None = None  # what build_head needs to rebuild this head elsewhere
    model_key: str = ""  # the features this head was trained on; it answers only on those
    backbone: str = ""
    weights: str = ""
    model: keras.Model | None = None  # what trained: the head, or cut -> top blocks -> head
    base: keras.Model | None = None  # fine-tune: the backbone, its top blocks trained
    trainable_backbone_layers: list[str] = field(default_factory=list)
    stopped_early: bool = False  # early stopping ended the run before its last epoch

    @property
    def inputs(self) -> tuple[str, ...]:
        """What the trained model reads from the store."""
        if self.settings.mode == "finetune":
            return (CUT,)
        return ("main", *(self.shape.aux_outputs if self.shape else ()))

    def summary(self) -> dict:
        return {"classes": self.classes, "epochs_run": self.epochs_run,
                "best_epoch": self.best_epoch, "cancelled": self.cancelled,
                "stopped_early": self.stopped_early,
                "seconds": round(self.seconds, 2), "history": self.history,
                "settings": self.settings.as_dict()}


def sample_weights(labels: np.ndarray, n_classes: int, mode: str) -> np.ndarray | None:
    """Per-sample weights that give each class the same total weight (None when not needed)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts[counts > 0]
    if mode == "none" or not len(present):
        return None
    if mode == "auto" and present.max() / present.min() < 1.5:
        return None
    per_class = np.where(counts > 0, len(labels) / (len(present) * np.maximum(counts, 1)), 0.0)
    return per_class[labels].astype(np.float32)


def _optimizer(settings: TrainSettings, steps: int):
    import keras

    lr = settings.learning_rate
    if settings.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, steps), alpha=0.05)
    if settings.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    if settings.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    return keras.optimizers.Adam(lr)


def build_model(settings: TrainSettings, shape_of, backbone: tuple | None = None):
    """The model that trains: ``(model, head, base, top, shape)``.

    Head mode: the head alone on cached taps (``base`` is None). Fine-tune mode, with
    ``backbone`` = (spec, weights): cut tensor -> trainable top blocks -> head.
    ``shape_of(tap_shapes)`` gives the HeadShape for the taps the head reads.
    """
    if settings.mode == "head":
        shape = shape_of(None)
        head = build_head(shape)
        return head, head, None, None, shape
    from app.core.features.backbones import build_backbone
    from app.core.training.finetune_top import build_finetune_model

    if backbone is None:
        raise SettingsError("the fine-tune mode needs the backbone")
    spec, weights = backbone
    base = build_backbone(spec, weights)
    shapes: list[HeadShape] = []

    def remember(taps):
        shapes.append(shape_of(taps))
        return shapes[-1]

    model, head, top = build_finetune_model(spec, base, remember, build_head)
    return model, head, base, top, shapes[-1]


def train_head(train: SplitData, validation: SplitData | None, classes: list[str],
               settings: TrainSettings | None = None, progress: ProgressCallback = no_progress,
               cancel: CancelToken | None = None, backbone: tuple | None = None) -> TrainResult:
    """Train a fresh head (and, in the fine-tune mode, the backbone's top blocks with
    ``backbone`` = (spec, weights)); returns it with the best weights (lowest validation main
    loss). Features stream from the splits in shuffled batches."""
    from app.core.base.device import configure

    configure()
    import keras

    settings = settings or TrainSettings()
    cancel = cancel or CancelToken()
    if len(train) == 0:
        raise SettingsError("the training split is empty")
    keras.utils.set_random_seed(settings.seed)
    aux = ("aux1", "aux2") if settings.aux_weight > 0 else ()
    n = len(classes)
    outputs = ("main", *aux)
    finetune = settings.mode == "finetune"
    inputs = (CUT,) if finetune else outputs

    def shape_of(taps):
        return HeadShape(n, taps or train.shapes(outputs), settings.dropout,
                         settings.hidden_units, aux_outputs=aux)

    model, head, base, top, shape = build_model(settings, shape_of, backbone)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing)
    optimizer = _optimizer(settings, steps_per_epoch * settings.epochs)
    layer_names: list[str] = []
    if finetune:
        from app.core.training.finetune_top import scaled_optimizer, trainable_layer_names

        layer_names = trainable_layer_names(top)
        optimizer = scaled_optimizer(
            optimizer, top, settings.backbone_lr_scale,
            frozen_steps=steps_per_epoch * settings.warmup_epochs)
    model.compile(
        optimizer=optimizer,
        loss={o: loss for o in outputs},
        loss_weights={o: (1.0 if o == "main" else settings.aux_weight) for o in outputs},
        metrics={o: ["accuracy"] for o in outputs},
    )
    sw = sample_weights(train.labels, n, settings.class_weights)
    feed = make_feed(train, inputs, outputs, n, settings.batch_size, shuffle=True,
                     seed=settings.seed, sample_weights=sw,
                     flip=finetune and settings.augment == "flip")
    val = None
    if validation is not None and len(validation):
        val = make_feed(validation, inputs, outputs, n, max(settings.batch_size, 128),
                        shuffle=False, seed=0)
    stream = _make_stream(settings, cancel, progress, has_val=val is not None)
    start = time.perf_counter()
    model.fit(feed, validation_data=val, epochs=settings.epochs, verbose=0, callbacks=[stream])
    if stream.diverged:
        raise TrainingDiverged(
            f"training stopped: the loss was not a number (NaN or infinite) in epoch "
            f"{stream.diverged}; no model was kept. Non-finite values in the inputs (a damaged "
            f"cache: run caching again) or a learning rate too high "
            f"({settings.learning_rate:g}) cause this")
    if stream.best_weights is None and cancel.cancelled:
        raise Cancelled()  # not one epoch finished: there is no model to keep
    if stream.best_weights is not None:
        model.set_weights(stream.best_weights)
    return TrainResult(head, list(classes), settings, stream.history, stream.best_epoch,
                       len(stream.history), cancel.cancelled, time.perf_counter() - start, shape,
                       model=model, base=base, trainable_backbone_layers=layer_names,
                       stopped_early=stream.stopped_early)


def predict_split(result: TrainResult, data: SplitData, batch_size: int = 256
                  ) -> dict[str, np.ndarray]:
    """Probabilities of every output of the trained model on ``data``, streamed in batches."""
    model = result.model if result.model is not None else result.head
    outs: dict[str, list[np.ndarray]] = {}
    for _, x in data.batches(result.inputs, batch_size):
        probs = model.predict_on_batch(x)
        for name, p in (probs.items() if isinstance(probs, dict) else [("main", probs)]):
            outs.setdefault(name, []).append(np.asarray(p))
    n = len(result.classes)
    return {k: np.concatenate(v) if v else np.zeros((0, n), np.float32) for k, v in outs.items()}


def _normalise(logs: dict) -> dict:
    """Keras names a single output's metrics without its prefix: give them 'main_' back."""
    if "main_loss" in logs or "loss" not in logs or "aux1_loss" in logs:
        return logs
    out = dict(logs)
    for prefix in ("", "val_"):
        for m in ("loss", "accuracy"):
            if f"{prefix}{m}" in logs:
                out[f"{prefix}main_{m}"] = logs[f"{prefix}{m}"]
    return out


def _epoch_record(epoch: int, logs: dict) -> dict:
    logs = _normalise(logs)
    rec = {"epoch": epoch}
    for k in HISTORY_KEYS:
        v = logs.get(k)
        rec[k] = None if v is None else float(v)
    rec["loss"] = float(logs["loss"]) if "loss" in logs else None
    rec["val_loss"] = float(logs["val_loss"]) if "val_loss" in logs else None
    return rec


def _make_stream(settings: TrainSettings, cancel: CancelToken, progress: ProgressCallback,
                 has_val: bool):
    """The Keras callback; built here so that importing this module never imports Keras."""
    import keras

    return type("_Stream", (_StreamMixin, keras.callbacks.Callback), {})(
        settings, cancel, progress, has_val)


class _StreamMixin:
    """Streams metrics, honours cancel after every batch, remembers the best weights."""

    # Keras then calls the batch hook from its dispatch thread instead of syncing the device
    # after every batch; the hook only reads a flag and, rarely, the logs.
    async_safe = True

    def __init__(self, settings: TrainSettings, cancel: CancelToken, progress: ProgressCallback,
                 has_val: bool) -> None:
        super().__init__()
        self.settings, self.cancel, self.progress = settings, cancel, progress
        self.monitor = "val_main_loss" if has_val else "main_loss"
        self.history: list[dict] = []
        self.best = math.inf
        self.best_epoch = 0
        self.best_weights = None
        self.wait = 0
        self._last_stream = 0.0
        self._epoch = 0
        self.interrupted = False  # cancelled within an epoch: that epoch does not count
        self.stopped_early = False
        self.diverged = 0  # the epoch whose training loss was not finite (0: none)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1
        self._last_stream = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if self.cancel.cancelled:
            self.model.stop_training = True
            self.interrupted = True
            return
        now = time.monotonic()
        if logs and now - self._last_stream >= self.settings.stream_interval:
            self._last_stream = now
            partial = {k: float(v) for k, v in _normalise(logs).items() if k in METRIC_KEYS}
            self.progress(Progress("train", self._epoch - 1, self.settings.epochs,
                                   message=f"epoch {self._epoch}, batch {batch + 1}",
                                   data={"partial": True, "epoch": self._epoch, **partial}))

    def on_epoch_end(self, epoch, logs=None):
        if self.interrupted:  # Keras still validates a cut-short epoch; it is no epoch
            return
        logs = _normalise(logs or {})
        losses = [v for k, v in logs.items() if k.endswith("loss")]
        if any(not math.isfinite(float(v)) for v in losses):
            self.diverged = epoch + 1  # NaN never "improves": stop, keep nothing of it
            self.model.stop_training = True
            return
        rec = _epoch_record(epoch + 1, logs)
        value = logs.get(self.monitor)
        improved = value is not None and float(value) < self.best
        if improved:
            self.best, self.best_epoch, self.wait = float(value), epoch + 1, 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
        rec["best_epoch"] = self.best_epoch
        self.history.append(rec)
        self.progress(Progress("train", epoch + 1, self.settings.epochs,
                               message=format_epoch(rec), data={"partial": False, **rec}))
        patience = self.settings.early_stopping
        if patience and self.wait >= patience and not self.cancel.cancelled:
            self.stopped_early = epoch + 1 < self.settings.epochs
        if self.cancel.cancelled or (patience and self.wait >= patience):
            self.model.stop_training = True


def format_epoch(rec: dict) -> str:
    """One line a person can read: main and aux loss/accuracy, train and validation."""
    parts = [f"epoch {rec['epoch']}"]
    for o in OUTPUTS:
        if rec.get(f"{o}_loss") is None:
            continue
        text = f"{o} {rec[f'{o}_loss']:.3f}/{rec[f'{o}_accuracy']:.1%}"
        if rec.get(f"val_{o}_loss") is not None:
            text += f" val {rec[f'val_{o}_loss']:.3f}/{rec[f'val_{o}_accuracy']:.1%}"
        parts.append(text)
    return "  ".join(parts)
