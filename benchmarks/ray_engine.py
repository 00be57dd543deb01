"""The Ray engine against the app's own engine on this machine, images/s side by side.

Both cache the same folder from scratch into separate caches: the local engine (decode pool +
one backbone in this process), and Ray Data (decode tasks + one extractor actor) on a local Ray
started here, or on the cluster at --ray-address (e.g. one started with ``ray start --head``),
whose workers must see the same paths. The ratio shows Ray's overhead on this machine; a
cluster's gain comes from more GPUs and nodes, not from this comparison.

usage: python benchmarks/ray_engine.py DATA_DIR [--backbone mobilenet] [--weights FILE|none]
       [--ray-address ADDR] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.features.caching import CacheJob  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--weights", default="none")
    ap.add_argument("--ray-address", default=None)
    ap.add_argument("--work", default="/tmp/bottleneck-ray-bench")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    for engine in ("local", "ray"):
        t0 = time.perf_counter()
        result, _ = CacheJob(args.data_dir, args.backbone, args.weights, work / engine,
                             engine=engine, ray_address=args.ray_address).run()
        seconds = time.perf_counter() - t0
        rows.append((engine, result.computed, seconds, result.device))
    print("| engine | images computed | seconds (cold, incl. start-up) | images/s | device |")
    print("|---|---:|---:|---:|---|")
    for engine, n, sec, device in rows:
        print(f"| {engine} | {n} | {sec:.1f} | {n / sec:.1f} | {device} |")
    print(f"\nray / local throughput: {rows[1][1] / rows[1][2] / (rows[0][1] / rows[0][2]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
