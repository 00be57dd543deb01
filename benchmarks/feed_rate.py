"""Does the feature stream keep up with training? Rows per second the app's feed delivers
against rows per second the training step consumes, side by side in one run.

On a cached dataset (the cut for ``--mode finetune``, the pooled taps for ``--mode head``),
over the training split:

1. the app's feed (``make_feed``, shuffled batches) reading every row from the memory-mapped
   shards / SQLite (``ram_budget=0``: what a dataset larger than the RAM budget does every
   epoch), and reading from RAM (the second epoch of a dataset that fits);
2. the same with the rows converted to float32 on the host, as the feed did before: the
   difference is the conversion the model now does on its own device;
3. the training step alone: the app's ``train_head`` on the same number of rows held in memory
   (its second epoch; no validation), the rate the trainable part consumes on this machine.

A feed/consume ratio >= 1 means the stream is not what an epoch waits for. On a CPU the step
is slow and any feed keeps up; on a GPU the step is ~100x faster, so the feed's own rate is
the figure that matters.

usage: python benchmarks/feed_rate.py DATA_DIR --weights FILE [--mode finetune]
       [--cache-dir DIR] [--consume-rows 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from app.core.pipeline.retrain import Retraining, load_splits  # noqa: E402
from app.core.storage.store import CUT  # noqa: E402
from app.core.training.feeds import FeatureSource, SplitData, make_feed  # noqa: E402
from app.core.training.fit import TrainSettings, train_head  # noqa: E402


def feed_epoch(split: SplitData, inputs, n_classes: int, host_float32: bool) -> float:
    feed = make_feed(split, inputs, ("main", "aux1", "aux2"), n_classes, 64, True, 1)
    t0, rows = time.perf_counter(), 0
    for i in range(len(feed)):
        x = feed[i][0]
        if host_float32:
            x = {k: v.astype(np.float32) for k, v in x.items()}
        rows += len(next(iter(x.values())))
    return rows / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--mode", default="finetune", choices=["head", "finetune"])
    ap.add_argument("--cache-dir", default="/tmp/bottleneck-bench-cache")
    ap.add_argument("--consume-rows", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    settings = TrainSettings(mode=args.mode, epochs=2, early_stopping=0, class_weights="none")
    run = Retraining(args.data_dir, args.backbone, args.weights, args.cache_dir, settings)
    dataset = run._ensure_cached(lambda p: None, None)
    train = load_splits(dataset, run.cache.model_key, args.cache_dir)["train"]
    inputs = (CUT,) if args.mode == "finetune" else ("main", "aux1", "aux2")
    n = len(dataset.classes)

    rates = {}
    for host_float32 in (False, True):
        name = "host float32 (before)" if host_float32 else "as stored, float16 (now)"
        disk = SplitData(None, train.labels, train.paths, train.digests,
                         FeatureSource(args.cache_dir, run.cache.model_key, ram_budget=0))
        ram = SplitData(None, train.labels, train.paths, train.digests,
                        FeatureSource(args.cache_dir, run.cache.model_key, ram_budget=8 << 30))
        feed_epoch(ram, inputs, n, host_float32)  # fills its RAM copy
        rates[name] = {"from disk": feed_epoch(disk, inputs, n, host_float32),
                       "from RAM": feed_epoch(ram, inputs, n, host_float32)}

    k = min(args.consume_rows, len(train))
    held = train.take(np.arange(k))
    held = SplitData(held.rows(np.arange(k), inputs), held.labels, held.paths)
    ends: list[float] = []

    def progress(p):
        if p.stage == "train" and p.data and not p.data.get("partial"):
            ends.append(time.perf_counter())

    train_head(held, None, dataset.classes, settings, progress,
               backbone=run._backbone() if args.mode == "finetune" else None)
    consume = k / (ends[1] - ends[0])

    doc = {"mode": args.mode, "train_rows": len(train), "row_shapes": train.shapes(inputs),
           "feed_rows_per_second": {a: {b: round(v, 1) for b, v in r.items()}
                                    for a, r in rates.items()},
           "train_step_rows_per_second": round(consume, 1), "train_step_rows": k}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{args.mode}: {len(train)} training rows, shapes {doc['row_shapes']}")
    print("| feed | from disk (rows/s) | from RAM (rows/s) | disk / training step |")
    print("|---|---:|---:|---:|")
    for name, r in rates.items():
        print(f"| {name} | {r['from disk']:.0f} | {r['from RAM']:.0f} | "
              f"{r['from disk'] / consume:.1f}x |")
    now, before = rates["as stored, float16 (now)"], rates["host float32 (before)"]
    print(f"training step on this machine: {consume:.1f} rows/s ({k} rows held in memory)")
    print(f"now / before: {now['from disk'] / before['from disk']:.2f}x from disk, "
          f"{now['from RAM'] / before['from RAM']:.2f}x from RAM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
