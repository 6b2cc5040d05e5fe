"""Every op of the suite, declared once: schema, CPU implementation (= the reference, behind the same
input checks as the CUDA launcher) and fake implementation (shapes only, for torch.compile / meta).

The CUDA implementations are registered from C++ (csrc/bindings.cpp) under the same names when
turbodiffusion._C loads. Ops are functional: they allocate their outputs, so CUDA graphs and
torch.compile see them as pure functions.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import _checks as C
from . import reference as ref

NAMESPACE = "turbodiffusion"
_LIB = torch.library.Library(NAMESPACE, "DEF")
OPS: dict[str, str] = {}  # name -> schema, for opcheck and docs


def _register(schema: str, checks: Callable, cpu: Callable, fake: Callable) -> None:
    name = schema.split("(", 1)[0]
    _LIB.define(schema)
    OPS[name] = schema

    def cpu_impl(*args):
        checks(*args)
        return cpu(*args)

    def fake_impl(*args):
        checks(*args)
        return fake(*args)

    _LIB.impl(name, cpu_impl, "CPU")
    torch.library.register_fake(f"{NAMESPACE}::{name}", fake_impl, lib=_LIB)


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


# --------------------------------------------------------------------------------------------------
# quantize_qk_int8: per-block INT8 of q and smoothed k (ARCHITECTURE §4.1)
QK_BLOCK_SIZES = (16, 32, 64, 128)


def _check_qk(q, k, layout, blk_q, blk_k, q_scale_factor):
    C.check_layout(layout)
    bq, hq, _, dq = C.check_attention_tensor("q", q, layout)
    bk, hk, _, dk = C.check_attention_tensor("k", k, layout, device=q.device)
    if k.dtype != q.dtype:
        raise TypeError(f"k: expected dtype {q.dtype} (like q), got {k.dtype}")
    if (bk, hk, dk) != (bq, hq, dq):
        raise ValueError(f"k: expected batch, heads and head dim {(bq, hq, dq)} (like q), got {(bk, hk, dk)}")
    C.check_choice("blk_q", blk_q, QK_BLOCK_SIZES)
    C.check_choice("blk_k", blk_k, QK_BLOCK_SIZES)
    if not math.isfinite(q_scale_factor) or q_scale_factor <= 0:
        raise ValueError(f"q_scale_factor: expected a finite positive number, got {q_scale_factor}")


def _fake_qk(q, k, layout, blk_q, blk_k, q_scale_factor):
    b, h, nq, d = C.bhnd(q, layout)
    nk = C.bhnd(k, layout)[2]
    f32 = dict(dtype=torch.float32, device=q.device)
    return (torch.empty(q.shape, dtype=torch.int8, device=q.device), q.new_empty((b, h, _cdiv(nq, blk_q)), **f32),
            torch.empty(k.shape, dtype=torch.int8, device=k.device), k.new_empty((b, h, _cdiv(nk, blk_k)), **f32),
            q.new_empty((b, h, d), **f32))


_register("quantize_qk_int8(Tensor q, Tensor k, str layout, int blk_q, int blk_k, float q_scale_factor)"
          " -> (Tensor, Tensor, Tensor, Tensor, Tensor)", _check_qk, ref.quantize_qk_int8, _fake_qk)


# --------------------------------------------------------------------------------------------------
# quantize_v_fp8: per-channel FP8 E4M3, transposed [B, H, D, N_pad], tokens permuted (§4.1)
def _check_v(v, layout, pad_to):
    C.check_layout(layout)
    C.check_attention_tensor("v", v, layout)
    if pad_to <= 0 or pad_to % 16:
        raise ValueError(f"pad_to: expected a positive multiple of 16 (the token-permutation group), got {pad_to}")


def _fake_v(v, layout, pad_to):
    b, h, n, d = C.bhnd(v, layout)
    n_pad = _cdiv(n, pad_to) * pad_to
    return (torch.empty((b, h, d, n_pad), dtype=torch.float8_e4m3fn, device=v.device),
            torch.empty((b, h, d), dtype=torch.float32, device=v.device))


_register("quantize_v_fp8(Tensor v, str layout, int pad_to) -> (Tensor, Tensor)", _check_v, ref.quantize_v_fp8,
          _fake_v)


# --------------------------------------------------------------------------------------------------
# quantize_per_token_int8: activations for W8A8 (§4.4)
def _check_per_token(x):
    C.check_tensor("x", x, dtypes=C.HALF_DTYPES)
    if x.dim() < 1 or x.size(-1) == 0:
        raise ValueError(f"x: expected at least 1 dimension and a non-empty last dimension, got shape {tuple(x.shape)}")


def _fake_per_token(x):
    return torch.empty(x.shape, dtype=torch.int8, device=x.device), torch.empty(x.shape[:-1], dtype=torch.float32,
                                                                               device=x.device)


_register("quantize_per_token_int8(Tensor x) -> (Tensor, Tensor)", _check_per_token, ref.quantize_per_token_int8,
          _fake_per_token)


# The CUDA implementations register themselves (TORCH_LIBRARY_IMPL) when the extension loads.
from . import _extension  # noqa: E402,F401


# --------------------------------------------------------------------------------------------------
# Public entry points (keyword arguments, defaults)
def quantize_qk_int8(q: torch.Tensor, k: torch.Tensor, *, layout: str = "NHD", blk_q: int = 64, blk_k: int = 128,
                     q_scale_factor: float = 1.0):
    """Per-block symmetric INT8 of q and of k - mean_N(k).

    q [B, Nq, H, D] / k [B, Nk, H, D] (layout "NHD") or [B, H, N, D] ("HND"), bf16/fp16, D in {64, 128}.
    Returns (q_int8, q_scale [B, H, ceil(Nq/blk_q)] * q_scale_factor, k_int8, k_scale [B, H, ceil(Nk/blk_k)],
    k_mean [B, H, D] float32); int8 tensors keep the input layout, contiguous.
    """
    return torch.ops.turbodiffusion.quantize_qk_int8(q, k, layout, blk_q, blk_k, float(q_scale_factor))


def quantize_v_fp8(v: torch.Tensor, *, layout: str = "NHD", pad_to: int = 128):
    """Per-channel FP8 E4M3 of v, transposed to [B, H, D, N_pad] with tokens permuted per 16-group
    (reference.quant.V_TOKEN_PERM) and zero padding to a multiple of pad_to. Returns (v_fp8, v_scale [B, H, D])."""
    return torch.ops.turbodiffusion.quantize_v_fp8(v, layout, pad_to)


def quantize_per_token_int8(x: torch.Tensor):
    """Per-token INT8 of activations x [..., K] (bf16/fp16): (x_int8 [..., K], x_scale [...] float32)."""
    return torch.ops.turbodiffusion.quantize_per_token_int8(x)
