"""Reference quantization (ARCHITECTURE §4.1, §4.4), written to match the kernels' float32 arithmetic.

Every quantizer here follows one recipe, in float32 with IEEE rounding:
    s   = amax / QMAX                            (the stored scale; 0 means an all-zero group)
    inv = min(QMAX / amax, FLT_MAX), 0 if amax == 0
    x_q = sat(round_half_even(x * inv))
Multiplying by one reciprocal per group (instead of dividing every element by s) is what the
kernels do; the cap keeps 0 * inv == 0 for groups whose amax is below 3.7e-37 (only reachable in
bf16), which then quantize to 0. The CUDA kernels perform the same operations in the same order
(`__fdiv_rn`, `__fmul_rn`, `__float2int_rn`, `cvt.rn.satfinite`), so given the same scales and
means their outputs are bit-identical; the only legitimate differences come from reduction order in
means (K smoothing), which the tests allow for.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

INT8_MAX = 127.0
FP8_E4M3_MAX = 448.0

# Token order of V inside every 16-token group (KERNEL_NOTES.md): position p of a group holds token
# V_TOKEN_PERM[p]. A thread of the QK^T accumulator owns tokens {2t, 2t+1, 8+2t, 9+2t} of each 16,
# while the 8-bit A operand of the PV MMA (mma.sync m16n8k32 and register-A wgmma) wants k-indices
# 4t..4t+3: storing V in this order makes the packed P registers a valid A operand with no shuffle.
V_TOKEN_PERM = (0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15)


def v_token_permutation(n_pad: int, device=None) -> torch.Tensor:
    """Index of the source token for every position of a permuted, padded V (length n_pad % 16 == 0)."""
    perm = torch.tensor(V_TOKEN_PERM, dtype=torch.long, device=device)
    return (torch.arange(0, n_pad, 16, device=device)[:, None] + perm[None, :]).reshape(-1)


def _to_bhnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if layout == "NHD" else x


def _from_bhnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return (x.transpose(1, 2) if layout == "NHD" else x).contiguous()


FLT_MAX = torch.finfo(torch.float32).max


def _scale(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """The stored scale amax / qmax, an IEEE float32 division."""
    return amax / torch.full_like(amax, qmax)


def _scaled(x: torch.Tensor, amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """x * inv in float32 with inv = min(qmax / amax, FLT_MAX), 0 for amax == 0, saturated to +-qmax."""
    # Tensor-by-tensor division: IEEE like the kernels' __fdiv_rn (torch turns `scalar / tensor` into
    # reciprocal-and-multiply, and may do the same for `tensor / scalar`).
    inv = torch.where(amax > 0, (torch.full_like(amax, qmax) / amax).clamp(max=FLT_MAX), torch.zeros_like(amax))
    return (x * inv).clamp_(-qmax, qmax)


def _quantize_int8(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """sat(round_half_even(x * inv)): INT8 codes (cvt.rni in the kernels)."""
    return torch.round(_scaled(x, amax, INT8_MAX)).to(torch.int8)


def int8_blockwise(x: torch.Tensor, blk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8 of x [B, H, N, D] (float32) with one scale per `blk` tokens: (x_q, scale [B, H, ceil(N/blk)])."""
    b, h, n, d = x.shape
    nb = (n + blk - 1) // blk
    xp = F.pad(x, (0, 0, 0, nb * blk - n)).view(b, h, nb, blk, d)
    amax = xp.abs().amax(dim=(3, 4))
    amax_tok = amax.repeat_interleave(blk, dim=2)[:, :, :n, None]
    return _quantize_int8(x, amax_tok), _scale(amax, INT8_MAX)


def quantize_qk_int8(q: torch.Tensor, k: torch.Tensor, layout: str, blk_q: int, blk_k: int,
                     q_scale_factor: float, k_mean: torch.Tensor | None = None):
    """Per-block INT8 of q and of smoothed k (k - mean_N k; the given k_mean [B, H, D] instead, if any).

    Returns (q_int8, q_scale, k_int8, k_scale, k_mean): int8 tensors in the input layout (contiguous),
    scales float32 [B, H, ceil(N/blk)] (q's multiplied by q_scale_factor, e.g. sm_scale*log2(e)),
    k_mean float32 [B, H, D] (a copy of the given one).
    """
    q32 = _to_bhnd(q, layout).float()
    k32 = _to_bhnd(k, layout).float()
    k_mean = k32.mean(dim=2) if k_mean is None else k_mean.clone()
    q_i8, q_s = int8_blockwise(q32, blk_q)
    k_i8, k_s = int8_blockwise(k32 - k_mean[:, :, None, :], blk_k)
    q_s = q_s * torch.tensor(q_scale_factor, dtype=torch.float32)
    return _from_bhnd(q_i8, layout), q_s, _from_bhnd(k_i8, layout), k_s, k_mean


def quantize_v_fp8(v: torch.Tensor, layout: str, pad_to: int, v_amax: torch.Tensor | None = None):
    """FP8 E4M3 of v with one scale per (b, h, channel), transposed for the PV product.

    Returns (v_fp8 [B, H, D, N_pad] float8_e4m3fn, v_scale [B, H, D] float32) where
    N_pad = roundup(N, pad_to), tokens past N are 0, and tokens are reordered inside every 16-token
    group by V_TOKEN_PERM (position p holds token V_TOKEN_PERM[p]). v_amax: the given amax_N |v| [B, H, D]
    instead of the computed one.
    """
    v32 = _to_bhnd(v, layout).float()
    b, h, n, d = v32.shape
    amax = v32.abs().amax(dim=2) if v_amax is None else v_amax
    # E4M3 rounding to nearest even of the saturated product (cvt.rn.satfinite in the kernel).
    vq = _scaled(v32, amax[:, :, None, :], FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    n_pad = (n + pad_to - 1) // pad_to * pad_to
    out = torch.zeros(b, h, d, n_pad, dtype=torch.float8_e4m3fn, device=v.device)
    src = v_token_permutation(n_pad, device=v.device)
    valid = src < n
    out[..., valid] = vq.transpose(2, 3)[..., src[valid]]
    return out, _scale(amax, FP8_E4M3_MAX)


def quantize_per_token_int8(x: torch.Tensor):
    """Per-token (last-dim) symmetric INT8 of activations: (x_int8 like x, scale float32 x.shape[:-1])."""
    x32 = x.float()
    amax = x32.abs().amax(dim=-1)
    return _quantize_int8(x32, amax[..., None]).contiguous(), _scale(amax, INT8_MAX)
