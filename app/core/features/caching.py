"""The caching job: every image through the frozen backbone once, features into the store.

The job scans the data folder, filters out what the store already holds (and checks it), and
hands the rest to an engine: this process (:mod:`.engines.local`) or a Ray cluster
(:mod:`.engines.ray`), both calling the same decode function and the same extractor
(:mod:`.extract`; :mod:`.runtime` picks ONNX Runtime or Keras). With nothing to compute,
Keras is never imported; with the backbone's ONNX graph already in the cache folder and a CPU,
neither is TensorFlow.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from app.core.base.errors import SettingsError
from app.core.base.jobs import CancelToken, ProgressCallback, no_progress
from app.core.base.paths import user_cache_dir
from app.core.features.backbones import DEFAULT_BACKBONE, BackboneSpec, get_spec
from app.core.features.engines.local import LocalEngine, PrecisionChanged
from app.core.features.extract import Decoder, ExtractorFactory
from app.core.intake.dataset import Dataset, Skipped, SplitSpec, scan_dataset
from app.core.intake.imaging import PREPROCESS_VERSION, load_rgb
from app.core.storage.store import CUT, FeatureStore

DEFAULT_BATCH = 32


def default_workers() -> int:
    """Decode threads: one per core (Pillow releases the GIL while it decodes), at least 2."""
    return max(2, os.cpu_count() or 2)


@dataclass
class CacheResult:
    images: int
    computed: int
    reused: int
    skipped: list[Skipped]
    classes: dict[str, int]
    split: dict[str, int]
    seconds: float
    images_per_second: float
    device: str
    backbone: str
    model_key: str
    cancelled: bool = False
    findings: list = field(default_factory=list)
    to_compute: int = 0  # images still without features (after a cancel)
    retried: int = 0  # images remembered as bad that were tried again
    mode: str = "head"  # what was cached: pooled taps ("head") or the cut ("finetune")
    disk_bytes: int = 0  # what this model key's features take on disk
    repaired: int = 0  # images whose stored features were damaged, so computed again
    notes: list[str] = field(default_factory=list)  # one-line warnings (a cache moved aside)

    @property
    def ready(self) -> int:
        """Images whose features are in the store now."""
        return self.images - self.to_compute

    def as_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [s.as_dict() for s in self.skipped]
        d["findings"] = [f.as_dict() for f in self.findings]
        return d


@dataclass
class CacheJob:
    """Everything one caching run needs; ``run`` does the work."""

    data: str | Path | Dataset
    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"
    cache_dir: str | Path | None = None
    batch_size: int = DEFAULT_BATCH
    split: SplitSpec | None = None
    workers: int = field(default_factory=lambda: default_workers())
    retry_skipped: bool = False  # try images remembered as undecodable again
    mode: str = "head"  # "head": pooled taps | "finetune": the cut tensor
    engine: str = "local"  # "local": this process | "ray": a Ray cluster (engines/)
    ray_address: str | None = None  # None: RAY_ADDRESS, else a local Ray on this machine
    read_only: bool | None = None  # never write the cache (None: when it is not writable)
    # pixels -> features (features/extract.py); None: the fastest engine here (runtime.py)
    extractor: ExtractorFactory | None = None
    decoder: Decoder = load_rgb  # file -> pixels, in the local engine's decode threads

    def _engine(self, spec: BackboneSpec, store: FeatureStore):
        if self.engine == "ray":
            from app.core.features.engines.ray import RayEngine

            if self.decoder is not load_rgb or self.extractor is not None:
                raise SettingsError("the Ray engine decodes and extracts on its workers "
                                    "with the app's own decoder and extractor")

            return RayEngine(spec, self.weights, self.mode, store, self.batch_size,
                             self.ray_address)
        return LocalEngine(spec, self.weights, self.mode, store, self.batch_size, self.workers,
                           self.extractor, self.decoder)

    def run(self, progress: ProgressCallback = no_progress,
            cancel: CancelToken | None = None) -> tuple[CacheResult, Dataset]:
        cancel = cancel or CancelToken()
        start = time.perf_counter()
        spec = get_spec(self.backbone)
        retried = 0
        with FeatureStore(self.cache_dir or user_cache_dir(), read_only=self.read_only,
                          check=True) as store:
            ds = self.data
            if not isinstance(ds, Dataset) or self.retry_skipped:
                root = ds.root if isinstance(ds, Dataset) else ds
                split = ds.split_spec if isinstance(ds, Dataset) else self.split
                ds = scan_dataset(root, store, split, progress, cancel,
                                  retry_skipped=self.retry_skipped)
            if self.retry_skipped:
                digests = [r.digest for r in ds.images]
                retried = store.forget_bad(PREPROCESS_VERSION, digests)
                retried += store.forget_unusable(digests)
            ds.require_cacheable()
            first_path: dict[str, str] = {}
            for r in ds.images:
                first_path.setdefault(r.digest, r.path)
            with self._engine(spec, store) as engine:
                for _attempt in range(2):  # a second pass only when the precision guess was wrong
                    key = engine.model_key()
                    cached, damaged, unusable = _reusable(store, key, first_path)
                    todo = [d for d in first_path if d not in cached and d not in unusable]
                    computed: set[str] = set()
                    bad: dict[str, str] = dict(unusable)
                    if not todo:
                        break
                    try:
                        computed, failed = engine.compute(todo, first_path, progress, cancel)
                    except PrecisionChanged:
                        continue
                    bad.update(failed)
                    break
                device = engine.device
                engine_notes = list(getattr(engine, "notes", []))
            if bad:
                ds = ds.without(bad)
            disk = _disk_bytes(store, key, len(first_path))
            notes = list(store.notes) + engine_notes
        seconds = time.perf_counter() - start
        n_computed = sum(1 for r in ds.images if r.digest in computed)
        result = CacheResult(
            images=len(ds.images),
            computed=n_computed,
            reused=sum(1 for r in ds.images if r.digest in cached),
            skipped=ds.skipped,
            classes=ds.class_counts(),
            split=ds.split_counts(),
            seconds=round(seconds, 3),
            images_per_second=round((n_computed or len(ds.images)) / max(seconds, 1e-9), 2),
            device=device,
            backbone=spec.name,
            model_key=key,
            cancelled=cancel.cancelled,
            findings=ds.findings,
            to_compute=sum(1 for r in ds.images
                           if r.digest not in cached and r.digest not in computed),
            retried=retried,
            mode=self.mode,
            disk_bytes=disk,
            repaired=sum(1 for r in ds.images if r.digest in damaged and r.digest in computed),
            notes=notes,
        )
        return result, ds


def cache_features(data: str | Path | Dataset, backbone: str = DEFAULT_BACKBONE,
                   weights: str = "imagenet", cache_dir: str | Path | None = None,
                   progress: ProgressCallback = no_progress, cancel: CancelToken | None = None,
                   **options) -> CacheResult:
    """Cache every image of ``data``; see :class:`CacheJob` for the options."""
    job = CacheJob(data, backbone, weights, cache_dir, **options)
    return job.run(progress, cancel)[0]


def _reusable(store: FeatureStore, key: str, first_path: dict[str, str]
              ) -> tuple[set[str], set[str], dict[str, str]]:
    """What the store has for ``key`` and passes its cheap check (cached), what failed it and
    was removed to be computed again (damaged), and images this key cannot represent."""
    cached = store.cached_digests(key, first_path)
    damaged = store.verify_reusable(key, cached)
    cached -= damaged
    unusable = store.unusable_reasons(key, [d for d in first_path if d not in cached])
    return cached, damaged, unusable


def _disk_bytes(store: FeatureStore, key: str, images: int) -> int:
    """Shards on disk for a cut key; for pooled taps, their rows' share of the SQLite file."""
    spec = store.model_spec(key)
    if spec is None:
        return 0
    if CUT in spec["shapes"]:
        return store.disk_bytes(key)
    per_image = sum(2 * int(np.prod(s)) for s in spec["shapes"].values())
    return per_image * images


