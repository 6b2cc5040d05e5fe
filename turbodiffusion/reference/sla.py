"""Reference Sparse-Linear Attention (ARCHITECTURE §4.2-4.3): the executable spec of SLA / SageSLA.

Pieces, each also the CPU implementation of an op in turbodiffusion/ops.py:
  * `sla_block_map`: pooled means, block scores, per-row top-k -> (lut [B, H, Mq, kept] int32 sorted
    ascending, count [B, H, Mq] int32). Means in float32; the last block divides by its true length.
  * `sla_linear_state`: the linear branch folded with proj_l, in the layout the sparse kernel's epilogue
    reads (float16 [B, H, D + 8, D]):
        rows c < D:  (H W^T)[:, c] / Nk      H = phi(k)^T v [D, D],  W = proj_l.weight [D, D]
        row  D:      z / Nk                  z = sum_N phi(k) [D]
        rows D+1..D+7: 0                     (pads the extra n8 MMA block that yields phi(q) . z)
    Dividing by Nk keeps every entry within max|v W^T| (phi(k) rows sum to 1): float16 holds it
    unless v W^T itself exceeds 65504. The eps of the denominator is scaled alike (1e-5 / Nk).
  * `attention_int8_fp8_sparse_mma`: emulation of the block-sparse mma.sync kernel (plus the linear
    epilogue), built on the dense emulation `attention.attention_int8_fp8_mma` applied to the kept keys.
And the fp32/fp64 semantics for accuracy tests and the goldens: `sla_masked_attention`,
`sla_linear_branch`, `sla_attention`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention import MMA_BLK_K, MMA_BLK_Q, MMA_KV_TILE, SM90_KV_TILE, attention_int8_fp8_mma
from .quant import quantize_qk_int8

LIN_EPS = 1e-5     # the linear branch's denominator: 1e-5 + phi(q) . z
LIN_PAD = 8        # extra rows of the folded state: row D holds z / Nk (an n8 MMA block)


def _bhnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if layout == "NHD" else x


def _from_bhnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return (x.transpose(1, 2) if layout == "NHD" else x).contiguous()


def kept_blocks(topk: float, mk: int) -> int:
    """Key blocks kept per query block: min(Mk, floor(topk * Mk)) (Python float product, like the release)."""
    return min(mk, int(topk * mk))


def block_sums(x: torch.Tensor, blk: int) -> torch.Tensor:
    """Sums of every `blk` consecutive tokens of x [B, H, N, D] -> [B, H, ceil(N / blk), D] (the last block partial)."""
    b, h, n, d = x.shape
    nb = (n + blk - 1) // blk
    return F.pad(x, (0, 0, 0, nb * blk - n)).view(b, h, nb, blk, d).sum(dim=3)


def _block_lengths(n: int, blk: int, like: torch.Tensor) -> torch.Tensor:
    nb = (n + blk - 1) // blk
    return torch.clamp(n - blk * torch.arange(nb, device=like.device), max=blk).to(like.dtype)[:, None]


def block_means(x: torch.Tensor, blk: int) -> torch.Tensor:
    """Means of every `blk` consecutive tokens of x [B, H, N, D] (float32), the last block over its true length."""
    return block_sums(x, blk) / _block_lengths(x.shape[2], blk, x)


def _scores_and_k_mean(q: torch.Tensor, k: torch.Tensor, layout: str, blkq: int, blkk: int,
                       k_block_sums: torch.Tensor | None = None):
    q32 = _bhnd(q, layout).float()
    if k_block_sums is None:
        k32 = _bhnd(k, layout).float()
        k_mean = k32.mean(dim=2)
        pk = block_means(k32 - k_mean[:, :, None, :], blkk)
    else:  # the same means from the key-block sums (sla_linear_state's): equal up to float32 rounding
        nk = _bhnd(k, layout).shape[2]
        k_mean = k_block_sums.sum(dim=2) / nk
        pk = k_block_sums / _block_lengths(nk, blkk, k_block_sums) - k_mean[:, :, None, :]
    return block_means(q32, blkq) @ pk.transpose(2, 3), k_mean


def sla_block_scores(q: torch.Tensor, k: torch.Tensor, layout: str, blkq: int, blkk: int) -> torch.Tensor:
    """score [B, H, Mq, Mk] = mean-pooled q @ mean-pooled (k - mean_N k)^T, float32 (no scale, no softmax)."""
    return _scores_and_k_mean(q, k, layout, blkq, blkk)[0]


def sla_block_map(q: torch.Tensor, k: torch.Tensor, layout: str, blkq: int, blkk: int, topk: float,
                  k_block_sums: torch.Tensor | None = None):
    """(lut [B, H, Mq, kept] int32, kept key-block indices sorted ascending; count [B, H, Mq] int32 = kept;
    k_mean [B, H, D] float32, the mean_N k the key blocks are centred with). k_block_sums: k's key-block sums
    [B, H, Mk, D] float32 where the caller has them (sla_linear_state with key_block = blkk)."""
    score, k_mean = _scores_and_k_mean(q, k, layout, blkq, blkk, k_block_sums)
    b, h, mq, mk = score.shape
    kept = kept_blocks(topk, mk)
    lut = torch.topk(score, kept, dim=-1).indices.sort(dim=-1).values.to(torch.int32)
    return lut.contiguous(), torch.full((b, h, mq), kept, dtype=torch.int32, device=q.device), k_mean


def sla_block_map_quantize_qk(q: torch.Tensor, k: torch.Tensor, layout: str, blkq: int, blkk: int, topk: float,
                              blk_q: int, blk_k: int, q_scale_factor: float, k_block_sums: torch.Tensor | None = None):
    """sla_block_map, then quantize_qk_int8 with its k_mean (sage_sla's first steps, one op on a GPU: the
    quantizer's pass over q gives the block map's pooled q; with k_block_sums, sla_linear_state's, the map's key
    side starts from them). Returns (lut, count, q_int8, q_scale, k_int8, k_scale, k_mean)."""
    lut, count, k_mean = sla_block_map(q, k, layout, blkq, blkk, topk, k_block_sums)
    q_i8, q_s, k_i8, k_s, _ = quantize_qk_int8(q, k, layout, blk_q, blk_k, q_scale_factor, k_mean)
    return lut, count, q_i8, q_s, k_i8, k_s, k_mean


def lut_block_mask(lut: torch.Tensor, count: torch.Tensor, mk: int) -> torch.Tensor:
    """Dense [B, H, Mq, Mk] bool table of the kept key blocks of each query block (entries past count and
    outside [0, Mk) ignored)."""
    b, h, mq, width = lut.shape
    valid = torch.arange(width, device=lut.device) < count[..., None].long()
    blocks = torch.zeros(b, h, mq, mk + 1, dtype=torch.bool, device=lut.device)
    idx = torch.where(valid & (lut >= 0) & (lut < mk), lut.long(), torch.full_like(lut, mk, dtype=torch.long))
    blocks.scatter_(-1, idx, True)
    return blocks[..., :mk]


def lut_key_mask(lut: torch.Tensor, count: torch.Tensor, nq: int, nk: int, blkq: int, blkk: int) -> torch.Tensor:
    """Dense [B, H, Nq, Nk] bool mask of the keys each query attends to (entries past count ignored)."""
    blocks = lut_block_mask(lut, count, (nk + blkk - 1) // blkk)
    return blocks.repeat_interleave(blkq, 2)[:, :, :nq].repeat_interleave(blkk, 3)[..., :nk]


def sla_masked_attention(q, k, v, lut, count, layout: str, blkq: int, blkk: int, sm_scale: float | None = None,
                         dtype: torch.dtype = torch.float32):
    """Exact softmax attention of each query over the keys of its kept blocks, in `dtype`.

    Returns (out [B, H, Nq, D], lse [B, H, Nq]); a query block with no kept block gives 0 and -inf.
    """
    q, k, v = (_bhnd(x, layout).to(dtype) for x in (q, k, v))
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    mask = lut_key_mask(lut, count, q.shape[2], k.shape[2], blkq, blkk)
    s = (q @ k.transpose(2, 3) * scale).masked_fill(~mask, -math.inf)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
    return p @ v, lse


def sla_linear_branch(q, k, v, layout: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """o_l = phi(q) (phi(k)^T v) / (1e-5 + phi(q) . sum_N phi(k)), phi = softmax over the head dim: [B, H, Nq, D]."""
    q, k, v = (_bhnd(x, layout).to(dtype) for x in (q, k, v))
    pq, pk = q.softmax(dim=-1), k.softmax(dim=-1)
    h = pk.transpose(2, 3) @ v
    z = pk.sum(dim=2)
    return (pq @ h) / (LIN_EPS + (pq @ z[..., None]))


def sla_attention(q, k, v, proj_weight, proj_bias, topk: float, layout: str, blkq: int, blkk: int,
                  sm_scale: float | None = None, lut=None, count=None, dtype: torch.dtype = torch.float32):
    """SLA semantics (§4.3) in `dtype`: o = sparse softmax attention + proj_l(linear branch).

    The block map is computed from q, k (sla_block_map) unless lut/count are given. Returns the output
    [B, Nq, H, D] ("NHD") or [B, H, Nq, D] ("HND") in `dtype`.
    """
    if lut is None:
        lut, count, _ = sla_block_map(q, k, layout, blkq, blkk, topk)
    o_s, _ = sla_masked_attention(q, k, v, lut, count, layout, blkq, blkk, sm_scale, dtype)
    o_l = sla_linear_branch(q, k, v, layout, dtype)
    out = o_s + o_l @ proj_weight.to(dtype).T + proj_bias.to(dtype)
    return _from_bhnd(out, layout)


def sla_linear_state(k: torch.Tensor, v: torch.Tensor, proj_weight: torch.Tensor, layout: str, key_block: int = 0):
    """The linear branch folded with proj_l for the sparse kernel's epilogue: float16 [B, H, D + 8, D]
    (module docstring), computed in float32; amax_N |v| per channel, float32 [B, H, D] (the kernel reads all
    of v: quantize_v_fp8 takes it); and with key_block > 0 the sums of k over every key_block tokens, float32
    [B, H, ceil(N / key_block), D] (the block map's key side: sla_block_map_quantize_qk takes them), else
    [B, H, 0, D]."""
    k32, v32 = _bhnd(k, layout).float(), _bhnd(v, layout).float()
    b, h, n, d = k32.shape
    pk = k32.softmax(dim=-1)
    hw = (pk.transpose(2, 3) @ v32) @ proj_weight.float().T                          # [B, H, D(d), D(c)]
    out = torch.zeros(b, h, d + LIN_PAD, d, dtype=torch.float32, device=k.device)
    out[:, :, :d] = hw.transpose(2, 3) / n
    out[:, :, d] = pk.sum(dim=2) / n
    sums = block_sums(k32, key_block) if key_block > 0 else k32.new_zeros(b, h, 0, d)
    return out.to(torch.float16), v32.abs().amax(dim=2), sums.contiguous()


def linear_epilogue(q: torch.Tensor, lin: torch.Tensor, lin_bias: torch.Tensor, nk: int) -> torch.Tensor:
    """The kernel's linear term for q [B, H, Nq, D] (any float dtype): phi(q) (H W^T) / (1e-5 + phi(q) . z) + b,
    evaluated like the epilogue: e = exp(q - max q) rounded to float16, e @ lin (float32 sums), the 1 / sum(e)
    of phi cancelling between numerator and denominator (eps scaled by sum(e) / Nk)."""
    q32 = q.float()
    e = torch.exp(q32 - q32.amax(dim=-1, keepdim=True))
    e16 = e.to(torch.float16).float()
    d = q.shape[-1]
    lin32 = lin.float()
    num = e16 @ lin32[:, :, :d].transpose(2, 3)                                       # [B, H, Nq, D]
    den = e16 @ lin32[:, :, d, :, None] + (LIN_EPS / nk) * e.sum(dim=-1, keepdim=True)
    return num / den + lin_bias.float()


def attention_int8_fp8_sparse_mma(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale, lut, count, lin,
                                  lin_bias, layout: str, sm_scale: float, blkq: int, blkk: int,
                                  kv_tile: int = MMA_KV_TILE, l_of_fp8_p: bool = False):
    """Emulation of the block-sparse mma.sync kernel: for each query block, the dense emulation over the
    keys of its kept blocks (LUT order, the partial last block moved last so the dense tail mask applies;
    only the summation order differs from the kernel). Invalid entries (outside [0, Mk)) are skipped; an
    empty row gives 0 and lse -inf. With `lin` (sla_linear_state) the linear term is added in float32
    before the output is rounded. Returns (out in q's layout and dtype, lse float32 [B, H, Nq])."""
    qb, qi, ki = _bhnd(q, layout), _bhnd(q_int8, layout), _bhnd(k_int8, layout)
    b, h, nq, d = qb.shape
    nk = ki.shape[2]
    mk = (nk + blkk - 1) // blkk
    v_groups = v_fp8.shape[-1] // 16
    out = torch.zeros(b, h, nq, d, dtype=torch.float32, device=q.device)
    lse = torch.full((b, h, nq), -math.inf, dtype=torch.float32, device=q.device)
    for bi in range(b):
        for hi in range(h):
            for qblk in range(lut.shape[2]):
                r0, r1 = qblk * blkq, min(nq, (qblk + 1) * blkq)
                if r0 >= nq:
                    break
                kept = [int(x) for x in lut[bi, hi, qblk, : int(count[bi, hi, qblk])] if 0 <= int(x) < mk]
                if not kept:
                    continue
                kept = [x for x in kept if (x + 1) * blkk <= nk] + [x for x in kept if (x + 1) * blkk > nk]
                tok = torch.cat([torch.arange(x * blkk, min(nk, (x + 1) * blkk)) for x in kept])
                grp = torch.cat([torch.arange(x * blkk // 16, min(v_groups, (x + 1) * blkk // 16)) for x in kept])
                pos = (grp[:, None] * 16 + torch.arange(16)).reshape(-1).to(v_fp8.device)
                n_sub = tok.numel()
                v_sub = v_fp8[bi:bi + 1, hi:hi + 1, :, pos]
                v_sub = F.pad(v_sub.view(torch.uint8), (0, -(-v_sub.shape[-1] // MMA_KV_TILE) * MMA_KV_TILE
                                                        - v_sub.shape[-1])).view(torch.float8_e4m3fn)
                tok = tok.to(q.device)
                o, l = attention_int8_fp8_mma(
                    qb[bi:bi + 1, hi:hi + 1, r0:r1].float(), qi[bi:bi + 1, hi:hi + 1, r0:r1],
                    q_scale[bi:bi + 1, hi:hi + 1, r0 // MMA_BLK_Q: -(-r1 // MMA_BLK_Q)],
                    ki[bi:bi + 1, hi:hi + 1, tok], k_scale[bi:bi + 1, hi:hi + 1, tok[::MMA_BLK_K] // MMA_BLK_K],
                    k_mean[bi:bi + 1, hi:hi + 1], v_sub, v_scale[bi:bi + 1, hi:hi + 1], "HND", sm_scale,
                    kv_tile=kv_tile, l_of_fp8_p=l_of_fp8_p)
                assert o.shape[2] == r1 - r0 and n_sub == ki[:, :, tok].shape[2]
                out[bi, hi, r0:r1] = o[0, 0]
                lse[bi, hi, r0:r1] = l[0, 0]
    if lin is not None:
        out = out + linear_epilogue(qb, lin, lin_bias, nk)
    return _from_bhnd(out.to(q.dtype), layout), lse


def attention_int8_fp8_sparse_sm90(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale, lut, count, lin,
                                   lin_bias, layout: str, sm_scale: float, blkq: int, blkk: int):
    """Emulation of the block-sparse sm90 wgmma kernel: the mma.sync emulation with 128-key tiles over the kept
    keys in walk order, i.e. two consecutive 64-key tiles of the walk per tile whatever blkk (the kernel pairs
    them: sla_detail::PairTiles; with blkk % 128 == 0 these are the block's aligned 128-key tiles), l of the E4M3 P."""
    return attention_int8_fp8_sparse_mma(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale, lut, count, lin,
                                         lin_bias, layout, sm_scale, blkq, blkk, kv_tile=SM90_KV_TILE, l_of_fp8_p=True)
