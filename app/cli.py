"""Headless front end: the same core jobs as the window, with progress bars and ``--json``.

Exit codes: 0 done (bad files are reported, not fatal), 1 cancelled (Ctrl+C), 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Sequence

from app import __version__
from app.core.base.errors import SettingsError, os_error_message, shown
from app.core.base.jobs import Cancelled, CancelToken, Progress
from app.core.training.fit import (
    ANSWERS,
    AUGMENTATIONS,
    CLASS_WEIGHTS,
    MODES,
    OPTIMIZERS,
    SCHEDULES,
)
from app.core.training.fit import TrainSettings as TrainDefaults

EXIT_OK, EXIT_CANCELLED, EXIT_USAGE = 0, 1, 2


class ProgressBar:
    """A one-line progress bar on stderr (a plain line every few seconds when not a terminal)."""

    def __init__(self, stream=None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._stage = ""

    def __call__(self, p: Progress) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        final = p.done >= p.total
        if p.stage != self._stage:
            if self._stage and self.tty:
                self.stream.write("\n")
            self._stage = p.stage
        elif not final and now - self._last < (0.2 if self.tty else 5.0):
            return
        self._last = now
        width = 28
        filled = int(width * p.fraction)
        eta = _clock(p.eta) if p.eta is not None else "--:--"
        line = (f"{p.stage:>8} [{'#' * filled}{'.' * (width - filled)}] {p.done}/{p.total} "
                f"{p.rate:6.1f}/s ETA {eta} {p.message[:40]}")
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        if not self.quiet:
            if self.tty:
                self.stream.write("\r\x1b[K")
            self.stream.write(shown(text) + "\n")
            self.stream.flush()


def _finite(value):
    """``value`` with every non-finite float replaced by None: ``--json`` never emits NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _print_json(doc) -> None:
    """One strict JSON document on stdout (no NaN; a file name's undecodable bytes as
    ``\\udcXX`` escapes, which JSON reads back as the same name)."""
    text = json.dumps(_finite(doc), indent=2, ensure_ascii=False, allow_nan=False)
    print(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def _say(text: str) -> None:
    """One line on stdout, control characters of file and class names escaped."""
    print(shown(text))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _add_model_options(p: argparse.ArgumentParser) -> None:
    from app.core.features.backbones import BACKBONES, DEFAULT_BACKBONE

    p.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=sorted(BACKBONES),
                   help=f"frozen ImageNet CNN (default {DEFAULT_BACKBONE})")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (Keras download, cached), 'none' (random; tests) or a "
                        "local .weights.h5 file")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: the "
                   "user cache directory)")
    p.add_argument("--batch-size", type=_backbone_batch, default=32,
                   help="backbone batch size (1-1024)")
    p.add_argument("--split", default="80/10/10", help="train/validation/test percentages")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bottleneck-studio",
        description="Retrain an image classifier on your own photos. Without a command, "
                    "opens the window.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--self-test", action="store_true",
                        help="run the built-in end-to-end check offscreen and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("cache", help="compute and store bottleneck features of a dataset")
    p.add_argument("data_dir", help="folder with one sub-folder of images per class")
    _add_model_options(p)
    p.add_argument("--mode", default="head", choices=MODES,
                   help="what to cache: pooled taps for the head-only mode, or the cut tensor "
                        "for the fine-tune mode (default head)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="where the backbone runs: this computer, or Ray (a local Ray using "
                        "every GPU here, or the cluster at --ray-address / RAY_ADDRESS; its "
                        "workers must see the same paths)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (ray://... or "
                   "host:port); default RAY_ADDRESS, else a local Ray")
    p.add_argument("--retry-skipped", action="store_true",
                   help="try again the files remembered as undecodable (after fixing them)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    p = sub.add_parser("train", help="cache what is missing, train the head, evaluate, export")
    p.add_argument("data_dir", help="folder with one sub-folder of images per class")
    p.add_argument("--out", required=True,
                   help="model folder to write: a new or empty folder, or a model folder "
                        "this app wrote (replaced); any other folder is refused untouched")
    _add_model_options(p)
    p.add_argument("--mode", default=TrainDefaults.mode, choices=MODES,
                   help="head: train new heads on cached pooled taps (fast; the aux outputs "
                        "are probes of intermediate layers). finetune: the backbone's top "
                        "blocks train too, from a cached cut, and the aux losses shape the "
                        "layers the main output uses")
    p.add_argument("--backbone-lr-scale", type=float, default=TrainDefaults.backbone_lr_scale,
                   help="fine-tune: learning rate of the backbone blocks relative to the heads")
    p.add_argument("--augment", default=TrainDefaults.augment, choices=AUGMENTATIONS,
                   help="fine-tune: mirror cached cut tensors left-right at random")
    p.add_argument("--warmup-epochs", type=int, default=TrainDefaults.warmup_epochs,
                   help="fine-tune: epochs in which only the heads learn before the backbone "
                        "blocks join (measured: no gain on Oxford-17 or flowers5; README)")
    p.add_argument("--epochs", type=int, default=TrainDefaults.epochs)
    p.add_argument("--train-batch-size", type=int, default=TrainDefaults.batch_size)
    p.add_argument("--learning-rate", type=float, default=TrainDefaults.learning_rate)
    p.add_argument("--optimizer", default=TrainDefaults.optimizer,
                   choices=OPTIMIZERS)
    p.add_argument("--schedule", default=TrainDefaults.schedule, choices=SCHEDULES,
                   help="learning rate over the run: cosine decay to 0, or constant")
    p.add_argument("--answer", default=TrainDefaults.answer, choices=ANSWERS,
                   help="what the model answers with: the mean of the main and the aux "
                        "outputs (default; measured better), or the main output alone")
    p.add_argument("--aux-weight", type=float, default=TrainDefaults.aux_weight,
                   help="loss weight of each auxiliary output (0 turns them off)")
    p.add_argument("--dropout", type=float, default=TrainDefaults.dropout)
    p.add_argument("--hidden-units", type=int, default=TrainDefaults.hidden_units)
    p.add_argument("--label-smoothing", type=float, default=TrainDefaults.label_smoothing)
    p.add_argument("--class-weights", default=TrainDefaults.class_weights,
                   choices=CLASS_WEIGHTS)
    p.add_argument("--early-stopping", type=int, default=TrainDefaults.early_stopping,
                   help="patience in epochs on validation main loss (0: off)")
    p.add_argument("--seed", type=int, default=TrainDefaults.seed)
    p.add_argument("--format", default="keras",
                   help="comma-separated export formats: keras, savedmodel, tflite, onnx")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    p = sub.add_parser("evaluate", help="evaluate an exported model on a dataset folder")
    p.add_argument("model_dir")
    p.add_argument("data_dir")
    p.add_argument("--split", default="test", choices=["test", "validation", "train", "all"],
                   help="which images of DATA_DIR (default: its test split)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("predict", help="classify image files or folders with a model folder")
    p.add_argument("model_dir")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--top", type=int, default=3, help="how many labels per image")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache folder whose photos are answered from their cached "
                        "features (default: the user cache directory); never written")
    p.add_argument("--sort-into", default=None, metavar="OUT",
                   help="file the photos into OUT/<class>/ and OUT/_unknown/ by the answers "
                        "(copies; journaled in OUT, never overwriting); see --dry-run, --undo")
    p.add_argument("--move", action="store_true",
                   help="with --sort-into: move photos that are already inside OUT")
    p.add_argument("--dry-run", action="store_true",
                   help="with --sort-into: only print how many photos each folder would get")
    p.add_argument("--undo", action="store_true",
                   help="with --sort-into: undo every copy and move made in OUT")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("label", help="label unsorted photos: what to label next, with "
                                     "suggestions; assign, accept, undo")
    p.add_argument("data_dir", help="the data folder (class folders; may have none yet)")
    p.add_argument("--inbox", default=None, help="folder of unsorted photos (default: the "
                   "photos lying loose in DATA_DIR beside its class folders)")
    _add_model_options(p)
    p.add_argument("--next", type=int, default=20, help="how many photos to ask about")
    p.add_argument("--groups", type=int, nargs="?", const=0, default=None, metavar="K",
                   help="show the unsorted photos in K groups of alike photos (default: "
                        "chosen from their number), most typical first")
    p.add_argument("--assign", action="append", default=[], metavar="PHOTO=CLASS",
                   help="file PHOTO under CLASS (moved when it is in DATA_DIR, else copied); "
                        "repeatable")
    p.add_argument("--create", action="store_true", help="create the classes --assign names")
    p.add_argument("--copy", action="store_true", help="copy photos inside DATA_DIR too")
    p.add_argument("--accept-above", type=float, default=None, metavar="P",
                   help="file every photo suggested with confidence >= P (with --yes; "
                        "without it, only say how many and how many are expected wrong)")
    p.add_argument("--yes", action="store_true")
    p.add_argument("--undo", action="store_true", help="undo the latest label or move")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("gui", help="open the window (the default)")
    p.add_argument("data_dir", nargs="?", help="dataset folder to open")
    return parser


def _backbone_batch(text: str) -> int:
    """1..1024: 20,000 images of 299 px in one float32 batch would take 21 GB."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch size must be a whole number, got {text!r}") \
            from None
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"batch size must be 1 to 1024, got {value}")
    return value


def _split(text: str):
    from app.core.intake.dataset import SplitSpec

    return SplitSpec.parse(text)


def cmd_cache(args: argparse.Namespace, bar: ProgressBar, cancel: CancelToken) -> int:
    from app.core.features.caching import CacheJob

    job = CacheJob(args.data_dir, args.backbone, args.weights, args.cache_dir,
                   args.batch_size, _split(args.split), retry_skipped=args.retry_skipped,
                   mode=args.mode, engine=args.engine, ray_address=args.ray_address)
    result, _ = job.run(bar, cancel)
    if args.json:
        _print_json(result.as_dict())
    else:
        for s in result.skipped:
            bar.line(f"skipped {s.path}: {s.reason}")
        for f in result.findings:
            if f.level == "warning" and not f.message.endswith("skipped as unreadable"):
                bar.line(f"warning: {f.message}")
        if result.retried:
            bar.line(f"tried {result.retried} previously skipped file(s) again")
        for note in result.notes:
            bar.line(f"warning: {note}")
        if result.repaired:
            bar.line(f"recomputed {result.repaired} image(s) whose cached features were "
                     "damaged")
        _say(f"{result.images} images in {len(result.classes)} classes: "
              f"{result.computed} computed, {result.reused} reused, "
              f"{len(result.skipped)} skipped; {result.seconds:.1f} s "
              f"({result.images_per_second:.1f} img/s) on {result.device}")
    if result.cancelled:
        bar.line(f"cancelled: {result.ready} of {result.images} images ready, "
                 f"{result.to_compute} still to compute; run again to resume")
        return EXIT_CANCELLED
    return EXIT_OK


def cmd_train(args: argparse.Namespace, bar: ProgressBar, cancel: CancelToken) -> int:
    from pathlib import Path

    from app.core.delivery.export import FORMATS, ExportError, check_destination
    from app.core.pipeline.retrain import Retraining
    from app.core.training.fit import TrainSettings

    out = Path(args.out).expanduser().absolute()
    check_destination(out)  # refused before any work, and again right before the swap
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    unknown = sorted(set(formats) - set(FORMATS)) or ([] if formats else ["(none)"])
    if unknown:
        raise ExportError(f"unknown export format(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(FORMATS)}")
    split = _split(args.split)

    settings = TrainSettings(
        epochs=args.epochs, batch_size=args.train_batch_size, learning_rate=args.learning_rate,
        optimizer=args.optimizer, schedule=args.schedule, aux_weight=args.aux_weight,
        answer=args.answer,
        dropout=args.dropout,
        hidden_units=args.hidden_units, label_smoothing=args.label_smoothing,
        class_weights=args.class_weights, early_stopping=args.early_stopping, seed=args.seed,
        mode=args.mode, backbone_lr_scale=args.backbone_lr_scale, augment=args.augment,
        warmup_epochs=args.warmup_epochs)
    run = Retraining(args.data_dir, args.backbone, args.weights, args.cache_dir, settings)
    from app.core.base.paths import user_cache_dir
    from app.core.intake.dataset import scan_dataset
    from app.core.storage.store import FeatureStore

    with FeatureStore(args.cache_dir or user_cache_dir()) as store:
        run.dataset = scan_dataset(args.data_dir, store, split, bar, cancel)

    def progress(p: Progress) -> None:
        if p.stage == "train":
            if p.data and not p.data.get("partial"):
                bar.line(p.message)
        else:
            bar(p)

    cache = run.run_cache(progress, cancel, batch_size=args.batch_size)
    for s in cache.skipped:
        bar.line(f"skipped {s.path}: {s.reason}")
    for note in cache.notes:
        bar.line(f"warning: {note}")
    if cache.cancelled:
        bar.line(f"cancelled while caching ({cache.ready} of {cache.images} images ready); "
                 "run again to resume; nothing was written")
        return EXIT_CANCELLED
    result = run.run_training(progress, cancel)
    for w in run.training_warnings:
        bar.line(f"warning: {w}")
    if result.cancelled or cancel.cancelled:
        kept = "the model already there was left as it was" if out.exists() else \
            "nothing was written"
        bar.line(f"cancelled after {result.epochs_run} epoch(s): not exported, {kept}")
        return EXIT_CANCELLED
    ev = run.evaluation
    report = run.export(out, formats)
    if report.parity_note:
        bar.line(f"warning: {report.parity_note}")
    model_dir = report.folder
    doc = {
        "mode": result.settings.mode,
        "trainable_backbone_layers": result.trainable_backbone_layers,
        "classes": result.classes, "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch, "cancelled": result.cancelled,
        "stopped_early": result.stopped_early,
        "history": result.history,
        "test": {k: getattr(ev, k) for k in ("count", "main_accuracy", "balanced_accuracy",
                                             "aux1_accuracy", "aux2_accuracy")},
        "evaluation": ev.as_dict(),
        "cache": cache.as_dict(),
        "train_seconds": round(result.seconds, 2),
        "model_dir": str(model_dir),
        "left_out_classes": sorted(set(run.dataset.classes) - set(result.classes)),
        "warnings": run.training_warnings,
        "parity": {"checked": report.parity_checked, "note": report.parity_note,
                   **({} if report.parity is None else {
                       "images": report.parity.images,
                       "max_abs_diff": report.parity.max_abs_diff,
                       "tolerance": report.parity.tolerance})},
    }
    if args.json:
        _print_json(doc)
    else:
        t = doc["test"]
        aux = "  ".join(f"{o} {t[f'{o}_accuracy']:.1%}" for o in ("aux1", "aux2")
                        if t.get(f"{o}_accuracy") is not None)
        acc = "n/a" if t["main_accuracy"] is None else f"{t['main_accuracy']:.1%}"
        bal = "n/a" if t["balanced_accuracy"] is None else f"{t['balanced_accuracy']:.1%}"
        _say(f"test ({t['count']} images): main {acc}  balanced {bal}  {aux}")
        stop = (f"; early stopping ended the run (no better validation loss for "
                f"{result.settings.early_stopping} epochs)" if result.stopped_early else "")
        _say(f"best epoch {result.best_epoch} of {result.epochs_run}{stop}; model in "
              f"{model_dir}")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace, bar: ProgressBar, cancel: CancelToken) -> int:
    from app.core.pipeline.retrain import evaluate_model_dir

    ev = evaluate_model_dir(args.model_dir, args.data_dir, args.split, bar, cancel)
    if args.json:
        _print_json(ev.as_dict())
    else:
        acc = "n/a" if ev.main_accuracy is None else f"{ev.main_accuracy:.1%}"
        bal = "n/a" if ev.balanced_accuracy is None else f"{ev.balanced_accuracy:.1%}"
        if ev.accuracy_interval:
            lo, hi = ev.accuracy_interval
            acc += f" (95% interval {lo:.1%}-{hi:.1%})"
        for s in ev.skipped:  # not scored: the count above leaves them out
            _say(f"skipped {shown(s['path'])}: {shown(s['reason'])}")
        _say(f"{ev.count} images: accuracy {acc}, balanced accuracy {bal}"
             + (f" ({len(ev.skipped)} skipped)" if ev.skipped else ""))
        if ev.few_images:
            _say(f"too few images to judge (< 5): {', '.join(ev.few_images)}")
        cal = ev.calibration
        if cal and cal.get("ece_before") is not None:
            _say(f"calibration: temperature {cal['temperature']:.3f}, expected calibration "
                  f"error {cal['ece_before']:.3f} before, {cal['ece_after']:.3f} after")
            if cal.get("note"):
                _say(f"calibration: {cal['note']}")
        if ev.unknown_rate is not None:
            _say(f"called unknown: {ev.unknown_rate:.1%} of these images")
        for name, s in ev.per_class.items():
            _say(f"  {name:20s} precision {s['precision']:.2f} recall "
                  f"{'n/a' if s['recall'] is None else format(s['recall'], '.2f')} "
                  f"f1 {s['f1']:.2f} ({s['support']})")
        for m in ev.misclassified:
            _say(f"  wrong: {m['path']} is {m['true']}, predicted {m['predicted']} "
                  f"({m['confidence']:.0%})")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace, bar: ProgressBar, cancel: CancelToken) -> int:
    from app.core.delivery.predict import Predictor

    if args.sort_into and args.undo:
        from app.core.intake.labels import undo_all

        undone = undo_all(args.sort_into)
        bar.line(f"undone: {len(undone)} photo(s) filed in {args.sort_into}")
        return EXIT_OK
    if args.top < 1:
        raise SettingsError(f"--top must be at least 1, got {args.top}")
    from app.core.base.paths import user_cache_dir

    predictor = Predictor.from_dir(args.model_dir, args.cache_dir or user_cache_dir())
    preds = predictor.predict(args.paths, top_k=args.top, progress=bar, cancel=cancel)
    if args.sort_into:
        return _sort(args, preds, bar)
    if args.json:
        _print_json([p.as_dict() for p in preds])
    else:
        for p in preds:
            if p.error:
                _say(f"{p.path}: error: {p.error}")
            elif p.unknown:
                best = p.top[0]
                _say(f"{p.path}: unknown (not like the training classes, score "
                      f"{p.score:.3g}) - closest: {best['label']} {best['probability']:.1%}")
            else:
                best = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in p.top)
                _say(f"{p.path}: {best}")
    return EXIT_OK


def cmd_label(args: argparse.Namespace, bar: ProgressBar, cancel: CancelToken) -> int:
    from pathlib import Path

    from app.core.intake.labels import LabelError, create_class, label_image, undo_move
    from app.core.pipeline import labeling

    doc: dict = {"done": []}
    if args.undo:
        m = undo_move(args.data_dir)
        doc["done"].append({"undone": m.as_dict()})
        bar.line(f"undone: {m.target} -> {m.source}" if m.op == "move" else
                 f"undone: removed the copy {m.target}")
    for item in args.assign:
        photo, sep, cls = item.rpartition("=")
        if not sep or not photo or not cls:
            raise LabelError(f"--assign takes PHOTO=CLASS, got {item!r}")
        if args.create:
            create_class(args.data_dir, cls)
        m = label_image(args.data_dir, photo, cls, copy=args.copy or None)
        doc["done"].append({m.op: m.as_dict()})
        bar.line(f"{'copied' if m.op == 'copy' else 'moved'} {photo} -> {m.target}")
    pool = labeling.prepare_pool(args.data_dir, args.inbox, args.backbone, args.weights,
                                 args.cache_dir, bar, cancel)
    model = pool.model(args.seed)
    sug = labeling.suggest(model, pool.unsorted)

    def suggestion(i: int) -> dict:
        if sug is None:
            return {"path": pool.paths[i], "suggested": None}
        return {"path": pool.paths[i], "suggested": pool.classes[int(sug.label[i])],
                "confidence": round(float(sug.confidence[i]), 4),
                "calibrated": sug.calibrated,
                "maybe_new_class": bool(sug.new_class[i])}

    if args.accept_above is not None and (sug is None or not sug.calibrated):
        raise LabelError("suggestions cannot be accepted in bulk yet: their confidence is "
                         "calibrated once there are 20 labels and 2 photos in every class")
    if args.accept_above is not None:
        idx, wrong = sug.confident(args.accept_above)
        doc["accept"] = {"at_least": args.accept_above, "photos": len(idx),
                         "expected_wrong": round(wrong, 1), "done": bool(args.yes)}
        bar.line(f"{len(idx)} photo(s) suggested with confidence >= {args.accept_above:.0%}; "
                 f"the calibration expects about {wrong:.1f} of them to be wrong"
                 + ("" if args.yes else " (add --yes to file them)"))
        if args.yes:
            for i in idx:
                m = label_image(args.data_dir, pool.paths[i], pool.classes[int(sug.label[i])],
                                copy=args.copy or None)
                doc["done"].append({m.op: m.as_dict()})
            pool = labeling.prepare_pool(args.data_dir, args.inbox, args.backbone,
                                         args.weights, args.cache_dir, bar, cancel)
            model, sug = pool.model(args.seed), None
            sug = labeling.suggest(model, pool.unsorted)
    queue = pool.ask(model, args.next, seed=args.seed)
    doc.update(classes=pool.classes, labelled=len(pool.labels), unsorted=len(pool.paths),
               skipped=[s.as_dict() for s in pool.skipped],
               queue=[{**suggestion(a.index), "why": a.reason} for a in queue.asks])
    if args.groups is not None:
        groups = labeling.make_groups(pool.unsorted, args.groups or None, seed=args.seed)
        doc["groups"] = [{"size": len(g.members),
                          "typical": [pool.paths[i] for i in g.members[:8]]} for g in groups]
    if args.json:
        _print_json(doc)
        return EXIT_OK
    for s in pool.skipped:
        bar.line(f"skipped {s.path}: {s.reason}")
    _say(f"{len(pool.labels)} labelled photo(s) in {len(pool.classes)} class(es); "
         f"{len(pool.paths)} unsorted")
    for n, g in enumerate(doc.get("groups", []), 1):
        _say(f"group {n} ({g['size']} photos), most typical first:")
        for path in g["typical"]:
            _say(f"    {Path(path).name}")
    if doc["queue"]:
        _say("label next:")
    for q in doc["queue"]:
        hint = "" if q["suggested"] is None else (
            f"  suggested {q['suggested']} {q['confidence']:.0%}"
            + ("  (maybe a new class)" if q["maybe_new_class"] else ""))
        _say(f"  {q['path']}{hint}  [{q['why']}]")
    return EXIT_OK


def _sort(args: argparse.Namespace, preds, bar: ProgressBar) -> int:
    from app.core.intake.labels import sort_into, sort_plan

    plan = sort_plan(preds)
    doc = {"plan": plan.counts(), "errors": [{"path": p, "error": e} for p, e in plan.errors]}
    for path, error in plan.errors:
        bar.line(f"skipped {path}: {error}")
    if not args.dry_run:
        done, refused = sort_into(args.sort_into, plan, move=args.move)
        doc.update(done=len(done), refused=[{"path": p, "why": w} for p, w in refused])
        for path, why in refused:
            bar.line(f"not filed {path}: {why}")
    if args.json:
        _print_json(doc)
    else:
        for folder, n in plan.counts().items():
            _say(f"{folder}: {n}")
        if not args.dry_run:
            _say(f"filed {doc['done']} photo(s) in {args.sort_into} "
                 f"({'moved or copied' if args.move else 'copied'}; undo with --undo)")
    return EXIT_OK


def cmd_gui(args: argparse.Namespace, bar: ProgressBar, cancel: CancelToken) -> int:
    try:
        from app.gui.main import run_gui
    except ImportError as exc:
        bar.line(f"error: the window cannot start ({exc}); the commands still work:")
        build_parser().print_help(sys.stderr)
        return EXIT_USAGE
    return run_gui(getattr(args, "data_dir", None))


COMMANDS: dict[str, Callable[[argparse.Namespace, ProgressBar, CancelToken], int]] = {
    "cache": cmd_cache,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "label": cmd_label,
    "gui": cmd_gui,
}


def _expected_errors() -> tuple[type[BaseException], ...]:
    """What ends a command with one ``error:`` line: the core's one family of expected
    errors (the window turns the same family into its banner)."""
    from app.core.base.errors import UserError

    return (UserError,)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.self_test:
        from app.selftest import run_self_test

        return run_self_test()
    command = args.command or "gui"
    bar = ProgressBar()
    cancel = CancelToken()

    def on_interrupt(signum, frame):  # first Ctrl+C cancels cleanly, the second one kills
        if cancel.cancelled:
            raise KeyboardInterrupt
        bar.line("cancelling after the current batch (Ctrl+C again to abort)")
        cancel.cancel()

    if command != "gui":
        signal.signal(signal.SIGINT, on_interrupt)
    try:
        return COMMANDS[command](args, bar, cancel)
    except _expected_errors() as exc:
        bar.line(f"error: {shown(exc)}")
        return EXIT_USAGE
    except OSError as exc:  # a full disk, a read-only folder, a vanished file
        bar.line(f"error: {shown(os_error_message(exc, 'a file could not be read or written'))}")
        return EXIT_USAGE
    except Cancelled:
        bar.line("cancelled: no results")
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        bar.line("aborted")
        return EXIT_CANCELLED
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
