"""Does decoding keep the GPU busy? The app's cache against the backbone alone, on a GPU.

One run, per mode (pooled taps for ``head``, the cut for ``finetune``):

1. the app's cache, cold (``cache_features`` into a fresh folder): images per second, the
   GPU's utilisation sampled by ``nvidia-smi`` every 100 ms over the steady part (after the
   first 20% of the images) and how long the main thread waited for decoded batches;
2. the backbone alone: the same compiled extractor (``keras_extractor``, same batch and
   precision) on batches decoded beforehand, so nothing waits for decoding: the limit the
   cache can reach.

If the cache's rate is near the limit and the utilisation is near the limit's, decoding
keeps up; if not, the cache is decode-bound and the ratio says by how much. Files are read
once before any timing, so both find them in the OS page cache.

usage: KERAS_BACKEND=jax python benchmarks/gpu_busy.py DATA_DIR --weights FILE
       [--backbone mobilenet] [--modes head finetune] [--workers N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from app.core.base.device import compute_precision, configure  # noqa: E402
from app.core.base.jobs import CancelToken, no_progress  # noqa: E402
from app.core.features.backbones import get_spec  # noqa: E402
from app.core.features.caching import CacheJob  # noqa: E402
from app.core.features.extract import keras_extractor  # noqa: E402
from app.core.intake.imaging import IMAGE_SUFFIXES, load_rgb  # noqa: E402


class GpuSampler:
    """``nvidia-smi`` utilisation (percent) every 100 ms, with host timestamps."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", "100"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip())))
            except ValueError:
                pass

    def mean(self, start: float, end: float) -> float | None:
        vals = [u for t, u in self.samples if start <= t <= end]
        return round(statistics.mean(vals), 1) if vals else None

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()


def images_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def app_cache(data: Path, args, mode: str, gpu: GpuSampler) -> dict:
    cache = tempfile.mkdtemp(prefix="gpu-busy-")
    marks: list[float] = []

    def progress(p):
        if p.stage == "cache" and p.total:
            marks.append((time.perf_counter(), p.done, p.total))

    options = {"workers": args.workers} if args.workers else {}
    job = CacheJob(str(data), args.backbone, args.weights, cache, batch_size=args.batch,
                   mode=mode, **options)
    t0 = time.perf_counter()
    result, _ = job.run(progress, CancelToken())
    t1 = time.perf_counter()
    shutil.rmtree(cache, ignore_errors=True)
    total = marks[-1][2] if marks else result.computed
    steady = [(t, d) for t, d, _ in marks if d >= 0.2 * total]
    rate = ((steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
            if len(steady) > 1 and steady[-1][0] > steady[0][0] else None)
    return {"images": result.computed, "seconds": round(t1 - t0, 1),
            "images_per_second_end_to_end": round(result.computed / (t1 - t0), 1),
            "images_per_second_steady": round(rate, 1) if rate else None,
            "gpu_util_steady": gpu.mean(steady[0][0], steady[-1][0]) if steady else None,
            "device": result.device}


def backbone_alone(paths: list[Path], args, mode: str, gpu: GpuSampler) -> dict:
    spec = get_spec(args.backbone)
    size = spec.input_size
    pixels = np.stack([load_rgb(p, size) for p in paths[: args.batch * 8]]).astype(np.float32)
    model = keras_extractor(spec, args.weights, compute_precision(), mode == "finetune",
                            no_progress, CancelToken()).model
    batches = [pixels[i:i + args.batch] for i in range(0, len(pixels), args.batch)]
    batches = [b for b in batches if len(b) == args.batch]
    for b in batches[:2]:
        _sync(model.predict_on_batch(b))  # compile and warm up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        for b in batches:
            _sync(model.predict_on_batch(b))
            n += len(b)
    t1 = time.perf_counter()
    return {"images_per_second": round(n / (t1 - t0), 1), "gpu_util": gpu.mean(t0, t1)}


def _sync(res) -> None:
    for r in res if isinstance(res, (list, tuple)) else [res]:
        np.asarray(r)  # to host: the work is done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--modes", nargs="+", default=["head", "finetune"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="decode threads (0: the app's)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    data = Path(args.data_dir)
    paths = images_of(data)
    for p in paths:
        p.read_bytes()  # into the page cache
    device = configure()
    gpu = GpuSampler()
    doc = {"device": device, "precision": compute_precision(), "images": len(paths),
           "cpus": os.cpu_count(), "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
           "modes": {}}
    try:
        for mode in args.modes:
            cache = app_cache(data, args, mode, gpu)
            alone = backbone_alone(paths, args, mode, gpu)
            ratio = (cache["images_per_second_steady"] or 0) / alone["images_per_second"]
            doc["modes"][mode] = {"app_cache": cache, "backbone_alone": alone,
                                  "cache_over_limit": round(ratio, 3)}
            print(json.dumps({mode: doc["modes"][mode]}), file=sys.stderr, flush=True)
    finally:
        gpu.stop()
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{doc['images']} images, {device}, {doc['precision']}, {doc['cpus']} CPUs")
        print("| mode | app cache img/s (steady) | GPU util | backbone alone img/s | GPU util | "
              "cache / limit |")
        print("|---|---:|---:|---:|---:|---:|")
        for mode, m in doc["modes"].items():
            c, a = m["app_cache"], m["backbone_alone"]
            print(f"| {mode} | {c['images_per_second_steady']} | {c['gpu_util_steady']} | "
                  f"{a['images_per_second']} | {a['gpu_util']} | {m['cache_over_limit']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
