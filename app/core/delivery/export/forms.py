"""The other forms an export writes beside ``model.keras``: SavedModel, TFLite and ONNX (with
what each needs installed), each loaded back for the parity figures."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.core.delivery.export.report import PARITY_TOLERANCE, ExportError

if TYPE_CHECKING:
    import keras



FORMATS = ("keras", "savedmodel", "tflite", "onnx")


def onnx_unavailable() -> str | None:
    """Why this installation cannot write the ONNX form (None: it can)."""
    import importlib.util

    missing = [m for m in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(m)
               is None]
    if missing:
        return (f"this installation lacks {', '.join(missing)} "
                "(pip install \"bottleneck-studio[onnx]\")")
    return None




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
