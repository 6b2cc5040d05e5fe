"""Building blocks of the Wan DiT: the linear factory, fp32-statistics norms, AdaLN, the time sinusoid."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

LinearFactory = Callable[..., nn.Module]


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype Wan keeps its statistics, modulation and time path in: float32, or float64 for a float64 model."""
    return torch.promote_types(dtype, torch.float32)


# ---------------------------------------------------------------------------------------------------
# Linear layers of the blocks. Every block Linear is built through make_linear, so low-bit kinds
# (int8 / fp8 W8A8) replace nn.Linear by registering a factory under their name.
def _plain_linear(in_features: int, out_features: int, *, dtype=None, device=None) -> nn.Module:
    return nn.Linear(in_features, out_features, dtype=dtype, device=device)


def _w8a8_linear(kind: str) -> LinearFactory:
    def factory(in_features: int, out_features: int, *, dtype=None, device=None) -> nn.Module:
        from ...nn import linear  # lazy: nn.linear imports the ops

        make = linear.int8_linear_factory if kind == "int8" else linear.fp8_linear_factory
        return make(in_features, out_features, dtype=dtype, device=device)
    return factory


# name -> factory(in_features, out_features, *, dtype, device); None marks kinds whose kernels have not landed.
_LINEAR_KINDS: dict[str, Optional[LinearFactory]] = {"bf16": _plain_linear, "int8": _w8a8_linear("int8"),
                                                     "fp8": _w8a8_linear("fp8")}


def register_linear(kind: str, factory: LinearFactory) -> None:
    """Register (or replace) the factory of a linear kind: factory(in, out, *, dtype, device) -> nn.Module."""
    _LINEAR_KINDS[kind] = factory


def linear_kinds() -> tuple[str, ...]:
    return tuple(_LINEAR_KINDS)


def check_linear_kind(kind: str) -> None:
    """Raise ValueError for an unknown kind and RuntimeError for a kind whose kernels have not landed."""
    if kind not in _LINEAR_KINDS:
        raise ValueError(f"linear kind: expected one of {linear_kinds()}, got {kind!r}")
    if _LINEAR_KINDS[kind] is None:
        raise RuntimeError(f"linear kind {kind!r}: its kernels have not landed yet in this build; use 'bf16' "
                           f"(a -quant checkpoint is then dequantized on load)")


def make_linear(in_features: int, out_features: int, *, kind: str = "bf16", dtype=None, device=None) -> nn.Module:
    """A block Linear(in, out) with bias. Kind "bf16" is a plain nn.Linear in the model dtype."""
    check_linear_kind(kind)
    return _LINEAR_KINDS[kind](in_features, out_features, dtype=dtype, device=device)


def linear_wide(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x) computed in x's dtype (the weights are cast up): Wan's time path and head run in float32."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


# ---------------------------------------------------------------------------------------------------
# Norms: statistics in float32 (float64 for a float64 model), result in the input dtype.
class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dim (Wan's q/k norm, over the full width)."""

    def __init__(self, dim: int, eps: float, *, dtype=torch.float32, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xw = x.to(wide_dtype(x.dtype))
        y = xw * torch.rsqrt(xw.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (y * self.weight.to(xw.dtype)).to(x.dtype)


class LayerNorm(nn.Module):
    """Affine LayerNorm (Wan's norm3 before cross-attention)."""

    def __init__(self, dim: int, eps: float, *, dtype=torch.float32, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xw = x.to(wide_dtype(x.dtype))
        y = F.layer_norm(xw, x.shape[-1:], self.weight.to(xw.dtype), self.bias.to(xw.dtype), self.eps)
        return y.to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """AdaLN: LayerNorm(x) * (1 + scale) + shift, no affine, in the modulation's (wide) dtype.

    x [B, L, C]; shift, scale [B, 1, C] float32 (float64 for a float64 model). The caller casts the
    result to the dtype its consumer wants.
    """
    xw = F.layer_norm(x.to(shift.dtype), x.shape[-1:], eps=eps)
    return xw * (1 + scale) + shift


def time_sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's sinusoidal embedding of t [B] (in [0, 1000]), float64 [B, dim]: cat(cos(t f), sin(t f)),
    f_i = 10000^(-i / (dim/2)). Cos first."""
    half = dim // 2
    pos = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    args = torch.outer(pos, freqs)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def gelu_tanh() -> nn.Module:
    """The tanh approximation of GELU used by Wan's FFN and text embedding."""
    return nn.GELU(approximate="tanh")

