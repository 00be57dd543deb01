"""The fine-tune mode's cut: where the frozen backbone stops and GoogLeNet's auxiliary
classifiers on *trainable* blocks begin (those blocks: :mod:`app.core.training.finetune_top`).

Each backbone has a **cut**: the frozen part below it runs once per image and its spatial
output is cached (:data:`app.core.storage.store.CUT`); the blocks above it train, starting from the
ImageNet weights. ``aux1`` and ``aux2`` hang on trainable blocks with trainable blocks between
them and the main output, so their loss (weight 0.3) sends gradient into layers the main output
uses: the aux weight changes the main classifier, as in the paper. BatchNorm in the trainable
blocks stays in inference mode (the blocks are called with ``training=False``), and the blocks
learn ``backbone_lr_scale`` times slower than the new heads, after ``warmup_epochs`` in which
only the heads learn.

Why these cuts: the trainable part is the last one or two stages, 14x14 or 17x17 maps, so
the cached tensor stays 40-525 KB an image in float16 and an epoch costs a fraction of the
backbone's FLOPs (``benchmarks/finetune.py`` prints the share), while the trainable part
holds the most class-specific features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.features.backbones import BackboneSpec, build_backbone, pixel_input

if TYPE_CHECKING:
    import keras

INPUT_OF = "input of "


@dataclass(frozen=True)
class CutSpec:
    cut: str  # a layer whose output is cached, or "input of LAYER" where the name is unstable
    aux: tuple[str, str]  # trainable layers the auxiliary classifiers hang on
    why: str


CUTS: dict[str, CutSpec] = {
    "inception_v3": CutSpec("mixed7", ("mixed8", "mixed9"),
                            "17x17x768 (444 KB); trains mixed8-10, 42% of the FLOPs above 17x17"),
    "xception": CutSpec(f"{INPUT_OF}block13_sepconv1_act",
                        ("block13_sepconv2_act", "block14_sepconv1_act"),
                        "19x19x728 (525 KB); trains the exit flow (blocks 13-14)"),
    "mobilenet": CutSpec("conv_pw_10_relu", ("conv_pw_11_relu", "conv_pw_12_relu"),
                         "14x14x512 (200 KB); trains blocks 11-13, 23% of the FLOPs"),
    "mobilenet_v2": CutSpec("block_12_add", ("block_14_add", "block_15_add"),
                            "14x14x96 (37 KB); trains blocks 13-16 and the last 1x1 conv"),
    "efficientnet_b0": CutSpec("block5c_add", ("block6b_add", "block6d_add"),
                               "14x14x112 (44 KB); trains stages 6-7 and the top conv"),
    "resnet50": CutSpec("conv4_block6_out", ("conv5_block1_out", "conv5_block2_out"),
                        "14x14x1024 (401 KB); trains stage conv5"),
    "tiny": CutSpec("tiny_block2", ("tiny_block3", "tiny_pool2"), "tests only"),
}


# What the store keeps per image, by backbone: the pooled taps (head mode) and the cut
# (fine-tune mode), without building a model (tests/core/test_finetune.py checks them against
# the real extractors).
TAP_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "inception_v3": {"main": (2048,), "aux1": (5, 5, 768), "aux2": (5, 5, 768)},
    "xception": {"main": (2048,), "aux1": (5, 5, 728), "aux2": (5, 5, 728)},
    "mobilenet": {"main": (1024,), "aux1": (4, 4, 512), "aux2": (4, 4, 512)},
    "mobilenet_v2": {"main": (1280,), "aux1": (4, 4, 96), "aux2": (1, 1, 160)},
    "efficientnet_b0": {"main": (1280,), "aux1": (4, 4, 112), "aux2": (1, 1, 192)},
    "resnet50": {"main": (2048,), "aux1": (4, 4, 1024), "aux2": (4, 4, 1024)},
    "tiny": {"main": (32,), "aux1": (4, 4, 16), "aux2": (4, 4, 16)},
}
CUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "inception_v3": (17, 17, 768), "xception": (19, 19, 728), "mobilenet": (14, 14, 512),
    "mobilenet_v2": (14, 14, 96), "efficientnet_b0": (14, 14, 112),
    "resnet50": (14, 14, 1024), "tiny": (16, 16, 16),
}


def feature_bytes_per_image(backbone: str, mode: str) -> int:
    """Bytes the store keeps per image for ``mode`` (float16), without Keras."""
    if mode == "finetune":
        shapes = [CUT_SHAPES[backbone]]
    else:
        shapes = list(TAP_SHAPES[backbone].values())
    return sum(2 * math.prod(s) for s in shapes)


def tensor_at(base: keras.Model, name: str):
    if name.startswith(INPUT_OF):
        return base.get_layer(name[len(INPUT_OF):]).input
    return base.get_layer(name).output


def cut_tensor(spec: BackboneSpec, base: keras.Model):
    """The symbolic tensor of ``base`` at ``spec``'s cut."""
    return tensor_at(base, CUTS[spec.name].cut)


def build_cut_extractor(spec: BackboneSpec, weights: str, backbone: keras.Model | None = None,
                        progress=None, cancel=None) -> keras.Model:
    """Pixels (0..255) -> ``[cut tensor (N, h, w, c)]``: the frozen part, scaling inside."""
    from app.core.base.device import configure

    configure()
    import keras

    from app.core.base.jobs import no_progress

    base = backbone if backbone is not None else build_backbone(
        spec, weights, progress or no_progress, cancel)
    lower = keras.Model(base.input, cut_tensor(spec, base), name=f"{spec.name}_cut")
    inp, x = pixel_input(spec)
    out = lower(x)
    model = keras.Model(inp, [out], name=f"{spec.name}_cut_extractor")
    model.trainable = False
    return model


