"""Fine-tune mode: seconds per epoch from the cached cut vs Keras' usual partial fine-tuning,
side by side in one run.

1. ours: the app's fine-tune mode (``Retraining`` with ``mode="finetune"``): the frozen part
   ran once per image (its one-off cost is printed apart), every epoch streams the cached cut
   tensors through the trainable top blocks and the GoogLeNet heads;
2. usual: the same network and heads, the lower layers frozen (``trainable=False``), images
   read and decoded by ``tf.io.decode_jpeg`` and pushed through the whole network every epoch
   (what ``keras.utils.image_dataset_from_directory`` + ``fit`` does). Without TensorFlow
   (``KERAS_BACKEND=jax``), worker threads of a ``keras.utils.PyDataset`` decode with the app's
   own decoder instead.

Both train on the same training images with the same settings; seconds per epoch are the
median of the epochs after the first (the first includes tracing). The trainable blocks' share
of the network's multiply-adds is printed with the ideal ratio it implies (backward ~ 2x
forward), and both runs' test accuracy.

usage: python benchmarks/finetune.py DATA_DIR --weights FILE [--epochs 3] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from app.core.features.backbones import build_backbone, get_spec, scaling_layer  # noqa: E402
from app.core.features.cuts import CUTS, cut_tensor  # noqa: E402
from app.core.pipeline.retrain import Retraining  # noqa: E402
from app.core.training.finetune_top import (  # noqa: E402
    build_finetune_model,
    build_top,
    scaled_optimizer,
)
from app.core.training.fit import TrainSettings, _optimizer  # noqa: E402
from app.core.training.head import HeadShape, build_head  # noqa: E402


def macs(model) -> dict[str, int]:
    """Multiply-adds of each layer with weights (convolutions and dense layers)."""
    import keras

    out = {}
    for layer in model.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            out[layer.name] = shape[1] * shape[2] * kh * kw * shape[3]
        elif isinstance(layer, keras.layers.SeparableConv2D):
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            out[layer.name] = shape[1] * shape[2] * (kh * kw * cin + cin * shape[3])
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            out[layer.name] = shape[1] * shape[2] * kh * kw * cin * shape[3] // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            out[layer.name] = layer.input.shape[-1] * shape[-1]
    return out


class EpochClock:
    """Wall time of every epoch, from a Keras callback."""

    def __init__(self) -> None:
        import keras

        clock = self

        class _Cb(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                clock._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                clock.times.append(time.perf_counter() - clock._t)

        self.times: list[float] = []
        self.callback = _Cb()

    def per_epoch(self) -> float:
        later = self.times[1:] or self.times
        return statistics.median(later)


def _decoding_feed(paths, onehot, size, settings, shuffle):
    """Without TensorFlow (the JAX or torch backend): a ``keras.utils.PyDataset`` whose worker
    threads decode every image every epoch with the app's own decoder, as a user's script
    would."""
    import os

    import keras

    from app.core.intake.imaging import load_rgb

    class Decoding(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=max(2, min(16, os.cpu_count() or 2)), max_queue_size=8)
            self.order = np.arange(len(paths))
            self.rng = np.random.default_rng(settings.seed)
            self.on_epoch_end()

        def __len__(self):
            return int(np.ceil(len(paths) / settings.batch_size))

        def on_epoch_end(self):
            if shuffle:
                self.rng.shuffle(self.order)

        def __getitem__(self, i):
            idx = self.order[i * settings.batch_size:(i + 1) * settings.batch_size]
            x = np.stack([load_rgb(paths[j], (size, size)) for j in idx]).astype(np.float32)
            y = onehot[idx]
            return x, {o: y for o in ("main", "aux1", "aux2")}

    return Decoding()


def usual_way(spec, weights, settings, classes, train, test):
    """Keras' usual partial fine-tuning: decode every image every epoch, whole network."""
    import keras

    keras.utils.set_random_seed(settings.seed)
    base = build_backbone(spec, weights)
    shapes = []

    def remember(taps):
        shapes.append(HeadShape(len(classes), taps, settings.dropout, settings.hidden_units))
        return shapes[-1]

    trainable, _, top = build_finetune_model(spec, base, remember, build_head)
    lower = keras.Model(base.input, cut_tensor(spec, base), name="frozen_lower")
    lower.trainable = False
    pixels = keras.Input((spec.image_size, spec.image_size, 3))
    x = scaling_layer(spec)(pixels)
    outputs = trainable({"cut": lower(x, training=False)})
    model = keras.Model(pixels, outputs)
    steps = int(np.ceil(len(train.paths) / settings.batch_size)) * settings.epochs
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing)
    model.compile(optimizer=scaled_optimizer(_optimizer(settings, steps), top,
                                             settings.backbone_lr_scale),
                  loss={o: loss for o in ("main", "aux1", "aux2")},
                  loss_weights={"main": 1.0, "aux1": settings.aux_weight,
                                "aux2": settings.aux_weight},
                  metrics={o: ["accuracy"] for o in ("main", "aux1", "aux2")})

    def dataset(split, shuffle):
        onehot = np.eye(len(classes), dtype=np.float32)[split.labels]
        if keras.backend.backend() != "tensorflow":
            return _decoding_feed(split.paths, onehot, spec.image_size, settings, shuffle)
        import tensorflow as tf

        size = spec.image_size

        def load(path, y):
            img = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
            img = tf.image.resize(img, (size, size), method="bilinear", antialias=True)
            return img, {o: y for o in ("main", "aux1", "aux2")}

        ds = tf.data.Dataset.from_tensor_slices((split.paths, onehot))
        if shuffle:
            ds = ds.shuffle(len(split.paths), seed=settings.seed)
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(settings.batch_size).prefetch(2)

    clock = EpochClock()
    model.fit(dataset(train, True), epochs=settings.epochs, verbose=0,
              callbacks=[clock.callback])
    probs = model.predict(dataset(test, False), verbose=0)
    accuracy = float((np.asarray(probs["main"]).argmax(1) == test.labels).mean())
    return clock.per_epoch(), clock.times, accuracy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--cache-dir", default="/tmp/bottleneck-bench-cache")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    spec = get_spec(args.backbone)
    settings = TrainSettings(epochs=args.epochs, early_stopping=0, seed=1, mode="finetune",
                             class_weights="none")
    run = Retraining(args.data_dir, args.backbone, args.weights, args.cache_dir, settings)
    t0 = time.perf_counter()
    cache = run.run_cache()
    cache_seconds = time.perf_counter() - t0
    ends: list[float] = []
    start = [0.0]

    def progress(p):
        if p.stage == "train" and p.data and not p.data.get("partial"):
            ends.append(time.perf_counter())

    start[0] = time.perf_counter()
    run.run_training(progress)
    times = [b - a for a, b in zip([start[0], *ends[:-1]], ends)]
    ours = statistics.median(times[1:] or times)
    ours_acc = run.evaluation.main_accuracy

    usual, usual_times, usual_acc = usual_way(spec, args.weights, settings, run.result.classes,
                                              run.splits["train"], run.splits["test"])

    base = build_backbone(spec, args.weights)
    top = build_top(spec, base)
    per_layer = macs(base)
    top_macs = sum(per_layer.get(layer.name, 0) for layer in top.layers)
    share = top_macs / sum(per_layer.values())
    ideal = (1 - share + 3 * share) / (3 * share)
    doc = {
        "data": str(args.data_dir), "backbone": spec.name, "cut": CUTS[spec.name].cut,
        "train_images": len(run.splits["train"]), "test_images": len(run.splits["test"]),
        "epochs": args.epochs, "cut_cache_seconds_once": round(cache_seconds, 1),
        "cut_images_computed": cache.computed,
        "seconds_per_epoch": {"ours": round(ours, 2), "usual": round(usual, 2)},
        "epoch_times": {"ours": [round(t, 2) for t in times],
                        "usual": [round(t, 2) for t in usual_times]},
        "usual_vs_ours": round(usual / ours, 2),
        "trainable_share_of_macs": round(share, 3),
        "ideal_ratio_without_decoding": round(ideal, 2),
        "test_accuracy": {"ours": ours_acc, "usual": round(usual_acc, 4)},
        "trainable_backbone_layers": run.result.trainable_backbone_layers,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{doc['train_images']} training images, {args.epochs} epochs, {spec.title}, "
              f"cut at {doc['cut']}")
        print(f"trainable blocks: {share:.1%} of the multiply-adds; ideal usual/ours without "
              f"decoding: {ideal:.2f}x")
        print("| method | seconds / epoch | test accuracy |")
        print("|---|---:|---:|")
        print(f"| ours (cached cut) | {ours:.2f} | {ours_acc:.1%} |")
        print(f"| usual (decode + whole network) | {usual:.2f} | {usual_acc:.1%} |")
        print(f"\nusual / ours = {usual / ours:.2f}x per epoch; the cut was computed once in "
              f"{cache_seconds:.0f} s ({cache.computed} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
