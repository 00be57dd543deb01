"""The exported folder's own predict.py (Pillow + numpy + Keras, no app import) gives the
app's probabilities and unknown answers, JPEG draft decoding, EXIF and alpha included; the
export records how far the plain decoding (no draft) is off."""

import json
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from app.core.delivery.predict import Predictor, read_metadata
from app.core.delivery.standalone_predict import decode
from app.core.intake.imaging import load_rgb
from app.core.pipeline.retrain import Retraining
from app.core.training.fit import TrainSettings
from tests.conftest import COLOURS, make_image

pytestmark = pytest.mark.slow

NO_APP = ("import runpy, sys; sys.modules['app'] = None; sys.argv = sys.argv[1:]; "
          "runpy.run_path(sys.argv[0], run_name='__main__')")


def _big_dataset(root):
    """Photos larger than 2x the tiny backbone's 64 px, so JPEG draft decoding kicks in."""
    for c in COLOURS:
        for i in range(10):
            make_image(root / c / f"{c}_{i}.jpg", COLOURS[c], size=(320, 240),
                       seed=zlib.crc32(f"{c}{i}".encode()) % 1000, noise=60.0)
    return root


def _odd_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rotated = folder / "rotated.jpg"
    im = Image.fromarray(np.tile(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None],
                                 (200, 1, 3)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(rotated, exif=exif)
    alpha = folder / "alpha.png"
    rgba = np.zeros((90, 120, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, np.linspace(0, 255, 120, dtype=np.uint8)[None]
    Image.fromarray(rgba, "RGBA").save(alpha)
    big = make_image(folder / "big.jpg", COLOURS["red"], size=(640, 480), seed=5, noise=60.0)
    return [rotated, alpha, big]


def _answers_like_the_app(standalone: list[dict], folder, files, score_tolerance: float):
    """predict.py's JSON answers against the app's Predictor on the same files."""
    app = Predictor.from_dir(folder).predict(files, top_k=3)
    assert len(standalone) == len(app)
    for s, a in zip(standalone, app):
        assert s["error"] is None and a.error is None
        assert [t["label"] for t in s["top"]] == [t["label"] for t in a.top]
        np.testing.assert_allclose([t["probability"] for t in s["top"]],
                                   [t["probability"] for t in a.top], atol=1e-5)
        assert s["unknown"] == a.unknown
        assert s["score"] == pytest.approx(a.score, abs=score_tolerance)


def test_decode_is_the_apps_decoding_and_draft_matters(tmp_path):
    for path in _odd_files(tmp_path):
        np.testing.assert_array_equal(decode(path, (64, 64)), load_rgb(path, (64, 64)))
    big = tmp_path / "big.jpg"
    assert not np.array_equal(decode(big, (64, 64), draft=False), load_rgb(big, (64, 64)))


def test_predict_py_in_the_folder_answers_like_the_app(tmp_path):
    data = _big_dataset(tmp_path / "photos")
    run = Retraining(data, "tiny", "none", tmp_path / "cache",
                     TrainSettings(epochs=2, batch_size=8, learning_rate=3e-3))
    run.run_training()
    folder = run.export(tmp_path / "model").folder
    assert (folder / "predict.py").is_file()
    meta = read_metadata(folder)
    prep = meta["preprocessing"]
    assert "draft" in prep["jpeg_draft"] and "BILINEAR" in prep["resize"]
    assert prep["plain_decode"]["images"] == len(run.splits["validation"]) > 0
    assert prep["plain_decode"]["max_abs_diff"] > 0  # these JPEGs decode differently

    files = [str(p) for p in _odd_files(tmp_path / "new")]
    out = subprocess.run([sys.executable, "-c", NO_APP, str(folder / "predict.py"), *files,
                          "--top", "3", "--json"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    _answers_like_the_app(json.loads(out.stdout), folder, files, score_tolerance=1e-5)


def test_savedmodel_and_tflite_forms_record_their_plain_decode_deviation(tmp_path):
    """The other forms are loaded back from their files and measured like the Keras one: how
    far each is from the Keras model on the app's pixels, and how far plain decoding moves it."""
    data = _big_dataset(tmp_path / "photos")
    run = Retraining(data, "tiny", "none", tmp_path / "cache",
                     TrainSettings(epochs=1, batch_size=8, learning_rate=3e-3))
    run.run_training()
    folder = run.export(tmp_path / "model", ("keras", "savedmodel", "tflite")).folder
    assert (folder / "saved_model").is_dir() and (folder / "model.tflite").is_file()
    plain = read_metadata(folder)["preprocessing"]["plain_decode"]
    images = len(run.splits["validation"])
    for form in ("savedmodel", "tflite"):
        got = plain["other_forms"][form]
        assert got["images"] == plain["images"] == images > 0
        assert got["max_abs_diff"] > 0  # the plain decoding moves this form's answers too
        assert got["vs_keras_max_abs_diff"] < 1e-4 and got["vs_keras_top1_mismatches"] == 0
    assert plain["other_forms"]["tflite"]["runtime"] == "LiteRT (ai-edge-litert)"


NO_TENSORFLOW = ("import runpy, sys; sys.modules.update(app=None, keras=None, tensorflow=None); "
                 "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def test_the_onnx_form_answers_like_the_app_with_onnx_runtime_alone(tmp_path):
    """--format onnx: checked against the Keras model at export, and predict.py runs it with
    ONNX Runtime in a process where importing Keras or TensorFlow fails."""
    data = _big_dataset(tmp_path / "photos")
    run = Retraining(data, "tiny", "none", tmp_path / "cache",
                     TrainSettings(epochs=2, batch_size=8, learning_rate=3e-3))
    run.run_training()
    folder = run.export(tmp_path / "model", ("keras", "onnx")).folder
    meta = read_metadata(folder)
    assert (folder / "model.onnx").is_file() and meta["onnx"]["checked"] is True
    assert meta["onnx"]["outputs"] == ["probabilities", "main_tap"]  # the unknown test's input
    form = meta["preprocessing"]["plain_decode"]["other_forms"]["onnx"]
    assert form["images"] == len(run.splits["validation"]) > 0
    assert form["vs_keras_max_abs_diff"] < 1e-4 and form["vs_keras_top1_mismatches"] == 0

    files = [str(p) for p in _odd_files(tmp_path / "new")]
    for runtime in ("onnx", "auto"):
        out = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, str(folder / "predict.py"),
                              *files, "--top", "3", "--json", "--runtime", runtime],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        _answers_like_the_app(json.loads(out.stdout), folder, files, score_tolerance=1e-4)


def test_an_onnx_form_that_disagrees_with_the_app_is_an_error():
    from app.core.delivery.export import ExportError, _check_onnx

    agrees = {"images": 8, "vs_keras_max_abs_diff": 2e-7, "vs_keras_top1_mismatches": 0}
    assert _check_onnx(agrees, "float32") is True
    with pytest.raises(ExportError, match="ONNX form disagrees"):
        _check_onnx({**agrees, "vs_keras_max_abs_diff": 0.02}, "float32")
    with pytest.raises(ExportError, match="ONNX form disagrees"):
        _check_onnx({**agrees, "vs_keras_top1_mismatches": 1}, "float32")
    assert _check_onnx({"images": 0}, "float32") is False  # nothing to compare: said so
