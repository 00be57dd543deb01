"""Peak memory of training against the number of images: streaming keeps it flat.

A store is filled with N rows of MobileNet's tap shapes (random float16, 50 classes; the
values do not matter for memory), then a child process trains 2 epochs in head mode, the
app's own path (``load_splits`` -> ``train_head``), and reports its peak RSS. The same for
each N, side by side in one run, plus the old in-memory path's figure for comparison (every
split's features as float32 arrays: what ``train`` did before streaming).

With ``--mode finetune`` the store holds N synthetic cut tensors (MobileNet's 14x14x512, float16
shards, 200 KB an image) and the child trains MobileNet's blocks above the cut (random weights)
with the aux heads, streaming the cut from disk.

With ``--batches B`` each child stops (cancels) after about B training batches of its first
epoch: a fine-tune epoch over 45k images takes ~30 min on 2 CPU cores, and what could grow
with N (the split's digests, the shuffled order, the store's index) is built before the first
batch; the table then says "B batches" instead of an epoch count.

usage: python benchmarks/train_memory.py [--sizes 10000 50000] [--mode head|finetune]
       [--epochs 2] [--batches B] [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {"main": (1024,), "aux1": (4, 4, 512), "aux2": (4, 4, 512)}  # MobileNet v1 taps
KEY = "mobilenet|synthetic|prep1|tensorflow-float32"
CUT_KEY = KEY + "|cut:conv_pw_10_relu"
CUT_SHAPE = (14, 14, 512)
CLASSES = 50


def fill_cut(cache: Path, n: int) -> None:
    """N synthetic cut tensors in the store's float16 shards (skipped when already there)."""
    import numpy as np

    from app.core.storage.store import CUT, FeatureStore

    with FeatureStore(cache) as store:
        have = len(store.cached_digests(CUT_KEY))
        if have >= n:
            return
        store.register_model(CUT_KEY, {"backbone": "mobilenet", "shapes": {CUT: CUT_SHAPE}})
        rng = np.random.default_rng(0)
        for start in range(have, n, 500):
            m = min(500, n - start)
            digests = [f"{i:032x}" for i in range(start, start + m)]
            labels = np.arange(start, start + m) % CLASSES
            x = rng.random((m, *CUT_SHAPE), np.float32).astype(np.float16)
            x[np.arange(m), :, :, labels] += 2  # learnable
            store.put_arrays(CUT_KEY, digests, x)


def fill(cache: Path, n: int) -> None:
    """N synthetic rows (skipped when the store already has them)."""
    import numpy as np

    from app.core.storage.store import FeatureBatch, FeatureStore

    with FeatureStore(cache) as store:
        if len(store.cached_digests(KEY)) >= n:
            return
        store.register_model(KEY, {"backbone": "mobilenet", "shapes": SHAPES})
        rng = np.random.default_rng(0)
        have = len(store.cached_digests(KEY))
        for start in range(have, n, 1000):
            m = min(1000, n - start)
            digests = [f"{i:032x}" for i in range(start, start + m)]
            labels = np.arange(start, start + m) % CLASSES
            main = rng.normal(0, 1, (m, *SHAPES["main"])).astype(np.float16)
            main[np.arange(m), labels] += 4  # learnable, so training is a real one
            aux = rng.normal(0, 1, (m, *SHAPES["aux1"])).astype(np.float16)
            store.put_features(KEY, FeatureBatch(digests, main, aux, aux))


def child(cache: str, n: int, in_memory: bool, mode: str = "head", epochs: int = 2,
          batches: int = 0) -> None:
    """Train ``epochs`` (or ``batches`` batches) on the first n rows; print peak RSS (MB) and
    seconds."""
    import re

    import numpy as np

    from app.core.base.jobs import Cancelled, CancelToken
    from app.core.storage.store import CUT
    from app.core.training.feeds import FeatureSource, SplitData
    from app.core.training.fit import TrainSettings, train_head

    digests = [f"{i:032x}" for i in range(n)]
    labels = np.arange(n) % CLASSES
    cut = int(n * 0.9)
    source = FeatureSource(cache, CUT_KEY if mode == "finetune" else KEY)
    taps = (CUT,) if mode == "finetune" else ("main", "aux1", "aux2")
    split = {"train": slice(0, cut), "validation": slice(cut, n)}
    data = {}
    for name, sl in split.items():
        d = SplitData(None, labels[sl], [f"img{i}" for i in range(n)][sl], digests[sl], source)
        if in_memory:  # the old path: every feature of the split as float32, up front
            d = SplitData(d.rows(np.arange(len(d)), taps), d.labels, d.paths)
        data[name] = d
    backbone = None
    if mode == "finetune":
        from app.core.features.backbones import get_spec

        backbone = (get_spec("mobilenet"), "none")
    cancel, seen = CancelToken(), [0]

    def progress(p) -> None:
        m = re.search(r"batch (\d+)", p.message or "")
        if batches and m:
            seen[0] = int(m.group(1))
            if seen[0] >= batches:
                cancel.cancel()

    t0 = time.perf_counter()
    accuracy = None
    try:
        result = train_head(data["train"], data["validation"],
                            [f"c{i}" for i in range(CLASSES)],
                            TrainSettings(epochs=epochs, early_stopping=0, mode=mode,
                                          stream_interval=0.0),
                            progress=progress, cancel=cancel, backbone=backbone)
        accuracy = result.history[-1]["val_main_accuracy"] if result.history else None
    except Cancelled:
        pass  # stopped after ``batches`` batches, on purpose
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": round(peak), "seconds": round(time.perf_counter() - t0, 1),
                      "val_accuracy": accuracy, "batches": seen[0] if batches else None}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    ap.add_argument("--work", default="/tmp/bottleneck-train-memory")
    ap.add_argument("--in-memory-up-to", type=int, default=50000,
                    help="also measure the old in-memory path for sizes up to this")
    ap.add_argument("--mode", default="head", choices=["head", "finetune"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batches", type=int, default=0,
                    help="stop each run after this many training batches (0: whole epochs)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2] == "memory", args.mode,
              args.epochs, args.batches)
        return 0
    cache = Path(args.work) / "cache"
    (fill_cut if args.mode == "finetune" else fill)(cache, max(args.sizes))
    rows = []
    for n in args.sizes:
        for how in ("stream", "memory"):
            if how == "memory" and n > args.in_memory_up_to:
                continue
            out = subprocess.run([sys.executable, __file__, "--child", str(cache), str(n), how,
                                  "--mode", args.mode, "--epochs", str(args.epochs),
                                  "--batches", str(args.batches)],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            rows.append({"images": n, "path": how, **json.loads(out.stdout.splitlines()[-1])})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        span = f"{args.batches} batches" if args.batches else f"{args.epochs} epochs"
        print(f"| images | mode | path | peak RSS (MB) | {span} (s) | val accuracy |")
        print("|---:|---|---|---:|---:|---:|")
        for r in rows:
            acc = "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.3f}"
            print(f"| {r['images']} | {args.mode} | {r['path']} | {r['peak_mb']} | "
                  f"{r['seconds']} | {acc} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
