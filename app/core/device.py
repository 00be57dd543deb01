"""Where the backbone runs: the GPU when there is one (memory growth on), else the CPU.

Backend-specific calls stay here; the rest of the core speaks Keras 3 only.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_configured: str | None = None


def configure() -> str:
    """Set up the accelerator once and return a description such as 'GPU: NVIDIA H100' or 'CPU'."""
    global _configured
    if _configured is not None:
        return _configured
    import keras

    backend = keras.backend.backend()
    name = None
    try:
        if backend == "tensorflow":
            import tensorflow as tf

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
    _configured = f"GPU: {name}" if name else "CPU"
    return _configured


def on_gpu() -> bool:
    return configure().startswith("GPU")


def is_out_of_memory(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(k in text for k in ("resourceexhausted", "resource_exhausted", "out of memory",
                                   "oom when allocating"))
