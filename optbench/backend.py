"""The array module behind the maths: NumPy on the CPU, CuPy on the GPU.

Code that computes takes `xp` from its data, so one definition runs on both in one process.
This module also picks the device for a run and records what it is.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from optbench.errors import OptbenchError

DEVICES = ("cpu", "gpu", "auto")
GPU_HELP = "install CuPy for your CUDA (pip install 'optbench[gpu]', i.e. cupy-cuda12x; cupy-cuda13x on CUDA 13) on a machine with an NVIDIA GPU"


def get_array_module(*arrays):
    """Return cupy when any argument is a CuPy array, else numpy (CuPy need not be installed)."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy

            return cupy
    return np


def to_numpy(a) -> np.ndarray:
    """A host copy of a NumPy or CuPy array."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


@dataclass
class Device:
    """Where a run computes: its name ('cpu' or 'gpu'), array module, and facts for the record."""

    name: str
    xp: object
    facts: dict = field(default_factory=dict)
    sync: Callable[[], None] = lambda: None  # wait until queued GPU work is done (timing)


def _gpu_unavailable_reason() -> str | None:
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy finds no CUDA device"
    except Exception as exc:
        return f"CuPy finds no usable CUDA device ({exc})"
    try:
        # A kernel and a matrix product: these need NVRTC and cuBLAS, which the driver alone lacks.
        a = cupy.arange(4, dtype=cupy.float32)
        float((a + 1) @ a)
    except Exception as exc:
        return f"CuPy cannot run kernels here (is the CUDA toolkit installed? {type(exc).__name__}: {exc})"
    return None


def gpu_available() -> bool:
    return _gpu_unavailable_reason() is None


def gpu_count() -> int:
    """The GPUs CuPy sees (0 without a usable one)."""
    if not gpu_available():
        return 0
    import cupy

    return int(cupy.cuda.runtime.getDeviceCount())


def select_device(kind: str) -> Device:
    """`cpu`, `gpu` (an error naming what to install when there is none) or `auto`."""
    if kind not in DEVICES:
        raise OptbenchError(f"unknown device {kind!r} (choose from {', '.join(DEVICES)})")
    reason = _gpu_unavailable_reason() if kind in ("gpu", "auto") else "not asked for"
    if kind == "gpu" and reason:
        raise OptbenchError(f"--device gpu: {reason}; {GPU_HELP}")
    if kind == "cpu" or reason:
        return Device("cpu", np, cpu_facts())
    import cupy

    return Device("gpu", cupy, gpu_facts(), sync=lambda: cupy.cuda.get_current_stream().synchronize())


def cpu_facts() -> dict:
    facts = {
        "device": "cpu",
        "device_name": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    facts.update(_blas_facts())
    return facts


def gpu_facts() -> dict:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return {
        **cpu_facts(),
        "device": "gpu",
        "device_name": name.decode() if isinstance(name, bytes) else str(name),
        "cpu_name": _cpu_model(),
        "cupy": cupy.__version__,
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
        # TF32 matrix products change both results and timings.
        "cupy_tf32": os.environ.get("CUPY_TF32", "0"),
        "gpu_memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas_facts() -> dict:
    """The BLAS numpy calls and its threads, from numpy's own build record and threadpoolctl."""
    facts: dict = {}
    try:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        facts["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older numpy: no dict mode
        facts["blas"] = "unknown"
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            facts["blas_threads"] = pools[0].get("num_threads")
            facts["blas_kernel"] = pools[0].get("architecture")
    except ImportError:
        pass
    return facts
