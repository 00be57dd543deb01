"""The exported model's answer when it answers with the mean of its outputs: the main and the
aux outputs' logits in, calibrated probabilities out.

    softmax(log(max(mean(softmax(main), softmax(aux1), softmax(aux2)), 1e-30)) / temperature)

The same as :func:`app.core.trust.calibration.averaged_logits` then
:func:`~app.core.trust.calibration.softmax` with the temperature, in the graph, built from
Keras' own layers only: a client with nothing but Keras opens the model with
``keras.models.load_model`` (safe mode refuses a Lambda, and a layer of ours cannot be found
there). Imported only once Keras is wanted.

:class:`AverageAnswer` is the registered layer that model folders exported before that held
(their files name it as ``bottleneck_studio>AverageAnswer`` in this module): importing this
module lets the app open them.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

FLOOR = 1e-30  # a probability that underflowed to 0 still has a logarithm


def average_answer(logits: dict, temperature: float = 1.0, name: str = "answer"):
    """The calibrated mean of the outputs whose logits ``logits`` holds ({output: tensor}),
    as a tensor (layer ``name``; its temperature in the ``Rescaling`` ``{name}_temperature``).

    The log of the mean is a log-sum-exp of the outputs' log-probabilities: stacked as
    ``S`` (batch, classes, outputs), ``LSE = max(S) - max(log_softmax(S))`` over the outputs.
    Both maxima come from the same column, the one log_softmax computes without rounding
    (``-log(sum(exp(S - max)))``), so the answer is as exact as float32 allows even for
    logits in the thousands (averaging the columns instead is off by 1e-4 there). The
    floor: ``x + relu(c - x) = max(x, c)``; the ``log(outputs)`` in ``c`` cancels in the
    softmax, as does the constant that the temperature divides."""
    names = list(logits)
    n = int(logits[names[0]].shape[-1])
    f32 = {"dtype": "float32"}
    columns = [layers.Reshape((n, 1), name=f"{name}_{out}_column", **f32)(
        layers.Activation("log_softmax", name=f"{name}_{out}_log_probs", **f32)(logits[out]))
        for out in names]
    stack = layers.Concatenate(axis=-1, name=f"{name}_stack", **f32)(columns)
    shifted = layers.Activation("log_softmax", name=f"{name}_stack_log_softmax", **f32)(stack)
    top = layers.GlobalMaxPooling1D(data_format="channels_first", name=f"{name}_top", **f32)
    top_shifted = layers.GlobalMaxPooling1D(data_format="channels_first",
                                            name=f"{name}_top_shifted", **f32)
    log_sum = layers.Subtract(name=f"{name}_log_sum", **f32)([top(stack), top_shifted(shifted)])
    floor = math.log(FLOOR) + math.log(len(names))
    lift = layers.ReLU(name=f"{name}_floor_lift", **f32)(
        layers.Rescaling(-1.0, offset=floor, name=f"{name}_floor_gap", **f32)(log_sum))
    log_mean = layers.Add(name=f"{name}_log_mean", **f32)([log_sum, lift])
    scaled = layers.Rescaling(1.0 / float(temperature), name=f"{name}_temperature",
                              **f32)(log_mean)
    return layers.Softmax(name=name, **f32)(scaled)


@keras.saving.register_keras_serializable(package="bottleneck_studio", name="AverageAnswer")
class AverageAnswer(keras.layers.Layer):
    """The answer as one layer of ours (the main logits and the aux probabilities in): how
    model folders exported before the built-in :func:`average_answer` compute it. Kept to
    load them; new exports never use it."""

    def __init__(self, temperature: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, inputs):
        logits, *aux = inputs
        probs = [ops.softmax(ops.cast(logits, "float32"), axis=-1),
                 *(ops.cast(a, "float32") for a in aux)]
        mean = ops.mean(ops.stack(probs, axis=0), axis=0)
        return ops.softmax(ops.log(ops.maximum(mean, FLOOR)) / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature}
