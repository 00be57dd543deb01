"""Why the backbone runs on the CPU, in words a user can act on: no driver, a CPU build of
the framework, CUDA's libraries missing; and on this machine (no NVIDIA driver) the reason
the window and --self-test print."""

from __future__ import annotations

import os

from app.core.base.device import GPU_PACKAGE, configure, no_gpu_reason, why_cpu


def test_each_cause_is_named_with_what_to_do():
    assert no_gpu_reason("tensorflow", True, driver=False, runtime_missing=True) == \
        "no NVIDIA driver found"  # the first thing to fix
    cpu_build = no_gpu_reason("tensorflow", False, driver=True, runtime_missing=False)
    assert "CPU build of tensorflow" in cpu_build and GPU_PACKAGE in cpu_build
    runtime = no_gpu_reason("tensorflow", True, driver=True, runtime_missing=True)
    assert "CUDA runtime libraries were not found" in runtime
    assert no_gpu_reason("jax", None, driver=True, runtime_missing=False) == \
        "jax found no usable GPU"


def test_this_machine_says_why_it_computes_on_the_cpu():
    if configure().startswith("GPU"):
        assert why_cpu() == ""
    elif not os.path.exists("/proc/driver/nvidia/version"):
        assert why_cpu() == "no NVIDIA driver found"
