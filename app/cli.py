"""Headless front end: the same core jobs as the window, with progress bars and ``--json``.

Exit codes: 0 done (bad files are reported, not fatal), 1 cancelled (Ctrl+C), 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

from app import __version__
from app.core.base.errors import SettingsError, os_error_message, shown
from app.core.base.jobs import Cancelled, CancelToken, Progress
from app.core.training.settings import MODES, table

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
    p.add_argument("data_dir", help="folder with one sub-folder of images per class (with "
                                    "--multi-label: photos and a tags file)")
    p.add_argument("--out", required=True,
                   help="model folder to write: a new or empty folder, or a model folder "
                        "this app wrote (replaced); any other folder is refused untouched")
    _add_model_options(p)
    _add_training_options(p)
    p.add_argument("--format", default="keras",
                   help="comma-separated export formats: keras, savedmodel, tflite, onnx")
    p.add_argument("--multi-label", action="store_true",
                   help="several tags a photo: DATA_DIR holds photos (in any folders) and a "
                        "tags file listing them (see --labels); a sigmoid per tag, "
                        "thresholds per tag")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="with --multi-label: the tags file, CSV rows 'file,tags' with tags "
                        "joined by ';' (default DATA_DIR/labels.csv)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    p = sub.add_parser("evaluate", help="evaluate an exported model on a dataset folder")
    p.add_argument("model_dir")
    p.add_argument("data_dir")
    p.add_argument("--split", default="test", choices=["test", "validation", "train", "all"],
                   help="which images of DATA_DIR (default: its test split)")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="a multi-label model: DATA_DIR's tags file (default "
                        "DATA_DIR/labels.csv)")
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
                        "(copies; journaled in OUT, never overwriting); a multi-label model "
                        "copies each photo into OUT/<tag>/ for every tag it gets (one "
                        "operation); see --dry-run, --undo")
    p.add_argument("--tags-csv", default=None, metavar="FILE",
                   help="a multi-label model: write each photo's tag set to FILE, a new "
                        "file, in the tags file's form (file,tags; paths from FILE's folder), "
                        "ready to check and train on")
    p.add_argument("--move", action="store_true",
                   help="with --sort-into: move photos that are already inside OUT")
    p.add_argument("--dry-run", action="store_true",
                   help="with --sort-into: only print how many photos each folder would get")
    p.add_argument("--undo", action="store_true",
                   help="with --sort-into: undo the latest sort into OUT (only the copies it "
                        "made, and only while unchanged)")
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
                        "with --multi-label PHOTO=TAG;TAG (quote it; nothing after '=' is "
                        "\"none of these\"): the photo's row in the tags file; repeatable, "
                        "one undoable operation")
    p.add_argument("--multi-label", action="store_true",
                   help="several tags a photo: DATA_DIR's photos stay where they are and its "
                        "tags file (see --labels) says which are tagged; suggestions give each "
                        "tag's probability, the queue asks for the least sure tag sets")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="with --multi-label: the tags file in DATA_DIR (default "
                        "DATA_DIR/labels.csv; made when missing)")
    p.add_argument("--create", action="store_true", help="create the classes --assign names")
    p.add_argument("--copy", action="store_true", help="copy photos inside DATA_DIR too")
    p.add_argument("--accept-above", type=float, default=None, metavar="P",
                   help="file every photo suggested with confidence >= P (with --yes; "
                        "without it, only say how many and how many are expected wrong)")
    p.add_argument("--file-rest", type=float, default=None, metavar="P",
                   help="file every unsorted photo by the model's answer: those suggested "
                        "with confidence >= P under their class, the others (and those "
                        "maybe of a new class) in _not_sure/, one operation (with --yes)")
    p.add_argument("--yes", action="store_true")
    p.add_argument("--undo", nargs="?", const="", default=None, metavar="ID",
                   help="undo the latest operation (a filing, an accept, a sort...), or the "
                        "one with this id (see --operations); only what it did")
    p.add_argument("--operations", action="store_true",
                   help="list the operations that can be undone, latest first")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("gui", help="open the window (the default)")
    p.add_argument("data_dir", nargs="?", help="dataset folder to open")
    return parser


SETTING = "setting_"  # the options' dest prefix: never the name of another option


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """One option a training setting, made from the settings table (its default, choices and
    help), so that no setting is missing here or written twice."""
    for name, default, kind, s in table():
        if not s.shown:
            continue
        help_text = s.help + (" (fine-tune only)" if s.finetune_only else "")
        if s.range is not None:
            help_text += f"; {s.range[0]:g} to {s.range[1]:g}"
        shown_default = f"default {default}" + (
            f"; {s.multi_label} with --multi-label" if s.multi_label is not None else "")
        # not given: absent from the options, so that the task's default applies
        # a dest of its own: the backbone's --batch-size is another option with the name
        # batch_size, and shared, each overwrote the other's value
        p.add_argument(s.cli or f"--{name.replace('_', '-')}", dest=SETTING + name, type=kind,
                       default=argparse.SUPPRESS, choices=s.choices,
                       help=f"{help_text} ({shown_default})".replace("%", "%%"))


def _settings(args: argparse.Namespace, multi_label: bool = False):
    """The TrainSettings the options say (checked by the table); the others at the task's
    defaults."""
    from app.core.training.settings import TrainSettings

    return TrainSettings.for_task(multi_label, **{
        name: getattr(args, SETTING + name) for name, _d, _k, s in table()
        if s.shown and hasattr(args, SETTING + name)})


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
    out = Path(args.out).expanduser().absolute()
    check_destination(out)  # refused before any work, and again right before the swap
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    unknown = sorted(set(formats) - set(FORMATS)) or ([] if formats else ["(none)"])
    if unknown:
        raise ExportError(f"unknown export format(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(FORMATS)}")
    split = _split(args.split)
    if args.labels and not args.multi_label:
        raise SettingsError("--labels names the tags file of --multi-label")
    if args.multi_label:
        return _train_tagged(args, out, formats, split, bar, cancel)

    settings = _settings(args)
    run = Retraining(args.data_dir, args.backbone, args.weights, args.cache_dir, settings)
    from app.core.base.paths import user_cache_dir
    from app.core.intake.dataset import scan_dataset
    from app.core.storage.store import FeatureStore

    with FeatureStore(args.cache_dir or user_cache_dir()) as store:
        run.dataset = scan_dataset(args.data_dir, store, split, bar, cancel)

    progress = _training_progress(bar)

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
        "parity": _parity_doc(report),
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


def _parity_doc(report, mismatches: str | None = None) -> dict:
    """What ``--json`` says of an export's parity check; ``mismatches``: the name under which
    the answers that differ are counted, when said."""
    parity = report.parity
    return {"checked": report.parity_checked, "note": report.parity_note,
            **({} if parity is None else {
                "images": parity.images, "max_abs_diff": parity.max_abs_diff,
                **({mismatches: parity.top1_mismatches} if mismatches else {}),
                "tolerance": parity.tolerance})}


def _training_progress(bar: ProgressBar) -> Callable[[Progress], None]:
    """Caching on the bar; training one line an epoch (not the partial updates within)."""
    def progress(p: Progress) -> None:
        if p.stage == "train":
            if p.data and not p.data.get("partial"):
                bar.line(p.message)
        else:
            bar(p)
    return progress


def _train_tagged(args: argparse.Namespace, out, formats: tuple[str, ...], split,
                  bar: ProgressBar, cancel: CancelToken) -> int:
    """``train --multi-label``: the tagged folder's checks, caching, training, the per-tag
    thresholds and scores, the export."""
    from app.core.base.paths import user_cache_dir
    from app.core.intake.tags import scan_tagged
    from app.core.pipeline.retrain import RunChoice
    from app.core.pipeline.tagged import train_tagged
    from app.core.storage.store import FeatureStore

    settings = _settings(args, multi_label=True)
    with FeatureStore(args.cache_dir or user_cache_dir()) as store:
        data = scan_tagged(args.data_dir, args.labels, store, split, bar, cancel)
    for f in data.findings:
        if f.level != "info" or not f.paths:
            bar.line(f"{'' if f.level == 'info' else f.level + ': '}{f.message}")
    choice = RunChoice(str(data.root), args.backbone, args.weights, settings)

    progress = _training_progress(bar)

    try:
        model, cache = train_tagged(choice, data, args.cache_dir, progress, cancel)
    except Cancelled:
        bar.line("cancelled: not exported, nothing was written")
        return EXIT_CANCELLED
    for s in cache.skipped:
        bar.line(f"skipped {s.path}: {s.reason}")
    for w in model.training_warnings:
        bar.line(f"warning: {w}")
    result = model.result
    if result.cancelled or cancel.cancelled:
        bar.line(f"cancelled after {result.epochs_run} epoch(s): not exported")
        return EXIT_CANCELLED
    report = model.export(out, formats)
    if report.parity_note:
        bar.line(f"warning: {report.parity_note}")
    doc = {**model.summary(), "cache": cache.as_dict(), "model_dir": str(report.folder),
           "data": model.dataset.summary(),
           "parity": _parity_doc(report, "tag_set_mismatches")}
    if args.json:
        _print_json(doc)
        return EXIT_OK
    _tag_scores(model.evaluation)
    _say(f"best epoch {result.best_epoch} of {result.epochs_run}; model in {report.folder}")
    return EXIT_OK


def _tag_scores(ev) -> None:
    """A multi-label evaluation in lines: the scores, then each tag's."""
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    _say(f"test ({ev.count} photos): mAP {fmt(ev.map)}  micro-F1 {fmt(ev.micro_f1)}  "
         f"macro-F1 {fmt(ev.macro_f1)}  exact match {fmt(ev.exact_match)}  Hamming loss "
         f"{fmt(ev.hamming_loss)}")
    for tag, s in ev.per_tag.items():
        _say(f"  {tag}: AP {fmt(s['ap'])}  precision {fmt(s['precision'])}  recall "
             f"{fmt(s['recall'])}  F1 {fmt(s['f1'])}  ({s['support']} photos, threshold "
             f"{s['threshold']:.2f})")
    if ev.threshold_rule:
        _say(f"thresholds: {ev.threshold_rule}")


def _evaluate_tagged(args: argparse.Namespace, bar: ProgressBar, cancel: CancelToken) -> int:
    from app.core.pipeline.tagged import evaluate_tagged_model_dir

    ev = evaluate_tagged_model_dir(args.model_dir, args.data_dir, args.labels, args.split,
                                   bar, cancel)
    if args.json:
        _print_json({"mode": "multi-label", **ev.as_dict()})
        return EXIT_OK
    for f in ev.findings:
        _say(f"{f['level']}: {f['message']}")
    for s in ev.skipped:
        _say(f"skipped {shown(s['path'])}: {shown(s['reason'])}")
    _tag_scores(ev)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace, bar: ProgressBar, cancel: CancelToken) -> int:
    from app.core.delivery.predict import read_metadata
    from app.core.pipeline.retrain import evaluate_model_dir

    if read_metadata(args.model_dir).get("task") == "multi-label":
        return _evaluate_tagged(args, bar, cancel)
    if args.labels:
        raise SettingsError("--labels is the tags file of a multi-label model's folder")
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
            def num(v) -> str:
                return "n/a" if v is None else format(v, ".2f")

            _say(f"  {name:20s} precision {num(s['precision'])} recall {num(s['recall'])} "
                 f"f1 {num(s['f1'])} ({s['support']})")
        for m in ev.misclassified:
            _say(f"  wrong: {m['path']} is {m['true']}, predicted {m['predicted']} "
                  f"({m['confidence']:.0%})")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace, bar: ProgressBar, cancel: CancelToken) -> int:
    from app.core.delivery.predict import Predictor

    if args.sort_into and args.undo:
        from app.core.intake.filing import undo

        result = undo(args.sort_into, kind="sort", progress=bar, cancel=cancel)
        if args.json:
            _print_json(result.as_dict())
        for m, why in result.kept:
            bar.line(f"left {m.target}: {why}")
        bar.line(result.summary())
        return EXIT_CANCELLED if result.cancelled else EXIT_OK
    if args.top < 1:
        raise SettingsError(f"--top must be at least 1, got {args.top}")
    from app.core.base.paths import user_cache_dir

    predictor = Predictor.from_dir(args.model_dir, args.cache_dir or user_cache_dir())
    if args.sort_into and args.move and getattr(predictor, "thresholds", None) is not None:
        raise SettingsError("--move: this model gives several tags a photo, and a sort by "
                            "tags copies each photo into every tag folder it gets")
    if args.tags_csv and getattr(predictor, "thresholds", None) is None:
        raise SettingsError("--tags-csv writes tag sets; this model gives one class a photo")
    if args.tags_csv and os.path.lexists(args.tags_csv):
        raise SettingsError(f"{shown(args.tags_csv)} exists: --tags-csv writes a new file "
                            "only, never over another")
    preds = predictor.predict(args.paths, top_k=args.top, progress=bar, cancel=cancel)
    if args.tags_csv:
        _write_tags_csv(args.tags_csv, preds, bar)
    if args.sort_into:
        return _sort(args, preds, bar, cancel)
    if args.json:
        _print_json([p.as_dict() for p in preds])
    else:
        for p in preds:
            if p.error:
                _say(f"{p.path}: error: {p.error}")
            elif p.tags is not None:
                tags = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in p.tags)
                unknown = (f" (unknown: not like the training photos, score {p.score:.3g})"
                           if p.unknown else "")
                _say(f"{p.path}: {tags or 'none of my tags'}{unknown}")
            elif p.unknown:
                best = p.top[0]
                _say(f"{p.path}: unknown (not like the training classes, score "
                      f"{p.score:.3g}) - closest: {best['label']} {best['probability']:.1%}")
            else:
                best = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in p.top)
                _say(f"{p.path}: {best}")
    return EXIT_OK


def _write_tags_csv(path: str, preds, bar: ProgressBar) -> None:
    """The predicted tag sets as a tags file; photos that could not be answered left out
    (each said)."""
    from app.core.intake.tags import write_tags

    folder = os.path.dirname(os.path.abspath(path))
    rows = {}
    for p in preds:
        if p.error:
            bar.line(f"not in {path}: {p.path}: {p.error}")
            continue
        where = os.path.abspath(p.path)
        inside = os.path.commonpath([folder, where]) == folder
        rows[os.path.relpath(where, folder) if inside else where] = tuple(
            t["label"] for t in p.tags)
    write_tags(path, rows)
    bar.line(f"wrote the tag sets of {len(rows)} photo(s) to {path}")


def cmd_label(args: argparse.Namespace, bar: ProgressBar, cancel: CancelToken) -> int:
    from pathlib import Path

    from app.core import labeling
    from app.core.intake.filing import (
        LabelError,
        Request,
        create_class,
        file_photos,
        operations,
    )

    if args.seed < 0:
        raise SettingsError(f"--seed must be 0 or more, got {args.seed}")
    if args.labels and not args.multi_label:
        raise SettingsError("--labels names the tags file of --multi-label")
    if args.multi_label:
        return _label_tags(args, bar, cancel)
    doc: dict = {"done": [], "refused": []}

    def report(filing) -> None:
        doc["done"] += [{m.op: m.as_dict()} for m in filing.done]
        doc["refused"] += [{"path": p, "why": w} for p, w in filing.refused]
        for m in filing.done:
            bar.line(f"{'copied' if m.op == 'copy' else 'moved'} {m.source} -> {m.target}")
        for path, why in filing.refused:
            bar.line(f"not filed {path}: {why}")

    if args.operations:
        return _print_operations(args, operations(args.data_dir))
    _label_undo(args, doc, bar, cancel)
    requests = []
    for item in args.assign:
        photo, sep, cls = item.rpartition("=")
        if not sep or not photo or not cls:
            raise LabelError(f"--assign takes PHOTO=CLASS, got {item!r}")
        if args.create:
            create_class(args.data_dir, cls)
        requests.append(Request(photo, cls))
    if requests:
        report(file_photos(args.data_dir, requests, "label",
                           f"Filed {len(requests)} photo(s) from the command line",
                           copy=args.copy or None, progress=bar, cancel=cancel))
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

    bulk = args.accept_above if args.accept_above is not None else args.file_rest
    if bulk is not None and (sug is None or not sug.calibrated):
        raise LabelError("suggestions cannot be accepted in bulk yet: their confidence is "
                         "calibrated once there are 20 labels and 2 photos in every class")
    if bulk is not None:
        rest = args.file_rest is not None
        reqs, wrong = (labeling.rest_requests if rest else labeling.accept_requests)(
            pool, sug, bulk)
        sure = [r for r in reqs if r.cls != labeling.UNSURE_FOLDER]
        key = "file_rest" if rest else "accept"
        doc[key] = {"at_least": bulk, "photos": len(sure), "expected_wrong": round(wrong, 1),
                    "not_sure": len(reqs) - len(sure), "done": bool(args.yes)}
        bar.line(f"{len(sure)} photo(s) suggested with confidence >= {bulk:.0%}; "
                 f"the calibration expects about {wrong:.1f} of them to be wrong"
                 + (f"; {len(reqs) - len(sure)} not sure go to {labeling.UNSURE_FOLDER}/"
                    if rest else "")
                 + ("" if args.yes else " (add --yes to file them)"))
        if args.yes:
            if rest:
                create_class(args.data_dir, labeling.UNSURE_FOLDER)
            filing = file_photos(args.data_dir, reqs, "rest" if rest else "accept",
                                 (f"Filed the rest ({len(reqs)} photos) by the model's answers"
                                  if rest else f"Accepted {len(reqs)} suggestions"),
                                 copy=args.copy or None, progress=bar, cancel=cancel)
            report(filing)
            doc[key].update(filed=len(filing.done), refused=len(filing.refused),
                            operation=filing.operation, cancelled=filing.cancelled)
            bar.line(filing.summary())
            pool = labeling.prepare_pool(args.data_dir, args.inbox, args.backbone,
                                         args.weights, args.cache_dir, bar, cancel)
            model = pool.model(args.seed)
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


def _label_tags(args: argparse.Namespace, bar: ProgressBar, cancel: CancelToken) -> int:
    """``label --multi-label``: tag photos (one undoable operation), undo, list operations,
    and what to tag next with each tag's probability."""
    from app.core.intake.filing import operations
    from app.core.intake.journal import LabelError
    from app.core.intake.tagging import TagRequest, tag_photos
    from app.core.intake.tags import SEPARATOR
    from app.core.labeling.tags import prepare_tag_pool, suggest_tags

    unused = [name for name, given in (
        ("--inbox", args.inbox), ("--groups", args.groups is not None),
        ("--create", args.create), ("--copy", args.copy),
        ("--accept-above", args.accept_above is not None),
        ("--file-rest", args.file_rest is not None)) if given]
    if unused:
        raise SettingsError(f"{', '.join(unused)}: not with --multi-label (tagged photos stay "
                            "where they are; each tag set is given with --assign)")
    if args.operations:
        return _print_operations(args, operations(args.data_dir))
    doc: dict = {"mode": "multi-label", "done": [], "refused": []}
    _label_undo(args, doc, bar, cancel)
    requests = []
    for item in args.assign:
        photo, sep, tags = item.partition("=")
        if not sep or not photo:
            raise LabelError(f"--assign takes PHOTO=TAG{SEPARATOR}TAG with --multi-label, "
                             f"got {item!r}")
        requests.append(TagRequest(photo, tuple(t.strip() for t in tags.split(SEPARATOR)
                                               if t.strip())))
    if requests:
        filing = tag_photos(args.data_dir, requests, args.labels,
                            title=f"Tagged {len(requests)} photo(s) from the command line",
                            cancel=cancel)
        doc["done"] = [m.as_dict() for m in filing.done]
        doc["refused"] = [{"path": p, "why": w} for p, w in filing.refused]
        doc["operation"] = filing.operation
        for m in filing.done:
            bar.line(f"tagged {m.target}: {SEPARATOR.join(m.after) or '(none of these)'}")
        for path, why in filing.refused:
            bar.line(f"not tagged {path}: {why}")
        bar.line(filing.summary())
    pool = prepare_tag_pool(args.data_dir, args.labels, args.backbone, args.weights,
                            args.cache_dir, bar, cancel)
    model = pool.model(args.seed)
    sug = suggest_tags(model, pool.unsorted)
    queue = pool.ask(model, args.next, seed=args.seed)

    def ask(i: int, why: str) -> dict:
        out: dict = {"path": pool.paths[i], "why": why}
        if sug is not None:
            out.update(suggested=list(sug.suggested(i)),
                       probabilities={t: round(float(p), 4)
                                      for t, p in zip(sug.tags, sug.probabilities[i])},
                       set_sure=round(float(sug.sureness[i]), 4), calibrated=sug.calibrated)
        return out

    doc.update(tags_file=str(pool.tags_file), tags=pool.tags,
               labelled=len(pool.labelled_paths), waiting=len(pool.paths),
               skipped=[s.as_dict() for s in pool.skipped],
               findings=[f.as_dict() for f in pool.findings],
               queue=[ask(a.index, a.reason) for a in queue.asks])
    if args.json:
        _print_json(doc)
        return EXIT_OK
    for s in pool.skipped:
        bar.line(f"skipped {s.path}: {s.reason}")
    for f in pool.findings:
        bar.line(f"{f.level}: {f.message}")
    _say(f"{len(pool.labelled_paths)} tagged photo(s), {len(pool.tags)} tag(s) "
         f"({', '.join(pool.tags) or 'none yet'}); {len(pool.paths)} waiting")
    if doc["queue"]:
        _say("tag next:")
    for q in doc["queue"]:
        hint = ""
        if "probabilities" in q:
            probs = sorted(q["probabilities"].items(), key=lambda kv: -kv[1])[:4]
            hint = ("  suggested " + (SEPARATOR.join(q["suggested"]) or "none of these")
                    + " (" + ", ".join(f"{t} {p:.0%}" for t, p in probs) + ")"
                    + ("" if q["calibrated"] else " rough"))
        _say(f"  {q['path']}{hint}  [{q['why']}]")
    return EXIT_OK


def _label_undo(args: argparse.Namespace, doc: dict, bar: ProgressBar,
                cancel: CancelToken) -> None:
    """``label --undo [ID]``: take back the latest operation (or that one), filing or
    tagging alike."""
    from app.core.intake.filing import undo

    if args.undo is None:
        return
    result = undo(args.data_dir, operation=args.undo or None, progress=bar, cancel=cancel)
    doc["undone"] = result.as_dict()
    for m, why in result.kept:
        bar.line(f"left {m.target}: {why}")
    bar.line(result.summary())


def _print_operations(args: argparse.Namespace, ops) -> int:
    if args.json:
        _print_json({"operations": [o.as_dict() for o in reversed(ops)]})
    else:
        for o in reversed(ops):
            _say(f"{o.id}  {o.time}  {o.title} ({len(o.moves)} photo(s))")
        if not ops:
            _say("nothing to undo")
    return EXIT_OK


def _sort(args: argparse.Namespace, preds, bar: ProgressBar, cancel: CancelToken) -> int:
    from app.core.base.paths import user_cache_dir
    from app.core.intake.sorting import filed_in, sort_into, sort_plan, tag_sort_plan
    from app.core.storage.store import FeatureStore

    by_tags = any(p.tags is not None for p in preds)
    with FeatureStore(args.cache_dir or user_cache_dir()) as store:
        filed = filed_in(args.sort_into, store, bar, cancel, per_folder=by_tags)
    plan = (tag_sort_plan if by_tags else sort_plan)(preds, args.sort_into, filed)
    doc = {"plan": plan.counts(), "errors": [{"path": p, "error": e} for p, e in plan.errors],
           "already_filed": [{"path": p, "where": w} for p, w in plan.already]}
    if by_tags:
        doc["untagged"] = plan.untagged
    for path, error in plan.errors:
        bar.line(f"skipped {path}: {error}")
    for path, where in plan.already:
        bar.line(f"already filed {path}: as {where}")
    filing = None
    if not args.dry_run:
        filing = sort_into(args.sort_into, plan, move=args.move, progress=bar, cancel=cancel)
        doc.update(operation=filing.operation, done=len(filing.done),
                   refused=[{"path": p, "why": w} for p, w in filing.refused],
                   cancelled=filing.cancelled)
        for path, why in filing.refused:
            bar.line(f"not filed {path}: {why}")
    if args.json:
        _print_json(doc)
    else:
        _say(plan.preview(args.sort_into, "moved or copied" if args.move else "copied"))
        if filing is not None:
            _say(f"{filing.summary()} (undo with --undo)")
    return EXIT_CANCELLED if filing is not None and filing.cancelled else EXIT_OK


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


def _home_problem() -> str | None:
    """Where the home folder cannot be known (HOME unset and no user entry), the caches,
    settings and Keras' folder would land in the working folder, or a library would stop
    with a traceback: say so in one line instead. HOME is set from the user entry when only
    the variable is missing, so every library agrees on the folder."""
    import os

    if os.name != "posix" or os.environ.get("HOME"):
        return None
    try:
        import pwd

        home = pwd.getpwuid(os.getuid()).pw_dir
    except (KeyError, ImportError, OSError):
        home = ""
    if home and os.path.isdir(home):
        os.environ["HOME"] = home
        return None
    return ("HOME is not set and this user has no home folder: set HOME to a folder of "
            "yours (the app keeps its settings, cache and models there)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _home_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
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
