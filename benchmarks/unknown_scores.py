"""Which "unknown" score separates best: calibrated max probability, k-nearest-neighbour
cosine similarity or class-conditional Mahalanobis, measured side by side.

Some classes are held out of training: the head trains on the others' cached features, the
threshold of each score is set on their validation split (95% stay known), and the held-out
classes' images (all splits) play the unknown photos. Prints AUROC (known test vs held out),
the fraction of each flagged unknown, and the ECE of the known test split before and after
temperature scaling. With ``--foreign DIR`` the images of DIR (photos of no training class at
all, e.g. ``skimage.data``'s) are scored too, through the same extractor and head.

A score is chosen without the test split: ``--resplits N`` re-splits the training and
validation images N times at random into training, validation and a pseudo-test part the size
of the test split, fits each feature-space score on the first two and prints the mean and
spread of what it does on the third, the held-out classes and the foreign photos. (The max
probability is left out there: the head was trained on those images.)

    python benchmarks/unknown_scores.py ../shared/data/oxford17-flowers --backbone mobilenet \
        --weights ../shared/weights/mobilenet_1_0_224_imagenet_no_top.weights.h5 --hold-out 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.core.pipeline.retrain import Retraining, load_splits  # noqa: E402
from app.core.training.feeds import SplitData  # noqa: E402
from app.core.training.fit import TrainSettings, train_head  # noqa: E402
from app.core.trust.calibration import ece, fit_temperature, softmax  # noqa: E402
from app.core.trust.fitting import main_outputs  # noqa: E402
from app.core.trust.unknown import METHODS, auroc, fit_detector  # noqa: E402


def _subset(split: SplitData, keep: np.ndarray, relabel: dict[int, int]) -> SplitData:
    idx = np.nonzero(keep)[0]
    return SplitData(None, np.array([relabel.get(int(split.labels[i]), -1) for i in idx],
                                    np.int64),
                     [split.paths[i] for i in idx], [split.digests[i] for i in idx],
                     split.source)


def foreign_split(folder: str, backbone: str, weights: str) -> SplitData:
    """Every image under ``folder`` decoded by the app and through the app's extractor."""
    from app.core.delivery.predict import expand_paths
    from app.core.features.backbones import build_extractor, get_spec
    from app.core.intake.imaging import load_rgb

    spec = get_spec(backbone)
    paths = [str(p) for p in expand_paths([folder])]
    pixels = np.stack([load_rgb(p, spec.input_size) for p in paths]).astype(np.float32)
    main, aux1, aux2 = (np.asarray(a, np.float32)
                        for a in build_extractor(spec, weights).predict_on_batch(pixels))
    return SplitData({"main": main, "aux1": aux1, "aux2": aux2},
                     np.full(len(paths), -1, np.int64), paths)


def resplit(feats: np.ndarray, labels: np.ndarray, n_val: int, n_test: int, n_classes: int,
            unk_f: np.ndarray, for_f: np.ndarray | None, times: int) -> dict:
    """Each feature-space score fitted on random re-splits of ``feats`` (training and
    validation images): mean and standard deviation over ``times`` re-splits."""
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {m: [] for m in METHODS if m != "max_probability"}
    for _ in range(times):
        order = rng.permutation(len(feats))
        test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
        for method in rows:
            det = fit_detector(method, feats[train], labels[train], n_classes, feats[val],
                               np.zeros((len(val), 1)))
            s_known = det.score(feats[test], None)
            s_unk = det.score(unk_f, None)
            row = [auroc(s_known, s_unk), det.flags(s_known).mean(), det.flags(s_unk).mean()]
            if for_f is not None:
                s_for = det.score(for_f, None)
                row += [auroc(s_known, s_for), det.flags(s_for).mean()]
            rows[method].append(row)
    keys = ["auroc", "known_test_flagged", "held_out_flagged", "foreign_auroc",
            "foreign_flagged"]
    return {m: {k: [float(np.mean(c)), float(np.std(c))]
                for k, c in zip(keys, np.array(v).T)} for m, v in rows.items()}


def measure(data_dir: str, backbone: str, weights: str, cache_dir: str | None, hold_out: int,
            epochs: int, seed: int, foreign: str | None = None, dump: str | None = None,
            resplits: int = 0) -> dict:
    run = Retraining(data_dir, backbone, weights, cache_dir, TrainSettings(epochs=epochs,
                                                                          seed=seed))
    start = time.perf_counter()
    run.run_cache()
    dataset, _ = run.dataset.for_training()
    splits = load_splits(dataset, run.cache.model_key, cache_dir)
    classes = dataset.classes
    step = max(1, len(classes) // hold_out)
    held = [classes[i] for i in range(step // 2, len(classes), step)][:hold_out]
    known = [c for c in classes if c not in held]
    relabel = {classes.index(c): i for i, c in enumerate(known)}
    held_ids = [classes.index(c) for c in held]
    part = {s: _subset(d, ~np.isin(d.labels, held_ids), relabel) for s, d in splits.items()}
    unknown = [_subset(d, np.isin(d.labels, held_ids), relabel) for d in splits.values()]
    result = train_head(part["train"], part["validation"], known, run.settings)
    out = {s: main_outputs(result, part[s]) for s in ("train", "validation", "test")}
    unk_f, unk_l = map(np.concatenate, zip(*(main_outputs(result, u) for u in unknown)))
    if foreign:
        for_f, for_l = main_outputs(result, foreign_split(foreign, backbone, weights))
    t = fit_temperature(out["validation"][1], part["validation"].labels)
    if dump:
        np.savez(dump, t=t, unk_f=unk_f, unk_l=unk_l,
                 **{f"{s}_{n}": a for s in out for n, a in zip("fl", out[s])},
                 **{f"{s}_y": part[s].labels for s in part},
                 **({"for_f": for_f, "for_l": for_l} if foreign else {}))
    test_f, test_l = out["test"]
    report = {
        "dataset": str(data_dir), "backbone": backbone, "held_out": held,
        "images": {"train": len(part["train"]), "validation": len(part["validation"]),
                   "known_test": len(part["test"]), "held_out": len(unk_f)},
        "test_accuracy": float((test_l.argmax(1) == part["test"].labels).mean()),
        "temperature": t,
        "ece_before": ece(softmax(test_l), part["test"].labels),
        "ece_after": ece(softmax(test_l, t), part["test"].labels),
        "methods": {},
    }
    for method in METHODS:
        det = fit_detector(method, out["train"][0], part["train"].labels, len(known),
                           out["validation"][0], softmax(out["validation"][1], t))
        s_known = det.score(test_f, softmax(test_l, t))
        s_unk = det.score(unk_f, softmax(unk_l, t))
        report["methods"][method] = {
            "auroc": auroc(s_known, s_unk),
            "known_test_flagged": float(det.flags(s_known).mean()),
            "held_out_flagged": float(det.flags(s_unk).mean()),
        }
        if foreign:
            s_for = det.score(for_f, softmax(for_l, t))
            report["methods"][method].update(
                foreign_auroc=auroc(s_known, s_for),
                foreign_flagged=float(det.flags(s_for).mean()))
    if foreign:
        report["images"]["foreign"] = len(for_f)
    if resplits:
        report["resplits"] = resplit(
            np.concatenate([out["train"][0], out["validation"][0]]),
            np.concatenate([part["train"].labels, part["validation"].labels]),
            len(part["validation"]), len(part["test"]), len(known), unk_f,
            for_f if foreign else None, resplits)
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir")
    p.add_argument("--backbone", default="mobilenet")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--hold-out", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--foreign", default=None, help="a folder of photos of no class at all")
    p.add_argument("--dump", default=None, help="save features, logits and labels (.npz)")
    p.add_argument("--resplits", type=int, default=0,
                   help="also fit the feature-space scores on N random re-splits of the "
                        "training and validation images (the test split untouched)")
    a = p.parse_args()
    r = measure(a.data_dir, a.backbone, a.weights, a.cache_dir, a.hold_out, a.epochs, a.seed,
                a.foreign, a.dump, a.resplits)
    print(json.dumps(r, indent=2))
    print(f"\nheld out: {', '.join(r['held_out'])}; test accuracy {r['test_accuracy']:.1%}; "
          f"T = {r['temperature']:.3f}, ECE {r['ece_before']:.3f} -> {r['ece_after']:.3f}")
    print("| score | AUROC held-out | known test flagged | held-out flagged | AUROC foreign | "
          "foreign flagged |\n|---|---:|---:|---:|---:|---:|")
    for m, v in r["methods"].items():
        print(f"| {m} | {v['auroc']:.3f} | {v['known_test_flagged']:.1%} | "
              f"{v['held_out_flagged']:.1%} | {v.get('foreign_auroc', float('nan')):.3f} | "
              f"{v.get('foreign_flagged', float('nan')):.1%} |")

    if "resplits" in r:
        print(f"\n{a.resplits} re-splits of the training and validation images (mean ± sd):")
        print("| score | AUROC held-out | pseudo-test flagged | held-out flagged | "
              "AUROC foreign | foreign flagged |\n|---|---:|---:|---:|---:|---:|")
        for m, v in r["resplits"].items():
            cells = ["—" if k not in v else f"{v[k][0]:.3f} ± {v[k][1]:.3f}" if "auroc" in k
                     else f"{v[k][0]:.1%} ± {v[k][1]:.1%}"
                     for k in ("auroc", "known_test_flagged", "held_out_flagged",
                               "foreign_auroc", "foreign_flagged")]
            print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
