"""Loads the compiled extension, if it was built. Without it every op runs its CPU reference."""
from __future__ import annotations

import importlib
import warnings

LOAD_ERROR: str | None = None
try:
    _C = importlib.import_module("turbodiffusion._C")
except ImportError as e:  # built without CUDA (TD_SKIP_CUDA=1 / no nvcc) or for another torch
    _C = None
    LOAD_ERROR = str(e)
    if "No module named" not in LOAD_ERROR:
        warnings.warn(f"turbodiffusion._C failed to load ({e}); CUDA kernels are unavailable. "
                      "Rebuild with `pip install --no-build-isolation -e .` against the installed torch.")

HAS_KERNELS = _C is not None


def require_kernels(what: str) -> None:
    if not HAS_KERNELS:
        raise RuntimeError(f"{what}: the CUDA extension turbodiffusion._C is not available "
                           f"({LOAD_ERROR or 'not built'}); install with nvcc on PATH and TD_SKIP_CUDA unset")
