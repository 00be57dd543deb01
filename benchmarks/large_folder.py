"""A large folder on one machine: how scan, cache and training grow from 10k to 100k images.

Generates (once, resumable) a folder of N small distinct JPEGs in 50 class folders, then, for
each N, in fresh child processes so each peak RSS is its own, with the app's own jobs:

- scan: cold (a new cache folder: every file hashed) and warm (sizes and mtimes match);
- cache: MobileNet's pooled taps, random weights (``CacheJob``), seconds, images/s, peak RSS,
  the cache's size on disk; then a warm re-run (nothing to compute);
- train: ``Retraining.run_training`` (head mode, 2 epochs, streamed from the store): seconds to
  the first finished epoch (what the window plots first), total, peak RSS.

Everything lives under ``--work`` (default /tmp/bottleneck-large); nothing in the repo.

usage: python benchmarks/large_folder.py [--sizes 10000 100000] [--work DIR] [--json]
       python benchmarks/large_folder.py --generate-only 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = 50
SIZE = (96, 96)


def _write_class(args: tuple[str, int, int]) -> int:
    import numpy as np
    from PIL import Image

    folder, k, per_class = args
    base = np.array([(k * 37) % 256, (k * 91) % 256, (k * 53) % 256], np.float32)
    written = 0
    for i in range(per_class):
        path = Path(folder) / f"c{k:02d}" / f"img_{i:06d}.jpg"
        if path.exists():
            continue
        rng = np.random.default_rng(zlib.crc32(f"{k}/{i}".encode()))
        arr = np.clip(base + rng.normal(0, 40, (*SIZE, 3)), 0, 255).astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        Image.fromarray(arr).save(tmp, "JPEG", quality=85)
        os.replace(tmp, path)
        written += 1
    return written


def generate(folder: Path, n: int) -> Path:
    """N images, n/50 a class; existing ones are kept (a killed run resumes)."""
    per_class = n // CLASSES
    with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(_write_class, [(str(folder), k, per_class) for k in range(CLASSES)]))
    return folder


def _peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def child(step: str, data: str, cache: str) -> dict:
    from app.core.features.caching import CacheJob
    from app.core.intake.dataset import scan_dataset
    from app.core.storage.store import FeatureStore

    t0 = time.perf_counter()
    if step == "scan":
        with FeatureStore(cache) as store:
            ds = scan_dataset(data, store)
            cold = time.perf_counter() - t0
            t1 = time.perf_counter()
            scan_dataset(data, store)
            warm = time.perf_counter() - t1
        return {"images": len(ds.images), "scan_cold_s": round(cold, 1),
                "scan_warm_s": round(warm, 2), "scan_peak_mb": _peak_mb()}
    if step == "cache":
        res, _ = CacheJob(data, "mobilenet", "none", cache).run()
        secs = time.perf_counter() - t0
        return {"cache_s": round(secs, 1), "computed": res.computed,
                "images_per_s": round(res.computed / secs, 1), "cache_peak_mb": _peak_mb(),
                "cache_disk_mb": round(_dir_bytes(Path(cache)) / 2**20)}
    if step == "warm":
        res, _ = CacheJob(data, "mobilenet", "none", cache).run()
        return {"cache_warm_s": round(time.perf_counter() - t0, 1),
                "warm_computed": res.computed, "warm_peak_mb": _peak_mb()}
    if step == "train":
        from app.core.pipeline.retrain import Retraining
        from app.core.training.fit import TrainSettings

        first: list[float] = []

        def progress(p) -> None:
            if p.stage == "train" and p.done >= 1 and not first:
                first.append(time.perf_counter() - t0)

        run = Retraining(data, "mobilenet", "none", cache,
                         TrainSettings(epochs=2, early_stopping=0))
        run.run_training(progress)
        return {"first_epoch_s": round(first[0], 1) if first else None,
                "train_s": round(time.perf_counter() - t0, 1), "train_peak_mb": _peak_mb(),
                "test_accuracy": round(run.evaluation.main_accuracy, 3)}
    raise SystemExit(f"unknown step {step}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--work", default="/tmp/bottleneck-large")
    ap.add_argument("--steps", nargs="+", default=["scan", "cache", "warm", "train"])
    ap.add_argument("--generate-only", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    work = Path(args.work)
    if args.generate_only:
        t0 = time.perf_counter()
        generate(work / f"photos-{args.generate_only}", args.generate_only)
        print(f"generated in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        return 0
    rows = []
    for n in args.sizes:
        data = generate(work / f"photos-{n}", n)
        row: dict = {"n": n}
        for step in args.steps:
            # scan measures a cold scan into its own fresh cache; the others share one
            cache = work / (f"scan-cache-{n}-{time.time_ns()}" if step == "scan"
                            else f"cache-{n}")
            out = subprocess.run([sys.executable, __file__, "--child", step, str(data),
                                  str(cache)], capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            row.update(json.loads(out.stdout.splitlines()[-1]))
            print(f"{n}: {step} {row}", file=sys.stderr, flush=True)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    keys = [k for k in rows[0] if k != "n"]
    print("| figure | " + " | ".join(f"{r['n']:,} images" for r in rows)
          + (" | growth |" if len(rows) > 1 else " |"))
    print("|---|" + "---:|" * (len(rows) + (len(rows) > 1)))
    for k in keys:
        vals = [r.get(k) for r in rows]
        growth = ""
        if len(rows) > 1 and all(isinstance(v, (int, float)) and v for v in (vals[0], vals[-1])):
            growth = f" | {vals[-1] / vals[0]:.1f}x"
        elif len(rows) > 1:
            growth = " | "
        print(f"| {k} | " + " | ".join(str(v) for v in vals) + growth + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
