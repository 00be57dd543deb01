"""Test accuracy of head-only vs fine-tune (aux weight 0) vs fine-tune (aux weight 0.3), several
seeds each, on one dataset, with the app's own training path (``Retraining``).

The seed moves the head's initialisation, dropout and batch order; the split is by content and
stays put. Each configuration prints its per-seed accuracies, their mean and spread, and
what caching its features cost (images/s of the caching that ran first, KB an image on disk:
use a fresh ``--cache-dir`` for a cold figure).

The aux outputs at inference (issue 20): each run also scores, on the test split, every
output alone, their mean ("average"), and the output that is best on the validation split
("best on validation", chosen on validation only, never on test).

usage: python benchmarks/accuracy.py DATA_DIR --weights FILE [--backbone NAME]
       [--seeds 1 2 3] [--finetune-epochs 15]
       [--configs head ft0 ft03 ft03flip ft0w ft03w] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from app.core.pipeline.retrain import Retraining  # noqa: E402
from app.core.training.fit import TrainSettings, predict_split  # noqa: E402


def output_study(run: Retraining) -> dict:
    """Test accuracy of each output, of their mean, and of the output best on validation."""
    val = predict_split(run.result, run.splits["validation"])
    test = predict_split(run.result, run.splits["test"])
    y_val, y_test = run.splits["validation"].labels, run.splits["test"].labels

    def acc(probs, y):
        return round(float((probs.argmax(1) == y).mean()), 4) if len(y) else None

    out = {name: acc(p, y_test) for name, p in test.items()}
    out["average"] = acc(sum(test.values()) / len(test), y_test)
    if len(y_val):
        on_val = {name: acc(p, y_val) for name, p in val.items()}
        out["val_main"] = on_val["main"]
        out["val_average"] = acc(sum(val.values()) / len(val), y_val)
        chosen = max(on_val, key=lambda k: (on_val[k], k == "main"))  # ties: main
        out["best_on_validation"], out["chosen"] = out[chosen], chosen
    return out


def configs(finetune_epochs: int) -> dict[str, dict]:
    ft = dict(mode="finetune", epochs=finetune_epochs, early_stopping=5)
    return {
        "head": dict(mode="head"),  # the defaults: 40 epochs, early stopping after 10
        "ft0": {**ft, "aux_weight": 0.0},
        "ft03": {**ft, "aux_weight": 0.3},
        "ft03flip": {**ft, "aux_weight": 0.3, "augment": "flip"},  # mirrored cut tensors
        # the heads learn alone for 3 epochs, then the blocks join (Keras' transfer-learning
        # guide: train the new head first, then fine-tune)
        "ft0w": {**ft, "aux_weight": 0.0, "warmup_epochs": 3},
        "ft03w": {**ft, "aux_weight": 0.3, "warmup_epochs": 3},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--cache-dir", default="/tmp/bottleneck-bench-cache")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--finetune-epochs", type=int, default=15)
    ap.add_argument("--configs", nargs="+", default=["head", "ft0", "ft03"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    table = configs(args.finetune_epochs)
    rows = []
    for seed in args.seeds:  # seeds outside: a cut-short run still compares every configuration
        for name in args.configs:
            run = Retraining(args.data_dir, args.backbone, args.weights, args.cache_dir,
                             TrainSettings(seed=seed, **table[name]))
            t0 = time.perf_counter()
            cache = run.run_cache()
            run.run_training()
            ev = run.evaluation
            best = run.result.history[run.result.best_epoch - 1]
            rows.append({"config": name, "seed": seed, "test_accuracy": ev.main_accuracy,
                         "val_accuracy": round(float(best["val_main_accuracy"]), 4),
                         "balanced": ev.balanced_accuracy, "test_images": ev.count,
                         "epochs_run": run.result.epochs_run,
                         "best_epoch": run.result.best_epoch,
                         "seconds": round(time.perf_counter() - t0, 1),
                         "cache_computed": cache.computed,
                         "cache_images_per_s": round(cache.images_per_second, 1),
                         "cache_kb_per_image": round(cache.disk_bytes / 1024 / max(
                             1, cache.ready), 1),
                         "outputs": output_study(run)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    summary = {}
    for name in args.configs:
        accs = [r["test_accuracy"] for r in rows if r["config"] == name]
        vals = [r["val_accuracy"] for r in rows if r["config"] == name]
        summary[name] = {"mean": round(statistics.mean(accs), 4),
                         "val_mean": round(statistics.mean(vals), 4),
                         "spread": round(max(accs) - min(accs), 4), "runs": accs,
                         "seconds_mean": round(statistics.mean(
                             r["seconds"] for r in rows if r["config"] == name), 1)}
        mine = [r for r in rows if r["config"] == name]
        first = next((r for r in mine if r["cache_computed"]), mine[0])
        summary[name]["cache"] = {"images_per_s": first["cache_images_per_s"],
                                  "computed": first["cache_computed"],
                                  "kb_per_image": first["cache_kb_per_image"]}
        keys = [k for k in mine[0]["outputs"] if k != "chosen"]
        summary[name]["outputs"] = {
            k: round(statistics.mean(r["outputs"][k] for r in mine), 4) for k in keys
            if all(r["outputs"].get(k) is not None for r in mine)}
        summary[name]["chosen"] = [r["outputs"].get("chosen") for r in mine]
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=2))
    else:
        print(f"{args.data_dir}: {rows[0]['test_images']} test images, seeds {args.seeds}")
        print("| configuration | mean validation accuracy (best epoch) | mean test accuracy | "
              "min-max spread | per seed | s / run |")
        print("|---|---:|---:|---:|---|---:|")
        for name, s in summary.items():
            runs = ", ".join(f"{a:.1%}" for a in s["runs"])
            print(f"| {name} | {s['val_mean']:.1%} | {s['mean']:.1%} | {s['spread']:.1%} | "
                  f"{runs} | {s['seconds_mean']} |")
        print("\n| configuration | caching images/s (images computed) | KB an image | "
              + " | ".join(next(iter(summary.values()))["outputs"]) + " | chosen |")
        print("|---|---:|---:|" + "---:|" * len(next(iter(summary.values()))["outputs"])
              + "---|")
        for name, s in summary.items():
            c, o = s["cache"], s["outputs"]
            print(f"| {name} | {c['images_per_s']} ({c['computed']}) | {c['kb_per_image']} | "
                  + " | ".join(f"{v:.1%}" for v in o.values())
                  + f" | {', '.join(map(str, s['chosen']))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
