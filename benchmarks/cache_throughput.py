"""Caching throughput: the app's feature cache against the backbone's limit and the usual ways.

One run measures, on the same images and the same frozen extractor (``build_extractor``):

1. the app's cache, cold (``cache_features`` into a fresh temporary cache folder), end to end
   and its compute phase alone; also as ``python -m app cache`` subprocesses on the whole
   dataset and on a half-size subset (symlinks), with each subprocess's peak RSS;
2. pure compute, the limit: ``model.predict_on_batch`` on preloaded float32 batches of 32;
3. ``keras.utils.image_dataset_from_directory`` + ``model.predict`` (what users do today):
   with the model built inside the timed run, as the app's cold run builds its own, and on
   the model already built and traced for (2);
4. a naive loop: Pillow full decode, resize, ``predict_on_batch`` on one image at a time;
5. a warm re-run of (1) on the filled cache, in-process and as a CLI subprocess (which must
   not import TensorFlow);
6. Pillow's draft decode (``load_rgb``) against a full decode, single-threaded;
7. with ``--large-dir``, cold cache against the Keras pipeline on phone-size photos.

Files are read once before any timing, so every method finds them in the OS page cache.

Run (make the large photos in a scratch folder, never inside the repo)::

    python /work/shared/tools/make_large_photos.py /work/shared/data/oxford17-flowers \\
        /tmp/large 20
    .venv/bin/python benchmarks/cache_throughput.py /work/shared/data/oxford17-flowers \\
        --backbone mobilenet \\
        --weights /work/shared/weights/mobilenet_1_0_224_imagenet_no_top.weights.h5 \\
        --large-dir /tmp/large [--naive-limit 150] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from app.core.base.jobs import Progress  # noqa: E402
from app.core.features.backbones import BackboneSpec, build_extractor, get_spec  # noqa: E402
from app.core.features.caching import DEFAULT_BATCH, cache_features  # noqa: E402
from app.core.intake.imaging import IMAGE_SUFFIXES, load_rgb  # noqa: E402

if TYPE_CHECKING:
    import keras

GOAL_COLD_VS_COMPUTE = 0.9
GOAL_LARGE_VS_KERAS = 1.8
GOAL_AHEAD_OF_KERAS = 1.0
GOAL_WARM_SPEEDUP = 100.0
WARM_REPEATS = 3


@dataclass
class Row:
    """One measured method: ``images`` through it in ``seconds``."""

    method: str
    images: int
    seconds: float
    note: str = ""
    cpu_seconds: float | None = None  # all threads; robust to other load on a shared CPU

    @property
    def rate(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    @property
    def cpu_ms(self) -> float | None:
        return None if self.cpu_seconds is None else 1000 * self.cpu_seconds / self.images


@dataclass
class CliRun:
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    result: dict[str, Any]
    imported: list[str] = field(default_factory=list)


@dataclass
class Goal:
    name: str
    value: float | None
    target: float
    unit: str = "x"

    @property
    def status(self) -> str:
        if self.value is None:
            return "NOT MEASURED"
        return "PASS" if self.value >= self.target else "FAIL"


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def image_files(root: Path) -> list[Path]:
    """Image files of a class-per-folder dataset, sorted (class, name)."""
    return sorted(p for c in sorted(root.iterdir()) if c.is_dir() and not c.name.startswith(".")
                  for p in c.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def spread(items: list[Path], n: int) -> list[Path]:
    """``n`` items evenly spaced over ``items`` (every class is represented)."""
    if n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def read_all(files: list[Path]) -> None:
    """Pull every file into the OS page cache so no method pays the first disk read."""
    for p in files:
        p.read_bytes()


def half_subset(root: Path, dest: Path) -> int:
    """A folder of symlinks to the first half of each class of ``root``; returns its size."""
    n = 0
    for c in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        (dest / c.name).mkdir(parents=True)
        for p in files[: len(files) // 2]:
            (dest / c.name / p.name).symlink_to(p.resolve())
            n += 1
    return n


def time_cold_cache(data: Path, backbone: str, weights: str, scratch: Path,
                    label: str, note: str = "scan + model build + compute",
                    **options: Any) -> tuple[Row, Row | None, Path]:
    """Cold ``cache_features`` end to end, its compute phase after the first batch, its folder.
    ``options``: more of :class:`CacheJob`'s fields."""
    cache_dir = Path(tempfile.mkdtemp(prefix="cold-", dir=scratch))
    marks: list[tuple[float, int]] = []

    def progress(p: Progress) -> None:
        if p.stage == "cache":
            marks.append((time.perf_counter(), p.done))

    cpu, start = time.process_time(), time.perf_counter()
    res = cache_features(data, backbone, weights, cache_dir=cache_dir, progress=progress,
                         **options)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if res.computed != res.images:
        raise RuntimeError(f"cold run computed {res.computed} of {res.images} images")
    total = Row(f"{label}app cache, cold, in-process", res.images, seconds, note, cpu)
    phase = None
    if len(marks) >= 2:
        (t0, n0), (t1, n1) = marks[0], marks[-1]
        phase = Row(f"{label}app cache, cold, compute phase", n1 - n0, t1 - t0,
                    "after the first batch")
    return total, phase, cache_dir


def time_pure_compute(model: keras.Model, pixels: np.ndarray, batch: int) -> Row:
    model.predict_on_batch(pixels[:batch])  # warm-up: traces the graph
    n = len(pixels) - len(pixels) % batch
    cpu, start = time.process_time(), time.perf_counter()
    for i in range(0, n, batch):
        model.predict_on_batch(pixels[i : i + batch])
    return Row("pure compute (preloaded float32, predict_on_batch)", n,
               time.perf_counter() - start, f"batches of {batch}, after a warm-up batch",
               time.process_time() - cpu)


def time_keras_pipeline(data: Path, model: keras.Model | str, spec: BackboneSpec, batch: int,
                        label: str = "") -> Row:
    """``model``: the extractor, or its weights to build it inside the timed run."""
    import keras

    cpu, start = time.process_time(), time.perf_counter()
    built = isinstance(model, str)
    if built:
        model = build_extractor(spec, model)
    ds = keras.utils.image_dataset_from_directory(
        data, labels=None, image_size=spec.input_size, batch_size=batch, shuffle=False,
        verbose=False)
    n = len(ds.file_paths)
    out = model.predict(ds, verbose=0)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if len(out[0]) != n:
        raise RuntimeError(f"Keras pipeline gave {len(out[0])} rows for {n} files")
    what = "model built in the run" if built else "on the model built for pure compute"
    return Row(f"{label}Keras image_dataset_from_directory + predict, {what}", n, seconds,
               "full decode, tf.data", cpu)


def full_decode(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize(size, Image.Resampling.BILINEAR))


def time_naive(files: list[Path], model: keras.Model, spec: BackboneSpec) -> Row:
    model.predict_on_batch(np.zeros((1, *spec.input_size, 3), np.float32))  # trace batch 1
    cpu, start = time.process_time(), time.perf_counter()
    for p in files:
        x = full_decode(p, spec.input_size).astype(np.float32)[None]
        model.predict_on_batch(x)
    return Row("naive loop (full decode, predict_on_batch of 1)", len(files),
               time.perf_counter() - start, "retrain.py's way", time.process_time() - cpu)


def time_decode(files: list[Path], size: tuple[int, int],
                fn: Callable[[Path, tuple[int, int]], np.ndarray]) -> float:
    start = time.perf_counter()
    for p in files:
        fn(p, size)
    return time.perf_counter() - start


def decode_comparison(files: list[Path], size: tuple[int, int]) -> dict[str, float]:
    draft = time_decode(files, size, load_rgb)
    full = time_decode(files, size, full_decode)
    n = len(files)
    return {"images": n, "draft_ms": round(1000 * draft / n, 3),
            "full_ms": round(1000 * full / n, 3), "speedup": round(full / max(draft, 1e-9), 3)}


# Linux carries the RSS high-water mark of the forking process into a child's ru_maxrss
# (kept across exec), so a child forked from this 1 GB process would report at least 1 GB.
# A small launcher process forks the measured command and reports its wait4 usage instead.
_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "seconds": seconds,
               "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss}, f)
"""


def run_cli(data: Path, backbone: str, weights: str, cache_dir: Path,
            importtime: bool = False) -> CliRun:
    """``python -m app cache ... --json`` in a child: its wall time and its own peak RSS."""
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "app",
           "cache", str(data), "--backbone", backbone, "--weights", weights,
           "--cache-dir", str(cache_dir), "--json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "usage.json"
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with out.open("w") as fo, err.open("w") as fe:
            subprocess.run([sys.executable, "-c", _LAUNCHER, str(report), *cmd], cwd=REPO,
                           env=env, stdout=fo, stderr=fe, check=False)
        stdout, stderr = out.read_text(), err.read_text()
        usage = json.loads(report.read_text()) if report.exists() else {"rc": -1}
    if usage["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {usage['rc']}:\n{stderr[-2000:]}")
    imported = sorted(set(re.findall(r"\|\s+(tensorflow|keras|jax|torch)\s*$", stderr, re.M)))
    return CliRun(usage["seconds"], usage["cpu"], usage["maxrss_kb"] / 1024, json.loads(stdout),
                  imported)


def cli_row(label: str, run: CliRun, note: str) -> Row:
    res = run.result
    n = res["computed"] or res["images"]
    return Row(label, n, run.seconds, note, run.cpu_seconds)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import keras

    data = Path(args.data_dir).resolve()
    spec = get_spec(args.backbone)
    batch = DEFAULT_BATCH
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    rows: list[Row] = []
    out: dict[str, Any] = {}
    try:
        files = image_files(data)
        log(f"{len(files)} images in {data}; reading them into the page cache")
        read_all(files)

        log("pure compute")
        model = build_extractor(spec, args.weights)
        sample = spread(files, args.compute_images)
        pixels = np.stack([load_rgb(p, spec.input_size) for p in sample]).astype(np.float32)
        first = time_pure_compute(model, pixels, batch)

        log("app cache, cold, in-process")
        cold, phase, warm_dir = time_cold_cache(data, args.backbone, args.weights, scratch, "")

        # The limit is the best the backbone can do: measured before and after the cold run,
        # so a passing disturbance cannot lower it and flatter the ratio.
        second = time_pure_compute(model, pixels, batch)
        compute = max(first, second, key=lambda r: r.rate)
        compute.note += f" (best of 2: {first.rate:.1f} and {second.rate:.1f} img/s)"
        rows += [compute, cold, *filter(None, [phase])]

        # Where the cold run's time goes beyond the backbone: the same run with every photo
        # decoded beforehand (CacheJob's decoder hook, the real extractor) leaves the loop,
        # the scan, the model build and the graph's trace; the rest is decoding.
        log("app cache, cold, photos decoded beforehand")
        decoded = {str(p): load_rgb(p, spec.input_size) for p in files}
        free, _, _ = time_cold_cache(
            data, args.backbone, args.weights, scratch, "",
            "the same, every photo decoded beforehand: scan + model build + compute",
            decoder=lambda path, size: decoded[str(path)])
        free.method = "app cache, cold, photos decoded beforehand"
        rows.append(free)
        decoded.clear()

        log("Keras image_dataset_from_directory + predict")
        keras_row = time_keras_pipeline(data, args.weights, spec, batch)
        rows += [keras_row, time_keras_pipeline(data, model, spec, batch)]

        log(f"naive loop on {args.naive_limit} images")
        rows.append(time_naive(spread(files, args.naive_limit), model, spec))

        log("app cache, warm, in-process")
        warm_times, warm_cpu = [], []
        for _ in range(WARM_REPEATS):
            cpu, start = time.process_time(), time.perf_counter()
            res = cache_features(data, args.backbone, args.weights, cache_dir=warm_dir)
            warm_times.append(time.perf_counter() - start)
            warm_cpu.append(time.process_time() - cpu)
            if res.computed:
                raise RuntimeError(f"warm run computed {res.computed} images")
        warm = Row("app cache, warm, in-process", cold.images, statistics.median(warm_times),
                   f"median of {WARM_REPEATS}, nothing computed", statistics.median(warm_cpu))

        log("app cache, cold, CLI subprocesses (full and half dataset)")
        cli_full = run_cli(data, args.backbone, args.weights,
                           Path(tempfile.mkdtemp(prefix="cold-cli-", dir=scratch)))
        half_dir = scratch / "half"
        n_half = half_subset(data, half_dir)
        cli_half = run_cli(half_dir, args.backbone, args.weights,
                           Path(tempfile.mkdtemp(prefix="cold-cli-half-", dir=scratch)))
        rows.append(cli_row("app cache, cold, CLI subprocess", cli_full,
                            f"peak RSS {cli_full.peak_rss_mb:.0f} MB"))
        rows.append(cli_row(f"app cache, cold, CLI subprocess, half ({n_half})", cli_half,
                            f"peak RSS {cli_half.peak_rss_mb:.0f} MB"))

        log("app cache, warm, CLI subprocess")
        warm_cli_runs = [run_cli(data, args.backbone, args.weights, warm_dir)
                         for _ in range(WARM_REPEATS)]
        warm_cli = sorted(warm_cli_runs, key=lambda r: r.seconds)[WARM_REPEATS // 2]
        probe = run_cli(data, args.backbone, args.weights, warm_dir, importtime=True)
        rows.append(warm)
        rows.append(cli_row("app cache, warm, CLI subprocess", warm_cli,
                            f"median of {WARM_REPEATS}, peak RSS {warm_cli.peak_rss_mb:.0f} MB"))

        log(f"draft vs full decode on {args.decode_sample} files")
        decode = {"dataset": decode_comparison(spread(files, args.decode_sample),
                                               spec.input_size)}

        large_cold = large_keras = None
        if args.large_dir:
            large = Path(args.large_dir).resolve()
            large_files = image_files(large)
            log(f"large photos: {len(large_files)} in {large}")
            read_all(large_files)
            large_cold, _, _ = time_cold_cache(large, args.backbone, args.weights, scratch,
                                               "large: ")
            large_keras = time_keras_pipeline(large, args.weights, spec, batch, "large: ")
            rows += [large_cold, large_keras]
            decode["large"] = decode_comparison(spread(large_files, args.decode_sample),
                                                spec.input_size)

        goals = [
            Goal("dataset: cold cache / pure compute", cold.rate / compute.rate,
                 GOAL_COLD_VS_COMPUTE),
            Goal("dataset: cold cache / Keras pipeline", cold.rate / keras_row.rate,
                 GOAL_AHEAD_OF_KERAS),
            Goal("large photos: cold cache / Keras pipeline",
                 large_cold.rate / large_keras.rate if large_cold and large_keras else None,
                 GOAL_LARGE_VS_KERAS),
            Goal("warm re-run speedup, in-process (cold s / warm s)",
                 cold.seconds / warm.seconds, GOAL_WARM_SPEEDUP),
            Goal("warm re-run speedup, CLI (cold CLI s / warm CLI s)",
                 cli_full.seconds / warm_cli.seconds, GOAL_WARM_SPEEDUP),
        ]
        checks = {
            "warm_cli_imports": probe.imported,
            "warm_cli_imports_no_tensorflow": not probe.imported,
            "peak_rss_mb": {"full": round(cli_full.peak_rss_mb, 1),
                            "half": round(cli_half.peak_rss_mb, 1),
                            "warm_cli": round(warm_cli.peak_rss_mb, 1),
                            "this_process": round(
                                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
            "images": {"full": cli_full.result["images"], "half": cli_half.result["images"]},
        }
        out = {
            "rows": rows, "compute_rate": compute.rate, "goals": goals, "checks": checks,
            "decode": decode,
            "environment": {
                "cpus": os.cpu_count(), "python": platform.python_version(),
                "keras": keras.__version__, "backend": keras.backend.backend(),
                "backbone": spec.name, "weights": args.weights, "batch": batch,
                "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                "data_dir": str(data), "large_dir": args.large_dir,
            },
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def as_json(result: dict[str, Any]) -> dict[str, Any]:
    rate = result["compute_rate"]
    doc = dict(result)
    doc["rows"] = [{"method": r.method, "images": r.images, "seconds": round(r.seconds, 3),
                    "images_per_second": round(r.rate, 2),
                    "ratio_to_pure_compute": round(r.rate / rate, 3),
                    "cpu_ms_per_image": None if r.cpu_ms is None else round(r.cpu_ms, 2),
                    "note": r.note}
                   for r in result["rows"]]
    doc["goals"] = [{"goal": g.name, "value": None if g.value is None else round(g.value, 3),
                     "target": g.target, "status": g.status} for g in result["goals"]]
    doc["all_pass"] = all(g["status"] == "PASS" for g in doc["goals"])
    del doc["compute_rate"]
    return doc


def as_markdown(result: dict[str, Any]) -> str:
    rate = result["compute_rate"]
    env = result["environment"]
    lines = [
        f"Backbone {env['backbone']} on {env['backend']}, {env['cpus']} CPUs, batch "
        f"{env['batch']}; load average {env['loadavg_before'][0]:.2f} before, "
        f"{env['loadavg_after'][0]:.2f} after.",
        "",
        "| method | images | seconds | images/s | ratio to pure compute | CPU ms/image | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        cpu = "-" if r.cpu_ms is None else f"{r.cpu_ms:.1f}"
        lines.append(f"| {r.method} | {r.images} | {r.seconds:.3f} | {r.rate:.1f} | "
                     f"{r.rate / rate:.3f} | {cpu} | {r.note} |")
    lines += ["", "| decode (single thread) | files | load_rgb (draft) ms | full decode ms "
              "| speedup |", "|---|---:|---:|---:|---:|"]
    for name, d in result["decode"].items():
        lines.append(f"| {name} | {d['images']} | {d['draft_ms']:.2f} | {d['full_ms']:.2f} | "
                     f"{d['speedup']:.2f}x |")
    lines += ["", "| goal | value | target | status |", "|---|---:|---:|---|"]
    for g in result["goals"]:
        value = "-" if g.value is None else f"{g.value:.2f}{g.unit}"
        lines.append(f"| {g.name} | {value} | >= {g.target:g}{g.unit} | {g.status} |")
    checks = result["checks"]
    rss = checks["peak_rss_mb"]
    lines += [
        "",
        f"Peak RSS of the cold CLI run: {rss['full']:.0f} MB for {checks['images']['full']} "
        f"images, {rss['half']:.0f} MB for {checks['images']['half']} "
        f"(ratio {rss['full'] / rss['half']:.2f}); warm CLI run {rss['warm_cli']:.0f} MB; "
        f"this process {rss['this_process']:.0f} MB.",
        "Warm CLI run imports: "
        + (", ".join(checks["warm_cli_imports"]) or "no TensorFlow/Keras (PASS)"),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", help="dataset folder, one sub-folder of images per class")
    p.add_argument("--backbone", default="mobilenet")
    p.add_argument("--weights", required=True, help="'imagenet', 'none' or a .weights.h5 file")
    p.add_argument("--large-dir", help="folder of phone-size photos (make_large_photos.py)")
    p.add_argument("--naive-limit", type=int, default=150, help="images in the naive loop")
    p.add_argument("--compute-images", type=int, default=256,
                   help="preloaded images for the pure compute rate")
    p.add_argument("--decode-sample", type=int, default=100,
                   help="files for the draft vs full decode comparison")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    if args.json:
        print(json.dumps(as_json(result), indent=2))
    else:
        print(as_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
