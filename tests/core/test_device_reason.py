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


def _shared_library(path, source: str) -> None:
    import shutil
    import subprocess

    import pytest

    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build a stand-in library")
    path.parent.mkdir(parents=True, exist_ok=True)
    src = path.with_suffix(".c")
    src.write_text(source)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(path), str(src)], check=True)


def test_the_cuda_libraries_beside_the_framework_count_only_when_they_load(tmp_path):
    from app.core.base.device import cuda_runtime

    assert cuda_runtime(tmp_path) == ([], ["CUDA runtime", "cuDNN"])
    # a file of the right name that is no library is missing, not found
    fake = tmp_path / "nvidia" / "cudnn" / "lib" / "libcudnn.so.9"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not a library")
    # a library that loads is found, with the version it reports (12090: CUDA 12.9)
    _shared_library(tmp_path / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12",
                    "int cudaRuntimeGetVersion(int *v) { *v = 12090; return 0; }\n")
    assert cuda_runtime(tmp_path) == (["CUDA runtime 12.9"], ["cuDNN"])
