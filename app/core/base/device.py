"""Where the backbone runs: the GPU when there is one (memory growth on), else the CPU.

Backend-specific calls stay here; the rest of the core speaks Keras 3 only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from app.core.base.errors import SettingsError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PRECISION_ENV = "BOTTLENECK_STUDIO_PRECISION"
PRECISIONS = ("float32", "mixed_float16")

_configured: str | None = None
_lock = threading.Lock()


def keras_backend_name() -> str:
    """The backend Keras will use, read the way Keras reads it, without importing Keras."""
    name = os.environ.get("KERAS_BACKEND")
    if not name:
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        try:
            name = json.loads((Path(home) / "keras.json").read_text()).get("backend")
        except (OSError, ValueError, AttributeError):
            name = None
    return name or "tensorflow"


def compute_precision() -> str:
    """The dtype policy the backbone computes in: mixed float16 on a GPU, float32 on a CPU.

    ``BOTTLENECK_STUDIO_PRECISION`` forces one. Before the device is configured this is a
    cheap guess (an NVIDIA device node present), so that a warm run never imports TensorFlow;
    once :func:`configure` ran it is the truth, and caching re-keys itself if the guess was
    wrong.
    """
    forced = os.environ.get(PRECISION_ENV, "").strip()
    if forced:
        if forced not in PRECISIONS:
            raise SettingsError(f"{PRECISION_ENV} must be one of {', '.join(PRECISIONS)}, "
                             f"not {forced!r}")
        return forced
    if _configured is not None:
        return "mixed_float16" if _configured.startswith("GPU") else "float32"
    return "mixed_float16" if os.path.exists("/dev/nvidia0") else "float32"


def precision_settled() -> bool:
    """Whether :func:`compute_precision` already says the truth without :func:`configure`
    (forced, configured, or no NVIDIA device to guess from): then nothing needs TensorFlow
    imported to know how features are computed."""
    return (bool(os.environ.get(PRECISION_ENV, "").strip()) or _configured is not None
            or not os.path.exists("/dev/nvidia0"))


def compute_signature() -> str:
    """What besides the weights changes the numbers a backbone gives: backend and precision."""
    return f"{keras_backend_name()}-{compute_precision()}"


# What TensorFlow's native code prints on stderr on a machine without CUDA, at import and at
# device discovery; a CPU user reads it as a fault. Logged lines that match are dropped.
_NATIVE_NOISE = (
    "cudart_stub.cc", "cuda_platform.cc", "failed call to cuInit", "cuda_executor.cc",
    "All log messages before absl::InitializeLog()", "Unable to register cu",
    "computation_placer.cc", "oneDNN custom operations are on", "TF-TRT Warning",
    "cpu_feature_guard.cc", "This TensorFlow binary is optimized",
    "To enable the following instructions", "gpu_device.cc", "Skipping registering GPU",
)
dropped_native_lines: list[str] = []


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Run a block with file descriptor 2 captured; replay every line but the CUDA noise.

    Native libraries write to the descriptor, not to ``sys.stderr``, so only a descriptor
    swap can filter them. The app's own lines written meanwhile come out afterwards.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            keep = []
            for line in tmp.read().decode("utf-8", "replace").splitlines(keepends=True):
                if any(n in line for n in _NATIVE_NOISE):
                    dropped_native_lines.append(line.rstrip("\n"))
                else:
                    keep.append(line)
            if keep:
                sys.stderr.write("".join(keep))
                sys.stderr.flush()


def configure() -> str:
    """Import Keras and set up the accelerator once; a description such as 'GPU: NVIDIA H100'
    or 'CPU'. Every core path that needs Keras calls this first, so TensorFlow's native CUDA
    noise never reaches stderr, while a real GPU is still found and named."""
    global _configured
    if _configured is not None:
        return _configured
    with _lock, quiet_native_stderr():
        if _configured is None:
            _configured = _discover()
    return _configured


def _discover() -> str:
    import keras

    backend = keras.backend.backend()
    name = None
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            tf.get_logger().setLevel("ERROR")  # retracing notes are for developers, not users
            gpus = tf.config.list_physical_devices("GPU")
            for gpu in gpus:
                try:
                    tf.config.experimental.set_memory_growth(gpu, True)
                except RuntimeError:
                    pass  # already initialised: growth is then whatever was set first
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                name = details.get("device_name", gpus[0].name)
        elif backend == "jax":
            import jax

            devs = [d for d in jax.devices() if d.platform == "gpu"]
            if devs:
                name = devs[0].device_kind
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                name = torch.cuda.get_device_name(0)
    except Exception:  # a broken driver must not stop the app: fall back to the CPU
        name = None
    return f"GPU: {name}" if name else "CPU"


def gpu_package() -> str:
    """What to install for the GPU, said for how this app was installed."""
    if getattr(sys, "frozen", False):
        return "install the bottleneck-studio-gpu package (TensorFlow with its CUDA runtime)"
    return GPU_PACKAGE


GPU_PACKAGE = 'pip install "bottleneck-studio[gpu]" (TensorFlow with its CUDA libraries)'
# The CUDA runtime TensorFlow's pip wheel finds beside itself (its RUNPATH:
# $ORIGIN/../nvidia/<name>/lib), with the function that says each library's version
CUDA_LIBRARIES = (("CUDA runtime", "cuda_runtime", "libcudart.so.12", "cudaRuntimeGetVersion"),
                  ("cuDNN", "cudnn", "libcudnn.so.9", "cudnnGetVersion"))


def cuda_runtime(site: Path | None = None) -> tuple[list[str], list[str]]:
    """The CUDA libraries beside the framework (``site``: the folder holding ``tensorflow/``
    and ``nvidia/``; default: where tensorflow is): what loads, with its version ("CUDA
    runtime 12.9"), and what is missing. Needs no driver and no GPU: the frozen GPU build's
    self-test shows its bundled runtime loads on any machine."""
    import ctypes

    if site is None:
        spec = importlib.util.find_spec("tensorflow")
        if spec is None or not spec.submodule_search_locations:
            return [], [name for name, *_ in CUDA_LIBRARIES]
        site = Path(next(iter(spec.submodule_search_locations))).parent
    found, missing = [], []
    for name, folder, lib, getter in CUDA_LIBRARIES:
        path = site / "nvidia" / folder / "lib" / lib
        try:
            handle = ctypes.CDLL(str(path))
        except OSError:
            missing.append(name)
            continue
        version = ""
        try:
            if getter == "cudaRuntimeGetVersion":
                out = ctypes.c_int(0)
                if handle.cudaRuntimeGetVersion(ctypes.byref(out)) == 0:
                    version = f" {out.value // 1000}.{out.value % 1000 // 10}"
            else:
                handle.cudnnGetVersion.restype = ctypes.c_size_t
                v = int(handle.cudnnGetVersion())
                version = f" {v // 10000}.{v % 10000 // 100}" if v >= 10000 else f" {v}"
        except (AttributeError, OSError):
            pass
        found.append(name + version)
    return found, missing


def no_gpu_reason(backend: str, cuda_build: bool | None, driver: bool,
                  runtime_missing: bool) -> str:
    """Why the backbone runs on the CPU, in words a user can act on (empty when no cause is
    known): ``cuda_build`` whether the framework was built with CUDA (None: unknown),
    ``driver`` whether an NVIDIA driver is present, ``runtime_missing`` whether the
    framework said it could not load CUDA's libraries."""
    if not driver:
        return "no NVIDIA driver found"
    if cuda_build is False:
        return f"this is the CPU build of {backend}; for the GPU: {gpu_package()}"
    if runtime_missing:
        return f"the CUDA runtime libraries were not found ({gpu_package()} brings them)"
    return f"{backend} found no usable GPU"


def why_cpu() -> str:
    """:func:`no_gpu_reason` for this process, once :func:`configure` chose the CPU."""
    if on_gpu():
        return ""
    backend = keras_backend_name()
    driver = os.path.exists("/proc/driver/nvidia/version") or _loads("libcuda.so.1") \
        or _loads("nvcuda.dll")
    cuda_build = None
    if backend == "tensorflow":
        try:
            import tensorflow as tf

            cuda_build = bool(tf.sysconfig.get_build_info().get("is_cuda_build", False))
        except Exception:
            cuda_build = None
    runtime = any("Cannot dlopen some GPU libraries" in line or "Could not load dynamic "
                  "library" in line or "Could not find cuda drivers" in line
                  for line in dropped_native_lines)
    if cuda_build and driver and not runtime:
        runtime = bool(cuda_runtime()[1])  # the wheel's own libraries beside it are missing
    return no_gpu_reason(backend, cuda_build, driver, runtime)


def cuda_summary() -> str:
    """One line on the CUDA libraries beside TensorFlow, for --self-test: those that load
    with their versions, those missing; "" when this TensorFlow is not a CUDA build."""
    try:
        import tensorflow as tf

        if not tf.sysconfig.get_build_info().get("is_cuda_build", False):
            return ""
    except Exception:
        return ""
    found, missing = cuda_runtime()
    parts = [", ".join(found)] if found else []
    if missing:
        parts.append("not found: " + ", ".join(missing))
    return "; ".join(parts)


def _loads(name: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(name)
        return True
    except OSError:
        return False


def described() -> str:
    """Where the backbone runs, with the reason when it is the CPU: 'GPU: NVIDIA H100',
    'CPU (no NVIDIA driver found)'."""
    where = configure()
    reason = why_cpu()
    return f"{where} ({reason})" if reason else where


def on_gpu() -> bool:
    return configure().startswith("GPU")


def is_out_of_memory(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(k in text for k in ("resourceexhausted", "resource_exhausted", "out of memory",
                                   "oom when allocating"))
