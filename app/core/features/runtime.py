"""Where the frozen graph runs: ONNX Runtime when it is installed, else Keras/TensorFlow.

Every extractor of the app (the caching job's pooled taps and fine-tune cut, in this process
or on a Ray actor; the Label page's features; Predict) comes from :func:`best_extractor`.
With ONNX Runtime installed (the ``onnx`` extra; ``make run`` installs it) the frozen Keras
extractor is exported to ONNX once per :func:`graph_identity` (backbone, weights fingerprint,
outputs, input size, precision, Keras / tf2onnx / onnx versions) and kept in the cache
folder's ``onnx/``: written under a temporary name and renamed, checked against the Keras
model on a few images when made (the largest difference is written beside it, in its
``.json``), and checked against its digest whenever it is loaded (a damaged or truncated file
is made again, with a note). It runs on the first execution provider the machine offers
(:data:`ACCELERATORS`), else on the CPU. Whatever fails on the way (onnxruntime missing or
broken, a conversion or its check, a provider at session creation or at its first run) falls
back to the Keras extractor, with a one-line note; nothing here is ever a reason to fail a
caching run.

Only float32 graphs: Keras exports float32 models only, so the mixed-float16 key of a GPU
(``app.core.base.device.compute_precision``) keeps computing with Keras/TensorFlow there.
``BOTTLENECK_STUDIO_RUNTIME=keras`` makes every extractor a Keras one (a user's way out, and
the benchmarks' "today" rows).

Measured (docs/benchmarks.md): on a 2-core EPYC the taps differ from Keras' by at most
3.5e-5, about 1/60 of float16's rounding of the same taps, so the engine is not part of the
model key (keys.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from app.core.base.jobs import CancelToken, Progress, ProgressCallback, dead_leftovers
from app.core.features.backbones import AUX_POOL, BackboneSpec, weights_fingerprint
from app.core.features.extract import (
    Extractor,
    PrecisionChanged,
    keras_extractor,
    output_names,
)

RUNTIME_ENV = "BOTTLENECK_STUDIO_RUNTIME"  # "keras": never ONNX Runtime
GRAPHS = "onnx"  # the graphs' folder in the cache folder
GRAPH_FORMAT = 1  # how this module makes a graph; a change makes every graph again
WRITTEN_BY = "Bottleneck Studio ONNX graph"
CHECK_IMAGES = 4
# Largest difference allowed between a new graph and its Keras model on the check images:
# far above the measured 3.5e-5 (real weights) and 1e-7 (tiny backbone), far below the
# float16 rounding the store applies to the taps (~2e-3 at 4-8).
CHECK_TOLERANCE = 1e-3
# Execution providers in the order of preference; the CPU's is the last resort of each
# session. CUDA before TensorRT: TensorRT builds its engines on the first run (minutes).
ACCELERATORS = (("CUDAExecutionProvider", "CUDA"), ("TensorrtExecutionProvider", "TensorRT"),
                ("DmlExecutionProvider", "DirectML"), ("CoreMLExecutionProvider", "CoreML"),
                ("OpenVINOExecutionProvider", "OpenVINO"))
CPU_PROVIDER = "CPUExecutionProvider"
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.partial(\.json)?$")


class GraphUnusable(Exception):
    """Why the ONNX graph cannot be used this time (said as a note; Keras computes)."""


def onnx_runtime():
    """The ``onnxruntime`` module, or None when it is not installed or does not load."""
    try:
        import onnxruntime
    except (ImportError, OSError):
        return None
    return onnxruntime


def wanted() -> bool:
    """Whether extractors should try ONNX Runtime (not turned off by ``RUNTIME_ENV``)."""
    return os.environ.get(RUNTIME_ENV, "").strip().lower() not in ("keras", "tensorflow")


def graph_identity(spec: BackboneSpec, fingerprint: str, precision: str, cut: bool) -> dict:
    """Everything that makes two graphs different functions: a graph is reused only for the
    same identity."""
    from app.core.base.device import keras_backend_name
    from app.core.features.cuts import CUTS

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "none"

    outputs = (f"cut:{CUTS[spec.name].cut}" if cut
               else f"taps:{','.join(spec.aux_layers)}:pool{AUX_POOL[0]}/{AUX_POOL[1]}")
    return {"format": GRAPH_FORMAT, "backbone": spec.name, "weights": fingerprint,
            "outputs": outputs, "image_size": spec.image_size, "scaling": spec.scaling,
            "precision": precision, "keras_backend": keras_backend_name(),
            "keras": version("keras"), "tf2onnx": version("tf2onnx"), "onnx": version("onnx")}


def graph_name(identity: dict) -> str:
    digest = hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=8)
    kind = "cut" if identity["outputs"].startswith("cut:") else "taps"
    return f"{identity['backbone']}-{kind}-{digest.hexdigest()}"


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_pixels(size: int, n: int = CHECK_IMAGES) -> np.ndarray:
    """The images a new graph is compared with its Keras model on: noise, a gradient, flat
    grey, each decoded-like (uint8 RGB), the same every time."""
    rng = np.random.default_rng(28)
    out = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    if n > 1:
        out[1] = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                           255 - ramp[None, :].repeat(size, 0)], -1).astype(np.uint8)
    if n > 2:
        out[2] = 128
    return out


class OnnxExtractor:
    """A graph in an ONNX Runtime session as an :class:`~app.core.features.extract.Extractor`.

    Its first run is its proof: one that raises (a provider that starts but cannot run the
    graph) hands this and every later batch to the Keras extractor ``fallback`` makes, and
    says so in ``notes``; out of memory is left to the engine (it halves the batch)."""

    def __init__(self, session, names: tuple[str, ...], shapes: dict[str, tuple[int, ...]],
                 device: str, fallback: Callable[[], Extractor], notes: list[str]) -> None:
        self.session, self.names, self.shapes = session, names, shapes
        self.device, self.notes = device, notes
        self._fallback = fallback
        self._input = session.get_inputs()[0]
        self._outputs = [o.name for o in session.get_outputs()]
        self._uint8 = self._input.type == "tensor(uint8)"
        self._inner: Extractor | None = None
        self._proven = False

    def predict(self, pixels: np.ndarray) -> list[np.ndarray]:
        if self._inner is not None:
            return self._inner.predict(pixels)
        if self._proven:
            return self._run(pixels)
        try:
            out = self._run(pixels)
        except Exception as exc:
            from app.core.base.device import is_out_of_memory

            if is_out_of_memory(exc):
                raise
            self._inner = self._fallback()
            self.device = getattr(self._inner, "device", self.device)
            self.notes.append(f"ONNX Runtime failed at its first run ({_first_line(exc)}): "
                              "computing with Keras instead")
            return self._inner.predict(pixels)
        self._proven = True
        return out

    def _run(self, pixels: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(pixels, np.uint8 if self._uint8 else np.float32)
        return self.session.run(self._outputs, {self._input.name: x})


def best_extractor(spec: BackboneSpec, weights: str, precision: str, cut: bool,
                   progress: ProgressCallback, cancel: CancelToken,
                   cache_dir: str | Path | None = None, *, fingerprint: str | None = None,
                   keras_build: Callable[[], Extractor] | None = None) -> Extractor:
    """The extractor of ``spec`` with ``weights`` on the fastest engine that works here (an
    :data:`~app.core.features.extract.ExtractorFactory` once ``cache_dir`` is bound).

    ``keras_build`` makes the Keras extractor (default :func:`keras_extractor`), called only
    when a graph must be made or ONNX Runtime fails; ``fingerprint`` stands for the weights
    in the graph's identity (default: ``weights``' own), so that a caller holding the
    backbone itself (a model folder) shares the cache's graph. With the graph already made
    and a CPU precision that cannot change, neither TensorFlow nor Keras is imported."""
    made: list[Extractor] = []

    def keras_once() -> Extractor:
        if not made:
            made.append(keras_build() if keras_build is not None else keras_extractor(
                spec, weights, precision, cut, progress, cancel))
        return made[0]

    ort = onnx_runtime() if wanted() else None
    if ort is None or precision != "float32":
        return keras_once()
    from app.core.base import device as dev

    if not dev.precision_settled():  # the guess may be wrong: ask the device (TensorFlow)
        dev.configure()
        if dev.compute_precision() != precision:
            raise PrecisionChanged()
    notes: list[str] = []
    try:
        identity = graph_identity(spec, fingerprint or weights_fingerprint(spec, weights),
                                  precision, cut)
        with _graph(cache_dir, identity, keras_once, output_names(cut), notes,
                    progress) as path:
            session, provider = _session(ort, path, notes)
    except GraphUnusable as exc:
        extractor = keras_once()
        notes.append(f"{exc}: computing with Keras")
        extractor.notes = [*getattr(extractor, "notes", []), *notes]
        return extractor
    outputs = session.get_outputs()
    names = output_names(cut)
    if len(outputs) != len(names):  # a graph of ours always has them: treat as damaged
        extractor = keras_once()
        extractor.notes = [f"the ONNX graph has {len(outputs)} outputs, not {len(names)}: "
                           "computing with Keras"]
        return extractor
    shapes = {n: tuple(int(d) for d in o.shape[1:]) for n, o in zip(names, outputs)}
    return OnnxExtractor(session, names, shapes, describe(provider), keras_once, notes)


def describe(provider: str) -> str:
    """Where a session runs, in the words the Features page and --self-test show."""
    label = dict(ACCELERATORS).get(provider)
    if label is None:
        return "CPU, ONNX Runtime"
    gpu = ""
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        from app.core.base.device import configure

        where = configure()
        gpu = where[len("GPU: "):] if where.startswith("GPU: ") else ""
    return f"ONNX Runtime, {label}" + (f": {gpu}" if gpu else "")


def _session(ort, path: Path, notes: list[str]):
    """A session on the best provider offered, else on the CPU; (session, provider)."""
    available = ort.get_available_providers()
    best = next((p for p, _ in ACCELERATORS if p in available), None)
    tries = ([[best, CPU_PROVIDER]] if best else []) + [[CPU_PROVIDER]]
    for providers in tries:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: a failed provider is our note
        # idle threads sleep instead of spinning: the caching job's decode threads share
        # the cores (2 cores, 680 photos, MobileNet: 117 and 122 img/s against 112 and 119
        # spinning, interleaved; pure compute unchanged)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # any failure of a provider: the next one is tried
            label = dict(ACCELERATORS).get(providers[0], "the CPU")
            notes.append(f"ONNX Runtime could not start on {label} ({_first_line(exc)})")
            continue
        used = session.get_providers()
        return session, (used[0] if used else CPU_PROVIDER)
    raise GraphUnusable("ONNX Runtime could not start a session")


@contextlib.contextmanager
def _graph(cache_dir: str | Path | None, identity: dict, keras_once: Callable[[], Extractor],
           names: tuple[str, ...], notes: list[str], progress: ProgressCallback
           ) -> Iterator[Path]:
    """The graph file of ``identity``: the cache folder's own when it passes its checks, else
    made now and kept there; in a temporary folder for this run only where the cache
    folder cannot be written."""
    from app.core.base.paths import user_cache_dir

    folder = Path(cache_dir or user_cache_dir()) / GRAPHS
    name = graph_name(identity)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        state, _ = graph_state(folder, name, identity)
        if state == "ok":
            yield folder / f"{name}.onnx"
            return
        notes.append(f"the cache folder cannot be written: the ONNX graph of "
                     f"{identity['backbone']} is made for this run only")
        scratch = Path(tempfile.mkdtemp(prefix="bottleneck-onnx-"))
        try:
            _make(scratch, name, identity, keras_once, names, progress)
            yield scratch / f"{name}.onnx"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    with _locked(folder):
        _remove_dead_partials(folder)
        state, why = graph_state(folder, name, identity)
        if state == "foreign":
            raise GraphUnusable(f"{folder / name}.onnx is not a graph this app wrote ({why}); "
                                "it was left alone")
        if state == "damaged":
            notes.append(f"the ONNX graph of {identity['backbone']} in the cache was damaged "
                         f"({why}): it was made again")
        if state != "ok":
            _make(folder, name, identity, keras_once, names, progress)
    yield folder / f"{name}.onnx"


def graph_state(folder: Path, name: str, identity: dict) -> tuple[str, str]:
    """('ok' | 'absent' | 'damaged' | 'foreign', why) of the graph ``name`` in ``folder``.
    Its ``.json`` is renamed into place before the graph, so a graph without one was not
    written by this app (foreign: never replaced), while a ``.json`` of ours without its
    graph, or beside a graph of another digest or length, is a crash's or a disk's damage."""
    graph, meta_path = folder / f"{name}.onnx", folder / f"{name}.json"
    has_graph, has_meta = graph.exists() or graph.is_symlink(), meta_path.exists()
    if not has_graph and not has_meta:
        return "absent", ""
    try:
        meta = json.loads(meta_path.read_text("utf-8")) if has_meta else None
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("written_by") != WRITTEN_BY:
        return "foreign", "no description of ours beside it"
    if graph.is_symlink() or (has_graph and not graph.is_file()):
        return "foreign", "not a regular file"
    if meta.get("identity") != identity:
        return "damaged", "its description names another graph"
    if not has_graph:
        return "damaged", "the graph file is missing"
    try:
        size = graph.stat().st_size
        if size != meta.get("bytes"):
            return "damaged", f"{size} bytes instead of {meta.get('bytes')}"
        if file_digest(graph) != meta.get("blake2b"):
            return "damaged", "its digest does not match"
    except OSError as exc:
        return "damaged", f"cannot be read: {exc.strerror or exc}"
    return "ok", ""


def _make(folder: Path, name: str, identity: dict, keras_once: Callable[[], Extractor],
          names: tuple[str, ...], progress: ProgressCallback) -> dict:
    """Export the Keras extractor to ``folder/name.onnx``, check it against Keras on
    :func:`check_pixels`, describe it in ``name.json``. Raises :class:`GraphUnusable` (and
    keeps nothing) when the conversion or the check fails."""
    progress(Progress("convert", 0, 1, message=f"ONNX graph of {identity['backbone']} (once)"))
    start = time.perf_counter()
    extractor = keras_once()
    model = getattr(extractor, "model", None)
    if model is None:
        raise GraphUnusable("this extractor has no Keras model to convert")
    pixels = check_pixels(identity["image_size"])
    reference = extractor.predict(pixels)  # also "calls" the model, as Keras' export needs
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial = folder / f".{name}.{tag}.partial"
    partial_meta = folder / f".{name}.{tag}.partial.json"
    try:
        _export(model, partial)
        diffs = _compare(partial, pixels, reference, names)
        worst = max(diffs.values())
        if not worst <= CHECK_TOLERANCE:
            raise GraphUnusable(f"its ONNX graph differs from the Keras model by {worst:.2g} "
                                f"(more than {CHECK_TOLERANCE:g})")
        meta = {"written_by": WRITTEN_BY, "identity": identity, "file": f"{name}.onnx",
                "bytes": partial.stat().st_size, "blake2b": file_digest(partial),
                "check": {"images": len(pixels), "max_abs_diff": diffs,
                          "tolerance": CHECK_TOLERANCE,
                          "against": "the Keras extractor it was exported from, on "
                                     "synthetic images (noise, a gradient, flat grey)"},
                "made_in_seconds": round(time.perf_counter() - start, 2),
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        partial_meta.write_text(json.dumps(meta, indent=2), "utf-8")
        os.replace(partial_meta, folder / f"{name}.json")  # the description first: see
        os.replace(partial, folder / f"{name}.onnx")  # graph_state
    except GraphUnusable:
        raise
    except Exception as exc:  # a conversion that fails is a reason to use Keras, not to stop
        raise GraphUnusable(f"the ONNX conversion failed ({_first_line(exc)})") from exc
    finally:
        partial.unlink(missing_ok=True)
        partial_meta.unlink(missing_ok=True)
    progress(Progress("convert", 1, 1, message=f"ONNX graph of {identity['backbone']} made"))
    return meta


def _export(model, path: Path) -> None:
    """Keras' own ONNX export (tf2onnx underneath), its chatter kept quiet."""
    from app.core.base.device import quiet_native_stderr

    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with quiet_native_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf2onnx's numpy deprecation notes
            model.export(str(path), format="onnx", verbose=False)
    finally:
        logger.setLevel(level)
    if not path.is_file() or path.stat().st_size == 0:
        raise GraphUnusable("the ONNX conversion wrote no graph")


def _compare(path: Path, pixels: np.ndarray, reference: list[np.ndarray],
             names: tuple[str, ...]) -> dict[str, float]:
    """Per output, the largest absolute difference of the graph (ONNX Runtime on the CPU)
    from ``reference``."""
    ort = onnx_runtime()
    if ort is None:
        raise GraphUnusable("onnxruntime is not installed")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=[CPU_PROVIDER])
    got = session.run(None, {session.get_inputs()[0].name: pixels})
    if len(got) != len(names) or len(reference) != len(names):
        raise GraphUnusable(f"the ONNX graph has {len(got)} outputs, not {len(names)}")
    diffs = {}
    for name, a, b in zip(names, got, reference):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        if a.shape != b.shape:
            raise GraphUnusable(f"the ONNX graph's {name} is {a.shape}, Keras' {b.shape}")
        diffs[name] = float(np.abs(a - b).max()) if a.size else 0.0
    return diffs


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One process at a time makes or checks the graphs of ``folder`` (where the OS has
    advisory locks; elsewhere two may convert the same graph, and the renames keep it
    whole)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        handle = open(folder / ".lock", "a")  # noqa: SIM115 - held for the block
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_dead_partials(folder: Path) -> None:
    """Temporary files of ours whose writer died (by pid); nothing else."""
    for entry, _m in dead_leftovers(folder, _PARTIAL):
        if entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def graph_report(cache_dir: str | Path) -> list[dict[str, Any]]:
    """The descriptions of the graphs kept in ``cache_dir`` (what was checked, when)."""
    folder = Path(cache_dir) / GRAPHS
    out = []
    for path in sorted(folder.glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(path.read_text("utf-8"))
            if isinstance(meta, dict) and meta.get("written_by") == WRITTEN_BY:
                out.append(meta)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
