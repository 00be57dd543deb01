"""The exported classifier's graph: backbone + head(s) as one Keras model of built-in layers,
taking raw pixels and giving calibrated probabilities; the taps extractor Predict uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.core.base.jobs import KERAS_BUILDS
from app.core.features.backbones import BackboneSpec, build_image_model
from app.core.training.fit import TrainResult
from app.core.training.head import main_branch, reapplied

if TYPE_CHECKING:
    import keras



def classifier_model(spec: BackboneSpec, weights: str, head: keras.Model,
                     backbone: keras.Model | None = None, temperature: float = 1.0,
                     aux_layers: tuple[str, str] | None = None,
                     temperatures: list[float] | None = None) -> keras.Model:
    """Pixels -> class probabilities: backbone, main tap (layer ``main_tap``) and main head
    (its logits divided by ``temperature``) as one model; with ``aux_layers`` (a run that
    answers with the average) the aux taps and heads too, and the answer: the mean of the
    three outputs, calibrated with ``temperature``, in Keras' built-in layers only (ending in
    the layer ``answer``), so plain Keras loads the model. A multi-label head: a sigmoid per
    tag, each tag's logit divided by its own temperature (``temperatures``)."""
    import keras

    with KERAS_BUILDS:  # over a trained run's layers, which a review may be reading
        features = build_image_model(spec, weights, backbone, aux_layers)
        if aux_layers is None:
            probs = main_branch(head, temperatures or temperature)(features.output)
        else:
            from app.core.training.answer import average_answer

            main_tap, aux1, aux2 = features.outputs
            logits, aux = reapplied(head, {"main": main_tap, "aux1": aux1, "aux2": aux2})
            probs = average_answer({"main": logits, **aux}, temperature)
        return keras.Model(features.input, probs, name="bottleneck_studio_classifier")


def taps_extractor(spec: BackboneSpec, model: keras.Model) -> keras.Model:
    """The cache's extractor (uint8 pixels -> ``[main, aux1, aux2]`` pooled taps, as
    :func:`~app.core.features.backbones.build_extractor` makes it) on the frozen backbone
    inside a head-mode :func:`classifier_model` (one just built, or loaded from a model
    folder): what Predict runs for photos that are not in the cache, with no weights file."""
    import keras

    from app.core.features.backbones import build_extractor, pixel_input, pool_taps

    with KERAS_BUILDS:
        names = {layer.name for layer in model.layers}
        if f"{spec.name}_taps" in names:  # a model answering with the average
            inp, x = pixel_input(spec)
            out = pool_taps(*model.get_layer(f"{spec.name}_taps")(x))
            extractor = keras.Model(inp, out, name=f"{spec.name}_extractor")
            extractor.trainable = False
            return extractor
        base = next((layer for layer in model.layers if isinstance(layer, keras.Model)
                     and layer.name != "main_head"), None)
        if base is None:
            raise ValueError("the model holds no backbone to extract taps with")
        return build_extractor(spec, "none", backbone=base)


def answer_taps(spec: BackboneSpec, result: TrainResult) -> tuple[str, str] | None:
    """The backbone layers a run answering with the average reads its aux taps from (those
    the cache pooled in the head mode, the top blocks' in the fine-tune mode); None when it
    answers with the main output."""
    if not result.averages:
        return None
    if result.settings.mode == "finetune":
        from app.core.features.cuts import CUTS

        return tuple(CUTS[spec.name].aux)
    return tuple(spec.aux_layers)


