"""Caching on a Ray cluster: a thin adapter around the app's own decode function and extractor.

Ray Data reads the list of images still missing from the store, decodes them with
:func:`app.core.intake.imaging.load_rgb` in CPU tasks, and runs them through the same extractor
(:func:`app.core.features.runtime.best_extractor`: the pooled taps or the fine-tune cut, as an
ONNX graph kept in the cache folder where ONNX Runtime is installed, else the Keras model) in
an actor pool, one actor per GPU (or one on the CPU): the model loads once per actor, and says
where it computes in the manifest it returns. Each actor writes its results
as a Parquet shard keyed by content digest into ``ray-results/`` beside the store (written to a
temporary name, then renamed, so a shard is whole or absent) and returns only a small manifest;
this process merges each shard into the same store in one transaction, then deletes it, so the
window, ``train`` and the local engine reuse the rows. A job killed after a shard was written
but before it was merged finds it at the next start and merges it without computing those images
again. The model key's backend and precision are asked of a worker with the actor's resources,
not guessed here.

Workers read the images and weights files by the paths this process sees and write their shards
into the cache folder: on a cluster both need a shared filesystem mounted at the same place. Ray
is an optional extra (``pip install "bottleneck-studio[cluster]"``); nothing here imports it at
module load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.base.errors import UserError
from app.core.base.jobs import CancelToken, ProgressCallback, RateMeter
from app.core.features.backbones import BackboneSpec, get_spec
from app.core.features.extract import output_names, register, remember_failures
from app.core.features.keys import features_key, key_precision
from app.core.storage.store import CUT, TAPS, FeatureBatch, FeatureStore

RESULTS = "ray-results"
WRITTEN_BY = b"Bottleneck Studio ray shard"
STALE_PARTIAL_SECONDS = 3600.0  # a shard still being written is younger than this


class RayUnavailable(UserError):
    """Ray is not installed or the cluster cannot be reached; the message says what to do."""


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable('the Ray engine needs Ray: pip install "bottleneck-studio[cluster]"'
                             ) from exc
    return ray


_LOCAL = "a local Ray"
_connected: str | None = None  # what this process's Ray is, when this module started it


def _init_from_lasting_thread(ray, **kwargs) -> None:
    """``ray.init`` from a thread that lives as long as the process. A local Ray's own
    processes (GCS, raylet) get Linux's parent-death signal, which follows the *thread* that
    started them: started from a job's worker thread, they were killed when the job ended,
    and a minute later Ray's driver ended the whole process (the window, after one caching
    run on a local Ray)."""
    done, failure = threading.Event(), []

    def own() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            failure.append(exc)
            done.set()
            return
        done.set()
        threading.Event().wait()  # never ends: its end would take Ray's processes along

    threading.Thread(target=own, name="ray-owner", daemon=True).start()
    done.wait()
    if failure:
        raise failure[0]


TOKEN_HELP = ("put the cluster's token (`ray get-auth-token` on its head node) in "
              "~/.ray/auth_token, or set RAY_AUTH_TOKEN")


def ray_token() -> str | None:
    """Where the Ray token this process would use is (Ray's own order: RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), in words; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    for path in ([Path(named).expanduser()] if named else []) + [Path.home() / ".ray" /
                                                                 "auth_token"]:
        try:
            if path.is_file() and path.stat().st_size > 0:
                return str(path)
        except OSError:
            continue
    return None


def use_token_for(address: str | None) -> str | None:
    """For a cluster at ``address``: turn on Ray's token authentication when a token is
    found and the environment does not say otherwise (a cluster started with `ray start`
    asks for one since Ray 2.59, and a window user cannot set RAY_AUTH_MODE). Returns where
    the token is, or None."""
    found = ray_token() if address else None
    if found and not os.environ.get("RAY_AUTH_MODE"):
        os.environ["RAY_AUTH_MODE"] = "token"
    return found


@dataclass
class RaySession:
    """A connection to a Ray cluster, or a local Ray this process starts once and keeps for
    the next job: starting one takes seconds, and Ray cannot start a second local head in a
    process that shut its first one down (seen as a GCS start-up timeout). Ray stops it when
    the process exits."""

    address: str | None

    def __enter__(self) -> RaySession:
        global _connected
        ray = _import_ray()
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        want = address or _LOCAL
        if ray.is_initialized() and _connected not in (None, want):
            ray.shutdown()  # another cluster is asked for than the one this process is on
        if not ray.is_initialized():
            token = use_token_for(address)
            if not address:
                # Ray starts its workers 15 steps nicer than itself: on a busy machine a
                # local Ray's caching then waited behind every other program (beside `stress
                # --cpu 4`, the window's 19 s run got 2 s of CPU in its first 4.5 minutes),
                # while the local engine computes at the app's own priority. The user chose
                # this engine for this job: the same priority, unless they set Ray's own
                # variable.
                os.environ.setdefault("RAY_worker_niceness", "0")
            try:
                _init_from_lasting_thread(ray, address=address, include_dashboard=False,
                                          log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                hint = ""
                if address and token is None:
                    hint = (" (a cluster started with `ray start` uses token authentication "
                            f"since Ray 2.59, and no token was found: {TOKEN_HELP})")
                elif address:
                    hint = f" (with the Ray token from {token})"
                what = f"reach the Ray cluster at {address}" if address else "start a local Ray"
                raise RayUnavailable(f"cannot {what}: {exc}{hint}") from exc
            _connected = want
        return self

    def __exit__(self, *exc: object) -> None:
        pass  # kept for the next job (see the class's note)

    @staticmethod
    def gpus() -> int:
        return int(_import_ray().cluster_resources().get("GPU", 0))


def signature_on_worker(gpus: int) -> str:
    """Backend and precision as a worker with one actor's resources computes them."""
    ray = _import_ray()

    @ray.remote(num_gpus=1 if gpus else 0)
    def signature() -> str:
        from app.core.base import device

        device.configure()
        return device.compute_signature()

    return ray.get(signature.remote())


def decode_batch(batch: dict, size: tuple[int, int]) -> dict:
    """Ray task: the app's decode function on a batch of paths; failures become reasons."""
    from app.core.intake.imaging import ImageError, load_rgb

    n = len(batch["path"])
    pixels = np.zeros((n, size[1], size[0], 3), np.uint8)
    error = np.array([""] * n, dtype=object)
    transient = np.zeros(n, bool)
    for i, path in enumerate(batch["path"]):
        try:
            pixels[i] = load_rgb(str(path), size)
        except ImageError as exc:
            error[i], transient[i] = str(exc), exc.transient
    return {"digest": batch["digest"], "pixels": pixels, "error": error, "transient": transient}


def results_dir(store: FeatureStore, key: str) -> Path:
    """Where the actors write their Parquet shards for one model key."""
    return store.dir / RESULTS / hashlib.sha1(key.encode()).hexdigest()[:16]


def write_shard(folder: Path, key: str, names: tuple[str, ...], batch: dict) -> str:
    """One batch of results as a Parquet shard: digest, error, transient, and each output as
    raw float16 bytes per row (shapes in the schema's metadata). Returns the file name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"digest": pa.array([str(d) for d in batch["digest"]], pa.string()),
            "error": pa.array([str(e) for e in batch["error"]], pa.string()),
            "transient": pa.array(np.asarray(batch["transient"], bool))}
    for name in names:
        arr = np.ascontiguousarray(batch[name], np.float16)
        cols[name] = pa.array([row.tobytes() for row in arr], pa.binary())
    meta = {b"written_by": WRITTEN_BY, b"model_key": key.encode(),
            b"shapes": json.dumps({n: list(batch[n].shape[1:]) for n in names}).encode()}
    table = pa.table(cols).replace_schema_metadata(meta)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.parquet"
    tmp = folder / f".{name}.partial"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, folder / name)
    return name


def merge_shard(store: FeatureStore, key: str, path: Path, cut: bool, spec_name: str
                ) -> tuple[list[str], list[tuple[str, str, bool]]]:
    """Merge one shard this app wrote for ``key`` into the store (one transaction per kind),
    then delete it. Returns the digests stored and the failures (digest, reason, transient).
    A file that is not such a shard is left alone."""
    import pyarrow.parquet as pq


    try:
        table = pq.read_table(path)
    except (OSError, ValueError):  # not a Parquet file (pyarrow's errors derive from these)
        return [], []
    meta = table.schema.metadata or {}
    if meta.get(b"written_by") != WRITTEN_BY or meta.get(b"model_key") != key.encode():
        return [], []
    shapes = json.loads(meta[b"shapes"])
    names = output_names(cut)
    cols = table.to_pydict()
    ok = [not e for e in cols["error"]]
    good = [d for d, o in zip(cols["digest"], ok) if o]
    if good:
        arrays = {n: np.stack([np.frombuffer(b, np.float16).reshape(shapes[n])
                               for b, o in zip(cols[n], ok) if o]) for n in names}
        if store.model_spec(key) is None:
            register(store, key, get_spec(spec_name), shapes)
        if cut:
            store.put_arrays(key, good, arrays[CUT])
        else:
            store.put_features(key, FeatureBatch(good, *(arrays[t] for t in TAPS)))
    failures = [(d, e, t) for d, e, t, o in
                zip(cols["digest"], cols["error"], cols["transient"], ok) if not o]
    remember_failures(store, failures)
    path.unlink()
    return good, failures


def merge_leftovers(store: FeatureStore, key: str, cut: bool, spec_name: str
                    ) -> tuple[list[str], list[tuple[str, str, bool]]]:
    """Merge the shards in the results folder that nobody merged yet (a killed job's, or those
    actors finished after a cancel); drop partial shards a killed writer left long ago."""
    folder = results_dir(store, key)
    good: list[str] = []
    failures: list[tuple[str, str, bool]] = []
    if not folder.is_dir():
        return good, failures
    for path in sorted(folder.glob("*.parquet")):
        g, f = merge_shard(store, key, path, cut, spec_name)
        good += g
        failures += f
    for partial in folder.glob(".*.parquet.partial"):  # ours by name and place
        with contextlib.suppress(OSError):
            if time.time() - partial.stat().st_mtime > STALE_PARTIAL_SECONDS:
                partial.unlink()
    return good, failures


class ExtractActor:
    """Ray actor: builds the extractor once (in the precision the key names), then maps
    batches of pixels to features, written as one Parquet shard per batch; returns the
    manifest (digest, shard, error, transient)."""

    def __init__(self, backbone: str, weights: str, precision: str, cut: bool, key: str,
                 out_dir: str, cache_dir: str | None = None) -> None:
        from app.core.features.runtime import best_extractor

        self.extractor = best_extractor(get_spec(backbone), weights, precision, cut,
                                        lambda _: None, CancelToken(), cache_dir)
        self.names = self.extractor.names
        self.key, self.out_dir = key, Path(out_dir)

    def features(self, batch: dict) -> dict:
        ok = np.array([not e for e in batch["error"]], bool)
        out = {"digest": batch["digest"], "error": batch["error"],
               "transient": batch["transient"]}
        if ok.any():
            res = self.extractor.predict(batch["pixels"][ok])
        for k, name in enumerate(self.names):
            shape = self.extractor.shapes[name]
            arr = np.zeros((len(ok), *shape), np.float16)
            if ok.any():
                arr[ok] = np.asarray(res[k]).astype(np.float16)
            out[name] = arr
        return out

    def __call__(self, batch: dict) -> dict:
        out = self.features(batch)
        shard = write_shard(self.out_dir, self.key, self.names, out)
        n = len(out["digest"])
        where = getattr(self.extractor, "device", "") or "Keras"
        return {"digest": out["digest"], "shard": np.array([shard] * n),
                "error": out["error"], "transient": out["transient"],
                "device": np.array([where] * n)}


def compute(todo: list[str], paths: dict[str, str], backbone: str, weights: str, key: str,
            store: FeatureStore, batch_size: int, progress: ProgressCallback,
            cancel: CancelToken, gpus: int, cut: bool = False,
            devices: set[str] | None = None) -> tuple[set[str], dict[str, str]]:
    """Compute ``todo`` on the cluster and merge each returned batch into ``store``.

    Returns the digests computed and the failures (digest -> reason); failures of content
    are remembered as bad, transient ones are not, as the local engine does. ``devices``
    collects where the actors said they computed."""
    ray = _import_ray()

    spec = get_spec(backbone)
    folder = results_dir(store, key)
    ds = ray.data.from_items([{"digest": d, "path": paths[d]} for d in todo])
    ds = ds.map_batches(decode_batch, fn_kwargs={"size": spec.input_size},
                        batch_size=batch_size, batch_format="numpy")
    ds = ds.map_batches(ExtractActor, fn_constructor_kwargs={
        "backbone": backbone, "weights": weights, "precision": key_precision(key), "cut": cut,
        "key": key, "out_dir": str(folder), "cache_dir": str(store.dir)},
        batch_size=batch_size, batch_format="numpy", concurrency=max(1, gpus),
        num_gpus=1 if gpus else 0)
    meter = RateMeter(len(todo))
    computed: set[str] = set()
    bad: dict[str, str] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if cancel.cancelled:
            break
        if devices is not None and "device" in batch:
            devices.update(str(d) for d in batch["device"])
        for shard in dict.fromkeys(str(s) for s in batch["shard"]):
            good, failures = merge_shard(store, key, folder / shard, cut, spec.name)
            computed.update(good)
            bad.update((d, e) for d, e, _ in failures)
        progress(meter.report("cache", len(computed) + len(bad), f"{len(computed)} on Ray"))
    # after a cancel: what actors finished meanwhile is computed work, kept, not redone
    good, failures = merge_leftovers(store, key, cut, spec.name)
    computed.update(good)
    bad.update((d, e) for d, e, _ in failures)
    return computed, bad


class RayEngine:
    """The caching job's engine on a Ray cluster: the same decode function and extractor as
    the local engine, the rows merged into the same store. The model key carries the backend
    and precision a worker computes in, asked once per job."""

    def __init__(self, spec: BackboneSpec, weights: str, mode: str, store: FeatureStore,
                 batch_size: int, address: str | None) -> None:
        self.spec, self.weights, self.mode, self.store = spec, weights, mode, store
        self.cut = mode == "finetune"
        self.batch_size, self.address = batch_size, address
        self.key = self.device = ""
        self.gpus = 0

    def __enter__(self) -> RayEngine:
        self._session = RaySession(self.address).__enter__()
        self.gpus = self._session.gpus()
        signature = signature_on_worker(self.gpus)
        self.key = features_key(self.spec, self.weights, self.mode, signature)
        # shards a killed job wrote but did not merge count as computed already
        merge_leftovers(self.store, self.key, self.cut, self.spec.name)
        self._where = f"{self.gpus} GPU(s)" if self.gpus else "CPU"
        self._signature = signature
        self.device = f"Ray ({self._where}, {signature})"
        return self

    def __exit__(self, *exc: object) -> None:
        self._session.__exit__(*exc)

    def model_key(self) -> str:
        return self.key

    def compute(self, todo: list[str], paths: dict[str, str], progress: ProgressCallback,
                cancel: CancelToken) -> tuple[set[str], dict[str, str]]:
        devices: set[str] = set()
        try:
            return compute(todo, paths, self.spec.name, self.weights, self.key, self.store,
                           self.batch_size, progress, cancel, self.gpus, cut=self.cut,
                           devices=devices)
        finally:
            if devices:  # e.g. "Ray (CPU, tensorflow-float32; CPU, ONNX Runtime)"
                self.device = (f"Ray ({self._where}, {self._signature}; "
                               f"{', '.join(sorted(devices))})")
