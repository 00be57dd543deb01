"""The fine-tune mode: GoogLeNet's auxiliary classifiers on *trainable* backbone blocks.

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

from app.core.features.backbones import (
    AUX_POOL,
    BackboneSpec,
    build_backbone,
    model_key,
    scaling_layer,
)
from app.core.storage.store import CUT

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


def cut_key(spec: BackboneSpec, weights: str, signature: str | None = None) -> str:
    """The store key of ``spec``'s cut tensors: the model key plus the cut."""
    return f"{model_key(spec, weights, signature)}|cut:{CUTS[spec.name].cut}"


def features_key(spec: BackboneSpec, weights: str, mode: str, signature: str | None = None
                 ) -> str:
    """What a mode trains from: pooled taps (``head``) or the cut tensor (``finetune``)."""
    if mode == "finetune":
        return cut_key(spec, weights, signature)
    return model_key(spec, weights, signature)


def _tensor(base: keras.Model, name: str):
    if name.startswith(INPUT_OF):
        return base.get_layer(name[len(INPUT_OF):]).input
    return base.get_layer(name).output


def cut_tensor(spec: BackboneSpec, base: keras.Model):
    """The symbolic tensor of ``base`` at ``spec``'s cut."""
    return _tensor(base, CUTS[spec.name].cut)


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
    inp = keras.Input((spec.image_size, spec.image_size, 3), name="pixels")
    scale = scaling_layer(spec)
    out = lower(scale(inp) if scale is not None else inp)
    model = keras.Model(inp, [out], name=f"{spec.name}_cut_extractor")
    model.trainable = False
    return model


def build_top(spec: BackboneSpec, base: keras.Model) -> keras.Model:
    """Cut tensor -> ``[aux1 map, aux2 map, final map]``, sharing ``base``'s layers (so
    training it fine-tunes ``base``)."""
    import keras

    c = CUTS[spec.name]
    return keras.Model(_tensor(base, c.cut),
                       [_tensor(base, c.aux[0]), _tensor(base, c.aux[1]), base.output],
                       name=f"{spec.name}_top")


def trainable_layer_names(top: keras.Model) -> list[str]:
    """The backbone layers that train in the fine-tune mode (those with weights)."""
    return [layer.name for layer in top.layers if layer.weights]


def build_finetune_model(spec: BackboneSpec, base: keras.Model, shape_of, build_head):
    """The training model: cut tensor -> top blocks (BatchNorm in inference mode) -> pooled
    taps -> GoogLeNet head. ``shape_of(tap_shapes)`` gives the head's HeadShape.

    Returns ``(model, head, top)``.
    """
    import keras
    from keras import layers

    top = build_top(spec, base)
    base.trainable = True
    cut_in = keras.Input(top.input.shape[1:], name=CUT)
    a1, a2, final = top(cut_in, training=False)
    taps = {
        "main": layers.GlobalAveragePooling2D(name="main_tap")(final),
        "aux1": layers.AveragePooling2D(AUX_POOL[0], strides=AUX_POOL[1], name="aux1_tap")(a1),
        "aux2": layers.AveragePooling2D(AUX_POOL[0], strides=AUX_POOL[1], name="aux2_tap")(a2),
    }
    shape = shape_of({k: tuple(v.shape[1:]) for k, v in taps.items()})
    head = build_head(shape)
    outputs = head({k: taps[k] for k in ("main", *shape.aux_outputs)})
    return keras.Model({CUT: cut_in}, outputs, name="finetune"), head, top


def scaled_optimizer(optimizer: keras.optimizers.Optimizer, slow: keras.Model, scale: float,
                     frozen_steps: int = 0):
    """``optimizer`` with the learning rate of ``slow``'s variables multiplied by ``scale``
    (Keras 3 has no per-variable learning rate; its update step is per variable), and zero for
    the first ``frozen_steps`` steps: the new heads warm up on the pretrained blocks before those
    move, so that a random head's first large gradients do not wreck them (Keras'
    transfer-learning guide trains the head first, then unfreezes)."""
    from keras import ops

    slow_paths = {v.path for v in slow.trainable_variables}
    base_cls = type(optimizer)

    class Scaled(base_cls):
        def update_step(self, gradient, variable, learning_rate):
            index = self._get_variable_index(variable)
            if self._trainable_variables[index].path in slow_paths:
                learning_rate = learning_rate * scale
                if frozen_steps:
                    learning_rate = ops.where(self.iterations < frozen_steps,
                                              ops.zeros_like(learning_rate), learning_rate)
            return super().update_step(gradient, variable, learning_rate)

    scaled = Scaled.from_config(optimizer.get_config())
    return scaled
