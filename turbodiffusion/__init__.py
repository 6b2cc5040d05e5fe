"""TurboDiffusion kernel suite: low-bit attention, sparse-linear attention, W8A8 GEMM, Wan samplers."""
from . import ops  # noqa: F401  (declares every op; loads the CUDA extension when built)
from ._extension import HAS_KERNELS  # noqa: F401

__version__ = "0.1.0"
