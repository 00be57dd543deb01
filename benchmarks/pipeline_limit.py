"""What the caching pipeline itself costs, measured without a GPU, side by side in one run.

1. decode only: the app's decode function (``load_rgb``) on every image with the same number
   of worker threads the caching job uses, nothing else;
2. pipeline: the real caching job (``CacheJob``: claims, decode pool, batching, the store's
   writes) on a cold feature cache, with an extractor that costs nothing (it returns zeros of
   the backbone's tap shapes), handed in through the public extractor interface
   (``CacheJob(extractor=...)``). The data folder is scanned beforehand (its digests are kept
   in the same cache), so the figure is the pipeline's, not the hashing's; ``pipeline_scan``
   is the same job with the scan included;
3. ceiling: the same job with the decoding free too (pixels decoded beforehand, handed in as
   ``CacheJob(decoder=...)``): what the loop itself (claims, stacking, the store's writes)
   can deliver, so that many cores and a GPU are never held back by it; and the same with
   the store on a memory file system (``/dev/shm``, where there is one): ``ceiling_in_memory``,
   the loop without the disk, so that what is the disk's and what is the loop's shows.

The ratio pipeline / decode_only says what the pipeline loses against decoding alone.

usage: python benchmarks/pipeline_limit.py DATA [--cache-dir DIR] [--backbone mobilenet]
       [--workers N] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from app.core.features.backbones import get_spec  # noqa: E402
from app.core.features.caching import CacheJob, default_workers  # noqa: E402
from app.core.features.cuts import CUT_SHAPES, TAP_SHAPES  # noqa: E402
from app.core.features.extract import output_names  # noqa: E402
from app.core.intake.dataset import scan_dataset  # noqa: E402
from app.core.intake.imaging import ImageError, load_rgb  # noqa: E402
from app.core.storage.store import FeatureStore  # noqa: E402


class FreeExtractor:
    """An extractor that costs nothing: zeros of the backbone's output shapes."""

    def __init__(self, spec, weights, precision, cut, progress, cancel) -> None:
        self.names = output_names(cut)
        shapes = {"cut": CUT_SHAPES[spec.name]} if cut else TAP_SHAPES[spec.name]
        self.shapes = {n: tuple(shapes[n]) for n in self.names}

    def predict(self, pixels: np.ndarray) -> list[np.ndarray]:
        return [np.zeros((len(pixels), *self.shapes[n]), np.float16) for n in self.names]


def decode_only(paths: list[str], size, workers: int) -> float:
    def one(p):
        try:
            return load_rgb(p, size)
        except ImageError:
            return None

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(one, paths, chunksize=8):
            pass
    return len(paths) / (time.perf_counter() - t0)


def cache_run(data, cache_dir: Path, backbone: str, workers: int, decoder=None,
              scanned: bool = True) -> float:
    """One cold caching run with the free extractor; images computed per second."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache_dir.mkdir(parents=True)
    if scanned:
        with FeatureStore(cache_dir) as store:  # digests kept in this cache
            data = scan_dataset(data, store)
    options = {"decoder": decoder} if decoder is not None else {}
    t0 = time.perf_counter()
    result, _ = CacheJob(data, backbone, "none", cache_dir, workers=workers,
                         extractor=FreeExtractor, **options).run()
    seconds = time.perf_counter() - t0
    assert result.to_compute == 0 and not result.cancelled, result
    return result.computed / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--cache-dir", help="scratch folder for the cold caches (default: a temp)")
    ap.add_argument("--backbone", default="mobilenet")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    spec = get_spec(args.backbone)
    scratch = Path(args.cache_dir or tempfile.mkdtemp(prefix="pipeline-limit-"))
    ds = scan_dataset(args.data_dir)
    paths = [r.path for r in ds.images]
    for p in paths:  # every method finds the files in the OS page cache
        Path(p).read_bytes()
    pixels = {}
    for p in paths:
        try:
            pixels[p] = load_rgb(p, spec.input_size)
        except ImageError:
            pass

    def predecoded(path, size):
        return pixels[str(path)]

    # warm up once: Keras' import and device set-up happen inside the first run
    cache_run(args.data_dir, scratch / "warm", args.backbone, args.workers, predecoded)
    rates: dict[str, list[float]] = {"decode_only": [], "pipeline": [], "pipeline_scan": [],
                                     "ceiling": []}
    memory = None
    if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
        memory = Path(tempfile.mkdtemp(prefix="pipeline-limit-", dir="/dev/shm"))
        rates["ceiling_in_memory"] = []
    for _ in range(args.repeats):  # interleaved, so a slower minute hits every method
        rates["decode_only"].append(decode_only(paths, spec.input_size, args.workers))
        rates["pipeline"].append(cache_run(args.data_dir, scratch / "p", args.backbone,
                                           args.workers))
        rates["pipeline_scan"].append(cache_run(args.data_dir, scratch / "s", args.backbone,
                                                args.workers, scanned=False))
        rates["ceiling"].append(cache_run(args.data_dir, scratch / "c", args.backbone,
                                          args.workers, predecoded))
        if memory is not None:
            rates["ceiling_in_memory"].append(cache_run(args.data_dir, memory / "c",
                                                        args.backbone, args.workers,
                                                        predecoded))
    if not args.cache_dir:
        shutil.rmtree(scratch, ignore_errors=True)
    if memory is not None:
        shutil.rmtree(memory, ignore_errors=True)
    med = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    doc = {"decode_only": med["decode_only"], "pipeline": med["pipeline"],
           "ratio": round(med["pipeline"] / med["decode_only"], 3),
           "ceiling": med["ceiling"], "workers": args.workers,
           "pipeline_scan": med["pipeline_scan"],
           "ceiling_in_memory": med.get("ceiling_in_memory"), "images": len(paths),
           "backbone": spec.name, "cpus": os.cpu_count(), "runs": rates}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{args.data_dir}: {len(paths)} images, {args.workers} workers, "
              f"{spec.name} tap shapes, median of {args.repeats}")
        print(f"decode only      {med['decode_only']:9.1f} images/s")
        print(f"pipeline         {med['pipeline']:9.1f} images/s  "
              f"({doc['ratio']:.2f}x of decode only)")
        print(f"pipeline + scan  {med['pipeline_scan']:9.1f} images/s")
        print(f"ceiling          {med['ceiling']:9.1f} images/s  (decoding and extractor free)")
        if memory is not None:
            print(f"ceiling, memory  {med['ceiling_in_memory']:9.1f} images/s  "
                  "(the same, the store on /dev/shm: no disk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
