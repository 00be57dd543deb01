"""The caching job: every image through the frozen backbone once, features into the store.

Decoding runs in a thread pool a few batches ahead of the backbone (Pillow releases the GIL),
so the backbone rarely waits. Each batch is committed on its own: a killed or cancelled run
resumes where it stopped. With nothing to compute, Keras is never imported.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.core.base.jobs import CancelToken, Progress, ProgressCallback, RateMeter, no_progress
from app.core.base.paths import user_cache_dir
from app.core.features.backbones import DEFAULT_BACKBONE, BackboneSpec, get_spec, key_precision
from app.core.features.finetune import features_key
from app.core.intake.dataset import Dataset, Skipped, SplitSpec, scan_dataset
from app.core.intake.imaging import PREPROCESS_VERSION, ImageError, load_rgb
from app.core.storage.store import (
    CUT,
    TAPS,
    FeatureBatch,
    FeatureStore,
    NonFiniteFeatures,
    StoreError,
)

if TYPE_CHECKING:
    import keras

DEFAULT_BATCH = 32
PREFETCH_BATCHES = 3
WAIT_POLL_SECONDS = 0.5


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
    workers: int = field(default_factory=lambda: max(2, min(8, os.cpu_count() or 2)))
    retry_skipped: bool = False  # try images remembered as undecodable again
    mode: str = "head"  # "head": pooled taps | "finetune": the cut tensor
    engine: str = "local"  # "local": this process | "ray": a Ray cluster (ray_engine.py)
    ray_address: str | None = None  # None: RAY_ADDRESS, else a local Ray on this machine
    read_only: bool | None = None  # never write the cache (None: when it is not writable)

    def _on_ray(self, spec: BackboneSpec, store: FeatureStore, first_path: dict[str, str],
                progress: ProgressCallback, cancel: CancelToken):
        """The same job with the backbone on Ray: what the store has is filtered out first."""
        from app.core.features import ray_engine

        with ray_engine.RaySession(self.ray_address) as session:
            gpus = session.gpus()
            signature = ray_engine.signature_on_worker(gpus)
            key = features_key(spec, self.weights, self.mode, signature)
            # shards a killed job wrote but did not merge count as computed already
            ray_engine.merge_leftovers(store, key, self.mode == "finetune", spec.name)
            cached, damaged, unusable = _reusable(store, key, first_path)
            todo = [d for d in first_path if d not in cached and d not in unusable]
            computed, bad = set(), dict(unusable)
            if todo:
                computed, more_bad = ray_engine.compute(
                    todo, first_path, spec.name, self.weights, key, store, self.batch_size,
                    progress, cancel, gpus, cut=self.mode == "finetune")
                bad.update(more_bad)
        where = f"{gpus} GPU(s)" if gpus else "CPU"
        return key, cached, computed, bad, f"Ray ({where}, {signature})", damaged

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
            if self.engine == "ray":
                key, cached, computed, bad, device, damaged = self._on_ray(
                    spec, store, first_path, progress, cancel)
            for _attempt in range(2 if self.engine == "local" else 0):
                # a second pass only when the precision guess was wrong
                key = features_key(spec, self.weights, self.mode)
                cached, damaged, unusable = _reusable(store, key, first_path)
                todo = [d for d in first_path if d not in cached and d not in unusable]
                device = "none (nothing to compute)"
                computed: set[str] = set()
                bad: dict[str, str] = dict(unusable)
                if not todo:
                    break
                runner = _Runner(spec, self.weights, key, store, self.batch_size, self.workers,
                                 progress, cancel, cut=self.mode == "finetune")
                try:
                    computed, failed = runner.compute(todo, first_path, progress, cancel)
                    bad.update(failed)
                except _PrecisionChanged:
                    continue
                device = runner.device
                break
            if bad:
                ds = ds.without(bad)
            disk = _disk_bytes(store, key, len(first_path))
            notes = list(store.notes)
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


class _PrecisionChanged(Exception):
    """The device turned out to compute in another precision than the model key assumed."""


class _ClaimHeartbeat:
    """Keeps this process's claims fresh while it computes (its own connection, own thread),
    so a slow weights download or a long batch is never taken over by another process."""

    def __init__(self, store: FeatureStore, key: str) -> None:
        self.dir, self.owner, self.key = store.dir, store.owner, key
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="claim-heartbeat", daemon=True)

    def __enter__(self) -> _ClaimHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        from app.core.storage import store as store_module

        with FeatureStore(self.dir) as store:
            while not self._stop.wait(store_module.CLAIM_REFRESH_SECONDS):
                # a full disk is reported by the writer; stale claims are only taken over
                with contextlib.suppress(StoreError):
                    store.refresh_claims(self.key, self.owner)


class _Runner:
    """The backbone and the decode pool for one run.

    The backbone is built on first use, after the first batches were handed to the decode
    pool, so TensorFlow's import and the model build overlap the first decodes.
    """

    def __init__(self, spec: BackboneSpec, weights: str, key: str, store: FeatureStore,
                 batch_size: int, workers: int, progress: ProgressCallback,
                 cancel: CancelToken, cut: bool = False) -> None:
        self.spec, self.weights, self.key, self.store = spec, weights, key, store
        self.cut = cut  # the fine-tune cut (one tensor, into shards) instead of the taps
        self.batch_size = max(1, batch_size)
        self.workers = workers
        self.progress, self.cancel = progress, cancel
        self.device = "none (nothing could be decoded)"
        self._model: keras.Model | None = None

    @property
    def model(self) -> keras.Model:
        if self._model is None:
            from app.core.base import device as dev

            self.device = dev.configure()
            precision = key_precision(self.key)
            if dev.compute_precision() != precision:
                raise _PrecisionChanged()
            self._model = self._build(self.spec, self.weights, precision, self.progress,
                                      self.cancel, self.cut)
            names = (CUT,) if self.cut else TAPS
            shapes = {t: list(o.shape[1:]) for t, o in zip(names, self._model.outputs)}
            self.store.register_model(self.key, {
                "backbone": self.spec.name, "shapes": shapes,
                "image_size": self.spec.image_size, "prep": PREPROCESS_VERSION})
        return self._model

    @staticmethod
    def _build(spec: BackboneSpec, weights: str, precision: str, progress: ProgressCallback,
               cancel: CancelToken, cut: bool = False) -> keras.Model:
        import keras

        from app.core.features.backbones import build_extractor
        from app.core.features.finetune import build_cut_extractor

        build = build_cut_extractor if cut else build_extractor
        if precision == "float32":
            return build(spec, weights, progress=progress, cancel=cancel)
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(precision)
        try:
            return build(spec, weights, progress=progress, cancel=cancel)
        finally:
            keras.config.set_dtype_policy(previous)

    def compute(self, todo: list[str], paths: dict[str, str], progress: ProgressCallback,
                cancel: CancelToken) -> tuple[set[str], dict[str, str]]:
        """Compute ``todo``; digests another process is computing are waited for."""
        meter = RateMeter(len(todo))
        computed: set[str] = set()
        bad: dict[str, str] = {}
        remaining = todo
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool, \
                _ClaimHeartbeat(self.store, self.key):
            try:
                while remaining and not cancel.cancelled:
                    deferred = self._pass(remaining, paths, pool, meter, computed, bad,
                                          progress, cancel)
                    if not deferred:
                        break
                    progress(meter.report("cache", len(computed) + len(bad),
                                          f"waiting for another process ({len(deferred)} images)"))
                    time.sleep(WAIT_POLL_SECONDS)
                    done_elsewhere = self.store.cached_digests(self.key, deferred)
                    remaining = [d for d in deferred if d not in done_elsewhere]
            except BaseException:
                # the first error is the one to report: a full disk fails the cleanup too
                with contextlib.suppress(StoreError):
                    self.store.release_claims(self.key)
                raise
            self.store.release_claims(self.key)
        return computed, bad

    def _pass(self, todo: list[str], paths: dict[str, str], pool: ThreadPoolExecutor,
              meter: RateMeter, computed: set[str], bad: dict[str, str],
              progress: ProgressCallback, cancel: CancelToken) -> list[str]:
        size = self.spec.input_size
        deferred: list[str] = []
        inflight: deque[list[tuple[str, Future]]] = deque()
        next_start = 0

        def submit_next() -> None:
            nonlocal next_start
            while next_start < len(todo) and not cancel.cancelled:
                chunk = todo[next_start : next_start + self.batch_size]
                next_start += len(chunk)
                mine = self.store.claim(self.key, chunk)
                ours = set(mine)
                deferred.extend(d for d in chunk if d not in ours)
                if mine:
                    inflight.append([(d, pool.submit(load_rgb, paths[d], size)) for d in mine])
                    return

        for _ in range(PREFETCH_BATCHES):
            submit_next()
        while inflight:
            if cancel.cancelled:
                for chunk in inflight:
                    for _, fut in chunk:
                        fut.cancel()
                break
            chunk = inflight.popleft()
            submit_next()
            digests, arrays, failures = [], [], []
            for d, fut in chunk:
                try:
                    arrays.append(fut.result())
                    digests.append(d)
                except ImageError as exc:
                    failures.append((d, str(exc), exc.transient))
            permanent = [(d, reason) for d, reason, transient in failures if not transient]
            if permanent:  # only content that is really bad is remembered
                self.store.mark_bad(PREPROCESS_VERSION, permanent)
            bad.update((d, reason) for d, reason, _ in failures)
            if arrays:
                feats = self._predict(np.stack(arrays))
                try:  # the store checks every row is finite: the one place that does
                    self._put(digests, feats)
                except NonFiniteFeatures as exc:
                    digests, feats = self._drop_non_finite(digests, feats, exc.digests, bad)
                    if digests:
                        self._put(digests, feats)
                computed.update(digests)
            report: Progress = meter.report("cache", len(computed) + len(bad),
                                            f"{Path(paths[chunk[-1][0]]).name}")
            progress(report)
        return deferred

    def _put(self, digests: list[str], feats: list[np.ndarray]) -> None:
        if self.cut:
            self.store.put_arrays(self.key, digests, feats[0])
        else:
            self.store.put_features(self.key, FeatureBatch(digests, *feats))

    def _drop_non_finite(self, digests: list[str], feats: list[np.ndarray], lost: list[str],
                         bad: dict[str, str]) -> tuple[list[str], list[np.ndarray]]:
        """Report images whose features overflow float16 (inf) or are NaN as skipped, and
        remember them for this model key only: the same image through the same backbone gives
        the same numbers, while another backbone may do fine."""
        reason = (f"its features from the {self.spec.name} backbone are not finite numbers "
                  "(inf or NaN, e.g. values beyond float16's range): not cached")
        self.store.mark_unusable(self.key, [(d, reason) for d in lost])
        bad.update((d, reason) for d in lost)
        gone = set(lost)
        ok = np.array([d not in gone for d in digests], bool)
        return [d for d, o in zip(digests, ok) if o], [f[ok] for f in feats]

    def _predict(self, pixels: np.ndarray) -> list[np.ndarray]:
        """Run the backbone on a batch, halving the batch on GPU out-of-memory."""
        from app.core.base.device import is_out_of_memory

        outs: list[list[np.ndarray]] = []
        start = 0
        while start < len(pixels):
            part = pixels[start : start + self.batch_size]
            try:
                res = self._predict_padded(part)
            except Exception as exc:
                if not is_out_of_memory(exc) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                continue  # the same images again, in smaller batches
            if not outs:
                outs = [[] for _ in res]
            for o, r in zip(outs, res):
                o.append(r)
            start += len(part)
        with np.errstate(over="ignore"):  # beyond float16's range: inf, then reported
            return [np.concatenate(o).astype(np.float16) for o in outs]

    def _predict_padded(self, part: np.ndarray) -> list[np.ndarray]:
        # A fixed batch shape keeps one compiled graph for the whole run.
        n = len(part)
        x = np.zeros((self.batch_size, *part.shape[1:]), np.float32)
        x[:n] = part
        res = self.model.predict_on_batch(x)
        if not isinstance(res, (list, tuple)):
            res = [res]  # a one-output model (the cut extractor)
        return [np.asarray(r)[:n] for r in res]
