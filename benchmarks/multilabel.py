"""Several tags a photo: the app's multi-label head against two anchors, side by side, on the
same cached features and the same split (the app's, by content digest), scored on the test
split by the app's own scores (``app.core.trust.tags.score_tags``; its AP checked against
scikit-learn's ``average_precision_score`` here):

- **app**: ``python -m app train DATA --multi-label``'s path (``train_tagged``): the head with
  a sigmoid per tag (main, aux1, aux2), per-tag temperatures and thresholds (0.5 on the
  calibrated probability, the best validation F1 for a tag with 25+ validation photos);
- **one-vs-rest logistic regression** (scikit-learn, C=10, on the main tap's pooled features,
  fitted on the training split), decided at 0.5 as the issue measured it, and at per-tag
  thresholds chosen on the validation split by the app's rule;
- **first-tag head**: the app's single-label head (its single-label defaults, the same seed)
  trained on each photo's first tag (what a user forced to one class a photo would train
  today; photos with no tag left out of training), its
  softmax read as per-tag scores for AP and its top-1 tag as the tag set.

scikit-learn is for this benchmark only: ``pip install "bottleneck-studio[bench]"``.

usage: python benchmarks/multilabel.py DATA [--labels FILE] --backbone mobilenet
       --weights FILE [--cache-dir DIR] [--set SETTING=VALUE ...] [--seeds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.intake.tags import scan_tagged  # noqa: E402
from app.core.pipeline.retrain import RunChoice  # noqa: E402
from app.core.pipeline.tagged import train_tagged  # noqa: E402
from app.core.training.feeds import SplitData  # noqa: E402
from app.core.training.fit import predict_split, train_head  # noqa: E402
from app.core.training.settings import TrainSettings  # noqa: E402
from app.core.trust.tags import average_precision, best_f1_threshold, score_tags  # noqa: E402

SCORES = ("map", "micro_f1", "macro_f1", "exact_match", "hamming_loss")


def settings_from(pairs: list[str]) -> TrainSettings:
    """The multi-label defaults (as ``train --multi-label``), changed by ``pairs``."""
    base = TrainSettings()
    changes = {}
    for pair in pairs:
        name, value = pair.split("=", 1)
        changes[name] = type(getattr(base, name))(value)
    return TrainSettings.for_task(True, **changes)


def main_tap(split: SplitData) -> np.ndarray:
    return split.source.rows(split.digests, ["main"])["main"].astype(np.float32)


def check_ap(probs: np.ndarray, targets: np.ndarray) -> float:
    """The largest difference between the app's AP and scikit-learn's, over the tags."""
    from sklearn.metrics import average_precision_score

    worst = 0.0
    for k in range(targets.shape[1]):
        if targets[:, k].any():
            worst = max(worst, abs(average_precision(probs[:, k], targets[:, k])
                                   - average_precision_score(targets[:, k], probs[:, k])))
    return worst


def logistic(splits, tags, c: float = 10.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    x_train, y_train = main_tap(splits["train"]), splits["train"].labels
    model = OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000)).fit(x_train, y_train)
    val_p = model.predict_proba(main_tap(splits["validation"]))
    test_p = model.predict_proba(main_tap(splits["test"]))
    test = splits["test"]
    at_half = score_tags(tags, test.labels, test_p, test.paths)
    thresholds = [best_f1_threshold(val_p[:, k], splits["validation"].labels[:, k])
                  for k in range(len(tags))]
    tuned = score_tags(tags, test.labels, test_p, test.paths, thresholds)
    return at_half, tuned, test_p


def first_tag(splits, tags, settings: TrainSettings):
    """The single-label head on each photo's first tag (in the tags file's sorted order)."""
    def single(split: SplitData) -> SplitData:
        keep = np.flatnonzero(split.labels.sum(axis=1) > 0)
        part = split.take(keep)
        part.labels = part.labels.argmax(axis=1).astype(np.int64)
        return part

    result = train_head(single(splits["train"]), single(splits["validation"]), tags, settings)
    test = splits["test"]
    outputs = predict_split(result, test)
    probs = (np.mean(list(outputs.values()), axis=0) if result.averages else outputs["main"])
    top1 = np.zeros_like(probs)
    top1[np.arange(len(probs)), probs.argmax(axis=1)] = 1.0
    # AP from the softmax scores; the tag set: the top-1 tag (at threshold 0.5 on one-hot)
    ev = score_tags(tags, test.labels, top1, test.paths)
    ev.map = round(float(np.mean([a for k in range(len(tags)) if (a := average_precision(
        probs[:, k], test.labels[:, k])) is not None])), 4)
    return ev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--labels")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--cache-dir")
    ap.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                    help="a training setting of the app's multi-label head (default: the "
                         "multi-label defaults, as train --multi-label)")
    ap.add_argument("--seeds", type=int, default=3,
                    help="training seeds of both heads (the split and the regression are "
                         "the same for every seed); the table gives their mean and range")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    data = scan_tagged(args.data, args.labels)
    runs: dict[str, list] = {}
    extra: dict[str, list] = {"app_outputs_map": [], "app_validation": [],
                              "app_train_seconds": [], "app_per_tag": []}
    for seed in range(1, args.seeds + 1):
        settings = settings_from([*args.set, f"seed={seed}"])
        choice = RunChoice(str(data.root), args.backbone, args.weights, settings)
        start = time.perf_counter()
        model, cache = train_tagged(choice, data, args.cache_dir)
        extra["app_train_seconds"].append(round(time.perf_counter() - start - cache.seconds, 1))
        tags, splits = model.tags, model.splits
        if seed == 1:
            lr_half, lr_tuned, lr_probs = logistic(splits, tags)
            ap_check = check_ap(lr_probs, splits["test"].labels)
        rows = {"app multi-label head": model.evaluation,
                "one-vs-rest logistic regression, 0.5": lr_half,
                "one-vs-rest logistic regression, tuned thresholds": lr_tuned,
                "first-tag single-label head": first_tag(
                    splits, tags, TrainSettings(seed=seed))}
        for name, ev in rows.items():
            runs.setdefault(name, []).append({k: getattr(ev, k) for k in SCORES})
        extra["app_outputs_map"].append(model.evaluation.outputs_map)
        extra["app_validation"].append({k: getattr(model.validation, k) for k in SCORES}
                                       if model.validation else None)
        extra["app_per_tag"].append(model.evaluation.per_tag)
    out = {
        "data": str(data.root), "backbone": args.backbone, "seeds": args.seeds,
        "photos": {s: len(v) for s, v in splits.items()},
        "tags": tags, "settings": settings.as_dict(),
        "ap_vs_sklearn_max_difference": ap_check,
        "test": {name: {k: _summary([r[k] for r in rs]) for k in SCORES}
                 for name, rs in runs.items()},
        "runs": runs, **extra,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{data.root.name}: {out['photos']} photos (train/validation/test), "
          f"{len(tags)} tags, {args.backbone}, {args.seeds} seed(s); test split, mean "
          "[min-max]:")
    print(f"{'':50s} " + " ".join(f"{k:>19s}" for k in SCORES))
    for name, scores in out["test"].items():
        print(f"{name:50s} " + " ".join(f"{_shown(v):>19s}" for v in scores.values()))
    print(f"app outputs' mAP by seed: {out['app_outputs_map']}")
    print(f"app on validation by seed: {out['app_validation']}")
    print(f"AP vs scikit-learn: max difference {ap_check:.2e}")


def _summary(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": round(float(np.mean(values)), 4), "min": min(values), "max": max(values)}


def _shown(s: dict | None) -> str:
    if s is None:
        return "-"
    return f"{s['mean']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


if __name__ == "__main__":
    main()
