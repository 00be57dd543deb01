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

import csv
import ctypes
import datetime as dt
import importlib.metadata
import json
import os
import re
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app import __version__
from app.core.base.errors import UserError, bad_name_reason, shown
from app.core.base.jobs import KERAS_BUILDS, dead_leftovers
from app.core.features.backbones import BackboneSpec, build_image_model, weights_fingerprint
from app.core.intake.imaging import PREPROCESS_VERSION, RESIZE_METHOD, ImageError, load_rgb
from app.core.storage.model_folder import EVALUATION_FILE
from app.core.training.fit import HISTORY_KEYS, SplitData, TrainResult
from app.core.training.head import main_branch, reapplied
from app.core.trust.calibration import softmax
from app.core.trust.fit import Trust, main_outputs
from app.core.trust.unknown import threshold_origin

if TYPE_CHECKING:
    import keras

MODEL_FORMAT_VERSION = 1
WRITTEN_BY = "Bottleneck Studio"
FORMATS = ("keras", "savedmodel", "tflite", "onnx")
# What an export writes; a folder holding anything else is not replaced.
MODEL_FILES = frozenset({"model.keras", "labels.txt", "metadata.json", "history.csv",
                         "history.json", "saved_model", "model.tflite", "model.onnx",
                         "unknown.npz", EVALUATION_FILE,
                         "predict.py"})
STANDALONE_SCRIPT = Path(__file__).with_name("standalone_predict.py")
PARITY_IMAGES = 64
# Largest probability difference accepted between the exported float32 model and the head on
# cached features. Features computed in mixed float16 (GPU) carry float16 rounding of the
# backbone's activations, measured up to ~1e-2 on the tiny backbone: the tolerance says so.
PARITY_TOLERANCE = {"float32": 1e-3, "mixed_float16": 3e-2}


class ExportError(UserError):
    """The export could not be made or did not pass its parity check."""


@dataclass
class ParityReport:
    images: int
    max_abs_diff: float
    top1_mismatches: int
    tolerance: float = PARITY_TOLERANCE["float32"]

    @property
    def ok(self) -> bool:
        return self.top1_mismatches == 0 and self.max_abs_diff <= self.tolerance


@dataclass
class ExportReport:
    """Where the model went and how far its parity with the app was checked."""

    folder: Path
    parity: ParityReport | None
    parity_note: str = ""  # empty when checked and passed; else why it could not be checked
    formats: tuple[str, ...] = ("keras",)  # the forms written

    @property
    def parity_checked(self) -> bool:
        return self.parity is not None and self.parity.images > 0


def onnx_unavailable() -> str | None:
    """Why this installation cannot write the ONNX form (None: it can)."""
    import importlib.util

    missing = [m for m in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(m)
               is None]
    if missing:
        return (f"this installation lacks {', '.join(missing)} "
                "(pip install \"bottleneck-studio[onnx]\")")
    return None


def is_model_folder(path: str | Path) -> bool:
    """True for a folder that an export of this app wrote and that holds nothing else."""
    folder = Path(path)
    try:
        meta = json.loads((folder / "metadata.json").read_text("utf-8"))
        names = {p.name for p in folder.iterdir()}
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or "format_version" not in meta:
        return False
    ours = meta.get("written_by") == WRITTEN_BY or {"app_version", "backbone", "classes"} <= set(
        meta)
    return ours and names <= MODEL_FILES


def set_unknown_threshold(folder: str | Path, threshold: float) -> bool:
    """Write ``threshold`` (moved by the user) into a model folder of ours, so the folder
    answers "unknown" with it from now on; the fitted one stays as ``fitted_threshold``. The
    new metadata.json replaces the old by rename. False (nothing touched) when ``folder`` is
    not a model folder of this app or has no unknown test."""
    folder = Path(folder)
    if not is_model_folder(folder):
        return False
    path = folder / "metadata.json"
    meta = json.loads(path.read_text("utf-8"))
    unknown = meta.get("unknown")
    if not isinstance(unknown, dict) or not unknown.get("method"):
        return False
    _move_threshold(unknown, threshold)
    # beside the folder, not in it: a crash must not leave a stray file inside a model folder
    tmp = _scratch(folder, "metadata", ".json")
    try:
        tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False), "utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _move_threshold(unknown: dict, threshold: float) -> None:
    """metadata.json's ``unknown`` entry answering below ``threshold`` from now on; the
    fitted one stays as ``fitted_threshold``."""
    unknown.setdefault("fitted_threshold", unknown.get("threshold"))  # older model folders
    unknown["threshold"] = float(threshold)
    unknown["threshold_set_by"] = threshold_origin(threshold, unknown["fitted_threshold"])


def _staging_for(out_dir: Path) -> Path:
    """A new hidden folder beside ``out_dir`` to write a model folder into, once
    ``out_dir`` is known to be free or ours (refused untouched otherwise)."""
    check_destination(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out_dir.parent}: {exc.strerror or exc}") from exc
    clean_leftovers(out_dir.parent)
    staging = _scratch(out_dir, "export")
    try:
        staging.mkdir(mode=0o777)  # the umask applies: a normal folder, not drwx------
    except OSError as exc:
        raise ExportError(f"cannot write beside {out_dir}: {exc.strerror or exc}") from exc
    return staging


def copy_model(source: str | Path, out_dir: str | Path,
               threshold: float | None = None) -> ExportReport:
    """Export a model folder that was opened, not trained here: its files (those an export
    writes, nothing else) copied to ``out_dir``, answering "unknown" below ``threshold`` when
    given. ``out_dir`` is refused as :func:`export_model` refuses it, and replaced the same
    way (by rename). The model is not rebuilt: its parity is what the folder says."""
    src, out_dir = Path(source).expanduser().absolute(), Path(out_dir).expanduser().absolute()
    meta_path = src / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{shown(src)} is not a model folder that can be copied ({exc})"
                          ) from exc
    if out_dir == src:
        if threshold is not None:
            set_unknown_threshold(src, threshold)
        return ExportReport(out_dir, None, "", _forms_in(src))
    staging = _staging_for(out_dir)
    try:
        for entry in sorted(src.iterdir()):
            if entry.name not in MODEL_FILES or entry.is_symlink():
                continue  # only what an export writes, and never through a link
            if entry.is_dir():
                shutil.copytree(entry, staging / entry.name, symlinks=True)
            elif entry.is_file():
                shutil.copyfile(entry, staging / entry.name)
        unknown = meta.get("unknown") if isinstance(meta, dict) else None
        if threshold is not None and isinstance(unknown, dict) and unknown.get("method"):
            _move_threshold(unknown, threshold)
        (staging / "metadata.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False),
                                               "utf-8")
        check_destination(out_dir)
        _swap_in(staging, out_dir)
    except ExportError:
        raise
    except OSError as exc:
        raise ExportError(f"copying the model to {out_dir} failed: {exc}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    parity = meta.get("parity") if isinstance(meta, dict) else None
    note = "" if isinstance(parity, dict) and parity.get("checked") else \
        "its parity was not checked when it was exported"
    return ExportReport(out_dir, None, note, _forms_in(out_dir))


def _forms_in(folder: Path) -> tuple[str, ...]:
    names = {"model.keras": "keras", "saved_model": "savedmodel", "model.tflite": "tflite",
             "model.onnx": "onnx"}
    return tuple(form for name, form in names.items() if (folder / name).exists())


_SCRATCH = re.compile(r"^\.(?P<name>.+)\.(?P<kind>export|replaced|metadata)-(?P<pid>\d+)-"
                      r"[0-9a-f]{8}(?P<ext>\.json)?$")


def _scratch(folder: Path, kind: str, ext: str = "") -> Path:
    """A hidden name beside ``folder`` for work in progress, naming this process so that a
    later run can tell a dead writer's leftovers from a live one's."""
    return folder.parent / f".{folder.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}"


def clean_leftovers(parent: str | Path) -> list[Path]:
    """Remove what a killed export left in ``parent``: hidden scratch folders and files of
    this app's own naming whose writing process is dead, and that hold nothing but the files
    an export writes. Anything else, a live export's included, is left alone. Returns what
    was removed."""
    removed = []
    for entry, m in dead_leftovers(parent, _SCRATCH):
        path = Path(entry.path)
        try:
            if m["kind"] == "metadata":
                if path.is_file() and m["ext"]:
                    path.unlink()
                    removed.append(path)
            elif path.is_dir() and not m["ext"] and {p.name for p in path.iterdir()} <= \
                    MODEL_FILES:
                shutil.rmtree(path)
                removed.append(path)
        except OSError:
            continue
    return removed


def check_destination(out_dir: Path) -> None:
    """Refuse, touching nothing, any destination that is not new, empty or one of our models."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ExportError(f"{out_dir} exists and is not a folder; choose a new folder name")
    for parent in out_dir.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ExportError(f"{parent} is a file, so {out_dir} cannot be created; "
                                  "choose another folder")
            break
    if not out_dir.exists() or not any(out_dir.iterdir()) or is_model_folder(out_dir):
        return
    raise ExportError(f"{out_dir} is not empty and is not a model folder written by this app; "
                      "nothing was touched: choose a new or empty folder")


def classifier_model(spec: BackboneSpec, weights: str, head: keras.Model,
                     backbone: keras.Model | None = None, temperature: float = 1.0,
                     aux_layers: tuple[str, str] | None = None) -> keras.Model:
    """Pixels -> class probabilities: backbone, main tap (layer ``main_tap``) and main head
    (its logits divided by ``temperature``) as one model; with ``aux_layers`` (a run that
    answers with the average) the aux taps and heads too, and the answer: the mean of the
    three outputs, calibrated with ``temperature``, in Keras' built-in layers only (ending in
    the layer ``answer``), so plain Keras loads the model."""
    import keras

    with KERAS_BUILDS:  # over a trained run's layers, which a review may be reading
        features = build_image_model(spec, weights, backbone, aux_layers)
        if aux_layers is None:
            probs = main_branch(head, temperature)(features.output)
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


def check_parity(model: keras.Model, result: TrainResult, validation: SplitData,
                 image_size: tuple[int, int], limit: int = PARITY_IMAGES,
                 tolerance: float = PARITY_TOLERANCE["float32"], temperature: float = 1.0
                 ) -> ParityReport:
    """Exported model on decoded images vs. the trained model on cached features (taps or
    cut tensors), same images, both calibrated with ``temperature``."""
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
    in_app = softmax(logits, temperature)
    return ParityReport(
        images=len(index),
        max_abs_diff=float(np.abs(exported - in_app).max()),
        top1_mismatches=int((exported.argmax(1) != in_app.argmax(1)).sum()),
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


def preprocessing_metadata(size: tuple[int, int], plain: dict | None,
                           forms: dict[str, dict] | None = None) -> dict:
    """The app's decoding, exactly (what ``predict.py`` does)."""
    w, h = size
    return {
        "library": f"Pillow {importlib.metadata.version('pillow')}",
        "jpeg_draft": f"JPEG files are decoded with Image.draft('RGB', ({w}, {h})) first: "
                      "DCT scaling by 1/2, 1/4 or 1/8 to the smallest size still at least "
                      "the input size in both dimensions",
        "exif_transpose": "PIL.ImageOps.exif_transpose after decoding",
        "to_rgb": "transparency (RGBA, LA, PA, palette with transparency) composited on white; "
                  "16-bit and float grayscale scaled to 8 bits (divided by 257 when above "
                  "255; float in [0, 1] times 255); anything else Image.convert('RGB'); "
                  "first frame of an animation",
        "resize": f"whole image squashed to {w}x{h} (no crop, no padding) with "
                  "Image.resize(size, Image.Resampling.BILINEAR), which antialiases when "
                  "downscaling",
        "input": "float32 RGB 0..255, shape (batch, height, width, 3); the model scales them "
                 "itself",
        "script": "predict.py in this folder does exactly this (Pillow, numpy, Keras; no app)",
        "plain_decode": {
            "what": "the exported model on validation images decoded without the JPEG draft "
                    "step, against the decoding above: how far a script that skips it is off",
            **(plain or {"images": 0, "max_abs_diff": None, "top1_mismatches": None}),
            **({"other_forms": forms} if forms else {}),
        },
    }


def read_history(folder: str | Path) -> list[dict]:
    """A model folder's training curves (``history.json``), checked: a list of records of
    numbers with a whole ``epoch``; [] when there are none or they cannot be trusted."""
    from app.core.storage.model_folder import ModelDirError, read_json, regular_file

    path = Path(folder) / "history.json"
    if not path.exists():
        return []
    try:
        doc = read_json(regular_file(Path(folder), "history.json", "history.json"),
                        4 * 2**20)
    except ModelDirError:
        return []
    if not isinstance(doc, list):
        return []
    out = []
    for rec in doc:
        if not (isinstance(rec, dict) and isinstance(rec.get("epoch"), int)
                and all(isinstance(k, str) and (v is None or isinstance(v, (int, float)))
                        for k, v in rec.items())):
            return []
        out.append(rec)
    return out


def write_history(folder: Path, history: list[dict]) -> None:
    (folder / "history.json").write_text(json.dumps(history, indent=1))
    keys = ["epoch", *HISTORY_KEYS, "loss", "val_loss", "best_epoch"]
    with open(folder / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def export_model(out_dir: str | Path, *, spec: BackboneSpec, weights: str, result: TrainResult,
                 validation: SplitData | None, trust: Trust | None = None,
                 extra_metadata: dict | None = None,
                 formats: tuple[str, ...] = ("keras",),
                 precision: str = "float32", evaluation: dict | None = None) -> ExportReport:
    """Write the model folder to ``out_dir`` once its parity check passed, replacing a model
    folder of ours there; any other non-empty folder raises :class:`ExportError` untouched.
    The model is the backbone (its top blocks as fine-tuned, in the fine-tune mode) with the
    main head, calibrated with ``trust``'s temperature. ``precision`` is the one the cached
    features were computed in (sets the tolerance). ``evaluation``: what the Evaluate page
    shows of this model, kept as ``evaluation.json``."""
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
        with KERAS_BUILDS:  # loading draws initial weights from the global generator too
            model = classifier_model(spec, weights, result.head, result.base,
                                     trust.temperature, answer_taps(spec, result))
            model.save(staging / "model.keras")
            reloaded = keras.saving.load_model(staging / "model.keras", safe_mode=True)
        parity, note = None, ""
        if validation is None or not len(validation):
            note = ("parity could not be checked: the validation split is empty (add images "
                    "or give validation a larger share)")
        else:
            parity = check_parity(reloaded, result, validation, spec.input_size,
                                  tolerance=PARITY_TOLERANCE.get(precision, 3e-2),
                                  temperature=trust.temperature)
            if parity.images == 0:
                note = (f"parity could not be checked: none of the {len(validation)} validation "
                        "images could be decoded again (moved, deleted or changed since "
                        "caching)")
            elif not parity.ok:
                raise ExportError(
                    f"exported model disagrees with the app on {parity.images} validation "
                    f"images (max probability difference {parity.max_abs_diff:.2g}, tolerance "
                    f"{parity.tolerance:g}, {parity.top1_mismatches} different top-1 labels); "
                    "nothing was written"
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
            "format_version": MODEL_FORMAT_VERSION,
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
            "calibration": {
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


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Put ``staging`` at ``out_dir``; an old model folder there ends up at ``staging``.

    With an atomic exchange no moment exists without a model at ``out_dir``; elsewhere the
    old folder is renamed aside first, so a crash between the two renames leaves it beside
    the destination (``.NAME.replaced-*``), never deleted.
    """
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    if not any(out_dir.iterdir()):
        out_dir.rmdir()
        staging.rename(out_dir)
        return
    if _exchange(staging, out_dir):
        return
    aside = _scratch(out_dir, "replaced")
    out_dir.rename(aside)
    try:
        staging.rename(out_dir)
    except OSError:
        aside.rename(out_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _export_tensorflow(model: keras.Model, folder: Path, tflite: bool) -> dict:
    """SavedModel and TFLite: the TensorFlow-only edge of the app. Returns each written form's
    predict function (pixels -> probabilities), loaded back from its files."""
    import tensorflow as tf

    saved = folder / "saved_model"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(saved))
    forms = {"savedmodel": lambda x: np.asarray(loaded.serve(tf.constant(x)))}
    if tflite:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        (folder / "model.tflite").write_bytes(converter.convert())
        forms["tflite"] = lambda x: _tflite_predict(folder / "model.tflite", x)
    return forms


def _export_onnx(model: keras.Model, folder: Path, with_features: bool
                 ) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """``model.onnx`` by Keras' own ONNX export (tf2onnx underneath), and its predict function
    (pixels -> probabilities) run by ONNX Runtime from the file written. ``with_features``:
    a second output, the main tap, for the unknown test (what predict.py needs)."""
    import keras
    import onnxruntime as ort

    from app.core.base.device import quiet_native_stderr

    target = model
    if with_features:
        target = keras.Model(model.input, [model.output, model.get_layer("main_tap").output],
                             name="bottleneck_studio_classifier_and_features")
    # Keras exports only a model that has been called
    target.predict_on_batch(np.zeros((1, *model.input.shape[1:]), np.float32))
    path = folder / "model.onnx"
    try:
        with quiet_native_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf2onnx's numpy deprecation notes
            target.export(str(path), format="onnx", verbose=False)
    except Exception as exc:  # tf2onnx cannot convert an op: say so, write nothing
        raise ExportError(f"the ONNX form could not be written: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = ["probabilities", "main_tap"] if with_features else ["probabilities"]
    meta = {"file": "model.onnx", "input": name, "outputs": outputs,
            "opset": int(next((o.version for o in _onnx_opsets(path)), 0)),
            "runtime": f"onnxruntime {ort.__version__} (CPUExecutionProvider) at export"}
    return (lambda x: np.asarray(session.run(None, {name: np.asarray(x, np.float32)})[0]),
            meta)


def _onnx_opsets(path: Path):
    import onnx

    return [o for o in onnx.load(str(path), load_external_data=False).opset_import
            if o.domain in ("", "ai.onnx")]


def _check_onnx(form: dict | None, precision: str) -> bool:
    """The ONNX form must give the Keras model's answers (what the app answers) on the
    validation images; a form that does not is an error, never a file left to be trusted."""
    if not form or not form.get("images"):
        return False  # no validation image to compare on: said in metadata ("checked": false)
    tolerance = PARITY_TOLERANCE.get(precision, 3e-2)
    diff = form.get("vs_keras_max_abs_diff")
    if diff is None or diff > tolerance or form.get("vs_keras_top1_mismatches"):
        raise ExportError(f"the ONNX form disagrees with the Keras model on {form['images']} "
                          f"validation images (max probability difference {diff:.2g}, "
                          f"tolerance {tolerance:g}); nothing was written")
    return True


def tflite_interpreter():
    """LiteRT's interpreter (``ai-edge-litert``, what TensorFlow 2.21 says replaces
    ``tf.lite.Interpreter``), else TensorFlow's own, its deprecation warning kept quiet; with
    the name of the one used."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "LiteRT (ai-edge-litert)"
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, "tf.lite.Interpreter"


def _tflite_predict(path: Path, x: np.ndarray) -> np.ndarray:
    """A TFLite model file's outputs for the batch ``x`` (one image at a time)."""
    interpreter_class, _ = tflite_interpreter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf.lite's "deprecated" note
        interpreter = interpreter_class(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in x:
        interpreter.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interpreter.invoke()
        rows.append(np.array(interpreter.get_tensor(out["index"])[0]))
    return np.stack(rows)
