"""Offline INT8 weight quantization: per output channel (our W8A8 format), and TurboDiffusion's 128 x 128
block-scale format (golden quantization_int8.json), described here.

For every 128 x 128 tile of a weight w [N, K] (partial tiles at the edges included):
    amax  = max(1e-8, max |w_tile|)             float32 (w converted exactly from bf16/fp16)
    m     = 128.0f / amax                       IEEE float32 division (note 128, not 127)
    q     = sat_[-128, 127](round_half_even(w * m))   so +amax -> 127 (saturated), -amax -> -128
    scale = amax / 128.0f                       exact (power-of-two divisor)
and the weight is recovered as q * scale. The same formula quantizes activations in 128-token x
128-feature tiles at run time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import reference

BLOCK = 128
INT8_MIN, INT8_MAX = -128, 127
AMAX_FLOOR = 1e-8


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _tiles(x: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [ceil(N/128), 128, ceil(K/128), 128], zero-padded (zeros never raise a tile's amax)."""
    n, k = x.shape
    nb, kb = _cdiv(n, BLOCK), _cdiv(k, BLOCK)
    if (nb * BLOCK, kb * BLOCK) != (n, k):
        x = F.pad(x, (0, kb * BLOCK - k, 0, nb * BLOCK - n))
    return x.view(nb, BLOCK, kb, BLOCK)


def _check_2d(name: str, t: torch.Tensor) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D [N, K] tensor, got shape {tuple(t.shape)}")


def quantize_weight_int8_block128(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] (bf16/fp16/float32) -> (q int8 [N, K], scale float32 [ceil(N/128), ceil(K/128)])."""
    _check_2d("w", w)
    n, k = w.shape
    tiles = _tiles(w.to(torch.float32))
    amax = tiles.abs().amax(dim=(1, 3)).clamp_min(AMAX_FLOOR)
    multiplier = torch.tensor(float(BLOCK), dtype=torch.float32, device=w.device) / amax
    q = torch.round(tiles * multiplier[:, None, :, None]).clamp_(INT8_MIN, INT8_MAX).to(torch.int8)
    q = q.view(tiles.shape[0] * BLOCK, tiles.shape[2] * BLOCK)[:n, :k].contiguous()
    return q, amax / BLOCK


def dequantize_weight_int8_block128(q: torch.Tensor, scale: torch.Tensor,
                                    dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """q int8 [N, K], scale float32 [ceil(N/128), ceil(K/128)] -> q * scale in `dtype`.

    The product is formed in float32 (float64 for a float64 result). For scales of the released
    checkpoints (amax of a bf16/fp16 weight over 128: at most 11 significant bits) times an 8-bit q it
    is exact, so the only rounding is the final cast to `dtype`.
    """
    _check_2d("q", q)
    n, k = q.shape
    grid = (_cdiv(n, BLOCK), _cdiv(k, BLOCK))
    if q.dtype != torch.int8 or tuple(scale.shape) != grid:
        raise ValueError(f"q, scale: expected int8 q and scale of shape {grid} for q {tuple(q.shape)}, got "
                         f"q {q.dtype}, scale {tuple(scale.shape)}")
    compute = torch.promote_types(dtype, torch.float32)
    tiles = _tiles(q.to(compute)) * scale.to(compute)[:, None, :, None]
    return tiles.view(grid[0] * BLOCK, grid[1] * BLOCK)[:n, :k].to(dtype)


def quantize_weight_int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] (bf16/fp16/float32, any device) -> (q int8 [N, K], scale float32 [N]) with one scale per
    output channel: s[n] = amax_K |w[n]| / 127, q = rne(w * (127 / amax)) (ARCHITECTURE §4.4). It is the
    per-token activation recipe applied to the weight's rows, so it reuses that reference."""
    _check_2d("w", w)
    return reference.quantize_per_token_int8(w)


def _check_scale(q: torch.Tensor, scale: torch.Tensor) -> None:
    """q int8 [N, K] with either per-channel scales [N] or 128 x 128 block scales [ceil(N/128), ceil(K/128)]."""
    _check_2d("q", q)
    n, k = q.shape
    grid = (_cdiv(n, BLOCK), _cdiv(k, BLOCK))
    if q.dtype != torch.int8 or tuple(scale.shape) not in ((n,), grid):
        raise ValueError(f"q, scale: expected int8 q and scale of shape {(n,)} (per channel) or {grid} (128x128 "
                         f"blocks) for q {tuple(q.shape)}, got q {q.dtype}, scale {tuple(scale.shape)}")


def int8_weight_per_channel(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An INT8 weight in either stored format -> (q, float32 scale [N]) per output channel: per-channel
    scales pass through, 128 x 128 block scales are re-encoded (reference.block128_to_per_channel)."""
    _check_scale(q, scale)
    if scale.dim() == 1:
        return q, scale.to(torch.float32)
    return reference.block128_to_per_channel(q, scale)


def dequantize_weight_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """q * scale in `dtype` for either stored format (per-channel [N] or 128 x 128 blocks); the product is
    formed in float32 (float64 for a float64 result)."""
    _check_scale(q, scale)
    if scale.dim() == 2:
        return dequantize_weight_int8_block128(q, scale, dtype)
    compute = torch.promote_types(dtype, torch.float32)
    return (q.to(compute) * scale.to(compute)[:, None]).to(dtype)
