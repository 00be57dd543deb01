"""An exported ``model.keras`` opens with plain Keras (``keras.models.load_model``, safe mode)
in a process that cannot import the app, in every training mode and with either answer, and
answers there as the app does; model folders exported with the app's old ``AverageAnswer``
layer still open in the app."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from app.core.delivery.predict import Predictor, read_metadata
from app.core.intake.imaging import load_rgb
from app.core.pipeline.retrain import Retraining
from app.core.training.fit import TrainSettings
from tests.conftest import make_dataset

pytestmark = pytest.mark.slow

# -I: no PYTHONPATH, no cwd, no user site on sys.path; the app is also installed (editable)
# in the venv's site-packages, so it is blocked by name, as a client without it lacks it
CLEAN = """
import json, sys
sys.modules['app'] = None
import keras, numpy as np
out = {}
for path in sys.argv[2:]:
    try:
        model = keras.models.load_model(path)
        out[path] = np.asarray(model.predict_on_batch(np.load(sys.argv[1]))).tolist()
    except Exception as exc:
        out[path] = f"{type(exc).__name__}: {str(exc)[-3000:]}"
assert not any(name.split('.')[0] == 'app' for name in sys.modules if sys.modules[name])
print(json.dumps(out))
"""

MODES = [("head", "average"), ("head", "main"), ("finetune", "average"), ("finetune", "main")]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One tiny export per training mode and answer, and test pixels to ask them about."""
    root = tmp_path_factory.mktemp("plain")
    data = make_dataset(root / "photos")
    folders = {}
    for mode, answer in MODES:
        run = Retraining(data, "tiny", "none", root / "cache",
                         TrainSettings(epochs=1, batch_size=8, learning_rate=3e-3, seed=3,
                                       mode=mode, answer=answer))
        run.run_training()
        assert run.result.averages == (answer == "average")
        folders[mode, answer] = run.export(root / f"{mode}-{answer}").folder
    pixels = np.stack([load_rgb(p, (64, 64)) for p in run.splits["test"].paths])
    return folders, pixels.astype(np.float32)


def _plain_keras(pixels: np.ndarray, paths: list, tmp_path) -> dict:
    np.save(tmp_path / "pixels.npy", pixels)
    clean = tmp_path / "clean"
    clean.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run([sys.executable, "-I", "-c", CLEAN, str(tmp_path / "pixels.npy"),
                          *map(str, paths)], capture_output=True, text=True, timeout=300,
                         cwd=clean, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_every_exported_model_loads_in_plain_keras_and_answers_as_the_app(exports, tmp_path):
    folders, pixels = exports
    plain = _plain_keras(pixels, [f / "model.keras" for f in folders.values()], tmp_path)
    for key, folder in folders.items():
        parity = read_metadata(folder)["parity"]  # against the app's numpy answer at export
        assert parity["checked"] and parity["top1_mismatches"] == 0, key
        got = plain[str(folder / "model.keras")]
        assert not isinstance(got, str), f"{key}: {got}"
        app = Predictor.from_dir(folder).probabilities(pixels)
        np.testing.assert_allclose(got, app, atol=1e-5, err_msg=str(key))
        assert (np.argmax(got, 1) == app.argmax(1)).all(), key


IN_THE_APP = """
import json, sys
import numpy as np
from app.core.delivery.predict import Predictor
print(json.dumps(Predictor.from_dir(sys.argv[1]).probabilities(np.load(sys.argv[2])).tolist()))
"""


def test_a_folder_exported_with_the_old_answer_layer_still_opens_in_the_app(exports, tmp_path):
    """Before the built-in answer, model.keras ended in the registered AverageAnswer layer
    (main logits and aux probabilities in); such a folder, rebuilt here from a new one's
    layers, still loads in the app (in a new process: the app registers the layer itself)
    and answers as the new one does."""
    import keras

    from app.core.training.answer import AverageAnswer

    folders, pixels = exports
    new, old = folders["head", "average"], tmp_path / "old"
    model = keras.saving.load_model(new / "model.keras")
    temperature = 1 / float(model.get_layer("answer_temperature").scale)
    aux = [keras.layers.Softmax()(model.get_layer(f"{a}_logits").output)
           for a in ("aux1", "aux2")]
    probs = AverageAnswer(temperature, name="answer", dtype="float32")(
        [model.get_layer("main_logits").output, *aux])
    shutil.copytree(new, old)
    keras.Model(model.input, probs).save(old / "model.keras")
    with zipfile.ZipFile(old / "model.keras") as z:
        config = z.read("config.json").decode()
    assert '"app.core.training.answer"' in config  # as the old folders name it
    assert '"bottleneck_studio>AverageAnswer"' in config

    np.save(tmp_path / "pixels.npy", pixels)
    out = subprocess.run([sys.executable, "-c", IN_THE_APP, str(old), str(tmp_path / "pixels.npy")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    np.testing.assert_allclose(json.loads(out.stdout.splitlines()[-1]),
                               Predictor.from_dir(new).probabilities(pixels), atol=1e-5)
