"""Walk the six pages of the real window on a real dataset and save a screenshot of each.

    .venv/bin/python scripts/screenshots.py /tmp/shots [--data DIR] [--weights FILE]

Runs under Xvfb (re-executes itself with ``xvfb-run`` when there is no display), with MobileNet
and a local weights file: caches the features (into a temporary cache), trains a few epochs,
evaluates, predicts a few images and a broken file, then labels a pile of unsorted photos in a
new data folder. The window is 1280x720, a laptop's screen. The README's pictures
(docs/screenshots/) come from this script: run it again when a page changes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = "/work/shared/data/oxford17-flowers"
WEIGHTS = "/work/shared/weights/mobilenet_1_0_224_imagenet_no_top.weights.h5"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for the PNGs")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--weights", default=WEIGHTS)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--dark", action="store_true", help="force the dark palette")
    args = parser.parse_args()
    if not os.environ.get("DISPLAY") and os.environ.get("QT_QPA_PLATFORM") != "offscreen":
        if not shutil.which("xvfb-run"):
            raise SystemExit("no display and no xvfb-run: apt-get install xvfb")
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", sys.executable, *sys.argv]
        return subprocess.call(cmd)
    os.environ["QT_QPA_PLATFORM"] = os.environ.get("QT_QPA_PLATFORM", "xcb")
    sys.path.insert(0, str(ROOT))
    return walk(args)


def walk(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="shots-"))
    os.environ["BOTTLENECK_STUDIO_CACHE"] = str(tmp / "cache")
    os.environ["BOTTLENECK_STUDIO_DATA"] = str(tmp / "data")
    if args.dark:
        os.environ["QT_QPA_PLATFORMTHEME"] = ""
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from app.gui import theme
    from app.gui.window import MainWindow

    app = QApplication([sys.argv[0]])
    theme.apply(app)
    if args.dark:
        theme.apply_dark(app)
    win = MainWindow(settings=QSettings(str(tmp / "s.ini"), QSettings.Format.IniFormat))
    win.resize(1280, 720)
    win.show()

    def run_until(cond, limit=900.0) -> None:
        end = time.monotonic() + limit
        while not cond():
            if time.monotonic() > end:
                raise SystemExit("timed out")
            app.processEvents()
            time.sleep(0.005)

    def shot(name: str) -> None:
        for _ in range(20):
            app.processEvents()
            time.sleep(0.01)
        path = out / f"{name}.png"
        win.grab().save(str(path))
        print("saved", path, flush=True)
        if win.banner.isVisible():
            print("  message shown:", win.banner.text.text(), flush=True)

    run_until(lambda: bool(win.session.device))
    win.data_control.load_folder(args.data)
    run_until(lambda: win.session.folder is not None and win.data.choose.isEnabled())
    shot("1-data")

    win.show_page("Features")
    win.features.set_backbone("mobilenet")
    win.features.set_weights(args.weights)
    win.run_control.start_caching()
    run_until(lambda: win.run_control.heavy is None or win.features.bar.value() > 300)
    shot("3a-features-running")
    run_until(lambda: win.run_control.heavy is None)
    shot("3-features")

    win.show_page("Train")
    win.train.fields["epochs"].setValue(args.epochs)
    win.run_control.start_training()
    run_until(lambda: win.run_control.heavy is None or len(win.train.history) >= 2)
    shot("4a-train-running")
    run_until(lambda: win.run_control.heavy is None)
    shot("4-train")

    win.show_page("Evaluate")
    run_until(lambda: win.session.slot.review is not None, 120)  # the slider's scores
    run_until(lambda: win.evaluate.wrong.has_icon(0) or not win.jobs.running, 60)
    shot("5-evaluate")

    broken = tmp / "broken.jpg"
    broken.write_bytes(b"this is not a photo")
    samples = sorted(Path(args.data).glob("*/*.jpg"))[::170][:6]
    win.predict_control.predict_paths([str(p) for p in samples] + [str(broken)])
    run_until(lambda: win.predict.table.rowCount() > 0 and not win.predict.bar.isVisible())
    shot("6-predict")

    # a new data folder with two classes of three photos, and a pile of unsorted photos
    labelled, pile = tmp / "my-flowers", tmp / "unsorted"
    classes = sorted(p for p in Path(args.data).iterdir() if p.is_dir())
    for c in classes[:2]:
        (labelled / c.name).mkdir(parents=True)
        for f in sorted(c.glob("*.jpg"))[:3]:
            shutil.copy(f, labelled / c.name / f.name)
    pile.mkdir()
    for c in classes[:5]:
        for f in sorted(c.glob("*.jpg"))[3:15]:
            shutil.copy(f, pile / f"{len(list(pile.iterdir())):04d}.jpg")
    win.data_control.load_folder(str(labelled))
    run_until(lambda: win.session.folder is not None and win.data.choose.isEnabled())
    win.label_control.add([str(pile)])
    run_until(lambda: win.label_control.view is not None and win.label_control.worker is None)
    end = time.monotonic() + 5  # the thumbnails load in the background
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)
    shot("2-label")
    win.close()  # it waits for its jobs (the model being saved for the next start) first
    run_until(lambda: not win.isVisible())
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
