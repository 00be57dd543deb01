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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from app.core.base.errors import SettingsError, UserError
from app.core.base.jobs import Cancelled, CancelToken, ProgressCallback, no_progress
from app.core.storage.store import CUT
from app.core.training.feeds import SplitData, make_feed
from app.core.training.head import HeadShape, build_head
from app.core.training.metrics import (  # noqa: F401  (API)
    HISTORY_KEYS,
    METRIC_KEYS,
    MULTI_LABEL_HISTORY_KEYS,
)
from app.core.training.settings import TrainSettings

if TYPE_CHECKING:
    import keras

class TrainingDiverged(UserError):
    """The loss became NaN or infinite: nothing trained is kept."""


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
    def averages(self) -> bool:
        """Whether the model answers with the mean of its outputs (it has aux outputs, and
        the settings ask for it)."""
        return self.settings.answer == "average" and bool(
            self.shape is not None and self.shape.aux_outputs)

    @property
    def multi_label(self) -> bool:
        """Several tags a photo: the outputs are a sigmoid per tag."""
        return bool(self.shape is not None and self.shape.multi_label)

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
    """Per-sample weights that give each class the same total weight (None when not needed).
    Several tags a photo (``labels`` multi-hot): a photo weighs the mean of its tags'
    weights (a photo with no tag: 1), so photos of rare tags count more."""
    multi = labels.ndim == 2
    counts = (labels.sum(axis=0) if multi else np.bincount(labels, minlength=n_classes)
              ).astype(np.float64)
    present = counts[counts > 0]
    if mode == "none" or not len(present):
        return None
    if mode == "auto" and present.max() / present.min() < 1.5:
        return None
    if multi:
        per_tag = np.where(counts > 0, present.mean() / np.maximum(counts, 1), 0.0)
        n_tags = labels.sum(axis=1)
        w = np.where(n_tags > 0, (labels @ per_tag) / np.maximum(n_tags, 1), 1.0)
        return (w / w.mean()).astype(np.float32)
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
    multi = train.labels.ndim == 2  # several tags a photo
    outputs = ("main", *aux)
    finetune = settings.mode == "finetune"
    inputs = (CUT,) if finetune else outputs

    def shape_of(taps):
        return HeadShape(n, taps or train.shapes(outputs), settings.dropout,
                         settings.hidden_units, aux_outputs=aux, multi_label=multi)

    model, head, base, top, shape = build_model(settings, shape_of, backbone)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    if multi:  # one yes/no a tag
        loss = keras.losses.BinaryCrossentropy(label_smoothing=settings.label_smoothing)

        def scores():
            return [keras.metrics.AUC(curve="PR", multi_label=True, name="map")]
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing)

        def scores():
            return ["accuracy"]
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
        metrics={o: scores() for o in outputs},
    )
    sw = sample_weights(train.labels, n, settings.class_weights)
    feed = make_feed(train, inputs, outputs, n, settings.batch_size, shuffle=True,
                     seed=settings.seed, sample_weights=sw,
                     flip=finetune and settings.augment == "flip")
    val = None
    if validation is not None and len(validation):
        val = make_feed(validation, inputs, outputs, n, max(settings.batch_size, 128),
                        shuffle=False, seed=0)
    from app.core.training.callbacks import RunState, run_callbacks

    stream = RunState("val_main_loss" if val is not None else "main_loss")
    start = time.perf_counter()
    model.fit(feed, validation_data=val, epochs=settings.epochs, verbose=0,
              callbacks=run_callbacks(stream, cancel, progress, settings.epochs,
                                      settings.early_stopping, settings.stream_interval))
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
