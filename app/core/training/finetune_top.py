"""The fine-tune mode's trainable part: the backbone blocks above the cut (shared with the
backbone, so training them fine-tunes it), the GoogLeNet head on their pooled taps, and an
optimizer that moves the pretrained blocks slower than the new heads.

The cut itself (what is cached) is a feature concept: :mod:`app.core.features.cuts`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.core.features.backbones import BackboneSpec, pool_taps
from app.core.features.cuts import CUTS, tensor_at
from app.core.storage.store import CUT

if TYPE_CHECKING:
    import keras


def build_top(spec: BackboneSpec, base: keras.Model) -> keras.Model:
    """Cut tensor -> ``[aux1 map, aux2 map, final map]``, sharing ``base``'s layers (so
    training it fine-tunes ``base``)."""
    import keras

    c = CUTS[spec.name]
    return keras.Model(tensor_at(base, c.cut),
                       [tensor_at(base, c.aux[0]), tensor_at(base, c.aux[1]), base.output],
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

    top = build_top(spec, base)
    base.trainable = True
    cut_in = keras.Input(top.input.shape[1:], name=CUT)
    a1, a2, final = top(cut_in, training=False)
    taps = dict(zip(("main", "aux1", "aux2"), pool_taps(final, a1, a2)))
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
