"""Caching throughput: the app's feature cache against the backbone's limit and the usual ways.

One run measures, on the same images and the same frozen extractor (``build_extractor``), its
two engines side by side: ONNX Runtime (the app's default where installed: the extractor's
ONNX graph, made once per backbone and kept in the cache folder) and Keras/TensorFlow (the
path before issue 28, ``CacheJob(extractor=keras_extractor)``, ``BOTTLENECK_STUDIO_RUNTIME=keras``
for subprocesses):

1. the app's cache, cold (``cache_features`` into a fresh temporary cache folder), end to end
   and its compute phase alone, with each engine (ONNX Runtime with its graph already made,
   and once more making it in the run); also as ``python -m app cache`` subprocesses with
   each engine, and on a half-size subset (symlinks), with each subprocess's peak RSS;
2. pure compute, the limit: ``model.predict_on_batch`` on preloaded float32 batches of 32, and
   the same graph in ONNX Runtime on the same batches;
3. ``keras.utils.image_dataset_from_directory`` + ``model.predict`` (what users do today):
   with the model built inside the timed run, as the app's cold run builds its own, and on
   the model already built and traced for (2);
4. a naive loop: Pillow full decode, resize, ``predict_on_batch`` on one image at a time;
5. a warm re-run of (1) on the filled cache, in-process and as a CLI subprocess (which must
   not import TensorFlow);
6. Pillow's draft decode (``load_rgb``) against a full decode, single-threaded;
7. with ``--large-dir``, cold cache (both engines) against the Keras pipeline on phone-size
   photos.

Files are read once before any timing, so every method finds them in the OS page cache.
``--limit N`` / ``--large-limit N`` take N photos spread over the classes (symlinks in a
scratch folder) for a shorter run; ``--no-cli`` leaves out the subprocess rows.

Run (make the large photos in a scratch folder, never inside the repo)::

    python /work/shared/tools/make_large_photos.py /work/shared/data/oxford17-flowers \\
        /tmp/large 20
    .venv/bin/python benchmarks/cache_throughput.py /work/shared/data/oxford17-flowers \\
        --backbone mobilenet \\
        --weights /work/shared/weights/mobilenet_1_0_224_imagenet_no_top.weights.h5 \\
        --large-dir /tmp/large [--naive-limit 150] [--limit N] [--large-limit N] [--no-cli]
        [--json]
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
from app.core.features import runtime  # noqa: E402
from app.core.features.backbones import BackboneSpec, build_extractor, get_spec  # noqa: E402
from app.core.features.caching import DEFAULT_BATCH, cache_features  # noqa: E402
from app.core.features.extract import keras_extractor  # noqa: E402
from app.core.intake.imaging import IMAGE_SUFFIXES, load_rgb  # noqa: E402

if TYPE_CHECKING:
    import keras

GOAL_COLD_VS_COMPUTE = 0.9
GOAL_LARGE_VS_KERAS = 1.8
GOAL_AHEAD_OF_KERAS = 1.0
GOAL_WARM_SPEEDUP = 100.0
# issue 28: the cold cache with ONNX Runtime against the same cache with Keras/TensorFlow
GOAL_ONNX_VS_KERAS = {"mobilenet": 2.0, "xception": 1.6}
WARM_REPEATS = 3
KERAS_ENV = {runtime.RUNTIME_ENV: "keras"}


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


def limited(root: Path, dest: Path, n: int) -> Path:
    """``root`` itself, or (``n`` > 0) a folder of symlinks to ``n`` of its photos spread over
    its classes."""
    files = image_files(root)
    if n <= 0 or n >= len(files):
        return root
    for p in spread(files, n):
        link = dest / p.parent.name / p.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(p.resolve())
    return dest


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
                    graphs: Path | None = None, engine: str = "",
                    **options: Any) -> tuple[Row, Row | None, Path]:
    """Cold ``cache_features`` end to end, its compute phase after the first batch, its folder.
    ``graphs``: ONNX graphs put in the new cache folder first (made by an earlier run);
    ``engine``: the device string the run must report; ``options``: more of
    :class:`CacheJob`'s fields."""
    cache_dir = Path(tempfile.mkdtemp(prefix="cold-", dir=scratch))
    if graphs is not None:
        shutil.copytree(graphs, cache_dir / runtime.GRAPHS)
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
    if engine and engine not in res.device:
        raise RuntimeError(f"cold run computed on {res.device}, not {engine}: {res.notes}")
    total = Row(f"{label}app cache, cold, in-process", res.images, seconds, note, cpu)
    phase = None
    if len(marks) >= 2:
        (t0, n0), (t1, n1) = marks[0], marks[-1]
        phase = Row(f"{label}app cache, cold, compute phase", n1 - n0, t1 - t0,
                    "after the first batch")
    return total, phase, cache_dir


def engine_difference(model: keras.Model, extractor, pixels: np.ndarray, batch: int
                      ) -> dict[str, dict[str, float]]:
    """Per tap, how far ONNX Runtime's values are from Keras' on the same photos, against
    the float16 rounding the store applies to Keras' own: the figure keys.py's rule reads."""
    names = extractor.names
    ours = [[] for _ in names]
    theirs = [[] for _ in names]
    for i in range(0, len(pixels), batch):
        for acc, out in ((ours, extractor.predict(pixels[i : i + batch])),
                         (theirs, model.predict_on_batch(pixels[i : i + batch]))):
            for a, o in zip(acc, out):
                a.append(np.asarray(o, np.float32))
    report = {}
    for name, a, b in zip(names, ours, theirs):
        a, b = np.concatenate(a), np.concatenate(b)
        diff = float(np.abs(a - b).max())
        rounding = float(np.abs(b.astype(np.float16).astype(np.float32) - b).max())
        report[name] = {"max_abs_diff": diff, "float16_rounding": rounding,
                        "ratio": diff / rounding if rounding else float("inf"),
                        "float16_values_differing": float(
                            (a.astype(np.float16) != b.astype(np.float16)).mean()),
                        "max_abs_value": float(np.abs(b).max())}
    return report


def time_onnx_compute(extractor, pixels: np.ndarray, batch: int) -> Row:
    """The extractor's ONNX graph in ONNX Runtime on the pure-compute batches."""
    extractor.predict(pixels[:batch])
    n = len(pixels) - len(pixels) % batch
    cpu, start = time.process_time(), time.perf_counter()
    for i in range(0, n, batch):
        extractor.predict(pixels[i : i + batch])
    return Row("pure compute, ONNX Runtime (the same graph and batches)", n,
               time.perf_counter() - start, f"batches of {batch}, after a warm-up batch",
               time.process_time() - cpu)


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
            importtime: bool = False, env_extra: dict[str, str] | None = None,
            graphs: Path | None = None) -> CliRun:
    """``python -m app cache ... --json`` in a child: its wall time and its own peak RSS.
    ``graphs``: ONNX graphs put in its cache folder first."""
    if graphs is not None:
        shutil.copytree(graphs, cache_dir / runtime.GRAPHS, dirs_exist_ok=True)
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "app",
           "cache", str(data), "--backbone", backbone, "--weights", weights,
           "--cache-dir", str(cache_dir), "--json"]
    env = {**os.environ, **(env_extra or {}), "PYTHONPATH": os.pathsep.join(
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

    spec = get_spec(args.backbone)
    batch = DEFAULT_BATCH
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    rows: list[Row] = []
    out: dict[str, Any] = {}
    onnx = runtime.onnx_runtime() is not None
    try:
        data = limited(Path(args.data_dir).resolve(), scratch / "data", args.limit)
        files = image_files(data)
        log(f"{len(files)} images in {data}; reading them into the page cache")
        read_all(files)

        log("pure compute")
        model = build_extractor(spec, args.weights)
        sample = spread(files, args.compute_images)
        pixels = np.stack([load_rgb(p, spec.input_size) for p in sample]).astype(np.float32)
        first = time_pure_compute(model, pixels, batch)

        graphs = scratch / "graphs"
        onnx_first = onnx_compute = None
        if onnx:
            log("ONNX graph: made once (export + check), then pure compute")
            start = time.perf_counter()
            extractor = runtime.best_extractor(spec, args.weights, "float32", False,
                                               lambda _: None, None, graphs)
            made = time.perf_counter() - start
            if not isinstance(extractor, runtime.OnnxExtractor):
                raise RuntimeError(f"no ONNX graph: {getattr(extractor, 'notes', '')}")
            out["graph"] = {"seconds_to_make": round(made, 2),
                            "check": runtime.graph_report(graphs)[0]["check"]}
            graphs = graphs / runtime.GRAPHS
            onnx_first = time_onnx_compute(extractor, pixels, batch)
            out["engine_difference"] = engine_difference(model, extractor, pixels, batch)

        log("app cache, cold, in-process: Keras/TensorFlow (today's path)")
        cold_keras, phase_keras, _ = time_cold_cache(
            data, args.backbone, args.weights, scratch, "",
            engine="Keras", extractor=keras_extractor)
        cold_keras.method = "app cache, cold, Keras/TensorFlow (the path before issue 28)"
        cold = phase = cold_first = None
        warm_dir = None
        if onnx:
            log("app cache, cold, in-process: ONNX Runtime, graph made before")
            cold, phase, warm_dir = time_cold_cache(data, args.backbone, args.weights, scratch,
                                                    "", graphs=graphs, engine="ONNX Runtime")
            cold.method = "**app cache, cold, ONNX Runtime** (graph made before)"
            log("app cache, cold, in-process: ONNX Runtime, graph made in the run")
            cold_first, _, _ = time_cold_cache(data, args.backbone, args.weights, scratch, "",
                                               "the same, making the ONNX graph first",
                                               engine="ONNX Runtime")
            cold_first.method = "app cache, cold, ONNX Runtime, first run (graph made in it)"
            onnx_compute = max(onnx_first, time_onnx_compute(extractor, pixels, batch),
                               key=lambda r: r.rate)
        else:
            cold, phase, warm_dir = cold_keras, phase_keras, None

        # The limit is the best the backbone can do: measured before and after the cold run,
        # so a passing disturbance cannot lower it and flatter the ratio.
        second = time_pure_compute(model, pixels, batch)
        compute = max(first, second, key=lambda r: r.rate)
        compute.note += f" (best of 2: {first.rate:.1f} and {second.rate:.1f} img/s)"
        rows += [compute]
        if onnx_compute is not None:
            onnx_compute.note += " (best of 2)"
            rows.append(onnx_compute)
        rows += [cold_keras, *filter(None, [phase_keras])]
        if onnx:
            phase.method = "app cache, cold, ONNX Runtime, compute phase"
            rows += [cold, phase, cold_first]

        # Where the cold run's time goes beyond the backbone: the same run with every photo
        # decoded beforehand (CacheJob's decoder hook, the real extractor) leaves the loop,
        # the scan, the model build and the graph's trace; the rest is decoding.
        log("app cache, cold, photos decoded beforehand")
        decoded = {str(p): load_rgb(p, spec.input_size) for p in files}
        free, _, _ = time_cold_cache(
            data, args.backbone, args.weights, scratch, "",
            "the same, every photo decoded beforehand: scan + model build + compute",
            graphs=graphs if onnx else None, decoder=lambda path, size: decoded[str(path)])
        free.method = (f"app cache, cold, {'ONNX Runtime' if onnx else 'Keras'}, photos "
                       "decoded beforehand")
        rows.append(free)
        decoded.clear()

        log("Keras image_dataset_from_directory + predict")
        keras_row = time_keras_pipeline(data, args.weights, spec, batch)
        rows += [keras_row, time_keras_pipeline(data, model, spec, batch)]

        if args.naive_limit > 0:
            log(f"naive loop on {args.naive_limit} images")
            rows.append(time_naive(spread(files, args.naive_limit), model, spec))

        log("app cache, warm, in-process")
        warm_dir = warm_dir or time_cold_cache(data, args.backbone, args.weights, scratch,
                                               "")[2]
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

        checks: dict[str, Any] = {}
        cli_keras = cli_onnx = warm_cli = None
        if not args.no_cli:
            log("app cache, cold, CLI subprocesses (both engines; ONNX on half the dataset)")
            cli_keras = run_cli(data, args.backbone, args.weights,
                                Path(tempfile.mkdtemp(prefix="cold-cli-", dir=scratch)),
                                env_extra=KERAS_ENV)
            rows.append(cli_row("app cache, cold, CLI subprocess, Keras/TensorFlow", cli_keras,
                                f"peak RSS {cli_keras.peak_rss_mb:.0f} MB"))
            cli_onnx = cli_half = None
            if onnx:
                cli_onnx = run_cli(data, args.backbone, args.weights,
                                   Path(tempfile.mkdtemp(prefix="cold-cli-", dir=scratch)),
                                   graphs=graphs)
                half_dir = scratch / "half"
                n_half = half_subset(data, half_dir)
                cli_half = run_cli(half_dir, args.backbone, args.weights,
                                   Path(tempfile.mkdtemp(prefix="cold-cli-half-", dir=scratch)),
                                   graphs=graphs)
                rows.append(cli_row("**app cache, cold, CLI subprocess, ONNX Runtime** (graph "
                                    "made before)", cli_onnx,
                                    f"peak RSS {cli_onnx.peak_rss_mb:.0f} MB, "
                                    f"{cli_onnx.result['device']}"))
                rows.append(cli_row(f"app cache, cold, CLI subprocess, ONNX Runtime, half "
                                    f"({n_half})", cli_half,
                                    f"peak RSS {cli_half.peak_rss_mb:.0f} MB"))
            log("app cache, warm, CLI subprocess")
            warm_cli_runs = [run_cli(data, args.backbone, args.weights, warm_dir)
                             for _ in range(WARM_REPEATS)]
            warm_cli = sorted(warm_cli_runs, key=lambda r: r.seconds)[WARM_REPEATS // 2]
            probe = run_cli(data, args.backbone, args.weights, warm_dir, importtime=True)
            rows.append(cli_row("app cache, warm, CLI subprocess", warm_cli,
                                f"median of {WARM_REPEATS}, peak RSS "
                                f"{warm_cli.peak_rss_mb:.0f} MB"))
            checks = {
                "warm_cli_imports": probe.imported,
                "warm_cli_imports_no_tensorflow": not probe.imported,
                "peak_rss_mb": {"cold_keras": round(cli_keras.peak_rss_mb, 1),
                                "cold_onnx": cli_onnx and round(cli_onnx.peak_rss_mb, 1),
                                "half_onnx": cli_half and round(cli_half.peak_rss_mb, 1),
                                "warm_cli": round(warm_cli.peak_rss_mb, 1)},
                "images": {"full": cli_keras.result["images"],
                           "half": cli_half.result["images"] if cli_half else None},
            }
        rows.append(warm)
        checks.setdefault("peak_rss_mb", {})["this_process"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

        log(f"draft vs full decode on {args.decode_sample} files")
        decode = {"dataset": decode_comparison(spread(files, args.decode_sample),
                                               spec.input_size)}

        large_cold = large_keras = large_cold_keras = None
        if args.large_dir:
            large = limited(Path(args.large_dir).resolve(), scratch / "large", args.large_limit)
            large_files = image_files(large)
            log(f"large photos: {len(large_files)} in {large}")
            read_all(large_files)
            large_cold_keras, _, _ = time_cold_cache(large, args.backbone, args.weights,
                                                     scratch, "large: ", engine="Keras",
                                                     extractor=keras_extractor)
            large_cold_keras.method = "phone-size: app cache, cold, Keras/TensorFlow"
            rows.append(large_cold_keras)
            if onnx:
                large_cold, _, _ = time_cold_cache(large, args.backbone, args.weights, scratch,
                                                   "large: ", graphs=graphs,
                                                   engine="ONNX Runtime")
                large_cold.method = "**phone-size: app cache, cold, ONNX Runtime**"
                rows.append(large_cold)
            large_keras = time_keras_pipeline(large, args.weights, spec, batch, "phone-size: ")
            rows.append(large_keras)
            decode["large"] = decode_comparison(spread(large_files, args.decode_sample),
                                                spec.input_size)

        target = GOAL_ONNX_VS_KERAS.get(spec.name, min(GOAL_ONNX_VS_KERAS.values()))
        goals = [
            Goal("cold cache: ONNX Runtime / Keras (today's path), in-process",
                 cold.rate / cold_keras.rate if onnx else None, target),
            Goal("cold cache: ONNX Runtime / Keras (today's path), CLI process",
                 cli_keras.seconds / cli_onnx.seconds if cli_onnx else None, target),
            Goal("dataset: cold cache / Keras pipeline", cold.rate / keras_row.rate,
                 GOAL_AHEAD_OF_KERAS),
            Goal("phone-size: cold cache / Keras pipeline",
                 (large_cold or large_cold_keras).rate / large_keras.rate
                 if large_keras else None, GOAL_AHEAD_OF_KERAS),
            Goal("dataset: cold cache / pure compute of its engine",
                 cold.rate / (onnx_compute or compute).rate, GOAL_COLD_VS_COMPUTE),
            Goal("phone-size: cold cache / Keras pipeline (issue 20)",
                 (large_cold or large_cold_keras).rate / large_keras.rate
                 if large_keras else None, GOAL_LARGE_VS_KERAS),
            Goal("warm re-run speedup, in-process (cold s / warm s)",
                 cold.seconds / warm.seconds, GOAL_WARM_SPEEDUP),
            Goal("warm re-run speedup, CLI (cold CLI s / warm CLI s)",
                 (cli_onnx or cli_keras).seconds / warm_cli.seconds if warm_cli else None,
                 GOAL_WARM_SPEEDUP),
        ]
        out |= {
            "rows": rows, "compute_rate": compute.rate, "goals": goals, "checks": checks,
            "decode": decode,
            "environment": {
                "cpus": os.cpu_count(), "python": platform.python_version(),
                "keras": keras.__version__, "backend": keras.backend.backend(),
                "onnxruntime": getattr(runtime.onnx_runtime(), "__version__", None),
                "backbone": spec.name, "weights": args.weights, "batch": batch,
                "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                "data_dir": str(args.data_dir), "images": len(files),
                "large_dir": args.large_dir,
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
        f"Backbone {env['backbone']} on {env['backend']} and ONNX Runtime "
        f"{env['onnxruntime']}, {env['cpus']} CPUs, batch {env['batch']}, {env['images']} "
        f"photos; load average {env['loadavg_before'][0]:.2f} before, "
        f"{env['loadavg_after'][0]:.2f} after."
        + (f" ONNX graph made in {result['graph']['seconds_to_make']:.1f} s, max difference "
           f"from Keras on its check images "
           f"{max(result['graph']['check']['max_abs_diff'].values()):.2g}."
           if "graph" in result else ""),
        "",
        "| method | images | seconds | images/s | ratio to Keras pure compute | CPU ms/image "
        "| note |",
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
    if "engine_difference" in result:
        lines += ["", "| tap | max abs value | max ONNX Runtime - Keras | max float16 rounding "
                  "| ratio | float16 values differing |", "|---|---:|---:|---:|---:|---:|"]
        for tap, d in result["engine_difference"].items():
            lines.append(f"| {tap} | {d['max_abs_value']:.3g} | {d['max_abs_diff']:.2g} | "
                         f"{d['float16_rounding']:.2g} | {d['ratio']:.3f} | "
                         f"{d['float16_values_differing']:.2%} |")
    checks = result["checks"]
    rss = checks["peak_rss_mb"]
    if "warm_cli_imports" in checks:
        lines += [
            "",
            f"Peak RSS of the cold CLI runs: Keras {rss['cold_keras']:.0f} MB, ONNX Runtime "
            f"{rss['cold_onnx'] or 0:.0f} MB for {checks['images']['full']} images "
            f"({rss['half_onnx'] or 0:.0f} MB for {checks['images']['half']}); warm CLI run "
            f"{rss['warm_cli']:.0f} MB; this process {rss['this_process']:.0f} MB.",
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
    p.add_argument("--naive-limit", type=int, default=150,
                   help="images in the naive loop (0: leave it out)")
    p.add_argument("--compute-images", type=int, default=256,
                   help="preloaded images for the pure compute rate")
    p.add_argument("--decode-sample", type=int, default=100,
                   help="files for the draft vs full decode comparison")
    p.add_argument("--limit", type=int, default=0,
                   help="photos of DATA_DIR, spread over its classes (0: all)")
    p.add_argument("--large-limit", type=int, default=0,
                   help="photos of --large-dir, spread over its classes (0: all)")
    p.add_argument("--no-cli", action="store_true", help="leave out the subprocess rows")
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
