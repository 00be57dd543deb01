"""Headless front end: the same core jobs as the window, with progress bars and ``--json``.

Exit codes: 0 done (bad files are reported, not fatal), 1 cancelled (Ctrl+C), 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence

from app import __version__
from app.core.jobs import CancelToken, Progress

EXIT_OK, EXIT_CANCELLED, EXIT_USAGE = 0, 1, 2


class ProgressBar:
    """A one-line progress bar on stderr (a plain line every few seconds when not a terminal)."""

    def __init__(self, stream=sys.stderr, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self.tty = stream.isatty()
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
            self.stream.write(text + "\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _add_model_options(p: argparse.ArgumentParser) -> None:
    from app.core.backbones import BACKBONES, DEFAULT_BACKBONE

    p.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=sorted(BACKBONES),
                   help=f"frozen ImageNet CNN (default {DEFAULT_BACKBONE})")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (Keras download, cached), 'none' (random; tests) or a "
                        "local .weights.h5 file")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: the "
                   "user cache directory)")
    p.add_argument("--batch-size", type=int, default=32, help="backbone batch size")
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
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    p = sub.add_parser("gui", help="open the window (the default)")
    p.add_argument("data_dir", nargs="?", help="dataset folder to open")
    return parser


def _split(text: str):
    from app.core.dataset import SplitSpec

    return SplitSpec.parse(text)


def cmd_cache(args: argparse.Namespace, bar: ProgressBar, cancel: CancelToken) -> int:
    from app.core.caching import CacheJob

    job = CacheJob(args.data_dir, args.backbone, args.weights, args.cache_dir,
                   args.batch_size, _split(args.split))
    result, _ = job.run(bar, cancel)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    else:
        for s in result.skipped:
            bar.line(f"skipped {s.path}: {s.reason}")
        for f in result.findings:
            if f.level == "warning" and not f.message.endswith("skipped as unreadable"):
                bar.line(f"warning: {f.message}")
        print(f"{result.images} images in {len(result.classes)} classes: "
              f"{result.computed} computed, {result.reused} reused, "
              f"{len(result.skipped)} skipped; {result.seconds:.1f} s "
              f"({result.images_per_second:.1f} img/s) on {result.device}")
    return EXIT_CANCELLED if result.cancelled else EXIT_OK


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
    "gui": cmd_gui,
}


def _expected_errors() -> tuple[type[BaseException], ...]:
    from app.core.backbones import BackboneError
    from app.core.dataset import DatasetError
    from app.core.store import StoreError

    return (DatasetError, BackboneError, StoreError, ValueError)


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
        bar.line(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        bar.line("aborted")
        return EXIT_CANCELLED
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
