"""Seconds per epoch of head training, measured side by side in one run.

1. ours: ``app.core.training.fit.train_head`` on cached features streamed from the store in
   shuffled batches (streams metrics, cancel checks, best-weights tracking);
2. plain: the very same head compiled the same way and trained with a bare ``model.fit`` on
   every feature held in memory as float32 arrays, what training did before streaming (the
   floor for our overhead; goal: ours <= 1.2x plain);
3. end to end: the same head on top of the frozen backbone, trained on the decoded training
   images (pixels preloaded in memory, so decoding is not even counted), one epoch.

usage: python benchmarks/train_head.py DATA_DIR --backbone mobilenet --weights PATH
       [--cache-dir DIR] [--epochs 10] [--json]
The features are cached first (reused when the cache already has them).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from app.core.features.backbones import build_extractor, get_spec  # noqa: E402
from app.core.intake.imaging import load_rgb  # noqa: E402
from app.core.pipeline.retrain import Retraining, load_splits  # noqa: E402
from app.core.training.fit import TrainSettings, _optimizer, train_head  # noqa: E402
from app.core.training.head import HeadShape, build_head  # noqa: E402


def _compile(model, settings: TrainSettings, steps: int):
    """Compile exactly as train_head does, so only the training loop differs."""
    import keras

    loss = keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing)
    outs = ("main", "aux1", "aux2")
    model.compile(optimizer=_optimizer(settings, steps), loss={o: loss for o in outs},
                  loss_weights={"main": 1.0, "aux1": settings.aux_weight,
                                "aux2": settings.aux_weight},
                  metrics={o: ["accuracy"] for o in outs})
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import keras

    settings = TrainSettings(epochs=args.epochs, early_stopping=0, seed=1)
    run = Retraining(args.data_dir, args.backbone, args.weights, args.cache_dir, settings)
    run.run_cache()
    splits = load_splits(run.dataset, run.cache.model_key, args.cache_dir)
    train, val = splits["train"], splits["validation"]
    classes = run.dataset.classes
    n = len(classes)
    steps = math.ceil(len(train) / settings.batch_size) * settings.epochs

    t0 = time.perf_counter()
    train_head(train, val, classes, settings)
    ours = (time.perf_counter() - t0) / args.epochs

    keras.utils.set_random_seed(1)
    taps = ("main", "aux1", "aux2")
    features = train.rows(np.arange(len(train)), taps)
    val_features = val.rows(np.arange(len(val)), taps)
    shape = HeadShape(n, {k: tuple(v.shape[1:]) for k, v in features.items()})
    head = _compile(build_head(shape), settings, steps)
    onehot = np.eye(n, dtype=np.float32)
    y = {o: onehot[train.labels] for o in taps}
    vy = {o: onehot[val.labels] for o in taps}
    t0 = time.perf_counter()
    head.fit(features, y, validation_data=(val_features, vy), epochs=args.epochs,
             batch_size=settings.batch_size, shuffle=True, verbose=0)
    plain = (time.perf_counter() - t0) / args.epochs

    spec = get_spec(args.backbone)
    extractor = build_extractor(spec, args.weights)
    pixels = np.stack([load_rgb(p, spec.input_size) for p in train.paths]).astype(np.float32)
    outs = build_head(shape)(dict(zip(("main", "aux1", "aux2"), extractor.outputs)))
    e2e = _compile(keras.Model(extractor.input, outs), settings, steps)
    t0 = time.perf_counter()
    e2e.fit(pixels, y, epochs=1, batch_size=settings.batch_size, verbose=0)
    end_to_end = time.perf_counter() - t0

    doc = {
        "train_images": len(train), "validation_images": len(val), "epochs": args.epochs,
        "seconds_per_epoch": {"ours": round(ours, 3), "plain_fit": round(plain, 3),
                              "end_to_end": round(end_to_end, 3)},
        "ours_vs_plain": round(ours / plain, 3),
        "end_to_end_vs_ours": round(end_to_end / ours, 1),
        "goal_ours_vs_plain_le_1_2": ours / plain <= 1.2,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{len(train)} training images, {len(val)} validation, {args.epochs} epochs\n")
        print("| method | seconds / epoch | ratio |")
        print("|---|---:|---:|")
        print(f"| ours (features streamed from the store) | {ours:.3f} | 1.00 |")
        print(f"| plain model.fit, features in memory | {plain:.3f} | {plain / ours:.2f} |")
        print(f"| end to end through the frozen backbone | {end_to_end:.2f} | "
              f"{end_to_end / ours:.0f} |")
        verdict = "PASS" if doc["goal_ours_vs_plain_le_1_2"] else "FAIL"
        print(f"\nours / plain = {ours / plain:.2f} (goal <= 1.20: {verdict}); "
              f"end to end is {end_to_end / ours:.0f}x slower per epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
