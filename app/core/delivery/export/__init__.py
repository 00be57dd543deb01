"""Export: a model folder that gives the same answers outside the app.

``model.keras`` is backbone + main head (and the aux heads, when it answers with the mean of
the outputs) as one Keras model taking raw RGB pixels (0..255) at the backbone's input size,
with its input scaling inside and its logits divided by the temperature fitted on the
validation split, so it outputs calibrated probabilities. It holds Keras' built-in layers only:
``keras.models.load_model`` opens it without the app. ``predict.py`` beside
it reproduces the app's decoding with Pillow alone (``metadata.json`` states it exactly), and
``unknown.npz`` holds what the unknown test needs. Beside it: ``labels.txt``,
``metadata.json``, the training history (CSV and JSON), and optionally a SavedModel and a TFLite
file. Before the folder is put in place, the saved model is loaded back (Keras safe mode) and
its calibrated predictions on validation images are compared with the app's own calibrated
predictions from cached features; any difference fails the export and leaves no folder behind.

``metadata.json`` fields for what a model's answers mean (beside classes, image_size, versions):

- ``calibration``: ``temperature`` (the model divides its logits by it before the softmax, in
  the layer ``main_temperature``, or ``answer_temperature`` when it answers with the mean of
  its outputs; fitted on the validation split), ``method``, ``note`` (why not fitted, when
  empty validation left it at 1.0).
- ``unknown``: ``method`` (``relative_knn``, ``knn``, ``mahalanobis``, ``max_probability`` or
  null: no test), ``threshold`` (unknown when score < threshold), ``fitted_threshold`` and
  ``threshold_set_by`` (the fit, or the user's slider), ``k``, ``keep_known`` and
  ``known_images`` (the share of which known images the fitted threshold keeps known),
  ``file`` (``unknown.npz``, float16 arrays) and ``arrays`` (what each array is), ``score``
  and ``rule`` in words.
- ``preprocessing``: the decoding exactly (JPEG draft, EXIF transpose, alpha on white, 16-bit,
  bilinear squash); ``plain_decode``: images, max_abs_diff and top1_mismatches of the model's
  answers when the draft step is skipped, measured at export; ``other_forms``: the same for
  the SavedModel and TFLite files (loaded back), with their distance from the Keras model.

The folder is written beside its destination and swapped in by rename, so a crash leaves the
old model or the new one, never neither. Only a folder this app wrote (recognised by its
``metadata.json`` and holding nothing but the files an export writes) is ever replaced.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import shutil
from pathlib import Path

from app import __version__
from app.core.base.errors import bad_name_reason, shown
from app.core.base.jobs import KERAS_BUILDS
from app.core.delivery.export.folder import (
    _SCRATCH,
    MODEL_FILES,
    MODEL_FORMAT_VERSION,
    MULTI_LABEL_FORMAT_VERSION,
    STANDALONE_SCRIPT,
    WRITTEN_BY,
    _staging_for,
    _swap_in,
    check_destination,
    clean_leftovers,
    copy_model,
    is_model_folder,
    read_history,
    set_tag_thresholds,
    set_unknown_threshold,
    write_history,
)
from app.core.delivery.export.forms import (
    FORMATS,
    _check_onnx,
    _export_onnx,
    _export_tensorflow,
    onnx_unavailable,
    tflite_interpreter,
)
from app.core.delivery.export.graph import answer_taps, classifier_model, taps_extractor
from app.core.delivery.export.metadata import preprocessing_metadata
from app.core.delivery.export.parity import _decoded_pair, check_parity, plain_decode_deviation
from app.core.delivery.export.report import (
    PARITY_IMAGES,
    PARITY_TOLERANCE,
    ExportError,
    ExportReport,
    ParityReport,
)
from app.core.features.backbones import BackboneSpec, weights_fingerprint
from app.core.intake.imaging import PREPROCESS_VERSION, RESIZE_METHOD
from app.core.storage.model_folder import EVALUATION_FILE
from app.core.training.fit import SplitData, TrainResult
from app.core.trust.fitting import Trust
from app.core.trust.tags import TagTrust

__all__ = [
    "FORMATS", "MODEL_FILES", "MODEL_FORMAT_VERSION", "PARITY_IMAGES", "PARITY_TOLERANCE",
    "WRITTEN_BY", "_SCRATCH", "ExportError", "ExportReport", "ParityReport", "answer_taps",
    "check_destination", "check_parity", "classifier_model", "clean_leftovers", "copy_model",
    "export_model", "is_model_folder", "onnx_unavailable", "read_history",
    "set_tag_thresholds", "set_unknown_threshold", "taps_extractor", "write_history",
]



def export_model(out_dir: str | Path, *, spec: BackboneSpec, weights: str, result: TrainResult,
                 validation: SplitData | None, trust: Trust | None = None,
                 extra_metadata: dict | None = None,
                 formats: tuple[str, ...] = ("keras",),
                 precision: str = "float32", evaluation: dict | None = None,
                 tag_trust: TagTrust | None = None) -> ExportReport:
    """Write the model folder to ``out_dir`` once its parity check passed, replacing a model
    folder of ours there; any other non-empty folder raises :class:`ExportError` untouched.
    The model is the backbone (its top blocks as fine-tuned, in the fine-tune mode) with the
    main head, calibrated with ``trust``'s temperature. ``precision`` is the one the cached
    features were computed in (sets the tolerance). ``evaluation``: what the Evaluate page
    shows of this model, kept as ``evaluation.json``. ``tag_trust``: the model gives several
    tags a photo (a sigmoid per tag); its temperatures go into the model, its thresholds and
    unknown detector into the folder (``trust`` is then not used)."""
    from app.core.base.device import configure

    configure()
    import keras

    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ExportError(f"unknown export format(s) {sorted(unknown)}; choose from {FORMATS}")
    out_dir = Path(out_dir).expanduser().absolute()
    staging = _staging_for(out_dir)
    try:
        classes, history = result.classes, result.history
        trust = trust or Trust(note="no calibration was fitted")
        multi = tag_trust is not None
        if multi:
            if result.averages:
                raise ExportError("a multi-label model answering with the mean of its "
                                  "outputs cannot be exported; train it with --answer main "
                                  "(the multi-label default)")
            trust = Trust(detector=tag_trust.detector, note=tag_trust.note)
        with KERAS_BUILDS:  # loading draws initial weights from the global generator too
            model = classifier_model(spec, weights, result.head, result.base,
                                     trust.temperature, answer_taps(spec, result),
                                     tag_trust.temperatures if multi else None)
            model.save(staging / "model.keras")
            reloaded = keras.saving.load_model(staging / "model.keras", safe_mode=True)
        parity, note = None, ""
        if validation is None or not len(validation):
            note = ("parity could not be checked: the validation split is empty (add images "
                    "or give validation a larger share)")
        else:
            parity = check_parity(reloaded, result, validation, spec.input_size,
                                  tolerance=PARITY_TOLERANCE.get(precision, 3e-2),
                                  temperature=trust.temperature, tags=tag_trust)
            if parity.images == 0:
                note = (f"parity could not be checked: none of the {len(validation)} validation "
                        "images could be decoded again (moved, deleted or changed since "
                        "caching)")
            elif not parity.ok:
                raise ExportError(
                    f"exported model disagrees with the app on {parity.images} validation "
                    f"images (max probability difference {parity.max_abs_diff:.2g}, tolerance "
                    f"{parity.tolerance:g}, {parity.top1_mismatches} different "
                    f"{'tag sets' if multi else 'top-1 labels'}); nothing was written"
                )
        if trust.detector is not None:
            trust.detector.save(staging)
        shutil.copyfile(STANDALONE_SCRIPT, staging / "predict.py")
        predictors = {}
        if "savedmodel" in formats or "tflite" in formats:
            predictors = _export_tensorflow(model, staging, "tflite" in formats)
        onnx_meta = None
        if "onnx" in formats:
            with_features = trust.detector is not None and trust.detector.needs_features
            predictors["onnx"], onnx_meta = _export_onnx(model, staging, with_features)
        plain, forms = None, {}
        if validation is not None and len(validation):  # decoded once, for every form
            pair = _decoded_pair(validation.paths, spec.input_size, PARITY_IMAGES)
            keras_predict = lambda x: reloaded.predict(x, verbose=0)  # noqa: E731
            plain = plain_decode_deviation(keras_predict, pair)
            keras_ours = None if pair is None or not predictors else keras_predict(pair[0])
            forms = {name: plain_decode_deviation(fn, pair, reference=keras_ours)
                     for name, fn in predictors.items()}
        if onnx_meta is not None:
            onnx_meta["checked"] = _check_onnx(forms.get("onnx"), precision)
        if "tflite" in forms:
            forms["tflite"]["runtime"] = tflite_interpreter()[1]
        for c in classes:  # one class a line: a newline in a name would shift every label
            if not isinstance(c, str) or not c or bad_name_reason(c):
                raise ExportError(f"class name {shown(c)!r} cannot be written to labels.txt "
                                  f"({bad_name_reason(c) if isinstance(c, str) and c else 'empty'}"
                                  "); rename its folder")
        (staging / "labels.txt").write_text("".join(f"{c}\n" for c in classes), "utf-8")
        write_history(staging, history)
        if evaluation is not None:
            (staging / EVALUATION_FILE).write_text(json.dumps(evaluation, allow_nan=False),
                                                   "utf-8")
        temperature_layer = "answer_temperature" if result.averages else "main_temperature"
        meta = {
            "format_version": MULTI_LABEL_FORMAT_VERSION if multi else MODEL_FORMAT_VERSION,
            "written_by": WRITTEN_BY,
            "app_version": __version__,
            "keras_version": importlib.metadata.version("keras"),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "backbone": spec.name,
            "weights": weights if weights in ("imagenet", "none") else Path(weights).name,
            "weights_fingerprint": weights_fingerprint(spec, weights),
            "feature_precision": precision,
            "image_size": [spec.image_size, spec.image_size],
            "input": "RGB pixels 0..255, float32, shape (batch, height, width, 3); the model "
                     "scales them itself",
            "resize": RESIZE_METHOD,
            "preprocess_version": PREPROCESS_VERSION,
            "preprocessing": preprocessing_metadata(spec.input_size, plain, forms),
            "classes": list(classes),
            "calibration": _tag_calibration(classes, tag_trust) if multi else {
                "temperature": trust.temperature,
                "method": "temperature scaling of the answer's logits (the main output's, "
                          "or the log of the mean of the main and aux outputs' probabilities), "
                          "fitted on the validation split (minimum negative log-likelihood); "
                          f"inside model.keras as the layer '{temperature_layer}' (Rescaling "
                          "by 1/temperature) before the softmax, so the model's outputs are "
                          "the calibrated probabilities",
                "note": trust.note},
            "unknown": (trust.detector.metadata() if trust.detector is not None else
                        {"method": None, "note": trust.note or "no unknown detector was fitted"}),
            "parity": {"checked": parity is not None and parity.images > 0, "note": note,
                       **({} if parity is None else {
                           "images": parity.images, "max_abs_diff": parity.max_abs_diff,
                           "top1_mismatches": parity.top1_mismatches,
                           "tolerance": parity.tolerance})},
            **({"onnx": onnx_meta} if onnx_meta is not None else {}),
            **(_tag_metadata(classes, tag_trust) if multi else {}),
            **(extra_metadata or {}),
        }
        (staging / "metadata.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False),
                                               "utf-8")
        check_destination(out_dir)  # still ours, or still free, after the long work above
        _swap_in(staging, out_dir)
        return ExportReport(out_dir, parity, note, tuple(formats))
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"export to {out_dir} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if staging.exists():  # ours: the unfinished export, or the old model swapped out
            shutil.rmtree(staging, ignore_errors=True)




def _tag_calibration(tags: list[str], tag_trust: TagTrust) -> dict:
    return {"temperatures": {t: float(v) for t, v in zip(tags, tag_trust.temperatures)},
            "method": "a temperature per tag: the tag's logit divided by it before its sigmoid "
                      "(minimum binary cross-entropy on the validation split); inside "
                      "model.keras as the layer 'main_temperature' (Rescaling by "
                      "1/temperature, one a tag), so the outputs are the calibrated "
                      "probabilities",
            "note": tag_trust.note}


def _tag_metadata(tags: list[str], tag_trust: TagTrust) -> dict:
    """What a multi-label model folder says beside a single-label one's: the task, and each
    tag's threshold (a photo gets every tag whose probability reaches its threshold; none:
    "none of my tags")."""
    return {"task": "multi-label",
            "thresholds": {t: float(v) for t, v in zip(tags, tag_trust.thresholds)},
            "threshold_rule": tag_trust.rule}
