"""How far a trained model's answers can be trusted, fitted after training: the temperature
that calibrates its main probabilities, and the "unknown" score with its threshold, both on
the validation split.

Both come from the main-tap features and the answer's logits of the trained model on cached
data (:func:`main_outputs`): in the head mode the features are the cached main tap itself; in
the fine-tune mode they come out of the trained top blocks. The answer is the main output, or
the mean of the main and the aux outputs when the run answers with the average
(``TrainSettings.answer``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.core.base.jobs import KERAS_BUILDS
from app.core.training.feeds import SplitData
from app.core.training.fit import TrainResult
from app.core.training.head import logits_branch
from app.core.trust.calibration import averaged_logits, safe_temperature, softmax
from app.core.trust.unknown import DEFAULT_METHOD, UnknownDetector, fit_detector, reference_rows


@dataclass
class Trust:
    """What was fitted on the validation split (pickles: crosses the training child)."""

    temperature: float = 1.0
    detector: UnknownDetector | None = None  # None: no "unknown" answers (see note)
    note: str = ""  # empty when fitted; else why not (the defaults then apply)


def main_outputs(result: TrainResult, data: SplitData, batch_size: int = 256
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Main-tap features (N, D) and the answer's logits (N, C) of the trained model on
    ``data``'s cached rows, streamed in batches (dropout off), in one pass of the model: the
    main logits, or those of the mean of every output's probabilities when the run answers
    with the average."""
    import keras

    finetune = result.settings.mode == "finetune"
    average = result.averages
    with KERAS_BUILDS:  # sub-models over the run's layers, which an export may be building on
        branch = logits_branch(result.head)
        if finetune:  # the main tap comes out of the trained top blocks
            tap = result.model.get_layer("main_tap").output
            taps = keras.Model(result.model.input,
                               [tap, result.model.output] if average else tap)
    feats, logits = [], []
    for _, x in data.batches(result.inputs if finetune or average else ("main",), batch_size):
        probs = None
        if finetune and average:
            f, probs = taps.predict_on_batch(x)
        elif finetune:
            f = taps.predict_on_batch(x)
        else:
            f = x["main"]
            probs = result.head.predict_on_batch(x) if average else None
        feats.append(np.asarray(f, np.float32))
        if probs is None:
            logits.append(np.asarray(branch.predict_on_batch(f), np.float32))
        else:
            logits.append(averaged_logits([probs[o] for o in ("main", *result.shape.aux_outputs)]))
    if not feats:
        dim = int(branch.input.shape[-1])
        return np.zeros((0, dim), np.float32), np.zeros((0, len(result.classes)), np.float32)
    return np.concatenate(feats), np.concatenate(logits)


def fit_trust(result: TrainResult, splits: dict[str, SplitData],
              method: str = DEFAULT_METHOD) -> Trust:
    """The temperature and the unknown detector (``method``, built from the training split),
    both fitted on the validation split; with that split empty, temperature 1.0, no detector
    and a note saying why."""
    val = splits.get("validation")
    if val is None or not len(val):
        return Trust(note="the validation split is empty: probabilities are not calibrated "
                          "and no image can be called unknown")
    features, logits = main_outputs(result, val)
    temperature, note = safe_temperature(logits, val.labels)
    train = splits["train"]
    train_features = None
    if method != "max_probability":  # features of the reference images only
        train = train.take(reference_rows(len(train)))
        train_features = main_outputs(result, train)[0]
    detector = fit_detector(method, train_features, train.labels, len(result.classes),
                            features, softmax(logits, temperature),
                            pool_training=result.settings.mode == "head")
    return Trust(temperature=temperature, detector=detector, note=note)
