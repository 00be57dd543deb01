"""Predict on photos that are already cached: today's path against the cache, side by side.

One run: a subset of DATA (``--images``, spread over the classes, as symlinks in a scratch
folder) is cached and a head trained on it (``Retraining``, a few epochs: the answers'
quality does not matter here), the model exported; then ``Predictor.predict`` on those same,
just-cached photos, timed, with the model folder loaded beforehand:

1. today's path: ``Predictor.from_dir(MODEL)`` (no cache folder): decode + the whole
   exported Keras model on every photo;
2. from the cache: ``Predictor.from_dir(MODEL, CACHE)``: the cached taps and the head alone;
3. computed through the caching job's extractor (``CachedTaps`` pointed at an empty cache
   folder holding only the ONNX graph): what a photo not in the cache costs now.

It prints the seconds and images/s of each, the ratio today / from the cache, whether the
answers of (2) and (3) are identical (they must be) and how far (1) is from them, and the
export's parity check (the exported model against the app's answers from the cached features,
which the caching engine computed: ONNX Runtime where installed).

usage: python benchmarks/predict_cached.py DATA --backbone mobilenet --weights FILE
       [--images 600] [--epochs 3] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.delivery.predict import Predictor  # noqa: E402
from app.core.intake.imaging import IMAGE_SUFFIXES  # noqa: E402
from app.core.pipeline.retrain import Retraining  # noqa: E402
from app.core.storage.store import FeatureStore  # noqa: E402
from app.core.training.fit import TrainSettings  # noqa: E402

GOAL_SPEEDUP = 20.0


def subset(data: Path, dest: Path, n: int) -> list[Path]:
    """``n`` photos of ``data`` spread over its classes, as symlinks under ``dest``."""
    files = sorted(p for c in sorted(data.iterdir()) if c.is_dir()
                   for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    step = len(files) / min(n, len(files))
    chosen = [files[int(i * step)] for i in range(min(n, len(files)))]
    out = []
    for f in chosen:
        link = dest / f.parent.name / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f.resolve())
        out.append(link)
    return out


def timed(predictor: Predictor, files: list[Path]) -> tuple[float, list]:
    start = time.perf_counter()
    preds = predictor.predict(files, top_k=3)
    return time.perf_counter() - start, preds


def answers(preds) -> list:
    return [[(t["label"], t["probability"]) for t in p.top] for p in preds]


def max_diff(a, b) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        px, py = dict(x), dict(y)
        worst = max([worst, *(abs(px[k] - py.get(k, 0.0)) for k in px)])
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="predict-bench-"))
    try:
        files = subset(Path(args.data_dir), scratch / "photos", args.images)
        for f in files:
            f.read_bytes()  # every method finds them in the page cache
        print(f"[bench] caching and training on {len(files)} photos", file=sys.stderr)
        cache = scratch / "cache"
        run = Retraining(scratch / "photos", args.backbone, args.weights, cache,
                         TrainSettings(epochs=args.epochs))
        run.run_training()
        model = run.export(scratch / "model").folder
        device = run.cache.device
        parity = json.loads((model / "metadata.json").read_text())["parity"]

        today = Predictor.from_dir(model)
        cached = Predictor.from_dir(model, cache)
        computing = Predictor.from_dir(model, cache)
        empty = scratch / "empty"
        FeatureStore(empty).close()
        shutil.copytree(cache / "onnx", empty / "onnx", dirs_exist_ok=True)
        computing.cached = dataclasses.replace(computing.cached, folder=empty)
        warm = files[:8]  # every path traced once before the clock starts
        for p in (today, cached, computing):
            p.predict(warm)

        print("[bench] predicting", file=sys.stderr)
        t_today, a_today = timed(today, files)
        t_cached, a_cached = timed(cached, files)
        t_computed, a_computed = timed(computing, files)
        n = len(files)
        rows = [("today: decode + the exported Keras model", t_today),
                ("from the cache: cached taps + the head", t_cached),
                (f"not cached: decode + the caching extractor ({device}) + the head",
                 t_computed)]
        doc = {
            "images": n, "backbone": args.backbone, "caching_device": device,
            "rows": [{"method": m, "seconds": round(s, 3), "images_per_second": round(n / s, 1)}
                     for m, s in rows],
            "speedup_today_over_cache": round(t_today / t_cached, 1),
            "cache_and_computed_identical": answers(a_cached) == answers(a_computed),
            "today_vs_cache_max_abs_diff": max_diff(answers(a_today), answers(a_cached)),
            "today_vs_cache_top1_changes": sum(x[0][0] != y[0][0] for x, y in
                                               zip(answers(a_today), answers(a_cached))),
            "errors": sum(p.error is not None for p in a_cached),
            "goal": f">= {GOAL_SPEEDUP:g}x",
            "export_parity": parity,
        }
        doc["goal_status"] = "PASS" if doc["speedup_today_over_cache"] >= GOAL_SPEEDUP \
            else "FAIL"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"Predict on {n} just-cached photos, {args.backbone}, model folder loaded beforehand")
    print()
    print("| method | seconds | images/s |")
    print("|---|---:|---:|")
    for r in doc["rows"]:
        print(f"| {r['method']} | {r['seconds']:.3f} | {r['images_per_second']:.1f} |")
    print()
    print(f"today / from the cache: **{doc['speedup_today_over_cache']}x** "
          f"(goal {doc['goal']}: {doc['goal_status']})")
    print(f"answers from the cache identical to computed ones: "
          f"{doc['cache_and_computed_identical']}; today's path is "
          f"{doc['today_vs_cache_max_abs_diff']:.2g} away at most "
          f"({doc['today_vs_cache_top1_changes']} top-1 changes)")
    print(f"export's parity check (the exported model on decoded photos against the app's "
          f"answers from features computed on {device}): max {parity.get('max_abs_diff'):.2g} "
          f"on {parity.get('images')} validation photos, tolerance {parity.get('tolerance')}, "
          f"{parity.get('top1_mismatches')} top-1 changes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
