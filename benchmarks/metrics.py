"""FLOP and byte formulas used by every benchmark (ARCHITECTURE §6), and the standard shapes."""
from __future__ import annotations

# Attention shapes: (name, B, H, N, D).
ATTENTION_SHAPES = [
    ("wan1.3b-480p", 1, 12, 32760, 128),
    ("wan14b-720p", 1, 40, 75600, 128),
    ("d64-16k", 1, 16, 16384, 64),
]
# GEMM shapes: (M, K, N).
GEMM_SHAPES = [(32760, 1536, 1536), (32760, 1536, 8960), (32760, 8960, 1536),
               (75600, 5120, 5120), (75600, 5120, 13824), (75600, 13824, 5120)]


def attention_flops(b: int, h: int, nq: int, nk: int, d: int) -> float:
    """Dense-equivalent attention FLOPs: QK^T and PV, 2 flops per multiply-add each."""
    return 4.0 * b * h * nq * nk * d


def gemm_flops(m: int, n: int, k: int) -> float:
    return 2.0 * m * n * k


def quant_bytes(elements: int, in_bytes: int = 2, out_bytes: int = 1) -> float:
    """Fewest bytes a quantizer must move: read each input element once, write each code once
    (scales and means are < 1% and not counted)."""
    return float(elements) * (in_bytes + out_bytes)
