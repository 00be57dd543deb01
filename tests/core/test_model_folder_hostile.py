"""A model folder received from someone else: it never reads a file outside itself, never
blocks, never gives a traceback, a NaN or a silently wrong answer. Every refusal is one
ModelDirError (a UserError) line naming the field or the file."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import shutil
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.core.base.errors import UserError
from app.core.delivery.predict import NAN_ANSWER, ModelDirError, Predictor, read_metadata
from app.core.storage.model_folder import NEEDED_ARRAYS, validate_metadata
from app.core.trust import unknown as unknown_mod
from app.core.trust.evaluation import score
from app.core.trust.unknown import UnknownDetector, fit_detector
from tests.conftest import COLOURS, make_dataset, make_image

# What the exporter writes (export_model and UnknownDetector.metadata), trimmed of the long
# descriptive strings; the slow tests below check a real export against the same schema.
VALID = {
    "format_version": 1, "written_by": "Bottleneck Studio", "app_version": "0.1.0",
    "keras_version": "3.15.1", "created": "2026-12-01T11:12:35+00:00", "backbone": "tiny",
    "weights": "none", "weights_fingerprint": "random1234@keras3.15.1",
    "feature_precision": "float32", "image_size": [64, 64], "input": "RGB pixels",
    "resize": "bilinear", "preprocess_version": 1,
    "preprocessing": {"library": "Pillow", "plain_decode": {"images": 5, "max_abs_diff": 0.0}},
    "classes": ["blue", "green", "red"],
    "calibration": {"temperature": 1.0, "method": "temperature scaling", "note": ""},
    "unknown": {"method": "relative_knn", "threshold": -0.0144, "k": 5,
                "fitted_threshold": -0.0144, "threshold_set_by": "the fit", "keep_known": 0.95,
                "file": "unknown.npz", "arrays": {"reference": "(N, D)", "density": "(N,)"},
                "score": "...", "rule": "...", "known_images": "the validation images"},
    "parity": {"checked": True, "note": "", "images": 5, "max_abs_diff": 1e-05},
    "dataset": "/tmp/photos", "split": {"train": 18, "validation": 5, "test": 1},
    "split_fractions": [0.8, 0.1, 0.1],
    "test": {"count": 1, "main_accuracy": 1.0, "unknown_rate": 0.0},
    "training": {"epochs": 1}, "mode": "head", "trainable_backbone_layers": [],
    "best_epoch": 1, "cancelled": False, "left_out_classes": [],
}


def _folder(root: Path, meta: object, raw: str | None = None) -> Path:
    """A model folder holding ``meta`` as its metadata.json and a placeholder model.keras:
    enough for read_metadata, which must refuse bad metadata before opening the model."""
    root.mkdir(parents=True, exist_ok=True)
    text = raw if raw is not None else json.dumps(meta)
    (root / "metadata.json").write_text(text, "utf-8")
    (root / "model.keras").write_bytes(b"PK placeholder")
    return root


def _with(path: str, value: object, base: dict = VALID) -> dict:
    """``base`` with the dotted field ``path`` set to ``value`` (``...``: removed)."""
    meta = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = meta
    for p in parents:
        node = node[p]
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return meta


# ------------------------------------------------------------------ metadata.json, by case

NAN, INF = float("nan"), float("inf")
BAD_FIELDS = [
    ("image_size", [100000, 100000], "image_size must be two integers 16..2048"),
    ("image_size", [0, 0], "image_size"), ("image_size", [-64, 64], "image_size"),
    ("image_size", [64.5, 64], "image_size"), ("image_size", "64", "image_size"),
    ("image_size", [64], "image_size"), ("image_size", [True, 64], "image_size"),
    ("unknown.k", 1e999, "unknown.k"), ("unknown.k", 0, "unknown.k"),
    ("unknown.k", -3, "unknown.k"), ("unknown.k", "5", "unknown.k"),
    ("unknown.threshold", NAN, "unknown.threshold"),
    ("unknown.threshold", INF, "unknown.threshold"),
    ("unknown.threshold", "low", "unknown.threshold"),
    ("unknown.threshold", ..., "unknown.threshold"),
    ("unknown.fitted_threshold", NAN, "unknown.fitted_threshold"),
    ("unknown.method", "magic", "unknown.method"), ("unknown.method", 3, "unknown.method"),
    ("unknown.keep_known", 1.0, "unknown.keep_known"),
    ("unknown.keep_known", 0, "unknown.keep_known"),
    ("unknown.keep_known", NAN, "unknown.keep_known"),
    ("unknown.file", "../elsewhere.npz", "unknown.file"),
    ("unknown.file", "/etc/passwd", "unknown.file"),
    ("unknown.file", "sub/unknown.npz", "unknown.file"),
    ("unknown.file", ..., "unknown.file"), ("unknown.file", 7, "unknown.file"),
    ("unknown", [1], "unknown must be an object"),
    ("calibration", [1], "calibration must be an object"),
    ("calibration.temperature", 0, "calibration.temperature"),
    ("calibration.temperature", -1.0, "calibration.temperature"),
    ("calibration.temperature", NAN, "calibration.temperature"),
    ("calibration.temperature", INF, "calibration.temperature"),
    ("split_fractions", "abc", "split_fractions"),
    ("split_fractions", [NAN, 0.1, 0.1], "split_fractions"),
    ("split_fractions", [0.8, 0.1], "split_fractions"),
    ("split_fractions", [0.0, 0.5, 0.5], "split_fractions"),
    ("split_fractions", [0.8, 0.8, 0.8], "split_fractions"),
    ("classes", "blue,green,red", "classes"), ("classes", [], "classes"),
    ("classes", ["blue", "blue", "red"], "more than once"),
    ("classes", ["blue", "", "red"], "classes[1]"),
    ("classes", ["blue", 3, "red"], "classes[1]"),
    ("classes", ["blue", "gr\neen", "red"], "control character"),
    ("classes", ["blue", "gr\x1b[2Jeen", "red"], "control character"),
    ("classes", ..., "classes is missing"),
    ("left_out_classes", "yellow", "left_out_classes"),
    ("left_out_classes", [1, 2], "left_out_classes[0]"),
    ("left_out_classes", ["red"], "both classes and left_out_classes"),
    ("format_version", 0, "another version"), ("format_version", "1", "another version"),
    ("format_version", True, "another version"),
]


@pytest.mark.parametrize("field,value,words", BAD_FIELDS)
def test_bad_metadata_field_is_one_line_naming_it(tmp_path, field, value, words):
    folder = _folder(tmp_path / "m", _with(field, value))
    with pytest.raises(ModelDirError, match=None) as info:
        read_metadata(folder)
    message = str(info.value)
    assert words in message and "\n" not in message and "\x1b" not in message


@pytest.mark.parametrize("raw,words", [
    ("[1, 2, 3]", "must hold a JSON object, got a list"),
    ('"a model"', "must hold a JSON object, got a string"),
    ("null", "got null"), ("3", "got a number"),
    ("[" * 100000 + "]" * 100000, "damaged"),
    ("{not json", "damaged"), ("\udcff", "damaged"),
])
def test_metadata_that_is_no_object_is_refused(tmp_path, raw, words):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "metadata.json").write_bytes(raw.encode("utf-8", "surrogateescape"))
    (folder / "model.keras").write_bytes(b"PK")
    with pytest.raises(ModelDirError, match=words):
        read_metadata(folder)


def test_what_the_exporter_writes_passes_and_optional_fields_stay_optional(tmp_path):
    assert read_metadata(_folder(tmp_path / "a", VALID))["classes"] == VALID["classes"]
    bare = {k: VALID[k] for k in ("format_version", "classes", "image_size")}
    assert read_metadata(_folder(tmp_path / "b", bare)) == bare
    none = _with("unknown", {"method": None, "note": "no unknown detector was fitted"})
    read_metadata(_folder(tmp_path / "c", none))
    old = _with("unknown.fitted_threshold", ...)  # folders of the last round lack it
    read_metadata(_folder(tmp_path / "d", old))
    assert NEEDED_ARRAYS == {n: s.arrays for n, s in unknown_mod.SCORES.items()}


def test_metadata_is_checked_before_keras_or_the_model_is_touched(tmp_path, monkeypatch):
    """The OOM case: image_size [100000, 100000] is refused before a model is built."""
    import keras

    def boom(*a, **k):
        raise AssertionError("model.keras opened for a folder with bad metadata")

    monkeypatch.setattr(keras.saving, "load_model", boom)
    folder = _folder(tmp_path / "m", _with("image_size", [100000, 100000]))
    with pytest.raises(ModelDirError, match="image_size must be two integers 16..2048"):
        Predictor.from_dir(folder)


# ------------------------------------------------------------------ files: inside, regular

def _detector_files(folder: Path, method: str = "relative_knn", d: int = 8) -> dict:
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (20, d))
    labels = np.arange(20) % 3
    det = fit_detector(method, train, labels, 3, train[:6], np.full((6, 3), 1 / 3))
    folder.mkdir(parents=True, exist_ok=True)
    det.save(folder)
    return det.metadata()


def test_unknown_file_outside_the_folder_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    entry = _detector_files(outside)
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("../elsewhere/unknown.npz", str(outside / "unknown.npz")):
        with pytest.raises(ModelDirError, match="plain file name"):
            UnknownDetector.load(folder, {**entry, "file": name})
    (folder / "unknown.npz").symlink_to(outside / "unknown.npz")
    with pytest.raises(ModelDirError, match="is a link"):
        UnknownDetector.load(folder, entry)


def test_links_for_the_folders_own_files_are_refused(tmp_path):
    other = _folder(tmp_path / "other", VALID)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "metadata.json").write_text(json.dumps(VALID))
    (folder / "model.keras").symlink_to(other / "model.keras")
    with pytest.raises(ModelDirError, match="model.keras is a link"):
        Predictor.from_dir(folder)
    (folder / "model.keras").unlink()
    (folder / "model.keras").write_bytes(b"PK")
    (folder / "metadata.json").unlink()
    (folder / "metadata.json").symlink_to(other / "metadata.json")
    with pytest.raises(ModelDirError, match="metadata.json is a link"):
        read_metadata(folder)


def _fifo_open_does_not_block(call, fifo: Path) -> BaseException | None:
    """Run ``call`` in a thread; fail if it blocks on ``fifo``. Returns what it raised."""
    outcome: list = []

    def target():
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # release the reader blocked in open(), then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(10)
        pytest.fail(f"reading the model folder blocked on the FIFO {fifo.name}")
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_the_folder_is_refused_not_waited_on(tmp_path):
    folder = tmp_path / "m"
    entry = _detector_files(folder)
    (folder / "unknown.npz").unlink()
    os.mkfifo(folder / "unknown.npz")
    exc = _fifo_open_does_not_block(lambda: UnknownDetector.load(folder, entry),
                                    folder / "unknown.npz")
    assert isinstance(exc, ModelDirError) and "not a regular file" in str(exc)
    meta_folder = tmp_path / "n"
    meta_folder.mkdir()
    (meta_folder / "model.keras").write_bytes(b"PK")
    os.mkfifo(meta_folder / "metadata.json")
    exc = _fifo_open_does_not_block(lambda: read_metadata(meta_folder),
                                    meta_folder / "metadata.json")
    assert isinstance(exc, ModelDirError) and "not a regular file" in str(exc)


# ------------------------------------------------------------------ unknown.npz content

def _npz(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


@pytest.mark.parametrize("arrays,words", [
    ({"reference": np.ones((10, 8)), "density": np.ones(7)}, "density must have one entry"),
    ({"reference": np.ones(10), "density": np.ones(10)}, "reference must be (N, D)"),
    ({"reference": np.ones((0, 8)), "density": np.ones(0)}, "reference must be (N, D)"),
    ({"reference": np.full((10, 8), np.nan), "density": np.ones(10)}, "NaN or infinite"),
    ({"reference": np.ones((10, 8)), "density": np.full(10, np.inf)}, "NaN or infinite"),
    ({"reference": np.ones((10, 8))}, "lacks density"),
    ({"reference": np.array(["a", "b"]), "density": np.ones(2)}, "floating-point"),
])
def test_unknown_arrays_that_disagree_are_refused(tmp_path, arrays, words):
    _npz(tmp_path / "unknown.npz", **arrays)
    entry = _with("unknown.k", 5)["unknown"]
    with pytest.raises(ModelDirError, match=words.replace("(", r"\(").replace(")", r"\)")):
        UnknownDetector.load(tmp_path, entry, n_classes=3)


def test_mahalanobis_arrays_must_fit_the_classes(tmp_path):
    entry = {**VALID["unknown"], "method": "mahalanobis"}
    _npz(tmp_path / "unknown.npz", means=np.ones((3, 8)), whitening=np.ones((8, 7)))
    with pytest.raises(ModelDirError, match="whitening must be square"):
        UnknownDetector.load(tmp_path, entry, n_classes=3)
    _npz(tmp_path / "unknown.npz", means=np.ones((5, 8)), whitening=np.eye(8))
    with pytest.raises(ModelDirError, match="means must be"):
        UnknownDetector.load(tmp_path, entry, n_classes=3)
    _npz(tmp_path / "unknown.npz", means=np.ones((3, 6)), whitening=np.eye(8))
    with pytest.raises(ModelDirError, match="means must be"):
        UnknownDetector.load(tmp_path, entry, n_classes=3)
    _npz(tmp_path / "unknown.npz", means=np.ones((3, 8)), whitening=np.eye(8))
    assert UnknownDetector.load(tmp_path, entry, n_classes=3).means.shape == (3, 8)


@pytest.mark.parametrize("content", [
    b"", b"PK\x03\x04garbage", b"\x93NUMPY\x01\x00garbage", b"not a zip at all" * 100,
])
def test_a_garbled_unknown_npz_is_one_model_dir_error(tmp_path, content):
    (tmp_path / "unknown.npz").write_bytes(content)
    with pytest.raises(ModelDirError, match="unknown.npz"):
        UnknownDetector.load(tmp_path, VALID["unknown"], n_classes=3)


def test_a_forged_header_claiming_terabytes_is_refused_unread(tmp_path):
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**9, 10**4)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(tmp_path / "unknown.npz", "w") as zf:
        zf.writestr("reference.npy", buf.getvalue() + b"\0" * 64)
        zf.writestr("density.npy", buf.getvalue())
    with pytest.raises(ModelDirError, match="larger than"):
        UnknownDetector.load(tmp_path, VALID["unknown"], n_classes=3)


# ------------------------------------------------------------------ NaN answers

class _NanModel:
    """A model folder whose weights went NaN: answers NaN for every image."""

    def predict_on_batch(self, x):
        out = np.full((len(x), 3), 1 / 3, np.float32)
        out[0] = np.nan
        return out


def test_a_nan_answer_is_an_error_entry_never_a_label(tmp_path):
    files = [make_image(tmp_path / f"{i}.png", COLOURS["red"], seed=i) for i in range(2)]
    preds = Predictor(_NanModel(), ["blue", "green", "red"], (64, 64)).predict(files)
    assert preds[0].error == NAN_ANSWER and preds[0].top == []
    assert preds[1].error is None and all(math.isfinite(t["probability"])
                                          for t in preds[1].top)
    det = UnknownDetector("max_probability", threshold=0.5)
    preds = Predictor(_NanModel(), ["blue", "green", "red"], (64, 64),
                      unknown=det).predict(files)
    assert preds[0].error == NAN_ANSWER and preds[0].score is None
    assert preds[0].unknown is None and math.isfinite(preds[1].score)


def test_evaluation_lists_what_it_skipped():
    ev = score(["a", "b"], np.array([0]), np.array([[0.9, 0.1]]), ["x"],
               skipped=[{"path": "y", "reason": "broken"}])
    assert ev.as_dict()["skipped"] == [{"path": "y", "reason": "broken"}]
    assert ev.count == 1


# ------------------------------------------------------------------ Hypothesis: metadata.json

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
FIELDS = sorted({f for f, _, _ in BAD_FIELDS} | set(VALID) | {
    f"unknown.{k}" for k in VALID["unknown"]} | {f"calibration.{k}"
                                                 for k in VALID["calibration"]})
SPECIAL = st.sampled_from([NAN, INF, -INF, 1e308, 10**20, -1, 0, 1, 0.5, "", "\n", [], {},
                           [NAN] * 3, [64, 64], [10**6, 10**6], ["a", "a"], "../x", "/x",
                           "unknown.npz", ...])


@st.composite
def mutated_metadata(draw) -> dict:
    meta = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        field = draw(st.sampled_from(FIELDS))
        value = draw(SPECIAL | JSON_VALUES)
        try:
            meta = _with(field, value, meta)
        except (KeyError, TypeError, AttributeError):  # its parent was replaced already
            continue
    return meta


def _assert_safe_to_use(meta: dict) -> None:
    """What a metadata.json that passed promises to everything downstream."""
    from app.core.intake.dataset import SplitSpec

    w, h = meta["image_size"]
    assert all(isinstance(s, int) and 16 <= s <= 2048 for s in (w, h))
    assert meta["classes"] and len(set(meta["classes"])) == len(meta["classes"])
    if meta.get("split_fractions"):
        SplitSpec(*meta["split_fractions"])
    t = float((meta.get("calibration") or {}).get("temperature", 1.0))
    assert math.isfinite(t) and t > 0
    entry = meta.get("unknown") or {}
    if entry.get("method"):
        assert math.isfinite(float(entry["threshold"])) and 1 <= int(entry.get("k", 5))
        assert 0 < float(entry.get("keep_known", 0.95)) < 1
        assert math.isfinite(float(entry.get("fitted_threshold", entry["threshold"])))
        name = entry.get("file")
        assert name is None or (isinstance(name, str) and os.path.basename(name) == name
                                and name not in ("", ".", ".."))
    assert all(isinstance(c, str) for c in meta.get("left_out_classes") or ())


@settings(max_examples=200, deadline=2000, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated_metadata())
def test_fuzzed_metadata_is_a_clean_error_or_safe(meta):
    try:
        text = json.dumps(meta)  # NaN and Infinity as json writes (and reads) them
    except (ValueError, RecursionError):
        return
    try:
        checked = validate_metadata(json.loads(text))
    except ModelDirError as exc:
        assert isinstance(exc, UserError) and "\n" not in str(exc)
        return
    _assert_safe_to_use(checked)


# ------------------------------------------------------------------ Hypothesis: unknown.npz

def _valid_npz_bytes() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(3)
    np.savez(buf, reference=rng.normal(0, 1, (12, 8)).astype(np.float16),
             density=rng.uniform(0, 1, 12).astype(np.float16))
    return buf.getvalue()


VALID_NPZ = _valid_npz_bytes()
HEADER = st.fixed_dictionaries({
    "descr": st.sampled_from(["<f2", "<f4", "<f8", ">f4", "|O", "<U4", "<i4", "|b1", "<c8",
                              "V8", "<m8[s]", "|S3"]),
    "fortran_order": st.booleans(),
    "shape": st.lists(st.integers(-3, 10**7) | st.sampled_from([0, 1, 8, 12, 10**12]),
                      max_size=4).map(tuple),
})


@st.composite
def garbled_npz(draw) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "header"]))
    if kind == "flip":
        data = bytearray(VALID_NPZ)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, min(len(data) - 1, 400)))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "truncate":
        return VALID_NPZ[:draw(st.integers(0, len(VALID_NPZ)))]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name in ("reference", "density"):
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(head, draw(HEADER))
            zf.writestr(f"{name}.npy", head.getvalue() + draw(st.binary(max_size=256)))
    return out.getvalue()


@settings(max_examples=150, deadline=2000, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(content=garbled_npz())
def test_fuzzed_unknown_npz_is_a_clean_error_or_finite(tmp_path, content):
    (tmp_path / "unknown.npz").write_bytes(content)
    try:
        det = UnknownDetector.load(tmp_path, VALID["unknown"], n_classes=3)
    except ModelDirError as exc:
        assert "\n" not in str(exc)
        return
    width = det.reference.shape[1]
    feats = np.random.default_rng(0).normal(0, 1, (4, width))
    scores = det.score(feats, np.full((4, 3), 1 / 3))
    assert np.isfinite(scores).all()


# ------------------------------------------------------------------ end to end, a real folder

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    from app.core.pipeline.retrain import Retraining
    from app.core.training.fit import TrainSettings

    data = make_dataset(root / "photos", per_class=8)
    run = Retraining(data, "tiny", "none", root / "cache", TrainSettings(epochs=1, batch_size=8))
    run.run_training()
    return run.export(root / "model").folder, data


# changes a folder may carry and still answer (k above the training images included)
BENIGN = [("unknown.threshold", 0.3, ""), ("unknown.k", 1, ""), ("unknown.k", 500, ""),
          ("unknown.method", "knn", ""), ("unknown.method", "max_probability", ""),
          ("unknown.method", None, ""), ("unknown", None, ""),
          ("calibration.temperature", 2.5, ""), ("unknown.keep_known", 0.5, ""),
          ("split_fractions", [0.5, 0.25, 0.25], ""), ("test", None, ""),
          ("unknown.fitted_threshold", ..., ""), ("preprocessing", ..., "")]


class _OpenAudit:
    """Every path this process opens while ``active`` (sys.addaudithook's "open" event)."""

    def __init__(self) -> None:
        self.active, self.paths = False, []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if self.active and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            self.paths.append(os.path.realpath(os.fsdecode(args[0])))


_AUDIT = _OpenAudit()


def _opened_during(call) -> tuple[list[str], BaseException | None]:
    _AUDIT.paths, _AUDIT.active = [], True
    try:
        call()
        return list(_AUDIT.paths), None
    except BaseException as exc:  # noqa: BLE001 - handed back to the test
        return list(_AUDIT.paths), exc
    finally:
        _AUDIT.active = False


@pytest.mark.slow
def test_a_real_export_fits_the_schema_and_its_arrays_the_model(exported, tmp_path):
    folder, _ = exported
    meta = read_metadata(folder)
    validate_metadata(meta)
    predictor = Predictor.from_dir(folder)
    assert predictor.unknown is not None
    target = tmp_path / "m"
    shutil.copytree(folder, target)
    with np.load(folder / "unknown.npz") as data:
        ref, density = data["reference"], data["density"]
    _npz(target / "unknown.npz", reference=ref[:, :-1], density=density)  # one feature short
    with pytest.raises(ModelDirError, match="features wide, the model's main_tap gives"):
        Predictor.from_dir(target)
    _npz(target / "unknown.npz", reference=ref, density=density)
    (target / "metadata.json").write_text(json.dumps(_with("image_size", [96, 96], meta)))
    with pytest.raises(ModelDirError, match="does not fit the model's input"):
        Predictor.from_dir(target)


@pytest.mark.slow
def test_evaluate_reports_every_image_it_skipped(exported, tmp_path, capsys):
    from app.cli import main
    from app.core.pipeline.retrain import evaluate_model_dir

    folder, data = exported
    photos = tmp_path / "photos"
    shutil.copytree(data, photos)
    (photos / "red" / "notes.jpg").write_bytes(b"this is not an image" * 10)  # the scan skips
    (photos / "red" / "cut\x1b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # predict
    ev = evaluate_model_dir(folder, photos, split="all")
    reasons = {Path(s["path"]).name: s["reason"] for s in ev.skipped}
    assert set(reasons) == {"notes.jpg", "cut\x1b.png"} and all(reasons.values())
    assert ev.count == 24
    assert main(["evaluate", str(folder), str(photos), "--split", "all"]) == 0
    out = capsys.readouterr().out
    assert "skipped " in out and "notes.jpg: " in out and "cut\\x1b.png: " in out
    assert "\x1b" not in out


@pytest.mark.slow
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(meta_change=st.sampled_from(BAD_FIELDS) | st.sampled_from(BENIGN) | st.tuples(
    st.sampled_from(FIELDS), SPECIAL | JSON_VALUES, st.just("")))
def test_fuzzed_folders_end_to_end_open_nothing_outside(exported, tmp_path_factory,
                                                        meta_change):
    """Folder copy, one field changed, secrets beside it: a clean error, or finite answers;
    nothing outside the folder is ever opened."""
    folder, data = exported
    root = tmp_path_factory.mktemp("e2e")
    target = root / "m"
    shutil.copytree(folder, target)
    secrets = root / "secrets"
    shutil.copytree(folder, secrets)
    field, value, _ = meta_change
    meta = json.loads((target / "metadata.json").read_text())
    if isinstance(value, str) and field == "unknown.file":
        value = value.replace("elsewhere.npz", "secrets/unknown.npz")
    try:
        meta = _with(field, value, meta)
    except (KeyError, TypeError):
        return
    (target / "metadata.json").write_text(json.dumps(meta))
    image = make_image(root / "in.png", COLOURS["blue"], seed=4)
    outcome: list = []
    opened, exc = _opened_during(lambda: outcome.append(
        Predictor.from_dir(target).predict([image])))
    assert not [p for p in opened if p.startswith(os.path.realpath(secrets))]
    if exc is not None:
        assert isinstance(exc, ModelDirError), repr(exc)
        event("refused")
        return
    event("answered")
    (pred,) = outcome[0]
    assert pred.error is None and all(math.isfinite(t["probability"]) for t in pred.top)
    assert pred.score is None or math.isfinite(pred.score)
