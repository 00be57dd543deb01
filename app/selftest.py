"""``bottleneck-studio --self-test``: the whole app end to end, offscreen, in a few seconds.

It builds the small 'tiny' backbone (random weights, nothing to download), caches a few
generated images, trains one epoch with the auxiliary outputs, exports, predicts from the
exported folder and from the model in memory, checks both agree, and finally opens and closes
the main window offscreen (which proves the Qt platform plugins are there in a frozen build).
Everything happens in a temporary folder; the user's cache and models are never touched.

Prints one line per step and "self-test passed"; on any failure "self-test FAILED: <reason>"
and the exit status is 1. ``BOTTLENECK_STUDIO_SELFTEST_FAIL=<step>`` makes that step fail on
purpose (steps: data, cache, weights, train, export, predict, window), so the failure path
can be tested.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

CLASSES = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}
PER_CLASS = 8
PROB_TOLERANCE = 1e-3
FAIL_ENV = "BOTTLENECK_STUDIO_SELFTEST_FAIL"


class SelfTestError(Exception):
    """A self-test step did not give the expected result."""


def _step(name: str) -> None:
    if os.environ.get(FAIL_ENV, "").strip().lower() == name:
        raise SelfTestError(f"{name} step failed on purpose ({FAIL_ENV}={name})")


def _say(text: str) -> None:
    print(f"self-test: {text}", flush=True)


def make_images(root: Path) -> list[Path]:
    """PER_CLASS noisy images of one dominant colour per class, JPEG and PNG mixed."""
    import numpy as np
    from PIL import Image

    files = []
    for name, colour in CLASSES.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            rng = np.random.default_rng(zlib.crc32(f"{name}{i}".encode()))
            arr = np.clip(np.array(colour) + rng.normal(0, 30.0, (72, 96, 3)), 0, 255)
            path = folder / f"{name}_{i:02d}.{'jpg' if i % 2 == 0 else 'png'}"
            Image.fromarray(arr.astype(np.uint8)).save(path)
            files.append(path)
    return files


def _check_window(work: Path) -> str:
    """Open and close the main window offscreen (proves the Qt plugins are in a frozen build).

    Its settings and cache live in ``work``: the user's own are never read or written.
    """
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from app.gui.window import MainWindow

    app = QApplication.instance() or QApplication([sys.argv[0], "-platform",
                                                   os.environ["QT_QPA_PLATFORM"]])
    start = time.perf_counter()
    settings = QSettings(str(work / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings, preload=False, cache_dir=str(work / "cache"),
                        reopen=False)  # never the user's last folder or model
    window.show()
    for _ in range(5):
        app.processEvents()
    if not window.isVisible():
        raise SelfTestError("the main window did not show")
    window.grab()  # paints it
    shown = time.perf_counter() - start
    window.close()
    app.processEvents()
    return f"window ok ({app.platformName()}, shown and painted in {shown:.2f} s)"


def _check_bundled_weights() -> str:
    """The local weights file the installer bundled (the backbone it proposes offline): it
    loads into its backbone, and two different photos give different, finite features."""
    import numpy as np

    from app.core.features.backbones import BACKBONES, build_extractor
    from app.core.features.weights import bundled_choice

    bundled = bundled_choice([n for n, spec in BACKBONES.items() if not spec.hidden])
    if bundled is None:
        return "bundled weights: none (ImageNet weights are downloaded on first use)"
    name, path = bundled
    spec = BACKBONES[name]
    model = build_extractor(spec, str(path))  # pixels 0..255 -> [main, aux1, aux2]
    rng = np.random.default_rng(0)
    size = spec.image_size
    x = np.stack([np.full((size, size, 3), 120.0), rng.uniform(0, 255, (size, size, 3))])
    out = np.asarray(model.predict(x.astype("float32"), verbose=0)[0])
    if not np.isfinite(out).all() or np.allclose(out[0], out[1]):
        raise SelfTestError(f"the bundled weights {path.name} give no usable features")
    return f"bundled weights ok ({spec.title}: {path.name})"


def _run(work: Path) -> None:
    data, cache, model_dir = work / "photos", work / "cache", work / "model"

    _step("data")
    files = make_images(data)
    _say(f"data ok ({len(files)} images in {len(CLASSES)} classes)")

    _step("cache")
    from app.core.pipeline.retrain import Retraining
    from app.core.training.settings import TrainSettings

    run = Retraining(data, backbone="tiny", weights="none", cache_dir=cache,
                     settings=TrainSettings(epochs=1, aux_weight=0.3, early_stopping=0))
    cached = run.run_cache()
    if cached.cancelled or cached.images != len(files) or cached.skipped:
        raise SelfTestError(f"caching gave {cached.images} images ({len(cached.skipped)} "
                            f"skipped), expected {len(files)}")
    _say(f"cache ok ({cached.images} images, {cached.computed} computed on {cached.device})")
    from app.core.base.device import cuda_summary, described, keras_backend_name

    _say(f"backbone runs on: {described()}")  # and, on the CPU, why not on a GPU
    if keras_backend_name() == "tensorflow" and (cuda := cuda_summary()):
        _say(f"CUDA libraries beside TensorFlow: {cuda}")

    _step("weights")
    _say(_check_bundled_weights())

    _step("train")
    result = run.run_training_isolated()  # in a child process, as the window trains
    if result.epochs_run != 1 or not result.history:
        raise SelfTestError(f"training ran {result.epochs_run} epochs, expected 1")
    last = result.history[-1]
    missing = [k for k in ("main_loss", "aux1_loss", "aux2_loss") if k not in last]
    if missing:
        raise SelfTestError(f"training history lacks {', '.join(missing)}")
    _say(f"train ok (child process, 1 epoch, main loss {last['main_loss']:.3f}, "
         f"aux1 {last['aux1_loss']:.3f},"
         f" aux2 {last['aux2_loss']:.3f})")

    _step("export")
    out = run.export(model_dir).folder
    if not (out / "model.keras").is_file():
        raise SelfTestError(f"export wrote no model.keras in {out}")
    _say(f"export ok ({out.name}/model.keras)")

    _step("predict")
    from app.core.delivery.predict import Predictor

    exported = Predictor.from_dir(out, cache).predict(files, top_k=len(CLASSES))
    in_app = run.predictor().predict(files, top_k=len(CLASSES))
    worst = 0.0
    for a, b in zip(exported, in_app):
        if a.error or b.error:
            raise SelfTestError(f"prediction failed on {a.path}: {a.error or b.error}")
        if a.top[0]["label"] != b.top[0]["label"]:
            raise SelfTestError(f"exported and in-app models disagree on {a.path}: "
                                f"{a.top[0]['label']} vs {b.top[0]['label']}")
        pa = {t["label"]: t["probability"] for t in a.top}
        pb = {t["label"]: t["probability"] for t in b.top}
        worst = max([worst, *(abs(pa[k] - pb[k]) for k in pa)])
    if len(exported) != len(files) or worst > PROB_TOLERANCE:
        raise SelfTestError(f"exported and in-app probabilities differ by {worst:.2g} "
                            f"(tolerance {PROB_TOLERANCE})")
    _say(f"predict ok ({len(exported)} images, same top-1, max difference {worst:.1e})")

    _step("window")
    _say(_check_window(work))


def run_self_test() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    frozen = " (frozen)" if getattr(sys, "frozen", False) else ""
    _say(f"starting{frozen}, Python {sys.version.split()[0]}")
    try:
        with tempfile.TemporaryDirectory(prefix="bottleneck-selftest-") as tmp:
            _run(Path(tmp))
    except Exception as exc:  # every failure, reported as one line
        print(f"self-test FAILED: {type(exc).__name__}: {exc}", flush=True)
        return 1
    print(f"self-test passed in {time.perf_counter() - start:.1f} s", flush=True)
    return 0
