"""The exported model's last layer when it answers with the mean of its outputs: the main
output's logits and the aux outputs' probabilities in, calibrated probabilities out.

    softmax(log(mean(softmax(main_logits), aux1, aux2)) / temperature)

The same as :func:`app.core.trust.calibration.averaged_logits` then
:func:`~app.core.trust.calibration.softmax` with the temperature, in the graph. A built-in
layer cannot say it (Keras' safe mode refuses a Lambda), so it is a small registered layer;
the model folder's ``predict.py`` carries the same class (held equal by a test). Imported
only once Keras is wanted.
"""

from __future__ import annotations

import keras
from keras import ops

FLOOR = 1e-30  # a probability that underflowed to 0 still has a logarithm


@keras.saving.register_keras_serializable(package="bottleneck_studio", name="AverageAnswer")
class AverageAnswer(keras.layers.Layer):
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
