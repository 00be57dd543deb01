"""A model folder received from someone else, read without trusting it.

Every file the folder names must be a plain file name, resolve inside the folder and be a
regular file (not a link, a FIFO that would block the reader forever, or a device);
``metadata.json`` is checked against one schema before anything else is read, so that no
Keras import, no ``model.keras`` and no ``unknown.npz`` is touched for a folder whose
metadata is wrong; and the arrays of ``unknown.npz`` are checked by their headers (type,
size) before they are read, then by their shapes and values. Every failure is one
:class:`ModelDirError` line that names the field or the file.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from app.core.base.errors import UserError, bad_name_reason, shown

# 1: one class a photo; 2: the same folder, or several tags a photo ("task": "multi-label"),
# which an app reading 1 alone must refuse rather than answer with one class
SUPPORTED_MODEL_FORMATS = (1, 2)
META_FILE = "metadata.json"
MODEL_FILE = "model.keras"
EVALUATION_FILE = "evaluation.json"  # the test scores and review, for the Evaluate page
MAX_METADATA_BYTES = 16 * 2**20  # ours are a few kB; more is not a metadata file
MAX_ARRAY_BYTES = 2**30  # 20,000 x 4096 float32 reference rows are 330 MB
MAX_CLASSES = 100_000
MAX_K = 10_000
IMAGE_SIDE = (16, 2048)
# what unknown.npz may hold, and which arrays each method needs
ARRAYS = ("reference", "density", "means", "whitening")
NEEDED_ARRAYS = {"max_probability": (), "knn": ("reference",),
                 "relative_knn": ("reference", "density"),
                 "mahalanobis": ("means", "whitening")}


class ModelDirError(UserError, ValueError):
    """A model folder that cannot be used; the message is one line a person can act on (a
    ValueError too: older callers of ``UnknownDetector.load`` catch that)."""


# ---------------------------------------------------------------------------- files


def regular_file(folder: str | Path, name: object, what: str) -> Path:
    """``folder / name`` when ``name`` is a plain file name of a regular file (no link)
    inside ``folder``; else :class:`ModelDirError`. What the folder names is not trusted:
    ``../x``, ``/etc/x`` and a link to another model are refused, and so is a FIFO, which
    would block whoever opens it."""
    folder = Path(folder)
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
            or "\\" in name or "\0" in name or bad_name_reason(name)):
        raise ModelDirError(f"{what} must be a plain file name inside the model folder, got "
                            f"{_got(name)}")
    path = folder / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ModelDirError(f"{shown(folder)} is not a model folder: {shown(name)} "
                            "is missing") from None
    except OSError as exc:
        raise ModelDirError(f"{shown(path)} cannot be read: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise ModelDirError(f"{shown(path)} is a link; a model folder's files must be the "
                            "files themselves (copy the folder without links)")
    if not stat.S_ISREG(st.st_mode):
        raise ModelDirError(f"{shown(path)} is not a regular file")
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(folder):
        raise ModelDirError(f"{shown(path)} lies outside the model folder")
    return path


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, refusing (without blocking) anything that became a link
    or a non-regular file since it was checked."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ModelDirError(f"{shown(path)} cannot be read: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelDirError(f"{shown(path)} is not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_json(path: Path, limit: int = MAX_METADATA_BYTES) -> Any:
    """The JSON in ``path`` (a checked regular file), or :class:`ModelDirError`."""
    with open_regular(path) as fh:
        try:
            raw = fh.read(limit + 1)
        except OSError as exc:
            raise ModelDirError(f"{shown(path)} cannot be read: {exc.strerror or exc}") from exc
    if len(raw) > limit:
        raise ModelDirError(f"{shown(path)} is damaged: larger than {limit // 2**20} MB")
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ModelDirError(f"{shown(path)} is damaged: {shown(str(exc)[:200])}") from exc


def load_arrays(path: Path, names: tuple[str, ...] = ARRAYS) -> dict[str, np.ndarray]:
    """The arrays ``names`` found in the ``.npz`` at ``path`` (a checked regular file), as
    float32. Each one's header is read first: only real-valued arrays of a sane size are
    read at all (a forged header must not allocate terabytes)."""
    out: dict[str, np.ndarray] = {}
    with open_regular(path) as fh:
        try:
            with np.load(fh, allow_pickle=False) as data:
                members = set(data.zip.namelist())
                for name in names:
                    if f"{name}.npy" not in members:
                        continue
                    with data.zip.open(f"{name}.npy") as member:
                        shape, dtype = _npy_header(member)
                    if dtype.kind != "f" or dtype.hasobject:
                        raise ModelDirError(f"{shown(path)}: {name} must hold floating-point "
                                            f"numbers, not {dtype}")
                    if math.prod(shape) * dtype.itemsize > MAX_ARRAY_BYTES:
                        raise ModelDirError(f"{shown(path)}: {name} claims a shape "
                                            f"{shape} larger than {MAX_ARRAY_BYTES >> 20} MB")
                    out[name] = np.asarray(data[f"{name}.npy"], np.float32)
        except ModelDirError:
            raise
        except Exception as exc:  # noqa: BLE001 - foreign bytes: any failure is damage
            # numpy, zipfile and zlib raise a dozen types on garbled input (ValueError,
            # OSError, EOFError, BadZipFile, zlib.error, NotImplementedError, MemoryError ...)
            raise ModelDirError(f"{shown(path)} is damaged ({type(exc).__name__}: "
                                f"{shown(str(exc)[:200])}); export the model again") from exc
    return out


def _npy_header(fh: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"npy format version {version} not supported")
    return tuple(int(s) for s in shape), np.dtype(dtype)


# ---------------------------------------------------------------------------- schema
# A checker takes the value and its field name and raises ModelDirError; a schema maps each
# key to (checker, required). Keys not in a schema are left alone (newer folders' notes).

Checker = Callable[[Any, str], None]


def _got(value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return shown(text if len(text) <= 60 else text[:57] + "...")


def _fail(field: str, wants: str, value: object) -> ModelDirError:
    return ModelDirError(f"{META_FILE}: {field} must be {wants}, got {_got(value)}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    """A finite JSON number (json reads NaN and Infinity; they are no number here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _nullable(check: Checker) -> Checker:
    def inner(v: Any, field: str) -> None:
        if v is not None:
            check(v, field)
    return inner


def _of_type(kind: type, wants: str) -> Checker:
    def inner(v: Any, field: str) -> None:
        if not isinstance(v, kind):
            raise _fail(field, wants, v)
    return inner


_string = _of_type(str, "a string")
_obj = _of_type(dict, "an object")
_boolean = _of_type(bool, "true or false")
_list = _of_type(list, "a list")


def _int_range(lo: int, hi: int) -> Checker:
    def inner(v: Any, field: str) -> None:
        if not _is_int(v) or not lo <= v <= hi:
            raise _fail(field, f"an integer {lo}..{hi}", v)
    return inner


def _finite(v: Any, field: str) -> None:
    if not _is_number(v):
        raise _fail(field, "a finite number", v)


def _positive(v: Any, field: str) -> None:
    if not _is_number(v) or not v > 0:
        raise _fail(field, "a finite number > 0", v)


def _open_unit(v: Any, field: str) -> None:
    if not _is_number(v) or not 0 < v < 1:
        raise _fail(field, "a number between 0 and 1 (both excluded)", v)


def _format_version(v: Any, field: str) -> None:
    if not _is_int(v) or v not in SUPPORTED_MODEL_FORMATS:
        raise ModelDirError(f"{META_FILE}: the folder was written by another version of "
                            f"Bottleneck Studio (model format {_got(v)}, this app reads "
                            f"{SUPPORTED_MODEL_FORMATS}); export it again")


def _names(v: Any, field: str, *, empty_ok: bool) -> None:
    if not isinstance(v, list) or not (empty_ok or v) or len(v) > MAX_CLASSES:
        raise _fail(field, "a list of class names" + ("" if empty_ok else " (at least one)"), v)
    for i, name in enumerate(v):
        if not isinstance(name, str) or not name:
            raise _fail(f"{field}[{i}]", "a non-empty string", name)
        reason = bad_name_reason(name)
        if reason:
            raise ModelDirError(f"{META_FILE}: {field}[{i}] {_got(name)} cannot be a class "
                                f"name ({reason})")
    if len(set(v)) != len(v):
        twice = sorted({n for n in v if v.count(n) > 1})
        raise ModelDirError(f"{META_FILE}: {field} names {_got(twice[0])} more than once")


def _classes(v: Any, field: str) -> None:
    _names(v, field, empty_ok=False)


def _left_out(v: Any, field: str) -> None:
    _names(v, field, empty_ok=True)


def _image_size(v: Any, field: str) -> None:
    lo, hi = IMAGE_SIDE
    if (not isinstance(v, list) or len(v) != 2
            or not all(_is_int(s) and lo <= s <= hi for s in v)):
        raise _fail(field, f"two integers {lo}..{hi}", v)


def _split_fractions(v: Any, field: str) -> None:
    if (not isinstance(v, list) or len(v) != 3 or not all(_is_number(p) and p >= 0 for p in v)
            or not v[0] > 0 or abs(sum(v) - 1.0) > 1e-6):
        raise _fail(field, "three finite numbers >= 0 (train > 0) that sum to 1", v)


def _file_name(v: Any, field: str) -> None:
    if (not isinstance(v, str) or not v or v in (".", "..") or "/" in v or "\\" in v
            or "\0" in v or bad_name_reason(v)):
        raise _fail(field, "a plain file name inside the model folder (no folder, no '..')",
                    v)


def _method(v: Any, field: str) -> None:
    if v is not None and (not isinstance(v, str) or v not in NEEDED_ARRAYS):
        raise _fail(field, f"one of {', '.join(NEEDED_ARRAYS)} or null", v)


def _sub(schema: dict[str, tuple[Checker, bool]]) -> Checker:
    def inner(v: Any, field: str) -> None:
        _obj(v, field)
        check_schema(v, schema, field + ".")
    return inner


def _per_class(check: Checker) -> Checker:
    """An object of one value per class name, each passing ``check`` (which names: checked
    against the classes in :func:`validate_metadata`)."""
    def inner(v: Any, field: str) -> None:
        _obj(v, field)
        for name, value in v.items():
            check(value, f"{field}.{name}")
    return inner


def _threshold(v: Any, field: str) -> None:
    if not _is_number(v) or not 0 <= v <= 1:
        raise _fail(field, "a probability threshold from 0 to 1", v)


TASKS = ("single-label", "multi-label")


def _task(v: Any, field: str) -> None:
    if v not in TASKS:
        raise _fail(field, " or ".join(TASKS), v)


CALIBRATION = {"temperature": (_positive, False), "method": (_nullable(_string), False),
               "note": (_nullable(_string), False),
               "temperatures": (_per_class(_positive), False)}  # multi-label: one a tag
UNKNOWN = {"method": (_method, False), "threshold": (_finite, False),
           "fitted_threshold": (_finite, False), "k": (_int_range(1, MAX_K), False),
           "keep_known": (_open_unit, False), "known_images": (_nullable(_string), False),
           "file": (_nullable(_file_name), False), "arrays": (_nullable(_obj), False),
           "threshold_set_by": (_nullable(_string), False),
           "score": (_nullable(_string), False), "rule": (_nullable(_string), False),
           "note": (_nullable(_string), False)}
_TEXT = (_nullable(_string), False)
_OBJ = (_nullable(_obj), False)
METADATA = {
    "format_version": (_format_version, True),
    "classes": (_classes, True),
    "image_size": (_image_size, True),
    "calibration": (_nullable(_sub(CALIBRATION)), False),
    "unknown": (_nullable(_sub(UNKNOWN)), False),
    "split_fractions": (_nullable(_split_fractions), False),
    "left_out_classes": (_nullable(_left_out), False),
    # several tags a photo: the task, and one threshold a tag (every class name)
    "task": (_task, False),
    "thresholds": (_per_class(_threshold), False),
    "fitted_thresholds": (_nullable(_per_class(_threshold)), False),  # before moved by hand
    # what the exporter writes for people: checked for their type only
    **{k: _TEXT for k in ("written_by", "app_version", "keras_version", "created", "backbone",
                          "weights", "weights_fingerprint", "feature_precision", "input",
                          "resize", "dataset", "mode", "threshold_rule")},
    **{k: _OBJ for k in ("preprocessing", "parity", "split", "test", "training")},
    "preprocess_version": (_nullable(_int_range(0, 2**31)), False),
    "trainable_backbone_layers": (_nullable(_list), False),
    "best_epoch": (_nullable(_int_range(0, 2**31)), False),
    "cancelled": (_nullable(_boolean), False),
}


def check_schema(doc: dict, schema: dict[str, tuple[Checker, bool]], prefix: str = "") -> None:
    for key, (check, required) in schema.items():
        if key not in doc:
            if required:
                raise ModelDirError(f"{META_FILE}: {prefix}{key} is missing")
            continue
        check(doc[key], prefix + key)


def validate_metadata(meta: Any) -> dict:
    """``meta`` (a parsed ``metadata.json``) when it fits the schema, else one
    :class:`ModelDirError` line naming the first field that does not: checked before any
    other file of the folder is opened."""
    if not isinstance(meta, dict):
        kind = {list: "a list", str: "a string", type(None): "null", bool: "true or false",
                int: "a number", float: "a number"}.get(type(meta), type(meta).__name__)
        raise ModelDirError(f"{META_FILE}: the file must hold a JSON object, got {kind}")
    if "format_version" not in meta:
        raise ModelDirError(f"{META_FILE}: format_version is missing (not a model folder of "
                            "this app?)")
    _format_version(meta["format_version"], "format_version")
    check_schema(meta, METADATA)
    left_out = set(meta.get("left_out_classes") or ())
    both = sorted(left_out & set(meta["classes"]))
    if both:
        raise ModelDirError(f"{META_FILE}: {_got(both[0])} is in both classes and "
                            "left_out_classes")
    multi = meta.get("task") == "multi-label"
    if multi and meta["format_version"] < 2:
        raise ModelDirError(f"{META_FILE}: a multi-label model needs format_version 2")
    for field, values in (("thresholds", meta.get("thresholds")),
                          ("calibration.temperatures",
                           (meta.get("calibration") or {}).get("temperatures"))):
        if multi and field == "thresholds" and values is None:
            raise ModelDirError(f"{META_FILE}: thresholds is missing (task multi-label)")
        if values is not None and sorted(values) != sorted(meta["classes"]):
            raise ModelDirError(f"{META_FILE}: {field} must give one value for each class "
                                "name, and no other")
    unknown = meta.get("unknown") or {}
    method = unknown.get("method")
    if method is not None:
        if "threshold" not in unknown:
            raise ModelDirError(f"{META_FILE}: unknown.threshold is missing (method "
                                f"{method})")
        if NEEDED_ARRAYS[method] and not unknown.get("file"):
            raise ModelDirError(f"{META_FILE}: unknown.file must name the arrays of method "
                                f"{method} ({', '.join(NEEDED_ARRAYS[method])})")
    return meta


def check_unknown_arrays(arrays: dict[str, np.ndarray], method: str, n_classes: int | None,
                         file: str) -> int | None:
    """Shapes and values of the arrays ``method`` needs; returns their feature width D (None
    for max_probability). ``k`` above the reference rows is fine: the score then uses them
    all (what the exporter writes for a training split smaller than ``k``)."""
    needed = NEEDED_ARRAYS[method]
    missing = [n for n in needed if n not in arrays]
    if missing:
        raise ModelDirError(f"{file} lacks {', '.join(missing)} (method {method})")
    for name in needed:
        if not np.isfinite(arrays[name]).all():
            raise ModelDirError(f"{file}: {name} holds NaN or infinite values")
    if method in ("knn", "relative_knn"):
        ref = arrays["reference"]
        if ref.ndim != 2 or ref.shape[0] < 1 or ref.shape[1] < 1:
            raise ModelDirError(f"{file}: reference must be (N, D) with N, D >= 1, got shape "
                                f"{ref.shape}")
        if method == "relative_knn" and arrays["density"].shape != (ref.shape[0],):
            raise ModelDirError(f"{file}: density must have one entry per reference row "
                                f"({ref.shape[0]}), got shape {arrays['density'].shape}")
        return int(ref.shape[1])
    if method == "mahalanobis":
        means, w = arrays["means"], arrays["whitening"]
        if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] < 1:
            raise ModelDirError(f"{file}: whitening must be square (D, D), got shape "
                                f"{w.shape}")
        # a class with no training image has no mean: at most one row per class
        limit = n_classes if n_classes is not None else means.shape[0] if means.ndim else 0
        if means.ndim != 2 or means.shape[1] != w.shape[0] or not 1 <= means.shape[0] <= limit:
            raise ModelDirError(f"{file}: means must be (C, {w.shape[0]}) with C up to the "
                                f"{limit} classes, got shape {means.shape}")
        return int(w.shape[0])
    return None
