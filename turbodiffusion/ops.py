"""Every op of the suite, declared once: schema, CPU implementation (= the reference, behind the same
input checks as the CUDA launcher) and fake implementation (shapes only, for torch.compile / meta).

The CUDA implementations are registered from C++ (csrc/bindings.cpp) under the same names when
turbodiffusion._C loads. Ops are functional: they allocate their outputs, so CUDA graphs and
torch.compile see them as pure functions.
"""
from __future__ import annotations

import contextlib
import functools
import math
import warnings
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


def _check_qk(q, k, layout, blk_q, blk_k, q_scale_factor, k_mean=None):
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
    if k_mean is not None:
        _check_f32("k_mean", k_mean, (bk, hk, dk), q.device)


def _fake_qk(q, k, layout, blk_q, blk_k, q_scale_factor, k_mean=None):
    b, h, nq, d = C.bhnd(q, layout)
    nk = C.bhnd(k, layout)[2]
    f32 = dict(dtype=torch.float32, device=q.device)
    return (torch.empty(q.shape, dtype=torch.int8, device=q.device), q.new_empty((b, h, _cdiv(nq, blk_q)), **f32),
            torch.empty(k.shape, dtype=torch.int8, device=k.device), k.new_empty((b, h, _cdiv(nk, blk_k)), **f32),
            q.new_empty((b, h, d), **f32))


_register("quantize_qk_int8(Tensor q, Tensor k, str layout, int blk_q, int blk_k, float q_scale_factor,"
          " Tensor? k_mean=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)", _check_qk, ref.quantize_qk_int8,
          _fake_qk)


# --------------------------------------------------------------------------------------------------
# quantize_v_fp8: per-channel FP8 E4M3, transposed [B, H, D, N_pad], tokens permuted (§4.1)
def _check_v(v, layout, pad_to, v_amax=None):
    C.check_layout(layout)
    b, h, n, d = C.check_attention_tensor("v", v, layout)
    if n == 0:
        raise ValueError(f"v: expected at least one token (the scales are amax_N |v| / 448), got shape {list(v.shape)}")
    if pad_to <= 0 or pad_to % 16:
        raise ValueError(f"pad_to: expected a positive multiple of 16 (the token-permutation group), got {pad_to}")
    if v_amax is not None:
        _check_f32("v_amax", v_amax, (b, h, d), v.device)


def _fake_v(v, layout, pad_to, v_amax=None):
    b, h, n, d = C.bhnd(v, layout)
    n_pad = _cdiv(n, pad_to) * pad_to
    return (torch.empty((b, h, d, n_pad), dtype=torch.float8_e4m3fn, device=v.device),
            torch.empty((b, h, d), dtype=torch.float32, device=v.device))


_register("quantize_v_fp8(Tensor v, str layout, int pad_to, Tensor? v_amax=None) -> (Tensor, Tensor)", _check_v,
          ref.quantize_v_fp8, _fake_v)


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
                     q_scale_factor: float = 1.0, k_mean: torch.Tensor | None = None):
    """Per-block symmetric INT8 of q and of k - mean_N(k).

    q [B, Nq, H, D] / k [B, Nk, H, D] (layout "NHD") or [B, H, N, D] ("HND"), bf16/fp16, D in {64, 128}.
    k_mean: mean_N(k) as float32 [B, H, D] where the caller has it (sla_block_map returns it): k is then
    read once instead of twice (a reduction kernel for the mean, then the quantizer), else computed.
    Returns (q_int8, q_scale [B, H, ceil(Nq/blk_q)] * q_scale_factor, k_int8, k_scale [B, H, ceil(Nk/blk_k)],
    k_mean [B, H, D] float32, a copy of the given one); int8 tensors keep the input layout, contiguous.
    """
    return torch.ops.turbodiffusion.quantize_qk_int8(q, k, layout, blk_q, blk_k, float(q_scale_factor), k_mean)


def quantize_v_fp8(v: torch.Tensor, *, layout: str = "NHD", pad_to: int = 128, v_amax: torch.Tensor | None = None):
    """Per-channel FP8 E4M3 of v, transposed to [B, H, D, N_pad] with tokens permuted per 16-group
    (reference.quant.V_TOKEN_PERM) and zero padding to a multiple of pad_to. Returns (v_fp8, v_scale [B, H, D]).
    v_amax: amax_N |v| as float32 [B, H, D] where the caller has it (sla_linear_state returns it): one pass
    over v instead of two phases, else computed."""
    return torch.ops.turbodiffusion.quantize_v_fp8(v, layout, pad_to, v_amax)


def quantize_per_token_int8(x: torch.Tensor):
    """Per-token INT8 of activations x [..., K] (bf16/fp16): (x_int8 [..., K], x_scale [...] float32)."""
    return torch.ops.turbodiffusion.quantize_per_token_int8(x)


# --------------------------------------------------------------------------------------------------
# w8a8_gemm: INT8 or FP8 E4M3 GEMM with the per-token x per-channel scale + bias epilogue (§4.4,
# docs/gemm.md). Appended after the extension import: the CUDA kernels register under this name from
# C++ at load time, which only needs the schema to exist before the first call.
GEMM_BACKENDS = ("auto", "sm90", "mma")
GEMM_IN_DTYPES = (torch.int8, torch.float8_e4m3fn)
# The sm90 kernel's tile tables (csrc/include/turbodiffusion/gemm/heuristics.h, same order): the
# `tile` of sm90_config. "candidate" tiles are compiled only by a TD_GEMM_ALL_CONFIGS=1 build.
GEMM_SM90_TILES = {
    torch.int8: ("128x256x128 cooperative", "64x256x128 ping-pong (candidate)"),
    torch.float8_e4m3fn: ("128x128x128 cooperative", "128x192x128 cooperative",
                          "64x192x128 ping-pong (candidate)"),
}
GEMM_SM90_SWIZZLES = (1, 2, 4, 8)


def _check_sm90_config(sm90_config, dtype, backend):
    if len(sm90_config) == 0:
        return
    if backend != "sm90":
        raise ValueError(f"sm90_config: given {list(sm90_config)}, which needs backend 'sm90', got {backend!r}")
    if len(sm90_config) != 3:
        raise ValueError(f"sm90_config: expected [] or [tile, raster_along_m, swizzle], got {list(sm90_config)}")
    tile, raster, swizzle = sm90_config
    count = len(GEMM_SM90_TILES[dtype])
    if not 0 <= tile < count:
        raise ValueError(f"sm90_config: tile {tile} out of range: {str(dtype).replace('torch.', '')} has tiles "
                         f"0..{count - 1}")
    if raster not in (0, 1):
        raise ValueError(f"sm90_config: raster_along_m must be 0 or 1, got {raster}")
    if swizzle not in GEMM_SM90_SWIZZLES:
        raise ValueError(f"sm90_config: swizzle must be 1, 2, 4 or 8, got {swizzle}")


def _check_gemm(a, a_scale, w, w_scale, bias, out_dtype, backend, sm90_config=()):
    C.check_tensor("a", a, dtypes=GEMM_IN_DTYPES, ndim=2)
    C.check_tensor("w", w, dtypes=GEMM_IN_DTYPES, ndim=2, device=a.device)
    if w.dtype != a.dtype:
        raise TypeError(f"w: expected dtype {str(a.dtype).replace('torch.', '')} (like a), got "
                        f"{str(w.dtype).replace('torch.', '')}")
    m, k = a.shape
    n = w.size(0)
    if w.size(1) != k:
        raise ValueError(f"w: expected shape [N, {k}] (K like a), got {tuple(w.shape)}")
    if k == 0 or k % 16:
        raise ValueError(f"a: K = {k} is not supported: expected a positive multiple of 16 (16-byte rows for TMA "
                         f"and cp.async)")
    if n == 0 or n % 8:
        raise ValueError(f"w: N = {n} is not supported: expected a positive multiple of 8 (16-byte output rows)")
    for name, t in (("a", a), ("w", w)):
        if t.size(0) > 1 and t.stride(0) % 16:
            raise ValueError(f"{name}: expected a row stride that is a multiple of 16 elements, got strides "
                             f"{tuple(t.stride())}")
    C.check_tensor("a_scale", a_scale, dtypes=(torch.float32,), ndim=1, device=a.device)
    if a_scale.size(0) != m:
        raise ValueError(f"a_scale: expected shape [{m}] (M of a), got {tuple(a_scale.shape)}")
    C.check_tensor("w_scale", w_scale, dtypes=(torch.float32,), ndim=1, device=a.device)
    if w_scale.size(0) != n:
        raise ValueError(f"w_scale: expected shape [{n}] (N of w), got {tuple(w_scale.shape)}")
    if out_dtype not in C.HALF_DTYPES:
        raise TypeError(f"out_dtype: expected bfloat16/float16, got {str(out_dtype).replace('torch.', '')}")
    if bias is not None:
        C.check_tensor("bias", bias, dtypes=(out_dtype,), ndim=1, device=a.device)
        if bias.size(0) != n:
            raise ValueError(f"bias: expected shape [{n}] (N of w), got {tuple(bias.shape)}")
    C.check_choice("backend", backend, GEMM_BACKENDS)
    if backend == "mma" and a.dtype != torch.int8:
        raise ValueError("backend: 'mma' (the mma.sync kernel) supports int8 inputs only, got float8_e4m3fn")
    _check_sm90_config(sm90_config, a.dtype, backend)


def _fake_gemm(a, a_scale, w, w_scale, bias, out_dtype, backend, sm90_config=()):
    return torch.empty((a.size(0), w.size(0)), dtype=out_dtype, device=a.device)


_register("w8a8_gemm(Tensor a, Tensor a_scale, Tensor w, Tensor w_scale, Tensor? bias, ScalarType out_dtype, "
          "str backend, int[] sm90_config=[]) -> Tensor", _check_gemm, ref.w8a8_gemm, _fake_gemm)


def w8a8_gemm(a: torch.Tensor, a_scale: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor | None = None, *, out_dtype: torch.dtype = torch.bfloat16,
              backend: str = "auto", sm90_config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """y [M, N] = (a @ w^T) * a_scale[m] * w_scale[n] + bias[n] in float32, stored as out_dtype (bf16/fp16).

    a [M, K] and w [N, K] both int8 or both float8_e4m3fn (K % 16 == 0, N % 8 == 0, unit last stride);
    a_scale [M] and w_scale [N] float32; bias [N] in out_dtype or None. INT8 accumulates exactly in
    int32. backend (CUDA only): "auto" (sm90 CUTLASS kernel on Hopper, mma.sync kernel elsewhere),
    "sm90" (TMA + wgmma, Hopper only) or "mma" (mma.sync, int8 only; runs on sm80+ including H100).
    sm90_config (tuning, with backend="sm90"): (tile, raster_along_m, swizzle) instead of the heuristics
    table: tile indexes GEMM_SM90_TILES[a.dtype], raster_along_m is 0/1, swizzle 1/2/4/8.
    """
    return torch.ops.turbodiffusion.w8a8_gemm(a, a_scale, w, w_scale, bias, out_dtype, backend,
                                              list(sm90_config or ()))


# --------------------------------------------------------------------------------------------------
# attention_int8_fp8_{mma,sm90}: INT8 Q K^T + FP8 P V on already-quantized tensors (§4.1), the mma.sync
# kernel (csrc/include/turbodiffusion/attention/mma_int8_fp8_attn.cuh; sm_89/90/120) and the Hopper
# wgmma kernel (sm90_int8_fp8_attn.cuh). CPU = their float32 emulation (64- and 128-key tiles).
# Their granularity is fixed by the MMA fragments (reference/attention.py, heuristics.h): one Q scale
# per 16 rows (a warp's m16 rows), one K scale per 16 keys, V padded to 64 keys.
ATTN_MMA_BLK_Q = ref.attention.MMA_BLK_Q
ATTN_MMA_BLK_K = ref.attention.MMA_BLK_K
ATTN_MMA_KV_TILE = ref.attention.MMA_KV_TILE
_LOG2E = 1.4426950408889634


def _check_quantized_attention_tensor(name, t, layout, device=None, contiguous=False):
    C.check_tensor(name, t, dtypes=(torch.int8,), ndim=4, device=device)
    b, h, n, d = C.bhnd(t, layout)
    C.check_head_dim(name, d)
    if any(t.size(i) > 1 and t.stride(i) % 16 for i in range(3)):
        raise ValueError(f"{name}: expected 16-byte aligned rows (strides multiples of 16 elements), got strides "
                         f"{tuple(t.stride())}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: the sm90 kernel loads it with TMA and expects a contiguous tensor (as "
                         f"quantize_qk_int8 returns it), got strides {tuple(t.stride())}")
    return b, h, n, d


def _check_f32(name, t, shape, device):
    C.check_tensor(name, t, dtypes=(torch.float32,), device=device)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, got strides {tuple(t.stride())}")


def _check_attn_quantized(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale, layout, sm_scale,
                          contiguous=False):
    C.check_layout(layout)
    C.check_attention_tensor("q", q, layout)
    dev = q.device
    b, h, nq, d = _check_quantized_attention_tensor("q_int8", q_int8, layout, dev, contiguous)
    if q_int8.shape != q.shape:
        raise ValueError(f"q_int8: expected shape {tuple(q.shape)} (like q), got {tuple(q_int8.shape)}")
    bk, hk, nk, dk = _check_quantized_attention_tensor("k_int8", k_int8, layout, dev, contiguous)
    if (bk, hk, dk) != (b, h, d):
        raise ValueError(f"k_int8: expected batch, heads and head dim {(b, h, d)} (like q_int8), got {(bk, hk, dk)}")
    if nk == 0:
        raise ValueError("k_int8: expected at least one key, got 0")
    _check_f32("q_scale", q_scale, (b, h, _cdiv(nq, ATTN_MMA_BLK_Q)), dev)
    _check_f32("k_scale", k_scale, (b, h, _cdiv(nk, ATTN_MMA_BLK_K)), dev)
    _check_f32("k_mean", k_mean, (b, h, d), dev)
    _check_f32("v_scale", v_scale, (b, h, d), dev)
    C.check_tensor("v_fp8", v_fp8, dtypes=(torch.float8_e4m3fn,), ndim=4, device=dev)
    t = ATTN_MMA_KV_TILE
    if tuple(v_fp8.shape[:3]) != (b, h, d) or v_fp8.size(3) % t or v_fp8.size(3) < nk:
        raise ValueError(f"v_fp8: expected shape [{b}, {h}, {d}, N_pad] with N_pad a multiple of {t} and >= {nk} "
                         f"(quantize_v_fp8 with pad_to={t}), got {list(v_fp8.shape)}")
    if not v_fp8.is_contiguous():
        raise ValueError(f"v_fp8: expected a contiguous tensor, got strides {tuple(v_fp8.stride())}")
    if not (math.isfinite(sm_scale) and sm_scale > 0):
        raise ValueError(f"sm_scale: expected a finite positive number, got {sm_scale}")


def _fake_attn_quantized(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale, layout, sm_scale):
    b, h, nq, d = C.bhnd(q, layout)
    shape = (b, nq, h, d) if layout == "NHD" else (b, h, nq, d)
    return (torch.empty(shape, dtype=q.dtype, device=q.device),
            torch.empty((b, h, nq), dtype=torch.float32, device=q.device))


_ATTN_QUANTIZED_ARGS = ("(Tensor q, Tensor q_int8, Tensor q_scale, Tensor k_int8, Tensor k_scale, Tensor k_mean, "
                        "Tensor v_fp8, Tensor v_scale, str layout, float sm_scale) -> (Tensor, Tensor)")
_register("attention_int8_fp8_mma" + _ATTN_QUANTIZED_ARGS, _check_attn_quantized, ref.attention_int8_fp8_mma,
          _fake_attn_quantized)
_register("attention_int8_fp8_sm90" + _ATTN_QUANTIZED_ARGS,
          functools.partial(_check_attn_quantized, contiguous=True), ref.attention_int8_fp8_sm90, _fake_attn_quantized)
ATTENTION_BACKENDS = ("auto", "sm90", "mma")


def attention_int8_fp8(q: torch.Tensor, q_int8: torch.Tensor, q_scale: torch.Tensor, k_int8: torch.Tensor,
                       k_scale: torch.Tensor, k_mean: torch.Tensor, v_fp8: torch.Tensor, v_scale: torch.Tensor, *,
                       layout: str = "NHD", sm_scale: float, backend: str = "auto"):
    """Attention on quantized inputs: returns (out in q's layout and dtype, lse [B, H, Nq]).

    q_int8/k_int8 from quantize_qk_int8(blk_q=16, blk_k=16, q_scale_factor=sm_scale*log2(e)), v_fp8/v_scale
    from quantize_v_fp8(pad_to=64). q (unquantized) gives the output dtype and the K-smoothing correction
    of the natural-log lse: + sm_scale * (q . k_mean). backend: "sm90" (wgmma + TMA, sm_90 GPUs), "mma"
    (mma.sync; sm_89, sm_90, sm_120) or "auto" (sm90 on sm_90 GPUs, else mma; mma on CPU).
    """
    kernel = _attention_kernel(q, backend)
    return getattr(torch.ops.turbodiffusion, kernel)(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale,
                                                     layout, float(sm_scale))


def _attention_kernel(q: torch.Tensor, backend: str) -> str:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"backend: expected one of {ATTENTION_BACKENDS}, got {backend!r}")
    if backend == "auto":
        sm90 = q.is_cuda and torch.cuda.get_device_capability(q.device) == (9, 0)
        backend = "sm90" if sm90 else "mma"
    return "attention_int8_fp8_" + backend


def _check_sage_inputs(q, k, v, layout, sm_scale):
    C.check_layout(layout)
    b, h, _, d = C.check_attention_tensor("q", q, layout)
    bk, hk, nk, dk = C.check_attention_tensor("k", k, layout, device=q.device)
    C.check_attention_tensor("v", v, layout, device=q.device)
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {str(q.dtype).replace('torch.', '')} (like q), got "
                            f"{str(t.dtype).replace('torch.', '')}")
    if (bk, hk, dk) != (b, h, d):
        raise ValueError(f"k: expected batch, heads and head dim {(b, h, d)} (like q), got {(bk, hk, dk)}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected shape {tuple(k.shape)} (like k), got {tuple(v.shape)}")
    if nk == 0:
        raise ValueError("k: expected at least one key, got 0")
    if sm_scale is not None and not (math.isfinite(sm_scale) and sm_scale > 0):
        raise ValueError(f"sm_scale: expected a finite positive number or None, got {sm_scale}")


def sage_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layout: str = "NHD",
                   sm_scale: float | None = None, return_lse: bool = False, backend: str = "auto"):
    """softmax(sm_scale q k^T) v with INT8 Q K^T and FP8 P V (SageAttention2 numerics, ARCHITECTURE §4.1).

    q [B, Nq, H, D], k/v [B, Nk, H, D] ("NHD") or [B, H, N, D] ("HND"); bf16/fp16, D in {64, 128}, any Nq
    and Nk >= 1; sm_scale defaults to 1/sqrt(D). Quantization is included: per-16-row Q and per-16-key
    smoothed K scales (the kernel's fragment granularity), per-channel FP8 V. Returns the output in q's
    layout and dtype, and with return_lse also lse [B, H, Nq] float32 (natural log of sum exp(sm_scale q.k)).
    backend: the attention kernel, see attention_int8_fp8.
    """
    _check_sage_inputs(q, k, v, layout, sm_scale)
    kernel = getattr(torch.ops.turbodiffusion, _attention_kernel(q, backend))  # a bad backend fails before any work
    d = q.shape[-1]
    scale = float(sm_scale) if sm_scale is not None else 1.0 / math.sqrt(d)
    q_i8, q_s, k_i8, k_s, km = quantize_qk_int8(q, k, layout=layout, blk_q=ATTN_MMA_BLK_Q, blk_k=ATTN_MMA_BLK_K,
                                                q_scale_factor=scale * _LOG2E)
    v8, vs = quantize_v_fp8(v, layout=layout, pad_to=ATTN_MMA_KV_TILE)
    out, lse = kernel(q, q_i8, q_s, k_i8, k_s, km, v8, vs, layout, scale)
    return (out, lse) if return_lse else out


# --------------------------------------------------------------------------------------------------
# Sparse-Linear Attention (ARCHITECTURE §4.2-4.3, docs/sla.md): block map, the linear branch folded
# with proj_l, and the block-sparse kernels (sm90, mma.sync) with the linear epilogue. CPU = reference/sla.py.
SLA_LIN_PAD = ref.sla.LIN_PAD
SLA_MAX_BLOCK = 1024    # block-map pooling sizes: any positive size up to this
SLA_KV_BLOCK = 64       # the sparse kernels' block sizes are multiples of their 64-row CTA and 64-key tile


def _check_same_qk(q, k, layout, kname="k"):
    C.check_layout(layout)
    b, h, _, d = C.check_attention_tensor("q", q, layout)
    bk, hk, nk, dk = C.check_attention_tensor(kname, k, layout, device=q.device)
    if k.dtype != q.dtype:
        raise TypeError(f"{kname}: expected dtype {str(q.dtype).replace('torch.', '')} (like q), got "
                        f"{str(k.dtype).replace('torch.', '')}")
    if (bk, hk, dk) != (b, h, d):
        raise ValueError(f"{kname}: expected batch, heads and head dim {(b, h, d)} (like q), got {(bk, hk, dk)}")
    if nk == 0:
        raise ValueError(f"{kname}: expected at least one key, got 0")
    return b, h, d, nk


def _check_block(name, blk, multiple=1, maximum=SLA_MAX_BLOCK):
    if not isinstance(blk, int) or blk <= 0 or blk % multiple or blk > maximum:
        what = f"a positive multiple of {multiple}" if multiple > 1 else "a positive integer"
        raise ValueError(f"{name}: expected {what} <= {maximum}, got {blk!r}")


def _check_topk(topk):
    if not (isinstance(topk, (int, float)) and math.isfinite(topk) and 0.0 <= topk <= 1.0):
        raise ValueError(f"topk: expected a fraction in [0, 1], got {topk!r}")


# Query x key blocks of one (b, h) the block map scores at most (1 GiB of fp32 scores; sla::kMaxBlockPairs).
MAX_BLOCK_PAIRS = 1 << 28


def _check_block_map(q, k, layout, blkq, blkk, topk):
    _check_same_qk(q, k, layout)
    _check_block("blkq", blkq)
    _check_block("blkk", blkk)
    _check_topk(topk)
    mq, mk = _cdiv(C.bhnd(q, layout)[2], blkq), _cdiv(C.bhnd(k, layout)[2], blkk)
    if mq * mk > MAX_BLOCK_PAIRS:
        raise ValueError(f"blkq, blkk: {mq} x {mk} query x key blocks per (b, h) need more than 1 GiB of fp32 "
                         "scores: use larger blocks")


def _fake_block_map(q, k, layout, blkq, blkk, topk):
    b, h, nq, d = C.bhnd(q, layout)
    mq, mk = _cdiv(nq, blkq), _cdiv(C.bhnd(k, layout)[2], blkk)
    i32 = dict(dtype=torch.int32, device=q.device)
    return (torch.empty((b, h, mq, ref.sla.kept_blocks(topk, mk)), **i32), torch.empty((b, h, mq), **i32),
            torch.empty((b, h, d), dtype=torch.float32, device=q.device))


_register("sla_block_map(Tensor q, Tensor k, str layout, int blkq, int blkk, float topk) -> (Tensor, Tensor, Tensor)",
          _check_block_map, ref.sla_block_map, _fake_block_map)


def _check_block_map_qk(q, k, layout, blkq, blkk, topk, blk_q, blk_k, q_scale_factor, k_block_sums=None):
    _check_block_map(q, k, layout, blkq, blkk, topk)
    _check_qk(q, k, layout, blk_q, blk_k, q_scale_factor)
    if k_block_sums is not None:
        b, h, nk, d = C.bhnd(k, layout)
        _check_proj("k_block_sums", k_block_sums, (b, h, _cdiv(nk, blkk), d), torch.float32, q.device)


def _fake_block_map_qk(q, k, layout, blkq, blkk, topk, blk_q, blk_k, q_scale_factor, k_block_sums=None):
    lut, count, k_mean = _fake_block_map(q, k, layout, blkq, blkk, topk)
    return (lut, count, *_fake_qk(q, k, layout, blk_q, blk_k, q_scale_factor)[:4], k_mean)


_register("sla_block_map_quantize_qk(Tensor q, Tensor k, str layout, int blkq, int blkk, float topk, int blk_q, "
          "int blk_k, float q_scale_factor, Tensor? k_block_sums=None) -> "
          "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
          _check_block_map_qk, ref.sla_block_map_quantize_qk, _fake_block_map_qk)


def _check_proj(name, t, shape, dtype, device):
    C.check_tensor(name, t, dtypes=(dtype,), device=device)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, got strides {tuple(t.stride())}")


def _check_linear_state(k, v, proj_weight, layout, key_block=0):
    _, _, d, _ = _check_same_qk(k, v, layout, kname="v")
    if v.shape != k.shape:
        raise ValueError(f"v: expected shape {tuple(k.shape)} (like k), got {tuple(v.shape)}")
    _check_proj("proj_weight", proj_weight, (d, d), torch.float32, k.device)
    if key_block != 0:
        _check_block("key_block", key_block)


def _fake_linear_state(k, v, proj_weight, layout, key_block=0):
    b, h, n, d = C.bhnd(k, layout)
    f32 = dict(dtype=torch.float32, device=k.device)
    return (torch.empty((b, h, d + SLA_LIN_PAD, d), dtype=torch.float16, device=k.device), torch.empty((b, h, d), **f32),
            torch.empty((b, h, _cdiv(n, key_block) if key_block else 0, d), **f32))


_register("sla_linear_state(Tensor k, Tensor v, Tensor proj_weight, str layout, int key_block=0) -> "
          "(Tensor, Tensor, Tensor)", _check_linear_state, ref.sla_linear_state, _fake_linear_state)


def _check_sparse_attn(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale, lut, count, lin, lin_bias, layout,
                       sm_scale, blkq, blkk, kernel="mma"):
    _check_attn_quantized(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale, layout, sm_scale,
                          contiguous=kernel == "sm90")
    _check_block("blkq", blkq, SLA_KV_BLOCK)
    _check_block("blkk", blkk, SLA_KV_BLOCK)
    b, h, nq, d = C.bhnd(q, layout)
    mq = _cdiv(nq, blkq)
    C.check_tensor("lut", lut, dtypes=(torch.int32,), ndim=4, device=q.device)
    if tuple(lut.shape[:3]) != (b, h, mq) or not lut.is_contiguous():
        raise ValueError(f"lut: expected a contiguous tensor of shape [{b}, {h}, {mq}, max_kept] (Mq = ceil({nq} / "
                         f"blkq {blkq})), got shape {list(lut.shape)} strides {tuple(lut.stride())}")
    _check_proj("count", count, (b, h, mq), torch.int32, q.device)
    if (lin is None) != (lin_bias is None):
        raise ValueError(f"lin_bias: expected a tensor exactly when lin is given, got lin "
                         f"{'set' if lin is not None else None} and lin_bias {'set' if lin_bias is not None else None}")
    if lin is not None:
        _check_proj("lin", lin, (b, h, d + SLA_LIN_PAD, d), torch.float16, q.device)
        if lin.storage_offset() % 2:  # allocations are aligned; an odd float16 offset is not (works on fake tensors)
            raise ValueError("lin: expected a 4-byte aligned base address (the kernels read pairs of float16), got a "
                             f"view at element offset {lin.storage_offset()}")
        _check_proj("lin_bias", lin_bias, (d,), torch.float32, q.device)


def _fake_sparse_attn(q, *args):
    return _fake_attn_quantized(q, *args[:7], args[11], args[12])


_SPARSE_ARGS = ("(Tensor q, Tensor q_int8, Tensor q_scale, Tensor k_int8, Tensor k_scale, Tensor k_mean, "
                "Tensor v_fp8, Tensor v_scale, Tensor lut, Tensor count, Tensor? lin, Tensor? lin_bias, str layout, "
                "float sm_scale, int blkq, int blkk) -> (Tensor, Tensor)")
_register("attention_int8_fp8_sparse_mma" + _SPARSE_ARGS, _check_sparse_attn, ref.attention_int8_fp8_sparse_mma,
          _fake_sparse_attn)
_register("attention_int8_fp8_sparse_sm90" + _SPARSE_ARGS, functools.partial(_check_sparse_attn, kernel="sm90"),
          ref.attention_int8_fp8_sparse_sm90, _fake_sparse_attn)


def sla_block_map(q: torch.Tensor, k: torch.Tensor, *, topk: float, blkq: int = 64, blkk: int = 64,
                  layout: str = "NHD", return_k_mean: bool = False):
    """SLA block map (§4.3): mean-pooled q (blkq rows) against mean-pooled k - mean_N(k) (blkk rows), each
    query block keeping its kept = min(Mk, int(topk * Mk)) highest-scoring key blocks.

    Returns (lut [B, H, Mq, kept] int32, indices sorted ascending; count [B, H, Mq] int32, all = kept), and
    with return_k_mean the mean_N(k) it centred with (float32 [B, H, D]; quantize_qk_int8 takes it).
    """
    lut, count, k_mean = torch.ops.turbodiffusion.sla_block_map(q, k, layout, blkq, blkk, float(topk))
    return (lut, count, k_mean) if return_k_mean else (lut, count)


def sla_block_map_quantize_qk(q: torch.Tensor, k: torch.Tensor, *, topk: float, blkq: int = 64, blkk: int = 64,
                              layout: str = "NHD", blk_q: int = 64, blk_k: int = 128, q_scale_factor: float = 1.0,
                              k_block_sums: torch.Tensor | None = None):
    """sla_block_map and then quantize_qk_int8 with the map's mean_N(k) (sage_sla's first steps), as one op: on
    a GPU the quantizer's pass over q also gives the map's pooled q (no second read of q), with the same
    results bit for bit. k_block_sums: the sums of k over its blkk-token blocks (float32 [B, H, ceil(Nk / blkk),
    D], from sla_linear_state with key_block=blkk): the map's k mean and key means then come from them instead
    of a pass over k (the same up to float32 summation order). Returns (lut, count, q_int8, q_scale, k_int8,
    k_scale, k_mean)."""
    return torch.ops.turbodiffusion.sla_block_map_quantize_qk(q, k, layout, blkq, blkk, float(topk), blk_q, blk_k,
                                                               float(q_scale_factor), k_block_sums)


def sla_linear_state(k: torch.Tensor, v: torch.Tensor, proj_weight: torch.Tensor, *, layout: str = "NHD",
                     return_v_amax: bool = False, key_block: int = 0):
    """SLA's linear branch over all keys folded with proj_l.weight W: float16 [B, H, D + 8, D] holding
    (phi(k)^T v W^T)^T / Nk in rows < D and sum_N phi(k) / Nk in row D (phi = softmax over the head dim);
    with return_v_amax also amax_N |v| (float32 [B, H, D], read on the way; quantize_v_fp8 takes it); with
    key_block > 0 also the sums of k over every key_block tokens (float32 [B, H, ceil(Nk / key_block), D], on a
    GPU from the same pass where key_block is a multiple of 32; sla_block_map_quantize_qk takes them)."""
    lin, v_amax, k_sums = torch.ops.turbodiffusion.sla_linear_state(k, v, proj_weight, layout, key_block)
    out = (lin,) + ((v_amax,) if return_v_amax else ()) + ((k_sums,) if key_block else ())
    return out if len(out) > 1 else lin


def attention_int8_fp8_sparse(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale, lut, count, lin=None,
                              lin_bias=None, *, layout: str = "NHD", sm_scale: float, blkq: int, blkk: int,
                              backend: str = "auto"):
    """Block-sparse attention_int8_fp8: each query block (blkq rows) attends to the keys of the key blocks
    (blkk keys) listed in lut[b, h, qblock, :count]. Empty rows give 0 and lse -inf. With lin
    (sla_linear_state) and lin_bias (proj_l.bias), the epilogue adds SLA's projected linear branch.
    blkq, blkk: multiples of 64. backend: "mma" (64-key tiles), "sm90" (sm_90 GPUs; 128-key tiles, each two
    consecutive 64-key tiles of the walk) or "auto" (sm90 on sm_90 GPUs, else mma)."""
    kernel = _sparse_kernel(q, backend)
    return getattr(torch.ops.turbodiffusion, kernel)(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale,
                                                     lut, count, lin, lin_bias, layout, float(sm_scale), blkq, blkk)


def _sparse_kernel(q: torch.Tensor, backend: str) -> str:
    return _attention_kernel(q, backend).replace("attention_int8_fp8_", "attention_int8_fp8_sparse_")


def _check_sla_inputs(q, k, v, proj_weight, proj_bias, topk, layout, sm_scale, blkq, blkk):
    _check_sage_inputs(q, k, v, layout, sm_scale)
    _, _, _, d = C.bhnd(q, layout)
    _check_proj("proj_weight", proj_weight, (d, d), torch.float32, q.device)
    _check_proj("proj_bias", proj_bias, (d,), torch.float32, q.device)
    _check_topk(topk)
    _check_block("blkq", blkq, SLA_KV_BLOCK)
    _check_block("blkk", blkk, SLA_KV_BLOCK)


def sage_sla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj_weight: torch.Tensor, proj_bias: torch.Tensor,
             topk: float, *, blkq: int = 64, blkk: int = 64, layout: str = "NHD", sm_scale: float | None = None,
             return_lse: bool = False, lut: torch.Tensor | None = None, count: torch.Tensor | None = None,
             backend: str = "auto"):
    """SageSLA (§4.3): block-sparse INT8/FP8 attention over the top-k key blocks plus proj_l of the linear
    branch, fused in the sparse kernel's epilogue.

    q, k, v [B, N, H, D] ("NHD") or [B, H, N, D] ("HND"), bf16/fp16, D in {64, 128}; proj_weight [D, D] and
    proj_bias [D] float32 (proj_l); blkq, blkk multiples of 64. The block map (sla_block_map) is computed
    unless lut/count are given. Returns the output in q's layout and dtype (and lse [B, H, Nq] of the sparse
    branch alone with return_lse). backend: the sparse kernel, see attention_int8_fp8_sparse.
    """
    _check_sla_inputs(q, k, v, proj_weight, proj_bias, topk, layout, sm_scale, blkq, blkk)
    kernel = getattr(torch.ops.turbodiffusion, _sparse_kernel(q, backend))  # a bad backend fails first
    d = q.shape[-1]
    scale = float(sm_scale) if sm_scale is not None else 1.0 / math.sqrt(d)
    # First the linear branch, one pass over k and v that also gives amax_N |v| (V's quantizer is then one pass)
    # and, where the block map is computed, the sums of k over its key blocks (the map's key side needs no pass
    # over k). Then V's quantizer runs on a side stream on a GPU while the block map and the Q/K quantizer run on
    # this one (the map's scores and top-k are compute-bound, V's quantizer bandwidth-bound: docs/sla.md), and
    # the two join before the sparse kernel. (Traced by torch.compile: in order, one stream.)
    key_block = blkk if lut is None else 0
    lin, v_amax, *k_sums = sla_linear_state(k, v, proj_weight, layout=layout, return_v_amax=True, key_block=key_block)
    side = _sla_side_stream(q.device) if q.is_cuda and not torch.compiler.is_compiling() else None
    if side is not None:
        main = torch.cuda.current_stream(q.device)
        side.wait_stream(main)
    with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
        v8, vs = quantize_v_fp8(v, layout=layout, pad_to=ATTN_MMA_KV_TILE, v_amax=v_amax)
    if lut is None:  # the block map and the Q/K quantizer in one op: one pass over q, K's mean from the map
        lut, count, q_i8, q_s, k_i8, k_s, km = sla_block_map_quantize_qk(
            q, k, topk=topk, blkq=blkq, blkk=blkk, layout=layout, blk_q=ATTN_MMA_BLK_Q, blk_k=ATTN_MMA_BLK_K,
            q_scale_factor=scale * _LOG2E, k_block_sums=k_sums[0])
    else:
        q_i8, q_s, k_i8, k_s, km = quantize_qk_int8(q, k, layout=layout, blk_q=ATTN_MMA_BLK_Q, blk_k=ATTN_MMA_BLK_K,
                                                    q_scale_factor=scale * _LOG2E)
    if side is not None:
        main.wait_stream(side)
        for t in (v8, vs):
            t.record_stream(main)  # (allocated on the side stream, used and freed on this one)
    out, lse = kernel(q, q_i8, q_s, k_i8, k_s, km, v8, vs, lut, count, lin, proj_bias, layout, scale, blkq, blkk)
    return (out, lse) if return_lse else out


@functools.cache
def _sla_side_stream(device: torch.device) -> torch.cuda.Stream:
    """sage_sla's second stream on `device` (one per device and process)."""
    return torch.cuda.Stream(device=device)


SLA_BACKENDS = ("auto", "flex", "sdpa")


def sla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj_weight: torch.Tensor, proj_bias: torch.Tensor,
        topk: float, *, blkq: int = 64, blkk: int = 64, layout: str = "NHD", sm_scale: float | None = None,
        backend: str = "auto"):
    """SLA without quantization, for accuracy comparisons: the same block map (sla_block_map), the sparse
    branch as exact softmax attention over the kept blocks in the input dtype, the linear branch and proj_l
    in float32. Returns the output in q's layout and dtype.

    backend of the sparse branch: "flex" (torch flex_attention with a BlockMask made from the block map;
    compiled on CUDA, eager elsewhere), "sdpa" (torch SDPA with a dense boolean mask, one head at a time:
    O(Nq Nk) memory per head), "auto" (flex on CUDA where torch has it, else sdpa)."""
    _check_sla_inputs(q, k, v, proj_weight, proj_bias, topk, layout, sm_scale, blkq, blkk)
    if backend not in SLA_BACKENDS:
        raise ValueError(f"backend: expected one of {SLA_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "flex" if q.is_cuda and _flex_attention(True) is not None else "sdpa"
    lut, count = sla_block_map(q, k, topk=topk, blkq=blkq, blkk=blkk, layout=layout)
    qb, kb, vb = (ref.sla._bhnd(x, layout) for x in (q, k, v))
    sparse = _sla_sparse_flex if backend == "flex" else _sla_sparse_sdpa
    out = ref.sla.sla_linear_branch(q, k, v, layout) @ proj_weight.T
    out += proj_bias
    out += sparse(qb, kb, vb, lut, count, blkq, blkk, sm_scale)
    return ref.sla._from_bhnd(out.to(q.dtype), layout)


def _sla_sparse_sdpa(q, k, v, lut, count, blkq, blkk, sm_scale):
    """SLA's sparse branch on [B, H, N, D] via SDPA with a dense boolean mask per head; empty rows give 0."""
    nq, nk = q.shape[2], k.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for h in range(q.shape[1]):
        mask = ref.sla.lut_key_mask(lut[:, h:h + 1], count[:, h:h + 1], nq, nk, blkq, blkk)
        o = torch.nn.functional.scaled_dot_product_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1],
                                                             attn_mask=mask, scale=sm_scale)
        out[:, h:h + 1] = torch.nan_to_num(o, nan=0.0) * mask.any(-1, keepdim=True)
    return out


@functools.cache
def _flex_attention(compiled: bool):
    """torch's flex_attention, compiled once per process (static shapes: one kernel per shape) or eager;
    None where torch lacks it."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def sla_flex_block_mask(lut, count, nq: int, nk: int, blkq: int, blkk: int):
    """flex_attention BlockMask of SLA's sparse branch: query block i attends to the key blocks in
    lut[b, h, i, :count] (sla_block_map's semantics, invalid entries ignored), all as full blocks (no
    mask_mod evaluated in the fused kernel). A partial last key block needs no mask: the kernel masks keys
    at or past KV_LEN (k's length) in every block when KV_LEN is not a multiple of the block size. The
    mask_mod carries the block table, so the eager (unfused) flex_attention, which applies only the
    mask_mod over [Nq, Nk], gives the same result."""
    from torch.nn.attention.flex_attention import BlockMask

    kept = ref.sla.lut_block_mask(lut, count, _cdiv(nk, blkk)).contiguous()
    none = torch.zeros_like(count)
    # indices padded to width Mk: torch < 2.14 takes the number of key blocks from that width
    idx = torch.sort(kept.to(torch.int8), dim=-1, descending=True, stable=True).indices.to(torch.int32)

    def mask_mod(b, h, q_idx, kv_idx):
        return kept[b, h, q_idx // blkq, kv_idx // blkk]

    return BlockMask.from_kv_blocks(none, torch.zeros_like(idx), kept.sum(-1, dtype=torch.int32), idx,
                                    BLOCK_SIZE=(blkq, blkk), mask_mod=mask_mod, seq_lengths=(nq, nk))


def _sla_sparse_flex(q, k, v, lut, count, blkq, blkk, sm_scale):
    """SLA's sparse branch on [B, H, N, D] via flex_attention (rows with no kept block give 0)."""
    block_mask = sla_flex_block_mask(lut, count, q.shape[2], k.shape[2], blkq, blkk)
    if not q.is_cuda:
        with warnings.catch_warnings():  # the unfused path is meant here (small CPU runs, tests)
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return _flex_attention(False)(q, k, v, block_mask=block_mask, scale=sm_scale)
    # kernel tiles that divide the sparse blocks (multiples of 64); torch < 2.14 does not shrink its defaults
    tiles = {"BLOCK_M": 128 if blkq % 128 == 0 else 64, "BLOCK_N": 64}
    return _flex_attention(True)(q, k, v, block_mask=block_mask, scale=sm_scale, kernel_options=tiles)
