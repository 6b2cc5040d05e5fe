"""Reference attention (ARCHITECTURE §4.1): exact softmax attention, and an emulation of the quantized
mma.sync kernel (csrc/include/turbodiffusion/attention/mma_int8_fp8_attn.cuh) written with the
kernel's own float32 operations, so kernel exactness is tested apart from quantization error.

Numerics of the quantized kernel (and of `attention_int8_fp8_mma` below):
  * Q, K: INT8 codes with one float32 scale per MMA_BLK_Q query rows / MMA_BLK_K keys; q's scale
    already carries sm_scale * log2(e), so scores are in the log2 domain:
        s = float(q_i8 . k_i8) * (q_scale * k_scale)            (int32 dot, exact; fp32 products)
    (k is smoothed, k - mean_N(k): exact for the softmax, corrected in the LSE below).
  * Online softmax over KV tiles of MMA_KV_TILE keys, keys >= Nk masked to -inf:
        m' = max(m, max_tile s);  alpha = exp2(m - m');  m_off = m' - log2(448)
        P  = exp2(fl(acc * (q_scale * k_scale) - m_off))  in (0, 448]  (one rounding: the kernels
             fuse it into an FMA; the offset makes P land in E4M3's range, no per-row scale)
        l  = l * alpha + sum(P)                                 (fp32 P, before the FP8 cast; the sm90
                                                                 kernel sums e4m3(P) on its tensor cores)
        O  = O * alpha + (e4m3(P) @ v_fp8_tile)                 (a fresh fp32 sum per tile: two-level)
  * out = O * (1 / l) * v_scale[channel]  (the 448 offset cancels in O / l);
    lse = (log2(l) + m_off + c * (q . k_mean)) * ln(2), c = fp32(sm_scale * log2 e)  (natural log,
    smoothing undone with the unquantized q: the q-quantization error of q . k_mean is constant per
    row, so it cancels in the softmax but would not in the LSE).
The kernel's exp2 is `ex2.approx` and its FP8 MMA sums in a different order, so kernel and emulation
agree to a few float32 ulps per term, not bit for bit (tests/test_attention.py bounds the difference).
"""
from __future__ import annotations

import math

import torch

from .quant import V_TOKEN_PERM

# Granularity of the mma.sync kernel (csrc/include/turbodiffusion/attention/heuristics.h):
MMA_BLK_Q = 16      # one Q scale per 16 query rows = one warp's m16 rows of the MMA
MMA_BLK_K = 16      # one K scale per 16 keys = two n8 columns of the QK^T accumulator
MMA_KV_TILE = 64    # keys per KV tile; V must be padded to a multiple of it
# The sm90 (wgmma) kernel has the same granularity with 128-key tiles (heuristics.h Sm90AttnConfig; its
# block-sparse variant pairs 64-key tiles of its walk into them); it takes the same 64-padded V (TMA
# zero-fills the rest of a tile).
SM90_KV_TILE = 128
LOG2_448 = math.log2(448.0)
LN2 = math.log(2.0)
LOG2E = 1.0 / math.log(2.0)


def _bhnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if layout == "NHD" else x


def attention_exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str = "NHD",
                    sm_scale: float | None = None, dtype: torch.dtype = torch.float64):
    """softmax(sm_scale q k^T) v computed in `dtype` (float64 by default): (out [B,H,Nq,D], lse [B,H,Nq]).

    Output is in [B, H, N, D] order whatever the input layout; lse is the natural-log logsumexp of
    the scaled scores.
    """
    q, k, v = (_bhnd(x, layout).to(dtype) for x in (q, k, v))
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    lse = torch.logsumexp(s, dim=-1)
    out = torch.einsum("bhqk,bhkd->bhqd", torch.exp(s - lse[..., None]), v)
    return out, lse


def _unpermute_v(v_fp8: torch.Tensor) -> torch.Tensor:
    """[B, H, D, N_pad] FP8 codes in the kernel's permuted order -> float32 [B, H, N_pad, D] in token order."""
    n_pad = v_fp8.shape[-1]
    perm = torch.tensor(V_TOKEN_PERM, dtype=torch.long, device=v_fp8.device)
    src = (torch.arange(0, n_pad, 16, device=v_fp8.device)[:, None] + perm[None, :]).reshape(-1)
    inv = torch.empty_like(src)
    inv[src] = torch.arange(n_pad, device=v_fp8.device)
    return v_fp8.float()[..., inv].transpose(2, 3)


def attention_int8_fp8_mma(q: torch.Tensor, q_int8: torch.Tensor, q_scale: torch.Tensor, k_int8: torch.Tensor,
                           k_scale: torch.Tensor, k_mean: torch.Tensor, v_fp8: torch.Tensor,
                           v_scale: torch.Tensor, layout: str, sm_scale: float, kv_tile: int = MMA_KV_TILE,
                           l_of_fp8_p: bool = False):
    """Emulation of the mma.sync INT8-QK / FP8-PV attention kernel on already-quantized inputs
    (kv_tile = SM90_KV_TILE, l_of_fp8_p: of the sm90 wgmma kernel, whose online softmax steps over 128 keys
    and whose row sums l add the E4M3 P on the tensor cores instead of the fp32 P).

    q (bf16/fp16, the unquantized queries: only for the LSE correction and the output dtype),
    q_int8 [B, Nq, H, D] / k_int8 [B, Nk, H, D] ("NHD") or [B, H, N, D] ("HND"); q_scale
    [B, H, ceil(Nq/16)] (with sm_scale*log2 e folded in), k_scale [B, H, ceil(Nk/16)], k_mean [B, H, D],
    v_fp8 [B, H, D, N_pad] (permuted, N_pad % 64 == 0, N_pad >= Nk), v_scale [B, H, D].
    Returns (out in q's layout, contiguous, q's dtype; lse float32 [B, H, Nq], natural log).
    """
    dev = q_int8.device
    out_dtype = q.dtype
    q_orig = _bhnd(q, layout).float()
    # INT8 dot products in float32 are exact: every partial sum is an integer below 128 * 127^2 < 2^24.
    q = _bhnd(q_int8, layout).float()
    k = _bhnd(k_int8, layout).float()
    b, h, nq, d = q.shape
    nk = k.shape[2]
    qs = q_scale.repeat_interleave(MMA_BLK_Q, dim=2)[:, :, :nq]                       # [B, H, Nq]
    ks = k_scale.repeat_interleave(MMA_BLK_K, dim=2)[:, :, :nk]                       # [B, H, Nk]
    v = _unpermute_v(v_fp8)                                                           # [B, H, N_pad, D]
    m = torch.full((b, h, nq), -math.inf, dtype=torch.float32, device=dev)
    l = torch.zeros(b, h, nq, dtype=torch.float32, device=dev)
    o = torch.zeros(b, h, nq, d, dtype=torch.float32, device=dev)
    log2_448 = torch.tensor(LOG2_448, dtype=torch.float32)
    for t0 in range(0, nk, kv_tile):
        t1 = min(t0 + kv_tile, nk)
        acc = q @ k[:, :, t0:t1].transpose(2, 3)                                      # exact int32 sums
        sc = qs[..., None] * ks[:, :, None, t0:t1]
        m_new = torch.maximum(m, (acc * sc).amax(dim=-1))
        alpha = torch.exp2(m - m_new)
        m_off = m_new - log2_448
        # fl(acc * sc - m_off) with one rounding (the kernels' FMA): exact in float64, then rounded.
        p = torch.exp2((acc.double() * sc.double() - m_off.double()[..., None]).float())
        p8 = p.clamp(max=448.0).to(torch.float8_e4m3fn).float()                      # cvt.rn.satfinite
        l = l * alpha + (p8 if l_of_fp8_p else p).sum(dim=-1)
        o = o * alpha[..., None] + p8 @ v[:, :, t0:t1]          # exact e4m3 products, fp32 sums
        m = m_new
    m_off = m - log2_448
    c = torch.tensor(sm_scale * LOG2E, dtype=torch.float32)
    qkm = torch.einsum("bhqd,bhd->bhq", q_orig.double(), k_mean.double()).float() * c
    lse = (torch.log2(l) + m_off + qkm) * torch.tensor(LN2, dtype=torch.float32)
    out = o * (1.0 / l)[..., None] * v_scale[:, :, None, :]
    out = out.to(out_dtype)
    out = (out.transpose(1, 2) if layout == "NHD" else out).contiguous()
    return out, lse


def attention_int8_fp8_sm90(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale, layout, sm_scale):
    """Emulation of the sm90 wgmma kernel: attention_int8_fp8_mma with 128-key tiles and l of the E4M3 P."""
    return attention_int8_fp8_mma(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale, layout, sm_scale,
                                  kv_tile=SM90_KV_TILE, l_of_fp8_p=True)
