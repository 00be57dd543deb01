"""The Train page's mode choice (head-only or fine-tune) and what it costs: the layers that
train, the disk space of the features the mode needs, the expected time per epoch.

Nothing here builds a Keras model: the layers come from the last fine-tune run of the chosen
backbone (before it, the cut spec's reason), sizes from the cache result once cached (before,
an estimate from the tensor shapes), times from measured runs only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QGroupBox,
    QLabel,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from app.core.features.cuts import CUTS, feature_bytes_per_image
from app.gui.widgets import duration

HEAD_TEXT = ("New classifiers on cached features: fast; the two auxiliary outputs read "
             "intermediate layers, and the answer averages them with the main output "
             "(unless Answer says main, as it does for several tags a photo).")
FINETUNE_TEXT = ("The backbone's top blocks train too, from a cached cut; the auxiliary losses "
                 "(weight 0.3) shape the layers the main output uses. Slower; measured, it "
                 "helped on small, blurry photos and matched head-only on sharp ones.")
TITLES = {"head": "head-only", "finetune": "fine-tune"}

def bytes_per_image(backbone: str, mode: str) -> int | None:
    """Estimated disk bytes an image of the features ``mode`` needs (None: unknown)."""
    try:
        return feature_bytes_per_image(backbone, mode)
    except KeyError:
        return None


def seconds_text(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else duration(seconds)


def size_text(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


@dataclass
class TrainContext:
    """What the window knows that the mode box describes."""

    backbone: str = ""
    images: int = 0  # images to cache
    train_images: int = 0
    cache: object | None = None  # a CacheResult of this backbone, or None
    seconds_per_image: dict[str, float | None] = field(default_factory=dict)  # per mode
    layers: list[str] = field(default_factory=list)  # of the last fine-tune run


class ModeBox(QGroupBox):
    changed = Signal(str)

    def __init__(self) -> None:
        super().__init__("Mode")
        self.buttons = {"head": QRadioButton("Head onl&y"),
                        "finetune": QRadioButton("Fi&ne-tune")}
        self.group = QButtonGroup(self)
        layout = QVBoxLayout(self)
        for mode, text in (("head", HEAD_TEXT), ("finetune", FINETUNE_TEXT)):
            button = self.buttons[mode]
            button.setToolTip(text)
            self.group.addButton(button)
            label = QLabel(text)
            label.setWordWrap(True)
            label.setIndent(22)
            layout.addWidget(button)
            layout.addWidget(label)
        self.layers = QLabel("")
        self.cache = QLabel("")
        self.time = QLabel("")
        self.details = QWidget()  # the page places it where there is room for long lines
        details = QVBoxLayout(self.details)
        details.setContentsMargins(0, 0, 0, 0)
        for label in (self.layers, self.cache, self.time):
            label.setWordWrap(True)
            details.addWidget(label)
        self.context = TrainContext()
        self.buttons["head"].setChecked(True)
        self.group.buttonToggled.connect(self._toggled)

    def mode(self) -> str:
        return "finetune" if self.buttons["finetune"].isChecked() else "head"

    def set_mode(self, mode: str) -> None:
        self.buttons["finetune" if mode == "finetune" else "head"].setChecked(True)

    def _toggled(self, button, checked: bool) -> None:
        if checked:
            self.describe(self.context)
            self.changed.emit(self.mode())

    def describe(self, context: TrainContext) -> None:
        self.context = context
        mode = self.mode()
        self.layers.setText(self._layers_text(context, mode))
        self.cache.setText(self._cache_text(context, mode))
        self.time.setText(self._time_text(context, mode))

    @staticmethod
    def _layers_text(c: TrainContext, mode: str) -> str:
        if mode == "head":
            return "Layers that train: the new classifiers only; the backbone stays frozen."
        if c.layers:
            return (f"Layers that train (last fine-tune run): {', '.join(c.layers)} "
                    "and the new classifiers.")
        cut = CUTS.get(c.backbone)
        if cut is None:
            return "Layers that train: shown after the first fine-tune run."
        return (f"Layers that train: the blocks above {cut.cut} ({cut.why}); their names are "
                "listed after the first fine-tune run.")

    @staticmethod
    def _cache_text(c: TrainContext, mode: str) -> str:
        what = "the cut tensor" if mode == "finetune" else "pooled features"
        cache = c.cache
        if cache is not None and getattr(cache, "mode", "") == mode and cache.disk_bytes:
            return (f"Cache: {size_text(cache.disk_bytes)} on disk ({what} of "
                    f"{cache.ready} images).")
        per = bytes_per_image(c.backbone, mode)
        if per is None or not c.images:
            return f"Cache: {what}; its size is known once cached."
        return (f"Cache needed: about {size_text(per * c.images)} ({what}, "
                f"{size_text(per)} an image × {c.images} images; estimate).")

    @staticmethod
    def _time_text(c: TrainContext, mode: str) -> str:
        per = c.seconds_per_image.get(mode)
        if per is None or not c.train_images:
            return ("Expected time per epoch: unknown until the first epoch "
                    f"(no {TITLES[mode]} run of this backbone measured yet).")
        return (f"Expected time per epoch: about {seconds_text(per * c.train_images)} "
                f"(measured on the last {TITLES[mode]} run, scaled to {c.train_images} "
                "training images).")
