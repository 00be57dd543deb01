"""Parity: the exported model, loaded back, against the app's own answers on validation images,
and how far a plain decode (no JPEG draft) moves its answers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from app.core.delivery.export.report import PARITY_IMAGES, PARITY_TOLERANCE, ParityReport
from app.core.intake.imaging import ImageError, load_rgb
from app.core.training.fit import SplitData, TrainResult
from app.core.trust.calibration import softmax
from app.core.trust.fitting import main_outputs
from app.core.trust.tags import TagTrust

if TYPE_CHECKING:
    import keras



def check_parity(model: keras.Model, result: TrainResult, validation: SplitData,
                 image_size: tuple[int, int], limit: int = PARITY_IMAGES,
                 tolerance: float = PARITY_TOLERANCE["float32"], temperature: float = 1.0,
                 tags: TagTrust | None = None) -> ParityReport:
    """Exported model on decoded images vs. the trained model on cached features (taps or
    cut tensors), same images, both calibrated with ``temperature``. A multi-label model
    (``tags``): calibrated per tag, and a mismatch is a photo whose tag set differs."""
    pixels, index = [], []
    for i, path in enumerate(validation.paths[:limit]):
        try:
            pixels.append(load_rgb(path, image_size))
            index.append(i)
        except ImageError:
            continue  # a file changed since caching: nothing to compare
    if not pixels:
        return ParityReport(0, 0.0, 0, tolerance)
    exported = np.asarray(model.predict(np.stack(pixels).astype(np.float32), verbose=0))
    subset = SplitData(validation.rows(index, result.inputs), validation.labels[index],
                       [validation.paths[i] for i in index])
    _, logits = main_outputs(result, subset)
    if tags is not None:
        # a tag decided differently counts only where the app's probability is clear of the
        # threshold by more than the tolerance: a tuned threshold sits between two validation
        # probabilities, and one of those flipping within the tolerance is no disagreement
        in_app = tags.calibrated(logits)
        clear = np.abs(in_app - np.asarray(tags.thresholds)) > tolerance
        differ = (tags.decide(exported) != tags.decide(in_app)) & clear
        mismatches = int(differ.any(axis=1).sum())
    else:
        in_app = softmax(logits, temperature)
        mismatches = int((exported.argmax(1) != in_app.argmax(1)).sum())
    return ParityReport(
        images=len(index),
        max_abs_diff=float(np.abs(exported - in_app).max()),
        top1_mismatches=mismatches,
        tolerance=tolerance,
    )


def _decoded_pair(paths: list[str], image_size: tuple[int, int], limit: int
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """The first ``limit`` decodable images, decoded the app's way and the plain way (no JPEG
    ``draft``), as two float32 batches; None when none decodes."""
    from app.core.delivery.standalone_predict import decode

    ours, plain = [], []
    for path in paths[:limit]:
        try:
            a = load_rgb(path, image_size)
            b = decode(path, image_size, draft=False)
        except (ImageError, OSError, ValueError):
            continue
        ours.append(a)
        plain.append(b)
    if not ours:
        return None
    return np.stack(ours).astype(np.float32), np.stack(plain).astype(np.float32)


def plain_decode_deviation(predict, pair: tuple[np.ndarray, np.ndarray] | None,
                           reference: np.ndarray | None = None) -> dict:
    """How far a model form's answers (``predict``: pixels -> probabilities) move when the
    images of ``pair`` (see ``_decoded_pair``) are decoded the plain way (no JPEG ``draft``),
    as a script that only read the old metadata would: the largest probability difference
    and the top-1 changes against the app's decoding. With ``reference`` (the Keras model's
    answers on the app's pixels), also how far this form is from it."""
    if pair is None:
        return {"images": 0, "max_abs_diff": None, "top1_mismatches": None}
    ours, plain = pair
    pa, pb = np.asarray(predict(ours)), np.asarray(predict(plain))
    out = {"images": len(ours), "max_abs_diff": float(np.abs(pa - pb).max()),
           "top1_mismatches": int((pa.argmax(1) != pb.argmax(1)).sum())}
    if reference is not None:
        out["vs_keras_max_abs_diff"] = float(np.abs(pa - reference).max())
        out["vs_keras_top1_mismatches"] = int((pa.argmax(1) != reference.argmax(1)).sum())
    return out


