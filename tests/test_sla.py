"""Sparse-Linear Attention (ARCHITECTURE §4.2-4.3, docs/sla.md): the references checked on their own, the
block-map op against torch.topk on the reference scores (same sets up to ties), the block-sparse kernel
against the dense kernel (full LUT) and against its emulation and the fp32 masked reference (random LUTs,
empty rows), the folded linear state, SageSLA against the fp32 SLA semantics on the three input
families with a random non-zero proj_l, the attention kinds in the Wan DiT, and bad-input errors."""
from __future__ import annotations

import math

import pytest
import torch

from turbodiffusion import ops
from turbodiffusion import reference as ref
from turbodiffusion.nn import attention as attn_mod

from _util import attention_inputs, cosine, lse_atol, poison_allocator, rel_l1, skip_unless_kernel_runs, to_bhnd

LOG2E = 1.0 / math.log(2.0)


def _ids(v):
    return str(v).replace("torch.", "")


def _qkv(b, h, nq, nk, d, layout, dtype, device, family="gaussian", seed=None):
    q = attention_inputs(b, h, nq, d, layout, dtype, family="peaky" if family == "peaky" else "gaussian",
                         device=device, seed=seed)
    k = attention_inputs(b, h, nk, d, layout, dtype, family=family, device=device,
                         seed=None if seed is None else seed + 1)
    v = attention_inputs(b, h, nk, d, layout, dtype, device=device, seed=None if seed is None else seed + 2)
    return q, k, v


def _proj(d, device, seed=0):
    """A random non-zero proj_l (weight std 1/sqrt(D), bias 0.1), as after tuning."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(d, d, generator=g) / math.sqrt(d)).to(device),
            (0.1 * torch.randn(d, generator=g)).to(device))


# --------------------------------------------------------------------------------------------------
# The references on their own (so CPU runs are not vacuous)
def test_block_means_and_kept_count():
    x = torch.randn(2, 3, 70, 8, dtype=torch.float64)
    means = ref.sla.block_means(x, 16)
    assert means.shape == (2, 3, 5, 8)
    torch.testing.assert_close(means[:, :, 4], x[:, :, 64:].mean(dim=2))  # last block: its true length (6)
    torch.testing.assert_close(means[:, :, 1], x[:, :, 16:32].mean(dim=2))
    assert [ref.sla.kept_blocks(t, 30) for t in (0.0, 0.1, 0.29, 1.0)] == [0, 3, 8, 30]


def test_reference_block_map_is_topk_of_scores():
    q, k, _ = _qkv(1, 2, 300, 333, 64, "HND", torch.bfloat16, "cpu", family="bias", seed=1)
    lut, count, km = ref.sla_block_map(q, k, "HND", 64, 32, 0.25)
    s = ref.sla.sla_block_scores(q, k, "HND", 64, 32)
    assert lut.shape == (1, 2, 5, 2) and (count == 2).all() and lut.dtype == torch.int32
    assert (lut.diff(dim=-1) > 0).all()
    assert torch.equal(lut.long(), s.topk(2, dim=-1).indices.sort(dim=-1).values)
    torch.testing.assert_close(km, to_bhnd(k, "HND").float().mean(2), rtol=0, atol=0)
    # the centring of k does not change any row's ranking (it shifts a row by pq . mean k)
    q32, k32 = to_bhnd(q, "HND").float(), to_bhnd(k, "HND").float()
    raw = ref.sla.block_means(q32, 64) @ ref.sla.block_means(k32, 32).transpose(2, 3)
    torch.testing.assert_close(raw.argsort(-1), s.argsort(-1))


def test_masked_attention_full_lut_is_dense_and_empty_rows_are_zero():
    q, k, v = _qkv(1, 2, 100, 130, 64, "NHD", torch.float32, "cpu", seed=2)
    lut = torch.arange(3, dtype=torch.int32).expand(1, 2, 2, 3).contiguous()
    count = torch.full((1, 2, 2), 3, dtype=torch.int32)
    out, lse = ref.sla.sla_masked_attention(q, k, v, lut, count, "NHD", 64, 64, dtype=torch.float64)
    e_out, e_lse = ref.attention_exact(q, k, v, "NHD")
    torch.testing.assert_close(out, e_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, e_lse, rtol=0, atol=1e-12)
    count[0, 1, 0] = 0
    out, lse = ref.sla.sla_masked_attention(q, k, v, lut, count, "NHD", 64, 64)
    assert (out[0, 1, :64] == 0).all() and torch.isneginf(lse[0, 1, :64]).all() and torch.isfinite(out).all()


def test_linear_state_reference_matches_linear_branch():
    q, k, v = _qkv(2, 2, 77, 90, 128, "NHD", torch.bfloat16, "cpu", family="bias", seed=3)
    w, b = _proj(128, "cpu")
    lin, v_amax, none = ref.sla_linear_state(k, v, w, "NHD")
    assert none.shape == (2, 2, 0, 128)
    assert torch.equal(v_amax, to_bhnd(v, "NHD").float().abs().amax(2))
    assert lin.shape == (2, 2, 136, 128) and lin.dtype == torch.float16 and (lin[:, :, 129:] == 0).all()
    want = ref.sla.sla_linear_branch(q, k, v, "NHD", dtype=torch.float64) @ w.double().T + b.double()
    got = ref.sla.linear_epilogue(to_bhnd(q, "NHD"), lin, b, 90)
    assert rel_l1(got, want) < 2e-3, rel_l1(got, want)  # fp16 state and fp16 exp(q - max)


def test_sla_semantics_equal_a_per_query_loop():
    """sla_attention against a literal per-query-block loop of §4.3 in float64."""
    q, k, v = _qkv(1, 1, 70, 100, 64, "HND", torch.float32, "cpu", seed=4)
    w, b = _proj(64, "cpu")
    out = ref.sla_attention(q, k, v, w, b, 0.5, "HND", 32, 32, dtype=torch.float64)
    lut, _, _ = ref.sla_block_map(q, k, "HND", 32, 32, 0.5)
    q64, k64, v64 = q[0, 0].double(), k[0, 0].double(), v[0, 0].double()
    pq, pk = q64.softmax(-1), k64.softmax(-1)
    for qb in range(3):
        rows = slice(32 * qb, min(70, 32 * qb + 32))
        keys = torch.cat([torch.arange(32 * j, min(100, 32 * j + 32)) for j in lut[0, 0, qb].tolist()])
        o_s = torch.softmax(q64[rows] @ k64[keys].T / 8.0, -1) @ v64[keys]
        o_l = (pq[rows] @ (pk.T @ v64)) / (1e-5 + pq[rows] @ pk.sum(0))[:, None]
        torch.testing.assert_close(out[0, 0, rows], o_s + o_l @ w.double().T + b.double(), rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# Block-map op (kernel on CUDA) against torch.topk on the reference scores
MAP_CASES = [  # (b, h, nq, nk, d, blkq, blkk, topk, layout)
    (1, 2, 1000, 1000, 128, 64, 64, 0.1, "NHD"),
    (2, 3, 777, 1301, 64, 128, 64, 0.25, "HND"),
    (1, 2, 517, 4099, 128, 64, 128, 0.5, "NHD"),
    (1, 1, 17, 33, 64, 16, 32, 1.0, "HND"),
    (1, 2, 300, 200, 128, 64, 64, 0.0, "NHD"),
    (1, 1, 1, 1, 64, 64, 64, 0.9, "NHD"),
    (1, 2, 5000, 5000, 128, 128, 64, 0.1, "HND"),
    (1, 1, 200, 70000, 128, 64, 64, 0.1, "NHD"),  # long score rows (a top-k warp holds 40 scores a lane)
    (1, 1, 100, 90000, 64, 64, 64, 0.2, "NHD"),  # 1407 blocks: the most a top-k warp holds in registers (48 a lane)
    (1, 3, 56000, 56000, 64, 16, 16, 0.1, "HND"),  # 3 x 3500^2 fp32 scores > the 128 MB scratch: two passes;
    # rows of 3500 blocks: the top-k's radix select
]


@pytest.mark.parametrize("case", MAP_CASES, ids=lambda c: "b{}h{}q{}k{}d{}_{}x{}_t{}_{}".format(*c))
@pytest.mark.parametrize("family", ["gaussian", "bias"])
def test_block_map_against_topk(device, case, family):
    b, h, nq, nk, d, blkq, blkk, topk, layout = case
    dtype = torch.float16 if d == 64 else torch.bfloat16
    q, k, _ = _qkv(b, h, nq, nk, d, layout, dtype, device, family=family)
    poison_allocator(device)
    lut, count, km = ops.sla_block_map(q, k, topk=topk, blkq=blkq, blkk=blkk, layout=layout, return_k_mean=True)
    s = ref.sla.sla_block_scores(q.cpu(), k.cpu(), layout, blkq, blkk)
    mq, mk = s.shape[2:]
    kept = min(mk, int(topk * mk))
    msg = f"case {case} {family}"
    # mean_N k (fixed-order float32 sums in the kernel): what sage_sla hands quantize_qk_int8
    torch.testing.assert_close(km.cpu(), to_bhnd(k.cpu(), layout).float().mean(2), rtol=1e-5, atol=1e-5, msg=msg)
    assert lut.shape == (b, h, mq, kept) and lut.dtype == torch.int32 and lut.is_contiguous(), msg
    assert count.shape == (b, h, mq) and (count.cpu() == kept).all(), msg
    if kept == 0:
        return
    lut = lut.cpu().long()
    assert (lut.diff(dim=-1) > 0).all() and (lut >= 0).all() and (lut < mk).all(), f"{msg}: sorted, distinct, in range"
    want = s.topk(kept, dim=-1)
    # Same sets up to ties: every chosen score is >= the kept-th largest and every unchosen one <= it,
    # within float32 rounding of the pooled sums (relative to the row's scale).
    kth = want.values[..., -1:]
    tol = 1e-5 * s.abs().amax(dim=-1, keepdim=True) + 1e-6
    chosen = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, lut, True)
    assert (s.masked_fill(~chosen, math.inf) >= kth - tol).all(), msg
    assert (s.masked_fill(chosen, -math.inf) <= kth + tol).all(), msg
    same = (lut == want.indices.sort(dim=-1).values).all(dim=-1).float().mean().item()
    assert same > 0.95, f"{msg}: only {same:.3f} of the rows equal torch.topk's exactly"


# (b, h, nq, nk, d, blkq, blkk, topk, layout, dtype); on a GPU the Q quantizer's tiles give q's block means
# where blkq is a power of two from 32 (D 128) / 64 (D 64) up to its 128 (D 128) / 256 (D 64) rows, else the
# pool kernel reads q
MAP_QK_CASES = [
    (1, 2, 1000, 777, 128, 64, 64, 0.1, "NHD", torch.bfloat16),
    (2, 3, 517, 1301, 128, 128, 64, 0.25, "HND", torch.float16),
    (1, 2, 333, 200, 128, 32, 128, 0.5, "NHD", torch.bfloat16),
    (1, 2, 1000, 900, 64, 64, 128, 0.1, "NHD", torch.float16),
    (1, 2, 700, 900, 64, 256, 64, 0.2, "HND", torch.bfloat16),
    (1, 1, 129, 300, 64, 128, 64, 1.0, "NHD", torch.bfloat16),
    (1, 2, 600, 500, 128, 256, 128, 0.1, "NHD", torch.bfloat16),  # pool kernel: more rows than a Q tile
    (1, 1, 300, 200, 64, 192, 64, 0.3, "HND", torch.float16),     # pool kernel: not a power of two
    (1, 2, 100, 100, 64, 32, 32, 0.3, "NHD", torch.bfloat16),     # pool kernel: partials exceed the block
    (1, 1, 64, 5, 128, 64, 64, 0.0, "NHD", torch.bfloat16),
    (1, 1, 1, 1, 64, 64, 64, 0.9, "HND", torch.bfloat16),
]


@pytest.mark.parametrize("case", MAP_QK_CASES, ids=lambda c: "b{}h{}q{}k{}d{}_{}x{}_t{}_{}_{}".format(
    *c[:-1], _ids(c[-1])))
def test_block_map_quantize_qk_equals_the_two_ops(device, case):
    """sage_sla's first op (the block map and the Q/K quantizer sharing the pass over q) gives exactly what
    sla_block_map and then quantize_qk_int8 with its k_mean give."""
    b, h, nq, nk, d, blkq, blkk, topk, layout, dtype = case
    q, k, _ = _qkv(b, h, nq, nk, d, layout, dtype, device, family="bias")
    lut, count, km = ops.sla_block_map(q, k, topk=topk, blkq=blkq, blkk=blkk, layout=layout, return_k_mean=True)
    want = (lut, count, *ops.quantize_qk_int8(q, k, layout=layout, blk_q=16, blk_k=16, q_scale_factor=0.3,
                                              k_mean=km)[:4], km)
    poison_allocator(device)
    got = ops.sla_block_map_quantize_qk(q, k, topk=topk, blkq=blkq, blkk=blkk, layout=layout, blk_q=16, blk_k=16,
                                        q_scale_factor=0.3)
    names = ("lut", "count", "q_int8", "q_scale", "k_int8", "k_scale", "k_mean")
    for name, x, y in zip(names, got, want):
        assert x.shape == y.shape and x.dtype == y.dtype, f"{case} {name}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}"
        assert torch.equal(x, y), f"{case} {name}: differs"


@pytest.mark.parametrize("case", MAP_QK_CASES[:6], ids=lambda c: "b{}h{}q{}k{}d{}_{}x{}_t{}_{}_{}".format(
    *c[:-1], _ids(c[-1])))
def test_block_map_quantize_qk_from_key_sums(device, case):
    """sage_sla's path: sla_linear_state's key-block sums in place of the map's pass over k give the same map and
    quantization up to float32 summation order: the same Q side bit for bit, K's mean within rounding, at most
    one code apart in k_int8, the LUT the same sets as torch.topk up to ties."""
    b, h, nq, nk, d, blkq, blkk, topk, layout, dtype = case
    q, k, v = _qkv(b, h, nq, nk, d, layout, dtype, device, family="bias")
    w, _ = _proj(d, device)
    _, _, k_sums = ops.sla_linear_state(k, k, w, layout=layout, return_v_amax=True, key_block=blkk)
    args = dict(topk=topk, blkq=blkq, blkk=blkk, layout=layout, blk_q=16, blk_k=16, q_scale_factor=0.3)
    want = ops.sla_block_map_quantize_qk(q, k, **args)
    poison_allocator(device)
    got = ops.sla_block_map_quantize_qk(q, k, **args, k_block_sums=k_sums)
    names = ("lut", "count", "q_int8", "q_scale", "k_int8", "k_scale", "k_mean")
    for name, x, y in zip(names, got, want):
        assert x.shape == y.shape and x.dtype == y.dtype, f"{case} {name}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}"
    for name in ("count", "q_int8", "q_scale"):
        assert torch.equal(got[names.index(name)], want[names.index(name)]), f"{case} {name}: differs"
    torch.testing.assert_close(got[6], want[6], rtol=1e-5, atol=1e-6, msg=f"{case} k_mean")
    torch.testing.assert_close(got[5], want[5], rtol=1e-5, atol=0, msg=f"{case} k_scale")
    assert (got[4].int() - want[4].int()).abs().max() <= 1, f"{case} k_int8"
    s = ref.sla.sla_block_scores(q.cpu(), k.cpu(), layout, blkq, blkk)
    lut = got[0].cpu().long()
    if lut.shape[-1]:
        kth = s.topk(lut.shape[-1], dim=-1).values[..., -1:]
        tol = 1e-5 * s.abs().amax(dim=-1, keepdim=True) + 1e-6
        chosen = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, lut, True)
        assert (s.masked_fill(~chosen, math.inf) >= kth - tol).all(), case
        assert (s.masked_fill(chosen, -math.inf) <= kth + tol).all(), case


# --------------------------------------------------------------------------------------------------
# The block-sparse kernel
def _quantized(q, k, v, layout, sm):
    q_i8, q_s, k_i8, k_s, km = ops.quantize_qk_int8(q, k, layout=layout, blk_q=16, blk_k=16, q_scale_factor=sm * LOG2E)
    v8, vs = ops.quantize_v_fp8(v, layout=layout, pad_to=64)
    return (q, q_i8, q_s, k_i8, k_s, km, v8, vs)


def _random_lut(b, h, mq, mk, density, seed, device, shuffle=False):
    g = torch.Generator().manual_seed(seed)
    kept = max(1, round(density * mk))
    idx = torch.rand(b, h, mq, mk, generator=g).argsort(-1)[..., :kept]
    lut = idx if shuffle else idx.sort(-1).values
    count = torch.randint(max(0, kept - 2), kept + 1, (b, h, mq), generator=g)
    return lut.to(torch.int32).to(device).contiguous(), count.to(torch.int32).to(device)


SPARSE_CASES = [  # (b, h, nq, nk, d, blkq, blkk)
    (1, 2, 200, 300, 128, 64, 64),
    (2, 1, 129, 1000, 64, 128, 64),
    (1, 2, 1000, 777, 128, 64, 128),
    (1, 3, 65, 64, 64, 64, 64),
    (1, 1, 1, 1, 128, 64, 64),
    (2, 1, 129, 1000, 64, 128, 128),
    (1, 2, 300, 200, 64, 192, 256),
    (1, 1, 1, 1, 128, 64, 128),
    # blkq a multiple of 128: two 64-row CTAs walk one LUT row
    (1, 2, 1000, 777, 128, 128, 128),
    (1, 1, 600, 900, 128, 256, 128),
    (1, 2, 500, 700, 128, 64, 192),  # three 64-key tiles per key block (sm90: paired across blocks), a partial last
]
KERNELS = ["mma", "sm90"]  # attention_int8_fp8_sparse_<kernel>; sm90: 128-key tiles of two 64-key walk tiles


def _sparse_kernel(device, kernel):
    """(op, emulation) of the sparse `kernel`, skipping what the local GPU cannot run."""
    skip_unless_kernel_runs(device, kernel)
    name = f"attention_int8_fp8_sparse_{kernel}"
    return getattr(torch.ops.turbodiffusion, name), getattr(ref, name)


@pytest.mark.parametrize("case", SPARSE_CASES, ids=lambda c: "b{}h{}q{}k{}d{}_{}x{}".format(*c))
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_sparse_full_lut_equals_dense(device, kernel, case, layout):
    b, h, nq, nk, d, blkq, blkk = case
    op, _ = _sparse_kernel(device, kernel)
    if device == "cpu" and nq * nk > 10**5:
        pytest.skip("on CPU both are emulations; the long case only matters for the kernel")
    dtype = torch.bfloat16 if layout == "NHD" else torch.float16
    q, k, v = _qkv(b, h, nq, nk, d, layout, dtype, device, family="bias")
    sm = d ** -0.5
    args = _quantized(q, k, v, layout, sm)
    mq, mk = -(-nq // blkq), -(-nk // blkk)
    lut = torch.arange(mk, dtype=torch.int32, device=device).expand(b, h, mq, mk).contiguous()
    count = torch.full((b, h, mq), mk, dtype=torch.int32, device=device)
    poison_allocator(device)
    out, lse = op(*args, lut, count, None, None, layout, sm, blkq, blkk)
    # The dense kernel has the same KV tiles: with a full LUT the sm90 kernel's pairs of 64-key walk tiles
    # are the dense kernel's aligned 128-key tiles, at every blkk.
    d_out, d_lse = ops.attention_int8_fp8(*args, layout=layout, sm_scale=sm, backend=kernel)
    # Same tiles in the same order through the same code: bit-identical on the GPU. (On CPU both are
    # emulations whose float32 matmuls see different batch shapes: equal to a few ulps.)
    if device == "cuda":
        assert torch.equal(out, d_out), f"{case} {layout}: max diff {(out.float() - d_out.float()).abs().max():.3g}"
        assert torch.equal(lse, d_lse), f"{case} {layout}"
    else:
        torch.testing.assert_close(out, d_out, rtol=2 ** -10, atol=1e-6)
        torch.testing.assert_close(lse, d_lse, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", [c for c in SPARSE_CASES if c[2] * c[3] > 1], ids=lambda c: "b{}h{}q{}k{}d{}_{}x{}".format(*c))
@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("kernel", KERNELS)
def test_sparse_random_lut(device, kernel, case, density):
    """Random LUTs (shuffled order, counts below the width, some rows empty) against the emulation
    (kernel exactness) and the fp32 masked attention (quantization error)."""
    b, h, nq, nk, d, blkq, blkk = case
    op, emulation = _sparse_kernel(device, kernel)
    if device == "cpu" and nq * nk > 10**5:
        pytest.skip("on CPU the op is the emulation itself; the long case only matters for the kernel")
    layout = "NHD" if d == 128 else "HND"
    q, k, v = _qkv(b, h, nq, nk, d, layout, torch.bfloat16, device, family="bias")
    sm = d ** -0.5
    args = _quantized(q, k, v, layout, sm)
    mq, mk = -(-nq // blkq), -(-nk // blkk)
    lut, count = _random_lut(b, h, mq, mk, density, seed=nq + mk, device=device, shuffle=True)
    count[-1, -1, -1] = lut.shape[-1]  # a row that keeps every block it lists (the case is never all empty)
    count[0, 0, 0] = 0  # an empty row
    _check_sparse_kernel(op, emulation, q, k, v, args, lut, count, layout, sm, blkq, blkk, kernel,
                         f"case {case} density {density}")


@pytest.mark.parametrize("kernel", KERNELS)
def test_sparse_equal_counts_unequal_walks(device, kernel):
    """LUT rows with one count whose walks still differ (invalid entries are skipped). The sm90 kernel's three
    groups take turns on the exp phase only where their walks (counted from the LUT rows by the producer) are
    equal: the CTAs here with unequal walks must run without (a miscount would hang), the others with."""
    b, h, nq, nk, d, blkq, blkk = 1, 2, 576, 1000, 128, 64, 64
    op, emulation = _sparse_kernel(device, kernel)
    if device == "cpu":
        pytest.skip("on CPU the op is the emulation itself")
    layout = "NHD"
    q, k, v = _qkv(b, h, nq, nk, d, layout, torch.bfloat16, device, family="bias")
    sm = d ** -0.5
    args = _quantized(q, k, v, layout, sm)
    mq, mk = -(-nq // blkq), -(-nk // blkk)  # 9 query blocks (three CTAs of three), 16 key blocks (the last partial)
    lut, count = _random_lut(b, h, mq, mk, 0.5, seed=7, device=device, shuffle=True)
    count.fill_(lut.shape[-1])  # every row lists 8 entries
    lut[0, 0, 1, 2] = -1  # CTA 0 of head 0: rows of 8, 7 and 8 valid entries
    lut[0, 0, 4, 0] = mk  # CTA 1: an entry past the last block
    lut[0, 1, 6:9] = torch.arange(8, dtype=torch.int32, device=device)  # the partial block nowhere in a CTA
    _check_sparse_kernel(op, emulation, q, k, v, args, lut, count, layout, sm, blkq, blkk, kernel, "equal counts")


def _check_sparse_kernel(op, emulation, q, k, v, args, lut, count, layout, sm, blkq, blkk, kernel, msg):
    """The sparse kernel `op` on LUT / count against its emulation (kernel exactness) and the fp32 masked attention
    (quantization error); rows with count 0 give 0 and LSE -inf."""
    b, h, nq = count.shape[0], count.shape[1], to_bhnd(q, layout).shape[2]
    poison_allocator(q.device.type)
    out, lse = op(*args, lut, count, None, None, layout, sm, blkq, blkk)
    cpu = [t.cpu() for t in args]
    r_out, r_lse = emulation(*cpu, lut.cpu(), count.cpu(), None, None, layout, sm, blkq, blkk)
    o, r = out.cpu().float(), r_out.float()
    assert torch.isfinite(o).all() and not torch.isnan(lse).any(), msg
    empty = torch.zeros(b, h, nq, dtype=torch.bool)
    empty[..., :] = (count.cpu() == 0).repeat_interleave(blkq, 2)[..., :nq]
    assert (to_bhnd(o, layout)[empty] == 0).all() and torch.isneginf(lse.cpu()[empty]).all(), msg
    assert torch.isfinite(lse.cpu()[~empty]).all(), msg
    # ex2.approx vs torch.exp2 differ by an ulp or two, which flips the E4M3 rounding of about one P in
    # 2^18: a flipped P of a dominant key moves its row by up to 2^-4 of that key's weight. So: (almost)
    # every element within the tight bound, and every one within one such flip of a dominant key.
    err = (o - r).abs()
    tight = err <= 2 ** -7 * r.abs() + 2e-3 * r.abs().max()
    assert tight.float().mean() > 0.999 and (err <= 2 ** -4 * r.abs().max()).all(), (msg, (~tight).sum().item())
    assert rel_l1(o, r) < 2e-3, (msg, rel_l1(o, r))
    torch.testing.assert_close(lse.cpu()[~empty], r_lse[~empty], rtol=0, atol=lse_atol(kernel), msg=msg)
    e_out, e_lse = ref.sla.sla_masked_attention(q.cpu(), k.cpu(), v.cpu(), lut.cpu(), count.cpu(), layout, blkq, blkk)
    assert cosine(to_bhnd(o, layout), e_out) > 0.999 and rel_l1(to_bhnd(o, layout), e_out) < 0.05, (
        msg, cosine(to_bhnd(o, layout), e_out), rel_l1(to_bhnd(o, layout), e_out))
    torch.testing.assert_close(lse.cpu()[~empty], e_lse[~empty], rtol=0, atol=0.05, msg=msg)


LINEAR_EPILOGUE_CASES = [  # (b, h, nq, nk, d, blkq, blkk, layout, dtype)
    (1, 2, 333, 700, 128, 64, 128, "NHD", torch.float16),
    (2, 1, 300, 260, 64, 128, 128, "HND", torch.bfloat16),
    (1, 2, 257, 300, 64, 64, 128, "NHD", torch.float16),
    (1, 1, 200, 500, 128, 128, 128, "HND", torch.float16),
    (1, 2, 333, 700, 128, 64, 64, "NHD", torch.bfloat16),  # 64-key blocks: the sm90 kernel pairs them
    (2, 1, 300, 260, 64, 128, 64, "HND", torch.float16),
    (1, 2, 500, 700, 128, 64, 192, "NHD", torch.bfloat16),
]


@pytest.mark.parametrize("case", LINEAR_EPILOGUE_CASES, ids=lambda c: "q{}k{}d{}_{}x{}_{}_{}".format(*c[2:8], _ids(c[8])))
@pytest.mark.parametrize("kernel", KERNELS)
def test_sparse_linear_epilogue(device, kernel, case):
    """The kernels' linear epilogue (phi(q) from the unquantized q; lin as mma.sync B fragments from global
    memory, or as the sm90 kernel's wgmma operand in shared memory: copied with Q at D 64, into the ring
    after the walk at D 128) against the emulation, both input dtypes, odd N, an empty row."""
    b, h, nq, nk, d, blkq, blkk, layout, dtype = case
    op, emulation = _sparse_kernel(device, kernel)
    q, k, v = _qkv(b, h, nq, nk, d, layout, dtype, device, family="bias")
    w, bias = _proj(d, device, seed=nq)
    sm = d ** -0.5
    args = _quantized(q, k, v, layout, sm)
    lin = ops.sla_linear_state(k, v, w, layout=layout)
    mq, mk = -(-nq // blkq), -(-nk // blkk)
    lut, count = _random_lut(b, h, mq, mk, 0.5, seed=nq + nk, device=device, shuffle=True)
    count[0, 0, 0] = 0  # an empty row: the linear term alone
    poison_allocator(device)
    out, lse = op(*args, lut, count, lin, bias, layout, sm, blkq, blkk)
    cpu = [t.cpu() for t in args]
    r_out, r_lse = emulation(*cpu, lut.cpu(), count.cpu(), lin.cpu(), bias.cpu(), layout, sm, blkq, blkk)
    o, r = out.cpu().float(), r_out.float()
    msg = f"{case} {kernel}"
    assert out.dtype == dtype and torch.isfinite(o).all(), msg
    # The epilogue's fp16 MMAs and exp differ from the emulation's float32 by rounding only; the attention
    # part is the random-LUT test's (an occasional flipped E4M3 rounding of P).
    assert rel_l1(o, r) < 2e-3, (msg, rel_l1(o, r))
    assert ((o - r).abs() <= 2 ** -4 * r.abs().max()).all(), msg
    torch.testing.assert_close(lse.cpu(), r_lse, rtol=0, atol=lse_atol(kernel), msg=msg)
    # The LSE is the sparse branch's alone: the same bits with and without the linear term.
    _, lse_plain = op(*args, lut, count, None, None, layout, sm, blkq, blkk)
    assert torch.equal(lse, lse_plain), msg


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("kernel", KERNELS)
def test_sparse_all_rows_empty_with_linear_term(device, kernel, d):
    """No kept block anywhere (top-k 0): out = the linear term alone, lse -inf, no NaN."""
    op, _ = _sparse_kernel(device, kernel)
    q, k, v = _qkv(1, 2, 150, 130, d, "NHD", torch.bfloat16, device, seed=d)
    w, b = _proj(d, device)
    sm = d ** -0.5
    args = _quantized(q, k, v, "NHD", sm)
    lut = torch.zeros(1, 2, 3, 0, dtype=torch.int32, device=device)
    count = torch.zeros(1, 2, 3, dtype=torch.int32, device=device)
    lin = ops.sla_linear_state(k, v, w)
    poison_allocator(device)
    out, lse = op(*args, lut, count, lin, b, "NHD", sm, 64, 128)
    want = ref.sla.sla_linear_branch(q.cpu(), k.cpu(), v.cpu(), "NHD") @ w.cpu().T + b.cpu()
    assert torch.isneginf(lse).all() and torch.isfinite(out).all()
    assert rel_l1(to_bhnd(out.cpu(), "NHD").float(), want) < 5e-3


LIN_CASES = [(1, 2, 1000, 128, "NHD", torch.bfloat16), (2, 1, 77, 64, "HND", torch.float16),
             (1, 1, 1, 128, "HND", torch.bfloat16), (1, 3, 4097, 64, "NHD", torch.bfloat16)]


@pytest.mark.parametrize("case", LIN_CASES, ids=lambda c: "b{}h{}n{}d{}_{}_{}".format(*c[:5], _ids(c[5])))
@pytest.mark.parametrize("family", ["gaussian", "bias"])
@pytest.mark.parametrize("key_block", [0, 64, 96, 48])  # 64, 96: in the kernel's pass (chunks on key blocks); 48: pooled
def test_linear_state(device, case, family, key_block):
    b, h, n, d, layout, dtype = case
    _, k, v = _qkv(b, h, 1, n, d, layout, dtype, device, family=family)
    w, _ = _proj(d, device, seed=n)
    poison_allocator(device)
    lin, v_amax, *k_sums = ops.sla_linear_state(k, v, w, layout=layout, return_v_amax=True, key_block=key_block)
    want, want_amax, want_sums = ref.sla_linear_state(k.cpu(), v.cpu(), w.cpu(), layout, key_block)
    if key_block:  # float32 sums of up to key_block values: summation order apart, the reference's
        (got_sums,) = k_sums
        assert got_sums.shape == want_sums.shape and got_sums.dtype == torch.float32, f"{case}: {got_sums.shape}"
        tol = 1e-5 * key_block * to_bhnd(k.cpu(), layout).float().abs().amax().item()
        torch.testing.assert_close(got_sums.cpu(), want_sums, rtol=1e-5, atol=tol, msg=f"{case} key sums")
    else:
        assert not k_sums
    assert torch.equal(v_amax.cpu(), want_amax), f"{case}: amax |v| (exact in any order)"
    assert lin.shape == (b, h, d + 8, d) and lin.dtype == torch.float16
    got = lin.cpu().float()
    assert torch.isfinite(got).all() and (got[:, :, d + 1:] == 0).all()
    # The kernel rounds phi(k) to the input type before its MMA (bf16: 2^-9 relative per element).
    scale = want.float()[:, :, :d].abs().amax().item()
    torch.testing.assert_close(got[:, :, :d], want.float()[:, :, :d], rtol=0, atol=8e-3 * scale, msg=str(case))
    torch.testing.assert_close(got[:, :, d], want.float()[:, :, d], rtol=1e-2, atol=1e-5, msg=str(case))


# --------------------------------------------------------------------------------------------------
# SageSLA end to end against the fp32 SLA semantics (same LUT), the three input families
# (cosine >=, rel L1 <=): the dense SageAttention bounds (tests/test_attention.py); docs/sla.md.
SLA_BOUNDS = {"gaussian": (0.999, 0.045), "bias": (0.999, 0.04), "peaky": (0.985, 0.075)}
SLA_SIZES = [(200, 64, 64), (1000, 64, 128), (777, 128, 64), (65, 64, 64)]


@pytest.mark.parametrize("size", SLA_SIZES, ids=lambda s: "n{}_{}x{}".format(*s))
@pytest.mark.parametrize("family", ["gaussian", "bias", "peaky"])
@pytest.mark.parametrize("d", [64, 128])
def test_sage_sla_accuracy(device, size, family, d):
    n, blkq, blkk = size
    if device == "cpu" and n > 300:
        pytest.skip("the CPU emulation loops over query blocks in Python; long cases run on the GPU")
    layout = "NHD" if (n + d) % 2 else "HND"
    q, k, v = _qkv(1, 2, n, n, d, layout, torch.bfloat16, device, family=family)
    w, b = _proj(d, device, seed=n)
    topk = 0.3
    poison_allocator(device)
    out = ops.sage_sla(q, k, v, w, b, topk, blkq=blkq, blkk=blkk, layout=layout)
    lut, count = ops.sla_block_map(q, k, topk=topk, blkq=blkq, blkk=blkk, layout=layout)
    want = ref.sla_attention(q.cpu(), k.cpu(), v.cpu(), w.cpu(), b.cpu(), topk, layout, blkq, blkk,
                             lut=lut.cpu(), count=count.cpu())
    o = out.cpu().float()
    cos, rl1 = cosine(o, want), rel_l1(o, want)
    info = f"{family} d{d} n{n} {blkq}x{blkk} {layout}: cosine {cos:.6f} rel L1 {rl1:.4f}"
    assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(o).all(), info
    c_min, rl1_max = SLA_BOUNDS[family]
    assert cos >= c_min and rl1 <= rl1_max, info


def test_sla_bf16_path_close_to_fp32(device):
    q, k, v = _qkv(1, 2, 300, 300, 64, "NHD", torch.bfloat16, device, family="bias")
    w, b = _proj(64, device)
    out = ops.sla(q, k, v, w, b, 0.3)
    want = ref.sla_attention(q.cpu(), k.cpu(), v.cpu(), w.cpu(), b.cpu(), 0.3, "NHD", 64, 64)
    assert out.dtype == torch.bfloat16 and rel_l1(out.cpu().float(), want) < 5e-3


@pytest.mark.parametrize("case", SPARSE_CASES[:5], ids=str)  # 5 shapes: each compiles flex_attention on CUDA
def test_sla_sparse_branch_flex_and_sdpa(device, case):
    """ops.sla's two sparse-branch paths, flex_attention (BlockMask from the LUT; compiled on CUDA, eager on
    CPU) and masked SDPA, against the fp32 masked reference: random shuffled LUTs with an out-of-range entry,
    empty rows, partial last blocks, Nq != Nk."""
    if ops._flex_attention(False) is None:
        pytest.skip("torch has no flex_attention")
    b, h, nq, nk, d, blkq, blkk = case
    q, k, v = (to_bhnd(x, "NHD") for x in _qkv(b, h, nq, nk, d, "NHD", torch.bfloat16, device, seed=nq + nk))
    mq, mk = -(-nq // blkq), -(-nk // blkk)
    lut, count = _random_lut(b, h, mq, mk, 0.5, seed=nk, device=device, shuffle=True)
    lut[..., -1] = mk  # out of range: ignored when within count
    count[0, 0, 0] = 0
    want, _ = ref.sla.sla_masked_attention(q.cpu(), k.cpu(), v.cpu(), lut.cpu(), count.cpu(), "HND", blkq, blkk)
    empty = (count.cpu() == 0).repeat_interleave(blkq, 2)[..., :nq]
    for path in (ops._sla_sparse_flex, ops._sla_sparse_sdpa):
        out = path(q, k, v, lut, count, blkq, blkk, None).cpu().float()
        msg = f"{path.__name__} {case}: rel L1 {rel_l1(out, want):.2e}"
        assert out.shape == want.shape and torch.isfinite(out).all() and (out[empty] == 0).all(), msg
        assert rel_l1(out, want) < 5e-3, msg


@pytest.mark.parametrize("topk", [0.0, 0.3])
def test_sla_flex_equals_sdpa(device, topk):
    """The whole op both ways (odd Nq != Nk; top-k 0: every row empty, the output is the projected linear
    branch alone)."""
    if ops._flex_attention(False) is None:
        pytest.skip("torch has no flex_attention")
    q, _, _ = _qkv(1, 2, 333, 333, 64, "NHD", torch.bfloat16, device, family="bias", seed=5)
    _, k, v = _qkv(1, 2, 271, 271, 64, "NHD", torch.bfloat16, device, family="bias", seed=6)
    w, b = _proj(64, device)
    flex = ops.sla(q, k, v, w, b, topk, blkk=128, backend="flex")
    sdpa = ops.sla(q, k, v, w, b, topk, blkk=128, backend="sdpa")
    want = ref.sla_attention(q.cpu(), k.cpu(), v.cpu(), w.cpu(), b.cpu(), topk, "NHD", 64, 128)
    assert flex.dtype == sdpa.dtype == torch.bfloat16 and flex.shape == q.shape
    assert rel_l1(flex.cpu().float(), want) < 5e-3 and rel_l1(sdpa.cpu().float(), want) < 5e-3, (
        rel_l1(flex.cpu().float(), want), rel_l1(sdpa.cpu().float(), want))
    assert rel_l1(flex.cpu().float(), sdpa.cpu().float()) < 5e-3


# --------------------------------------------------------------------------------------------------
# Attention kinds and the Wan DiT
@pytest.mark.parametrize("kind", ["sagesla", "sla"])
def test_sla_kinds(device, kind):
    q, k, v = _qkv(1, 2, 150, 150, 64, "NHD", torch.bfloat16, device, family="bias")
    proj = torch.nn.Linear(64, 64).to(device)
    out = attn_mod.attention(q, k, v, kind=kind, proj_l=proj, topk=0.5)
    want = ref.sla_attention(q.cpu(), k.cpu(), v.cpu(), proj.weight.detach().cpu(), proj.bias.detach().cpu(), 0.5,
                             "NHD", 64, 64)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert cosine(out.cpu().float(), want) > 0.999
    with pytest.raises(TypeError, match="proj_l"):
        attn_mod.attention(q, k, v, kind=kind, proj_l=None, topk=0.5)


@pytest.mark.parametrize("kind", ["sagesla", "sla"])
def test_wan_dit_with_sla_kind_loads_proj_l_strictly(device, kind, monkeypatch):
    """A TurboWan-style state dict (tuned proj_l in every block) loads strictly into a DiT of the kind, whose
    output matches the same model with the fp32 SLA semantics in place of the kind."""
    from turbodiffusion.models.wan.dit import WanDiT

    source = WanDiT.tiny(sla_params=True, dtype=torch.bfloat16, seed=3)
    with torch.no_grad():
        for blk in source.blocks:
            blk.self_attn.attn_op.local_attn.proj_l.weight.normal_(0, 0.1)
            blk.self_attn.attn_op.local_attn.proj_l.bias.normal_(0, 0.1)
    model = WanDiT.tiny(attention=kind, attention_opts={"topk": 0.5}, dtype=torch.bfloat16, device=device)
    model.load_state_dict(source.state_dict(), strict=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 2, 16, 16, generator=g).to(device)  # 128 tokens: 2 key blocks of 64, one kept
    t = torch.tensor([500.0], device=device)
    ctx = torch.randn(1, 12, 64, generator=g).to(device)
    with torch.no_grad():
        out = model(x, t, ctx)

        def fp32_sla(q, k, v, *, proj_l, topk):
            w, b = proj_l.weight.float(), proj_l.bias.float()
            return ref.sla_attention(q.float(), k.float(), v.float(), w, b, topk, "NHD", 64, 64).to(q.dtype)

        monkeypatch.setitem(attn_mod._KINDS, kind, fp32_sla)
        want = model(x, t, ctx)
    assert out.shape == want.shape and torch.isfinite(out).all()
    assert cosine(out, want) > 0.99, cosine(out, want)


# --------------------------------------------------------------------------------------------------
# Bad input of the public entry points (the ops' cases are in tests/test_op_errors.py)
def test_sage_sla_bad_input():
    q = torch.randn(1, 100, 2, 64, dtype=torch.bfloat16)
    w, b = _proj(64, "cpu")
    with pytest.raises(ValueError, match="proj_bias: expected shape \\[64\\], got \\[32\\]"):
        ops.sage_sla(q, q, q, w, b[:32], 0.1)
    with pytest.raises(ValueError, match="blkk: expected a positive multiple of 64 <= 1024, got 32"):
        ops.sage_sla(q, q, q, w, b, 0.1, blkk=32)
    with pytest.raises(ValueError, match="topk: expected a fraction in \\[0, 1\\], got -0.1"):
        ops.sla(q, q, q, w, b, -0.1)
    with pytest.raises(ValueError, match="backend: expected one of \\('auto', 'flex', 'sdpa'\\), got 'cudnn'"):
        ops.sla(q, q, q, w, b, 0.1, backend="cudnn")


# --------------------------------------------------------------------------------------------------
# GPU only: Wan length, graph capture
@pytest.mark.gpu
@pytest.mark.parametrize("d,blocks", [(128, (64, 64)), (128, (128, 64)), (64, (64, 128))])
def test_sage_sla_long_cuda(d, blocks):
    """N = 32760 (1.3B-480p), top-k 0.1, one head: SageSLA against the fp32 SLA semantics with its own LUT,
    and the block map against torch.topk on the reference scores."""
    blkq, blkk = blocks
    for family in ("bias", "gaussian"):
        q, k, v = _qkv(1, 1, 32760, 32760, d, "NHD", torch.bfloat16, "cuda", family=family)
        w, b = _proj(d, "cuda")
        lut, count = ops.sla_block_map(q, k, topk=0.1, blkq=blkq, blkk=blkk)
        s = ref.sla.sla_block_scores(q, k, "NHD", blkq, blkk)
        kth = s.topk(lut.shape[-1], dim=-1).values[..., -1:]
        assert (s.gather(-1, lut.long()) >= kth - 1e-5 * s.abs().amax(-1, keepdim=True)).all(), family
        out = ops.sage_sla(q, k, v, w, b, 0.1, blkq=blkq, blkk=blkk, lut=lut, count=count)
        want = ref.sla_attention(q, k, v, w, b, 0.1, "NHD", blkq, blkk, lut=lut, count=count)
        cos, rl1 = cosine(out.float(), want), rel_l1(out.float(), want)
        c_min, rl1_max = SLA_BOUNDS[family]
        assert cos >= c_min and rl1 <= rl1_max, f"{family} d{d} {blocks}: cosine {cos:.6f} rel L1 {rl1:.4f}"
        del s, want
        torch.cuda.empty_cache()


@pytest.mark.gpu
def test_sla_flex_long_cuda():
    """ops.sla (flex_attention) at N = 32757 (1.3B-480p less 3: a partial last block), top-k 0.1, two heads:
    against the fp32 SLA semantics with the op's own LUT, with no O(N^2) buffer (the masked-SDPA path's
    boolean mask alone would be 1 GiB per head)."""
    q, k, v = _qkv(1, 2, 32757, 32757, 128, "NHD", torch.bfloat16, "cuda", family="bias")
    w, b = _proj(128, "cuda")
    lut, count = ops.sla_block_map(q, k, topk=0.1)
    torch._dynamo.reset()  # the earlier tests' shapes may have used up the recompile limit (then: eager)
    ops.sla(q, k, v, w, b, 0.1)  # compiles
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = ops.sla(q, k, v, w, b, 0.1)
    extra = (torch.cuda.max_memory_allocated() - before) / 2**20
    assert extra < 512, f"ops.sla used {extra:.0f} MiB beyond its inputs"
    for h in range(2):
        want = ref.sla_attention(q[:, :, h:h + 1], k[:, :, h:h + 1], v[:, :, h:h + 1], w, b, 0.1, "NHD", 64, 64,
                                 lut=lut[:, h:h + 1], count=count[:, h:h + 1])
        rl1 = rel_l1(out[:, :, h:h + 1].float(), want)
        assert rl1 < 5e-3, f"head {h}: rel L1 {rl1:.2e}"
        del want
        torch.cuda.empty_cache()


@pytest.mark.gpu
def test_sage_sla_cuda_graph():
    q, k, v = _qkv(1, 4, 3000, 3000, 128, "NHD", torch.bfloat16, "cuda", family="bias")
    w, b = _proj(128, "cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        ops.sage_sla(q, k, v, w, b, 0.2)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.sage_sla(q, k, v, w, b, 0.2)
    for x, fresh in zip((q, k, v), _qkv(1, 4, 3000, 3000, 128, "NHD", torch.bfloat16, "cuda", family="bias")):
        x.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    want = ops.sage_sla(q, k, v, w, b, 0.2)
    # K's mean is summed with float atomics by the quantizer: equal up to a rare one-code difference in k_int8.
    assert cosine(out.float(), want.float()) > 0.99999
