"""The local engine: decode in a thread pool a few batches ahead, the extractor in this
process, every batch committed to the store on its own (a killed or cancelled run resumes
where it stopped).

The extractor (by default :func:`app.core.features.runtime.best_extractor`: ONNX Runtime
where it is installed, its graph kept in the cache folder, else Keras) is built on first use,
after the first batches were handed to the decode pool, so its start overlaps the first
decodes. Digests another process claimed are waited for, and this process's claims are kept
fresh while it computes.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from app.core.base.jobs import CancelToken, Progress, ProgressCallback, RateMeter
from app.core.features.backbones import BackboneSpec
from app.core.features.extract import (
    Decoder,
    Extractor,
    ExtractorFactory,
    PrecisionChanged,
    register,
    remember_failures,
)
from app.core.features.keys import features_key, key_precision
from app.core.features.runtime import best_extractor
from app.core.intake.imaging import ImageError, load_rgb
from app.core.storage.store import FeatureBatch, FeatureStore, NonFiniteFeatures, StoreError

PREFETCH_BATCHES = 3
CLAIM_BATCHES = 4  # batches claimed in one transaction
WRITE_AHEAD_BATCHES = 2  # computed batches waiting for the writer, at most
WAIT_POLL_SECONDS = 0.5


__all__ = ["LocalEngine", "PrecisionChanged"]


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
        from app.core.storage.store import common as store_common

        with FeatureStore(self.dir) as store:
            while not self._stop.wait(store_common.CLAIM_REFRESH_SECONDS):
                # a full disk is reported by the writer; stale claims are only taken over
                with contextlib.suppress(StoreError):
                    store.refresh_claims(self.key, self.owner)


class _Writer:
    """The store's writes on their own thread and connection (SQLite releases the GIL), so the
    next batch decodes and computes while this one is written. Batches are written in the
    order given; ``close`` writes what was handed over (a cancel included: it is computed
    work), then re-raises the first error the thread met. ``computed`` and ``bad`` are the
    thread's own until ``close`` returns."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.computed: set[str] = set()
        self.bad: dict[str, str] = {}
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=WRITE_AHEAD_BATCHES)
        self._thread = threading.Thread(target=self._run, name="feature-writer", daemon=True)
        self._thread.start()

    def put(self, digests: list[str], feats: list[np.ndarray]) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self._queue.put((digests, feats), timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        store = None
        try:  # its own connection: SQLite's belong to the thread that opened them
            store = FeatureStore(self.engine.store.dir, owner=self.engine.store.owner)
        except BaseException as exc:
            self.error = exc
        checkpoints = store.background_checkpoints() if store is not None \
            else contextlib.nullcontext()
        ended = False  # the sentinel of close() was taken
        try:
            with checkpoints:  # the WAL is copied into the file beside this thread
                while True:
                    item = self._queue.get()
                    if item is None:
                        ended = True
                        break
                    if self.error is not None:
                        continue  # drain: the first error is the one reported
                    try:
                        self._write(store, *item)
                    except BaseException as exc:
                        self.error = exc
        except BaseException as exc:  # the checkpointer's own set-up or clean-up
            if self.error is None:
                self.error = exc
            while not ended and self._queue.get() is not None:  # put() never blocks on us
                pass
        finally:
            if store is not None:
                store.close()

    def _write(self, store: FeatureStore, digests: list[str], feats: list[np.ndarray]) -> None:
        try:  # the store checks every row is finite: the one place that does
            self.engine._put(store, digests, feats)
        except NonFiniteFeatures as exc:
            digests, feats = self.engine._drop_non_finite(store, digests, feats, exc.digests,
                                                          self.bad)
            if digests:
                self.engine._put(store, digests, feats)
        self.computed.update(digests)


class LocalEngine:
    """The extractor and the decode pool for one run in this process."""

    def __init__(self, spec: BackboneSpec, weights: str, mode: str, store: FeatureStore,
                 batch_size: int, workers: int,
                 extractor: ExtractorFactory | None = None,
                 decoder: Decoder = load_rgb) -> None:
        self.spec, self.weights, self.mode, self.store = spec, weights, mode, store
        self.cut = mode == "finetune"  # the fine-tune cut (one tensor, into shards)
        self.batch_size = max(1, batch_size)
        self.workers = workers
        # the default keeps its ONNX graphs in this store's folder
        self.factory = extractor or functools.partial(best_extractor, cache_dir=store.dir)
        self.decoder = decoder
        self._idle = "none (nothing to compute)"
        self._where = ""  # where an extractor that does not say so computes
        self.key = ""
        self._extractor: Extractor | None = None
        self._buffers: list[np.ndarray] = []  # the ring of batch buffers (_next_buffer)
        self._turn = 0
        self._progress: ProgressCallback = lambda _: None
        self._cancel = CancelToken()

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def model_key(self) -> str:
        """The key this process's rows get: its backend and precision as configured now."""
        self.key = features_key(self.spec, self.weights, self.mode)
        return self.key

    @property
    def device(self) -> str:
        """Where the features were computed ('CPU, ONNX Runtime', 'GPU: ..., Keras/TensorFlow');
        read after the run: an extractor that falls back says so."""
        if self._extractor is None:
            return self._idle
        return getattr(self._extractor, "device", "") or self._where

    @property
    def notes(self) -> list[str]:
        """One line each on why the fastest engine was not used (the extractor's notes)."""
        return list(getattr(self._extractor, "notes", None) or [])

    @property
    def extractor(self) -> Extractor:
        if self._extractor is None:
            precision = key_precision(self.key)
            made = self.factory(self.spec, self.weights, precision, self.cut, self._progress,
                                self._cancel)  # raises PrecisionChanged for a wrong guess
            if not getattr(made, "device", ""):
                from app.core.base import device as dev

                self._where = dev.configure()
            self._extractor = made
            register(self.store, self.key, self.spec, made.shapes)
        return self._extractor

    def compute(self, todo: list[str], paths: dict[str, str], progress: ProgressCallback,
                cancel: CancelToken) -> tuple[set[str], dict[str, str]]:
        """Compute ``todo`` under :meth:`model_key`'s key; digests another process is
        computing are waited for. Raises :class:`PrecisionChanged` before computing anything
        when the device computes in another precision than the key assumed. Returns the
        digests whose features are now stored, and the failures (digest -> reason)."""
        self._progress, self._cancel = progress, cancel
        if self._extractor is None:
            self._idle = "none (nothing could be decoded)"
        meter = RateMeter(len(todo))
        computed: set[str] = set()
        bad: dict[str, str] = {}
        remaining = todo
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool, \
                _ClaimHeartbeat(self.store, self.key):
            try:
                while remaining and not cancel.cancelled:
                    writer = _Writer(self)
                    try:
                        deferred = self._pass(remaining, paths, pool, meter, writer, bad,
                                              progress, cancel)
                    finally:
                        try:
                            writer.close()  # what was handed over is written, even on error
                        finally:
                            computed.update(writer.computed)
                            bad.update(writer.bad)
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
              meter: RateMeter, writer: _Writer, bad: dict[str, str],
              progress: ProgressCallback, cancel: CancelToken) -> list[str]:
        """One pass over ``todo``: claim a batch, decode it in the pool (a few batches ahead),
        compute it here, hand it to the writer. Returns the digests another process holds."""
        size = self.spec.input_size
        deferred: list[str] = []
        inflight: deque[tuple[list[str], np.ndarray, list[Future]]] = deque()
        next_start = 0
        claimed: deque[str] = deque()  # claimed, not submitted yet
        handed = 0  # images computed and handed to the writer

        def submit_next() -> None:
            nonlocal next_start
            while not claimed and next_start < len(todo) and not cancel.cancelled:
                # claims are taken a few batches at a time: one transaction, not one a batch
                chunk = todo[next_start : next_start + CLAIM_BATCHES * self.batch_size]
                next_start += len(chunk)
                mine = self.store.claim(self.key, chunk)
                ours = set(mine)
                deferred.extend(d for d in chunk if d not in ours)
                claimed.extend(mine)
            if claimed and not cancel.cancelled:
                batch = [claimed.popleft() for _ in range(min(self.batch_size, len(claimed)))]
                inflight.append(self._submit_batch(pool, batch, paths, size))

        for _ in range(PREFETCH_BATCHES):
            submit_next()
        while inflight:
            if cancel.cancelled:
                for _, _, parts in inflight:
                    for fut in parts:
                        fut.cancel()
                break
            batch, pixels, parts = inflight.popleft()
            submit_next()
            failures: list[tuple[str, str, bool]] = []
            ok = np.ones(len(batch), bool)
            for part in parts:
                for i, exc in part.result():
                    ok[i] = False
                    failures.append((batch[i], str(exc), exc.transient))
            remember_failures(self.store, failures)
            bad.update((d, reason) for d, reason, _ in failures)
            digests = batch if ok.all() else [d for d, o in zip(batch, ok) if o]
            if digests:
                writer.put(digests, self._predict(pixels if ok.all() else pixels[ok]))
                handed += len(digests)
            report: Progress = meter.report("cache", handed + len(bad),
                                            f"{Path(paths[batch[-1]]).name}")
            progress(report)
        return deferred

    def _submit_batch(self, pool: ThreadPoolExecutor, batch: list[str], paths: dict[str, str],
                      size: tuple[int, int]) -> tuple[list[str], np.ndarray, list[Future]]:
        """Hand ``batch`` to the decode pool: one task per worker, each decoding its share of
        the photos straight into the batch's buffer (no copy in this thread, a few futures a
        batch instead of one a photo). Returns the batch, its buffer and the tasks; each task
        returns its failures as (index in the batch, ImageError)."""
        pixels = self._next_buffer(len(batch), size)
        parts = min(self.workers, len(batch))
        bounds = [len(batch) * k // parts for k in range(parts + 1)]
        futures = [pool.submit(self._decode_into, pixels, start,
                               [paths[d] for d in batch[start:stop]], size)
                   for start, stop in zip(bounds, bounds[1:]) if stop > start]
        return batch, pixels, futures

    def _decode_into(self, pixels: np.ndarray, start: int, files: list[str],
                     size: tuple[int, int]) -> list[tuple[int, ImageError]]:
        failures = []
        for i, path in enumerate(files, start):
            try:
                pixels[i] = self.decoder(path, size)
            except ImageError as exc:
                failures.append((i, exc))
        return failures

    def _next_buffer(self, n: int, size: tuple[int, int]) -> np.ndarray:
        """A batch's pixels: the next of a ring of uint8 buffers reused from batch to batch
        (fresh memory costs a page fault per 4 KB: more than the decode's copy). One more
        buffer than batches in flight, so the batch being computed is never written to; and
        safe to reuse: the extractor returns new arrays, only those go on to the writer."""
        shape = (max(n, self.batch_size), size[1], size[0], 3)
        if not self._buffers or self._buffers[0].shape != shape:
            self._buffers = [np.zeros(shape, np.uint8) for _ in range(PREFETCH_BATCHES + 1)]
            self._turn = 0
        self._turn = (self._turn + 1) % len(self._buffers)
        return self._buffers[self._turn][:n]

    def _put(self, store: FeatureStore, digests: list[str], feats: list[np.ndarray]) -> None:
        if self.cut:
            store.put_arrays(self.key, digests, feats[0])
        else:
            store.put_features(self.key, FeatureBatch(digests, *feats))

    def _drop_non_finite(self, store: FeatureStore, digests: list[str], feats: list[np.ndarray],
                         lost: list[str], bad: dict[str, str]
                         ) -> tuple[list[str], list[np.ndarray]]:
        """Report images whose features overflow float16 (inf) or are NaN as skipped, and
        remember them for this model key only: the same image through the same backbone gives
        the same numbers, while another backbone may do fine."""
        reason = (f"its features from the {self.spec.name} backbone are not finite numbers "
                  "(inf or NaN, e.g. values beyond float16's range): not cached")
        store.mark_unusable(self.key, [(d, reason) for d in lost])
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
            return [(o[0] if len(o) == 1 else np.concatenate(o)).astype(np.float16, copy=False)
                    for o in outs]

    def _predict_padded(self, part: np.ndarray) -> list[np.ndarray]:
        # A fixed batch shape keeps one compiled graph for the whole run.
        n = len(part)
        if n < self.batch_size:
            x = np.zeros((self.batch_size, *part.shape[1:]), part.dtype)
            x[:n] = part
            part = x
        return [r[:n] for r in self.extractor.predict(part)]
