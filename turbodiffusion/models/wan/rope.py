"""3-D rotary position embedding of the Wan DiT (interleaved pairs, head dims split t | h | w)."""
from __future__ import annotations

import torch

ROPE_THETA = 10000.0


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Head dims given to (t, h, w): h = w = 2 * (d // 6), t gets the rest (64 -> 24|20|20, 128 -> 44|42|42)."""
    d_hw = 2 * (head_dim // 6)
    return head_dim - 2 * d_hw, d_hw, d_hw


def _axis_freqs(n: int, device) -> torch.Tensor:
    """theta_j = 10000^(-2j/n), j < n/2, float64: the frequencies of an axis given n head dims."""
    return 1.0 / (ROPE_THETA ** (torch.arange(0, n, 2, dtype=torch.float64, device=device) / n))


def rope_angles(grid: tuple[int, int, int], head_dim: int, device=None) -> torch.Tensor:
    """Angle table [T*H*W, head_dim/2] float64 for a patch grid (T, H, W), tokens in (t, h, w) order, w fastest.

    Token (ti, hi, wi) gets [ti * theta_t..., hi * theta_h..., wi * theta_w...] (0-based grid indices).
    """
    sizes = rope_split(head_dim)
    parts = []
    for axis, (length, n) in enumerate(zip(grid, sizes)):
        a = torch.outer(torch.arange(length, dtype=torch.float64, device=device), _axis_freqs(n, device))
        shape = [1, 1, 1, n // 2]
        shape[axis] = length
        parts.append(a.view(shape).expand(*grid, n // 2))
    return torch.cat(parts, dim=-1).reshape(-1, head_dim // 2)


def rope_cos_sin(angles: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angle table as [L, 1, D/2] tensors (broadcast over heads), computed in float64."""
    return torch.cos(angles).to(dtype)[:, None, :], torch.sin(angles).to(dtype)[:, None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[2i], x[2i+1]) of x [B, L, H, D] by angle i, i.e. multiply x[2i] + 1j x[2i+1] by
    exp(1j angle_i). Computed in cos's dtype (float32 for a bf16 model), returned in x's dtype."""
    xr = x.to(cos.dtype).unflatten(-1, (-1, 2))
    x0, x1 = xr[..., 0], xr[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)
