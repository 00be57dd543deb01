"""The trainable head: GoogLeNet's main classifier plus its two auxiliary classifiers.

Inputs are the cached taps only, so training never runs the backbone. ``main``: dropout ->
(optional hidden layer) -> dense logits (``main_logits``) -> softmax (``main_probs``), so that
temperature scaling can divide the logits before the softmax. ``aux1``/``aux2``: 1x1 conv
128 -> dense 1024 -> dropout 0.7 -> softmax, on the 5x5/3-pooled intermediate taps. An aux
output whose loss weight is 0 is not built at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

OUTPUTS = ("main", "aux1", "aux2")


@dataclass(frozen=True)
class HeadShape:
    n_classes: int
    tap_shapes: dict[str, tuple[int, ...]]
    dropout: float = 0.4
    hidden_units: int = 0
    aux_dropout: float = 0.7
    aux_outputs: tuple[str, ...] = ("aux1", "aux2")
    multi_label: bool = False  # several tags a photo: a sigmoid per tag, not one softmax


def build_head(shape: HeadShape) -> keras.Model:
    """A functional model: dict of tap arrays -> dict of softmax outputs named after OUTPUTS
    (sigmoid outputs, one per tag, when ``shape.multi_label``)."""
    from app.core.base.device import configure

    configure()
    import keras
    from keras import layers

    n = shape.n_classes
    main_in = keras.Input(shape.tap_shapes["main"], name="main")
    x = layers.Dropout(shape.dropout, name="main_dropout")(main_in)
    if shape.hidden_units:
        x = layers.Dense(shape.hidden_units, activation="relu", name="main_hidden")(x)
        x = layers.Dropout(shape.dropout, name="main_hidden_dropout")(x)
    inputs = {"main": main_in}
    logits = layers.Dense(n, name="main_logits", dtype="float32")(x)
    last = "sigmoid" if shape.multi_label else "softmax"
    probs = (layers.Activation("sigmoid", name="main_probs", dtype="float32") if shape.multi_label
             else layers.Softmax(name="main_probs", dtype="float32"))
    outputs = {"main": probs(logits)}
    for aux in shape.aux_outputs:
        a_in = keras.Input(shape.tap_shapes[aux], name=aux)
        a = layers.Conv2D(128, 1, activation="relu", name=f"{aux}_conv1x1")(a_in)
        a = layers.Flatten(name=f"{aux}_flatten")(a)
        a = layers.Dense(1024, activation="relu", name=f"{aux}_fc")(a)
        a = layers.Dropout(shape.aux_dropout, name=f"{aux}_dropout")(a)
        inputs[aux] = a_in
        outputs[aux] = layers.Dense(n, activation=last, name=f"{aux}_probs",
                                    dtype="float32")(a)
    return keras.Model(inputs, outputs, name="head")


def main_branch(head: keras.Model, temperature: float | list[float] = 1.0) -> keras.Model:
    """The main classifier alone (shared layers), its logits divided by ``temperature``
    before the softmax (a built-in ``Rescaling`` layer, so Keras' safe mode loads it): what
    inference and export use. The probabilities are calibrated when ``temperature`` is the one
    fitted on the validation split. A multi-label head (several tags a photo): ``temperature``
    is one per tag, and a sigmoid per tag replaces the softmax."""
    import keras
    from keras import layers

    if isinstance(temperature, (list, tuple)):
        scale: float | list[float] = [1.0 / float(t) for t in temperature]
    else:
        scale = 1.0 / float(temperature)
    scaled = layers.Rescaling(scale, name="main_temperature",
                              dtype="float32")(head.get_layer("main_logits").output)
    if is_multi_label(head):
        probs = layers.Activation("sigmoid", name="main_probs", dtype="float32")(scaled)
    else:
        probs = layers.Softmax(name="main_probs", dtype="float32")(scaled)
    return keras.Model(head.get_layer("main").output, probs, name="main_head")


def is_multi_label(head: keras.Model) -> bool:
    """Whether ``head`` gives a sigmoid per tag (several tags a photo)."""
    from keras import layers

    return not isinstance(head.get_layer("main_probs"), layers.Softmax)


def logits_branch(head: keras.Model) -> keras.Model:
    """Main-tap features -> main logits (shared layers), for fitting the temperature."""
    import keras

    return keras.Model(head.get_layer("main").output, head.get_layer("main_logits").output,
                       name="main_logits_head")


def reapplied(head: keras.Model, taps: dict) -> tuple:
    """The head's own layers applied to new tap tensors, flat (no nested model: two nested
    models sharing the main layers do not survive a save and load): the main logits and
    each aux output's logits, ``(logits, {aux: logits})``. An aux head ends in a softmax
    Dense (``{aux}_probs``); its logits come from a linear copy of it (``{aux}_logits``, the
    same weights, copied now), which the built-in answer needs: Keras has no log layer to
    undo the softmax. Dropout is off outside training, as in the head."""
    from keras import layers

    names = {layer.name for layer in head.layers}
    x = head.get_layer("main_dropout")(taps["main"])
    if "main_hidden" in names:
        x = head.get_layer("main_hidden_dropout")(head.get_layer("main_hidden")(x))
    logits = head.get_layer("main_logits")(x)
    aux = {}
    for name in ("aux1", "aux2"):
        if f"{name}_probs" not in names:
            continue
        a = taps[name]
        for part in ("conv1x1", "flatten", "fc", "dropout"):
            a = head.get_layer(f"{name}_{part}")(a)
        probs = head.get_layer(f"{name}_probs")
        linear = layers.Dense(probs.units, name=f"{name}_logits", dtype=probs.dtype_policy)
        aux[name] = linear(a)
        linear.set_weights(probs.get_weights())
    return logits, aux
