"""Caching on a Ray cluster: a thin adapter around the app's own decode function and extractor.

Ray Data reads the list of images still missing from the store, decodes them with
:func:`app.core.imaging.load_rgb` in CPU tasks, and runs them through the same extractor
(:func:`app.core.backbones.build_extractor` or the fine-tune cut) in an actor pool, one actor
per GPU (or one on the CPU): the model loads once per actor. Results stream back to this
process batch by batch, keyed by content digest, and are merged into the same store in one
transaction each, so the window, ``train`` and the local engine reuse them, and a killed job
resumes with what was merged. The model key's backend and precision are asked of a worker
with the actor's resources, not guessed here.

Workers read the images and weights files by the paths this process sees: on a cluster they
need a shared filesystem mounted at the same place. Ray is an optional extra
(``pip install "bottleneck-studio[cluster]"``); nothing here imports it at module load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from app.core.backbones import get_spec
from app.core.jobs import CancelToken, ProgressCallback, RateMeter
from app.core.store import CUT, TAPS, FeatureBatch, FeatureStore


class RayUnavailable(Exception):
    """Ray is not installed or the cluster cannot be reached; the message says what to do."""


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable('the Ray engine needs Ray: pip install "bottleneck-studio[cluster]"'
                             ) from exc
    return ray


@dataclass
class RaySession:
    """A connection to a Ray cluster, or a local Ray this process started (and stops)."""

    address: str | None
    started_here: bool = False

    def __enter__(self) -> RaySession:
        ray = _import_ray()
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {exc}"
                                     ) from exc
            self.started_here = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started_here:
            _import_ray().shutdown()

    @staticmethod
    def gpus() -> int:
        return int(_import_ray().cluster_resources().get("GPU", 0))


def signature_on_worker(gpus: int) -> str:
    """Backend and precision as a worker with one actor's resources computes them."""
    ray = _import_ray()

    @ray.remote(num_gpus=1 if gpus else 0)
    def signature() -> str:
        from app.core import device

        device.configure()
        return device.compute_signature()

    return ray.get(signature.remote())


def decode_batch(batch: dict, size: tuple[int, int]) -> dict:
    """Ray task: the app's decode function on a batch of paths; failures become reasons."""
    from app.core.imaging import ImageError, load_rgb

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


class Extractor:
    """Ray actor: builds the extractor once (in the precision the key names), then maps
    batches of pixels to features."""

    def __init__(self, backbone: str, weights: str, precision: str, cut: bool) -> None:
        from app.core import device
        from app.core.caching import _Runner

        device.configure()
        self.model = _Runner._build(get_spec(backbone), weights, precision,
                                    lambda _: None, CancelToken(), cut)
        self.names = (CUT,) if cut else TAPS

    def __call__(self, batch: dict) -> dict:
        ok = np.array([not e for e in batch["error"]], bool)
        out = {"digest": batch["digest"], "error": batch["error"],
               "transient": batch["transient"]}
        if ok.any():
            res = self.model.predict_on_batch(batch["pixels"][ok].astype(np.float32))
            res = res if isinstance(res, (list, tuple)) else [res]
        for k, name in enumerate(self.names):
            shape = tuple(self.model.outputs[k].shape[1:])
            arr = np.zeros((len(ok), *shape), np.float16)
            if ok.any():
                arr[ok] = np.asarray(res[k]).astype(np.float16)
            out[name] = arr
        return out


def compute(todo: list[str], paths: dict[str, str], backbone: str, weights: str, key: str,
            store: FeatureStore, batch_size: int, progress: ProgressCallback,
            cancel: CancelToken, gpus: int, cut: bool = False
            ) -> tuple[set[str], dict[str, str]]:
    """Compute ``todo`` on the cluster and merge each returned batch into ``store``.

    Returns the digests computed and the failures (digest -> reason); failures of content
    are remembered as bad, transient ones are not, as the local engine does."""
    ray = _import_ray()
    from app.core.backbones import key_precision
    from app.core.imaging import PREPROCESS_VERSION

    spec = get_spec(backbone)
    ds = ray.data.from_items([{"digest": d, "path": paths[d]} for d in todo])
    ds = ds.map_batches(decode_batch, fn_kwargs={"size": spec.input_size},
                        batch_size=batch_size, batch_format="numpy")
    ds = ds.map_batches(Extractor, fn_constructor_kwargs={
        "backbone": backbone, "weights": weights, "precision": key_precision(key), "cut": cut},
        batch_size=batch_size, batch_format="numpy", concurrency=max(1, gpus),
        num_gpus=1 if gpus else 0)
    meter = RateMeter(len(todo))
    computed: set[str] = set()
    bad: dict[str, str] = {}
    registered = False
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if cancel.cancelled:
            break
        ok = np.array([not e for e in batch["error"]], bool)
        digests = [str(d) for d in batch["digest"]]
        good = [d for d, o in zip(digests, ok) if o]
        if not registered and good:
            shapes = {n: list(batch[n].shape[1:]) for n in ((CUT,) if cut else TAPS)}
            store.register_model(key, {"backbone": spec.name, "shapes": shapes,
                                       "image_size": spec.image_size,
                                       "prep": PREPROCESS_VERSION})
            registered = True
        if good:
            if cut:
                store.put_arrays(key, good, batch[CUT][ok])
            else:
                store.put_features(key, FeatureBatch(good, *(batch[t][ok] for t in TAPS)))
            computed.update(good)
        failures = [(d, str(e), bool(t)) for d, e, t, o in
                    zip(digests, batch["error"], batch["transient"], ok) if not o]
        permanent = [(d, e) for d, e, t in failures if not t]
        if permanent:
            store.mark_bad(PREPROCESS_VERSION, permanent)
        bad.update((d, e) for d, e, _ in failures)
        progress(meter.report("cache", len(computed) + len(bad), f"{len(computed)} on Ray"))
    return computed, bad
