"""The table of training settings: each setting written once, with its default, help text,
range or choices and whether only the fine-tune mode uses it (Ultralytics' ``default.yaml`` +
``check_cfg``; Keras' typed arguments). The checks below, the command line's options
(``app.cli``) and the Train page's widgets (``app.gui.pages.train``) are all made from it, so a
setting cannot be missing from one of them (the warm-up epochs once were, from the window).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from app.core.base.errors import SettingsError

MODES = ("head", "finetune")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
SCHEDULES = ("cosine", "constant")
CLASS_WEIGHTS = ("auto", "none", "balanced")
AUGMENTATIONS = ("none", "flip")
# what the model answers with: the main output alone (GoogLeNet drops the aux outputs at
# inference), or the mean of the main and the aux outputs' probabilities (measured better on
# both flower sets, both modes, every backbone: docs/benchmarks.md)
ANSWERS = ("average", "main")


@dataclass(frozen=True)
class Setting:
    """How one setting is checked and offered. ``range``: inclusive bounds (a NaN is out of
    every range); ``choices``: the allowed words; ``finetune_only``: the head mode ignores it;
    ``cli``: the option's name when not ``--`` and the name with dashes; ``label``: the Train
    page's, with ``&`` before its Alt letter; ``step``/``decimals``: a float's spin box;
    ``shown``: on the command line and the Train page (else internal); ``mode_help``: help
    that depends on the mode, replacing ``help`` there."""

    help: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    finetune_only: bool = False
    cli: str | None = None
    label: str | None = None
    step: float | None = None
    decimals: int | None = None
    shown: bool = True
    mode_help: tuple[tuple[str, str], ...] = ()
    multi_label: Any = None  # the default for several tags a photo, when it differs

    def help_for(self, mode: str) -> str:
        return dict(self.mode_help).get(mode, self.help)


def setting(default: Any, help: str, **meta: Any):
    return field(default=default, metadata={"setting": Setting(help, **meta)})


@dataclass(frozen=True)
class TrainSettings:
    """Every knob of a training run, with defaults that work on typical photo folders."""

    mode: str = setting(
        "head", "head: train new heads on cached pooled taps (fast; the aux outputs are probes "
        "of intermediate layers). finetune: the backbone's top blocks train too, from a cached "
        "cut, and the aux losses shape the layers the main output uses", choices=MODES)
    epochs: int = setting(40, "How many passes over the training images (early stopping may "
                          "end sooner)", range=(1, 10000), label="&Epochs:")
    batch_size: int = setting(64, "Images per training step", range=(1, 4096),
                              cli="--train-batch-size", label="&Batch size:")
    optimizer: str = setting("adam", "Adam works almost everywhere; SGD with momentum and "
                             "RMSprop are alternatives", choices=OPTIMIZERS,
                             label="&Optimizer:")
    learning_rate: float = setting(1e-3, "Step size of the optimizer; lower it when the loss "
                                   "jumps around", range=(1e-6, 1.0), step=1e-4, decimals=6,
                                   label="&Learning rate:")
    schedule: str = setting("cosine", "The learning rate over the run: cosine lowers it "
                            "smoothly to 0 towards the end, or constant", choices=SCHEDULES,
                            label="Sc&hedule:")
    label_smoothing: float = setting(0.1, "Softens the targets a little; helps against "
                                     "over-confidence", range=(0.0, 0.99), step=0.05,
                                     decimals=2, label="Label s&moothing:")
    dropout: float = setting(0.4, "Fraction of features dropped while training; fights "
                             "over-fitting", range=(0.0, 0.95), step=0.05, decimals=2,
                             label="Dro&pout:")
    hidden_units: int = setting(0, "0 = a linear head on the features; more adds a hidden "
                                "layer", range=(0, 4096), label="H&idden units:",
                                multi_label=1024)
    aux_weight: float = setting(
        0.3, "Loss weight of each auxiliary output; 0 turns them off", range=(0.0, 10.0),
        step=0.05, decimals=2, label="&Aux weight:", mode_help=(
            ("head", "Weight of the two auxiliary outputs in the loss; 0 = off. In head-only "
                     "mode each trains alone on an intermediate layer's frozen features (the "
                     "weight does not change the main output), and the answer averages the "
                     "three outputs."),
            ("finetune", "Weight of the two auxiliary losses (GoogLeNet: 0.3); 0 = off. In "
                         "fine-tune mode they hang on trainable backbone blocks, so their "
                         "loss shapes the layers the main output uses.")))
    answer: str = setting("average", "What the model answers with: 'average' of the main and "
                          "the two auxiliary outputs (measured more accurate on every backbone "
                          "and both flower sets), or 'main' alone (GoogLeNet's way). With aux "
                          "weight 0 there are no aux outputs: main", choices=ANSWERS,
                          label="Ans&wer:", multi_label="main")
    class_weights: str = setting("auto", "Auto balances classes when their sizes differ a "
                                 "lot", choices=CLASS_WEIGHTS, label="&Class weights:")
    early_stopping: int = setting(10, "Stop after this many epochs without a better "
                                  "validation loss; 0 = off", range=(0, 1000),
                                  label="Early stoppin&g:")
    seed: int = setting(1, "Same seed, same data: same model", range=(0, 2**31 - 1),
                        label="See&d:")
    backbone_lr_scale: float = setting(
        0.1, "The backbone's trainable blocks learn this many times the learning rate (0.1 = "
        "ten times slower than the new classifiers)", range=(0.0, 10.0), step=0.05,
        decimals=3, finetune_only=True, label="Backbone L&R scale:")
    augment: str = setting("none", "'flip' mirrors the cached cut tensors left-right at "
                           "random; the backbone never runs again", choices=AUGMENTATIONS,
                           finetune_only=True, label="A&ugmentation:")
    warmup_epochs: int = setting(0, "Epochs in which only the new classifiers learn before "
                                 "the backbone blocks join (measured: no gain on Oxford-17 or "
                                 "flowers5)", range=(0, 1000), finetune_only=True,
                                 label="Warm-up epoc&hs:")
    stream_interval: float = setting(1.0, "Seconds between within-epoch updates",
                                     range=(0.0, 3600.0), shown=False)

    def __post_init__(self) -> None:
        problems = [p for f in fields(self) if (p := _check(f.name, getattr(self, f.name),
                                                            f.metadata["setting"]))]
        if self.mode == "finetune" and self.warmup_epochs >= self.epochs:
            problems.append("warm-up epochs must be fewer than the epochs, or the blocks never "
                            "train")
        if problems:
            raise SettingsError("; ".join(problems))

    @classmethod
    def for_task(cls, multi_label: bool, **given: Any) -> TrainSettings:
        """The settings ``given``, the others at their defaults for the task: several tags a
        photo has its own where the table says so (measured on VOC-dev with MobileNet,
        docs/benchmarks.md: a hidden layer of 1024 gave about 4 points of test mAP over a
        linear head, and the mean with the aux outputs 5-7 points less than the main output
        alone)."""
        if multi_label:
            given = {**{name: s.multi_label for name, _d, _t, s in table()
                        if s.multi_label is not None}, **given}
        return cls(**given)

    def for_other_task(self, multi_label: bool) -> TrainSettings:
        """These settings for a folder of the other task: each setting still at the other
        task's default takes this task's (a value the user set stays)."""
        changes = {}
        for name, default, _t, s in table():
            if s.multi_label is None:
                continue
            was, now = (default, s.multi_label) if multi_label else (s.multi_label, default)
            if getattr(self, name) == was:
                changes[name] = now
        return replace(self, **changes) if changes else self

    @classmethod
    def from_dict(cls, data: dict) -> TrainSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def as_dict(self) -> dict:
        return asdict(self)


def table() -> list[tuple[str, Any, type, Setting]]:
    """(name, default, type, setting) of every setting, in the table's order."""
    types = {"int": int, "float": float, "str": str}
    return [(f.name, f.default, types[f.type] if isinstance(f.type, str) else f.type,
             f.metadata["setting"]) for f in fields(TrainSettings)]


def _check(name: str, value: Any, s: Setting) -> str | None:
    words = name.replace("_", " ")
    if s.choices is not None:
        return None if value in s.choices else (
            f"unknown {words} {value!r}; choose {' or '.join(s.choices)}")
    if s.range is not None:
        lo, hi = s.range
        whole = isinstance(lo, int) and isinstance(hi, int)
        if whole and not (isinstance(value, int) and not isinstance(value, bool)):
            return f"{words} must be a whole number from {lo} to {hi}"
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and lo <= value <= hi):
            return f"{words} must be a number from {lo:g} to {hi:g}"
    return None
