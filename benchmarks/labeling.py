"""How many labels the app needs: an oracle labels what the app asks for, through the same code
the window uses (app.core.labeling: groups, suggestions, queue, the retrained model),
and the test accuracy after N labels is printed for the app's order and for random order,
side by side. The app's order also prints how often it says "maybe a new class" about the
photos it asks of classes already labelled (a false alarm each: every class of the pool is
known to the oracle), per stretch between checkpoints.

The pool is the data folder's training split (its labels hidden from the app), the model is
judged on the test split. A label is one photo the oracle looked at. The app's queue starts
from no labels at all (the most typical photo of each group first). Beside the curves: what
naming the cold-start groups would do, each group named after its most typical photo and its
8 most typical photos accepted under that name (how many photos, how many of them wrong).

usage: python benchmarks/labeling.py DATA --backbone mobilenet --weights FILE
       --cache-dir DIR [--seeds 3] [--batch 10] [--max-labels 360] [--json]
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

from app.core import labeling  # noqa: E402
from app.core.features.caching import CacheJob  # noqa: E402
from app.core.pipeline.retrain import load_splits  # noqa: E402

SHOW = 8  # typical photos a group shows
CHECKPOINTS = (20, 40, 60, 80, 100, 120, 140, 160, 190, 250, 360)


def features(data: str, backbone: str, weights: str, cache_dir: str):
    result, ds = CacheJob(data, backbone, weights, cache_dir).run()
    splits = load_splits(ds, result.model_key, cache_dir)
    out = {}
    for name in ("train", "test"):
        s = splits[name]
        rows = s.source.rows(s.digests, ["main", "aux1", "aux2"])
        out[name] = (labeling.photo_features(rows["main"], rows["aux1"], rows["aux2"]),
                     s.labels, labeling.main_features(rows["main"]))
    return out, ds.classes


def accuracy(model, x, y) -> float:
    return float((model.probabilities(x).argmax(axis=1) == y).mean())


def run(order: str, pool_x, pool_y, test_x, test_y, n_classes, seed, batch, max_labels,
        pool_main, show=SHOW):
    """Label in ``order`` ("app" or "random") up to ``max_labels``; accuracy at each
    checkpoint, and what the cold-start groups labelled. ``pool_main``: the pool's main tap
    alone (:func:`labeling.main_features`), which the app asks on while the task is hard."""
    rng = np.random.default_rng(seed)
    labelled: list[int] = []
    given: dict[int, int] = {}  # pool index -> label the oracle gave
    group_stats = {"groups": 0, "labelled": 0, "wrong": 0}
    curve = []
    alarms: dict[int, list[int]] = {}  # checkpoint -> [asked of a labelled class, flagged]

    def record():
        while len(curve) < len(CHECKPOINTS) and len(labelled) >= CHECKPOINTS[len(curve)]:
            idx = np.array(labelled[:CHECKPOINTS[len(curve)]])
            rest = np.setdiff1d(np.arange(len(pool_x)), idx)  # the photos still unlabelled
            model = labeling.fit_model(pool_x[idx], np.array([given[i] for i in idx]),
                                       n_classes, seed=seed, pool=pool_x[rest])
            curve.append([CHECKPOINTS[len(curve)], round(accuracy(model, test_x, test_y), 4)])

    if order == "random":
        for i in rng.permutation(len(pool_x))[:max_labels]:
            labelled.append(int(i))
            given[int(i)] = int(pool_y[i])
            record()
        return curve, group_stats
    # what the cold-start groups would label: each named after its most typical photo,
    # its `show` most typical photos accepted under that name (not counted as labels here)
    for g in labeling.make_groups(pool_x, seed=seed):
        named = int(pool_y[g.members[0]])
        accepted = g.members[:show]
        group_stats["groups"] += 1
        group_stats["labelled"] += len(accepted)
        group_stats["wrong"] += int((pool_y[accepted] != named).sum())
    while len(labelled) < max_labels:
        free = np.array(sorted(set(range(len(pool_x))) - set(labelled)))
        idx = np.array(labelled)
        unlabelled = pool_x[free]  # one array: the model answers it with its cross-fitted logits
        labels = np.array([given[i] for i in idx], np.int64)
        model = labeling.fit_model(pool_x[idx], labels, n_classes, seed=seed,
                                   pool=unlabelled) if len(idx) else None
        q = labeling.ask(unlabelled, pool_x[idx] if len(idx) else pool_x[:0], labels,
                         n_classes, model, min(batch, max_labels - len(labelled)), seed=seed,
                         pool_main=pool_main[free],
                         labelled_main=pool_main[idx] if len(idx) else pool_main[:0])
        sug = labeling.suggest(model, unlabelled)
        if sug is not None:
            seen = set(labels.tolist())
            stretch = next((c for c in CHECKPOINTS if c > len(labelled)), CHECKPOINTS[-1])
            counts = alarms.setdefault(stretch, [0, 0])
            for i in q.indices:
                if int(pool_y[free[i]]) in seen:
                    counts[0] += 1
                    counts[1] += int(sug.new_class[i])
        for i in q.indices:
            labelled.append(int(free[i]))
            given[int(free[i])] = int(pool_y[free[i]])
            record()
    group_stats["new_class_alarms"] = {c: v for c, v in sorted(alarms.items())}
    return curve, group_stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--max-labels", type=int, default=360)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    feats, classes = features(args.data_dir, args.backbone, args.weights, args.cache_dir)
    (px, py, pm), (tx, ty, _) = feats["train"], feats["test"]
    n = len(classes)
    everything = labeling.fit_model(px, py, n)
    all_acc = round(accuracy(everything, tx, ty), 4)
    results = {"app": [], "random": []}
    groups = []
    t0 = time.perf_counter()
    for seed in range(1, args.seeds + 1):
        for order in results:
            curve, stats = run(order, px, py, tx, ty, n, seed, args.batch, args.max_labels,
                               pm)
            results[order].append(curve)
            if order == "app":
                groups.append(stats)
            print(json.dumps({"order": order, "seed": seed, "curve": curve, **stats}),
                  file=sys.stderr, flush=True)
    mean = {order: [[c[0][0], round(statistics.mean(r[1] for r in c), 4)]
                    for c in zip(*curves)] for order, curves in results.items()}
    doc = {**mean, "all_labels": all_acc, "pool": len(px), "test": len(tx),
           "groups": groups, "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{args.data_dir}: pool {len(px)}, test {len(tx)}; all {len(px)} labels: "
              f"{all_acc:.1%}")
        print("| labels | app | random |\n|---:|---:|---:|")
        for (k, a), (_, r) in zip(mean["app"], mean["random"]):
            print(f"| {k} | {a:.1%} | {r:.1%} |")
        print(f"cold-start groups (per seed): "
              f"{[{k: v for k, v in g.items() if k != 'new_class_alarms'} for g in groups]}")
        print('"maybe a new class" on questions about labelled classes, up to each checkpoint '
              "(all seeds):")
        total: dict[int, list[int]] = {}
        for g in groups:
            for c, (n, flagged) in g["new_class_alarms"].items():
                t = total.setdefault(c, [0, 0])
                t[0] += n
                t[1] += flagged
        for c, (n, flagged) in sorted(total.items()):
            print(f"  <= {c} labels: {flagged} of {n} ({flagged / max(n, 1):.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
