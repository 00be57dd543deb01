"""How many tagged photos the app needs (several tags a photo): an oracle tags what the app asks
for, through the same code the Label page uses (app.core.labeling.tags: the tag model, the
queue of the least sure tag sets with the class queue's cold start and random share), and the
test mAP (and micro-F1 at 0.5) of the tag model after N photos is printed for the app's order
and for random order, side by side.

The pool is a random 70% of the tagged folder's photos (their tags hidden from the app), the
test set the other 30%, the same for both orders and every seed. A label is one photo tagged
(its whole tag set, or none).

usage: python benchmarks/tag_labeling.py DATA --backbone mobilenet --weights FILE
       --cache-dir DIR [--labels FILE] [--seeds 3] [--batch 10] [--max-labels 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.labeling.tags import ask_tags, fit_tag_model, prepare_tag_pool  # noqa: E402
from app.core.trust.tags import average_precision  # noqa: E402

CHECKPOINTS = (20, 40, 60, 80, 100, 150, 200, 300)


def scores(model, x, y) -> tuple[float, float]:
    """mAP over the tags with a test photo, and micro-F1 at 0.5."""
    p = model.probabilities(x)
    aps = [a for k in range(y.shape[1]) if (a := average_precision(p[:, k], y[:, k])) is not None]
    given, true = p >= 0.5, y > 0.5
    tp = int((given & true).sum())
    f1 = 2 * tp / max(1, int(given.sum() + true.sum()))
    return round(float(np.mean(aps)), 4), round(f1, 4)


def run(order: str, px, py, tx, ty, tags, seed, batch, max_labels):
    rng = np.random.default_rng(seed)
    labelled: list[int] = []
    curve = []

    def record():
        while len(curve) < len(CHECKPOINTS) and len(labelled) >= CHECKPOINTS[len(curve)]:
            idx = np.array(labelled[:CHECKPOINTS[len(curve)]])
            rest = np.setdiff1d(np.arange(len(px)), idx)
            model = fit_tag_model(px[idx], py[idx], tags, px[rest], seed)
            curve.append([CHECKPOINTS[len(curve)], *scores(model, tx, ty)])

    if order == "random":
        for i in rng.permutation(len(px))[:max_labels]:
            labelled.append(int(i))
            record()
        return curve
    while len(labelled) < max_labels:
        free = np.array(sorted(set(range(len(px))) - set(labelled)))
        idx = np.array(labelled, np.int64)
        model = fit_tag_model(px[idx], py[idx], tags, px[free], seed) if len(idx) else None
        q = ask_tags(px[free], px[idx] if len(idx) else px[:0], model,
                     min(batch, max_labels - len(labelled)), seed=seed)
        for i in q.indices:
            labelled.append(int(free[i]))
            record()
    return curve


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--labels")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--max-labels", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pool = prepare_tag_pool(args.data_dir, args.labels, args.backbone, args.weights,
                            args.cache_dir)
    x, y, tags = pool.labelled, pool.targets, pool.tags
    split = np.random.default_rng(0).permutation(len(y))
    cut = int(0.7 * len(y))
    px, py, tx, ty = x[split[:cut]], y[split[:cut]], x[split[cut:]], y[split[cut:]]
    everything = scores(fit_tag_model(px, py, tags, None, 0), tx, ty)
    results = {"app": [], "random": []}
    t0 = time.perf_counter()
    for seed in range(1, args.seeds + 1):
        for order in results:
            curve = run(order, px, py, tx, ty, tags, seed, args.batch, args.max_labels)
            results[order].append(curve)
            print(json.dumps({"order": order, "seed": seed, "curve": curve}), file=sys.stderr,
                  flush=True)
    mean = {order: [[c[0][0], round(statistics.mean(r[1] for r in c), 4),
                     round(statistics.mean(r[2] for r in c), 4)] for c in zip(*curves)]
            for order, curves in results.items()}
    doc = {**mean, "all_labels": {"map": everything[0], "micro_f1": everything[1]},
           "pool": len(px), "test": len(tx), "tags": tags,
           "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{args.data_dir}: pool {len(px)}, test {len(tx)}, {len(tags)} tags; all "
          f"{len(px)} tagged: mAP {everything[0]:.3f}, micro-F1 {everything[1]:.3f}; "
          f"{args.seeds} seed(s), {doc['seconds']} s")
    print("| photos tagged | app mAP | random mAP | app micro-F1 | random micro-F1 |")
    print("|---:|---:|---:|---:|---:|")
    for (k, am, af), (_, rm, rf) in zip(mean["app"], mean["random"]):
        print(f"| {k} | {am:.3f} | {rm:.3f} | {af:.3f} | {rf:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
