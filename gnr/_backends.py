"""The engine's devices: what this build contains, and registering the CUDA
backend with the engine before a model is made on it.

The CPU backend is always registered. The CUDA backend lives in a separate
extension, `gnr._C_cuda`, that needs the CUDA runtime libraries: it is
imported on first use only, so that `import gnr` works on a machine without a
GPU driver (DECISIONS.md section 6). Every way to a model on "cuda" (gnr.Model,
gnr.load_model, gnr.Editor) passes through `require_device`, so none depends
on another call having registered the backend first.
"""
from __future__ import annotations

import importlib.util

from . import _C

__all__ = ["build_info", "cuda_available", "check_device_name", "require_device", "DEVICES"]

DEVICES = ("cpu", "cuda")


def build_info() -> dict:
    """What this build contains: {"cuda": True (the CUDA backend was built with nvcc), "emulated" (built on
    the CPU emulator of CUDA, GNR_CUDA=emulate: a test target) or False; "cuda_note": str (why there is
    no real CUDA backend and how to get one; empty when there is); "blas": str, "cpu_vector": the CPU
    backend's vector kernels on this machine ("avx512", "avx2" or "baseline", picked at run time), "openmp": bool,
    "version": str, "threads": int}. Whether a GPU is usable now: `cuda_available()`."""
    info = _C.build_info()
    built = info.pop("cuda_build")
    present = importlib.util.find_spec("gnr._C_cuda") is not None
    info["cuda"] = ("emulated" if built == "emulated" else True) if present else False
    return info


_cuda_ready = None


def cuda_available() -> bool:
    """True when the CUDA backend is built and a CUDA device is usable.

    The first call imports `gnr._C_cuda` (absent in a CPU-only build; it needs
    the CUDA runtime libraries) and registers its backend with the engine; a
    missing module, library, driver or device gives False, never an error."""
    global _cuda_ready
    if _cuda_ready is None:
        try:
            from . import _C_cuda
        except (ImportError, OSError):
            _cuda_ready = False
            return False
        if _C_cuda.device_count() < 1:
            _cuda_ready = False
            return False
        _C._register_cuda_backend(_C_cuda.backend)
        _cuda_ready = True
    return _cuda_ready


def check_device_name(device) -> None:
    """A ValueError unless `device` is a device name gnr knows ("cpu", "cuda")."""
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def require_device(device) -> None:
    """Returns when the engine can make a model on `device` ("cpu", or "cuda"
    with its backend registered now); else a ValueError for a name gnr does
    not know, or a RuntimeError saying why "cuda" is not available."""
    check_device_name(device)
    if device == "cuda" and not cuda_available():
        why = "no usable CUDA device or driver" if build_info()["cuda"] else "this build has no CUDA backend"
        raise RuntimeError(f"device='cuda' is not available: {why}")
