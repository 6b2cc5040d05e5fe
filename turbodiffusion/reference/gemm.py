"""Reference W8A8 GEMM (ARCHITECTURE §4.4; docs/quantization.md): the executable spec of `w8a8_gemm`.

    acc[m, n] = sum_k a[m, k] * w[n, k]                 exact: int64 for INT8, float64 for FP8 E4M3
    y[m, n]   = (float32(acc) * w_scale[n]) * a_scale[m] + bias[n]     float32, then out_dtype (RN)

INT8: the kernels accumulate in int32, which is exact while |acc| < 2^31 (K <= 2^31 / 128^2 = 131072);
the int64 sum here equals it. FP8 E4M3: every product of two E4M3 values is exact in float32 and the
float64 sum of K <= 2^20 of them is exact too (products have at most 8 significant bits and exponents
within [-18, 17]), so `acc` is the exact dot product; the tensor cores accumulate in float32 and
round, which the tests bound. The epilogue order (w_scale first, then a_scale with the bias added)
is the kernels' (the last step may be one fused multiply-add there: at most one float32 ulp apart
before the final rounding to bf16/fp16).
"""
from __future__ import annotations

from typing import Optional

import torch

from .quant import quantize_per_token_int8


def gemm_accumulator(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact a @ w^T of a [M, K], w [N, K]: int64 for int8 inputs, float64 for float8_e4m3fn."""
    if a.dtype == torch.int8:
        return a.to(torch.int64) @ w.to(torch.int64).T
    return a.to(torch.float64) @ w.to(torch.float64).T


def w8a8_gemm(a: torch.Tensor, a_scale: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
              bias: Optional[torch.Tensor], out_dtype: torch.dtype, backend: str = "auto",
              sm90_config=()) -> torch.Tensor:
    """y [M, N] = (a @ w^T) * a_scale[m] * w_scale[n] + bias[n] in float32, stored as out_dtype.

    a [M, K], w [N, K] both int8 or both float8_e4m3fn; a_scale [M], w_scale [N] float32; bias [N] in
    out_dtype or None. `backend` and `sm90_config` select a CUDA kernel and are ignored here.
    """
    acc = gemm_accumulator(a, w).to(torch.float32)
    y = acc * w_scale.to(torch.float32)[None, :]
    y = y * a_scale.to(torch.float32)[:, None]
    if bias is not None:
        y = y + bias.to(torch.float32)[None, :]
    return y.to(out_dtype)


def block128_to_per_channel(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-encode a TurboDiffusion `-quant` weight (int8 q [N, K], float32 128 x 128 block scales
    [ceil(N/128), ceil(K/128)]) with one scale per output channel: dequantize exactly
    (w_hat = q * scale[n // 128, k // 128] in float32: an 8-bit code times an 11-bit scale) and quantize
    w_hat per channel with the recipe of §4.4 (s[n] = amax_k |w_hat[n]| / 127, the reference quantizer's
    rounding). A row's new step is amax_row / 127, at most 128/127 of the largest block step of its row
    block, and usually far smaller: block scales are shared by 128 rows, so a row whose own values are
    small gets a finer grid than the block gave it. The price is one more rounding (half a new step).
    docs/gemm.md gives the measured cost on the golden example.
    """
    n, k = q.shape
    blk = 128
    s_blk = scale.to(torch.float32).repeat_interleave(blk, 0)[:n].repeat_interleave(blk, 1)[:, :k]  # [N, K]
    w_hat = q.to(torch.float32) * s_blk                                                             # exact
    return quantize_per_token_int8(w_hat)
