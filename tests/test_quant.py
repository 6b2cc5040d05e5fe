"""Quantization ops (ARCHITECTURE §4.1, §4.4): the kernel (device "cuda") against the reference, and
the reference itself against independent element-wise computations and error bounds (all devices)."""
from __future__ import annotations

import pytest
import torch

from turbodiffusion import ops
from turbodiffusion import reference as ref

from _util import attention_inputs, poison_allocator, to_bhnd

DTYPES = [torch.bfloat16, torch.float16]
LAYOUTS = ["NHD", "HND"]


def _ids(v):
    return str(v).replace("torch.", "")


# --------------------------------------------------------------------------------------------------
# quantize_qk_int8
QK_CASES = [  # (b, h, nq, nk, d, blk_q, blk_k)
    (1, 2, 1, 1, 64, 64, 128),
    (1, 2, 17, 127, 128, 16, 32),
    (2, 3, 127, 17, 64, 128, 64),
    (1, 2, 1000, 1000, 128, 64, 128),
    (1, 1, 700, 512, 64, 32, 16),
]


@pytest.mark.parametrize("case", QK_CASES, ids=lambda c: "b{}h{}q{}k{}d{}bq{}bk{}".format(*c))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_quantize_qk_int8_matches_reference(device, case, layout, dtype):
    b, h, nq, nk, d, blk_q, blk_k = case
    q = attention_inputs(b, h, nq, d, layout, dtype, device=device)
    k = attention_inputs(b, h, nk, d, layout, dtype, family="bias", device=device)
    factor = 0.0883883 * 1.4426950
    poison_allocator(device)
    q_i8, q_s, k_i8, k_s, km = ops.quantize_qk_int8(q, k, layout=layout, blk_q=blk_q, blk_k=blk_k,
                                                   q_scale_factor=factor)
    r_q_i8, r_q_s, _, _, r_km = ref.quantize_qk_int8(q.cpu(), k.cpu(), layout, blk_q, blk_k, factor)
    msg = f"case {case} {layout} {dtype}"
    # q involves no sum: bit-identical.
    assert torch.equal(q_i8.cpu(), r_q_i8), msg
    assert torch.equal(q_s.cpu(), r_q_s), msg
    # k's mean is a float32 sum whose order differs between kernel and reference ...
    torch.testing.assert_close(km.cpu(), r_km, rtol=1e-5, atol=1e-5, msg=msg)
    # ... and given the kernel's mean, its codes and scales are bit-identical to the recipe.
    k32 = to_bhnd(k.cpu(), layout).float()
    e_k_i8, e_k_s = ref.int8_blockwise(k32 - km.cpu()[:, :, None, :], blk_k)
    assert torch.equal(to_bhnd(k_i8.cpu(), layout), e_k_i8), msg
    assert torch.equal(k_s.cpu(), e_k_s), msg
    assert q_i8.shape == q.shape and k_i8.shape == k.shape and q_i8.is_contiguous() and k_i8.is_contiguous()


@pytest.mark.parametrize("blk", [16, 64])
def test_int8_blockwise_elementwise_and_error_bound(blk):
    """The reference recipe against a per-element loop, and |dequant - x| <= s / 2."""
    x = torch.randn(1, 1, blk + 5, 64) * torch.linspace(0.1, 3, 64)
    x[0, 0, 3, 7] = 0.0
    q, s = ref.int8_blockwise(x, blk)
    assert s.shape == (1, 1, 2)
    for blk_i, rows in enumerate([range(0, blk), range(blk, blk + 5)]):
        amax = max(abs(float(x[0, 0, r, c])) for r in rows for c in range(64))
        assert s[0, 0, blk_i].item() == pytest.approx(amax / 127, rel=1e-7)
        for r in list(rows)[:3]:
            for c in (0, 7, 63):
                assert int(q[0, 0, r, c]) == round(float(x[0, 0, r, c]) * (127 / amax))
    deq = q.float() * s.repeat_interleave(blk, dim=2)[:, :, : x.shape[2], None]
    assert ((deq - x).abs() <= s.repeat_interleave(blk, dim=2)[:, :, : x.shape[2], None] / 2 + 1e-6).all()


def test_quantize_qk_int8_layouts_agree(device):
    q = attention_inputs(2, 3, 200, 128, "HND", torch.bfloat16, device=device)
    k = attention_inputs(2, 3, 150, 128, "HND", torch.bfloat16, family="bias", device=device)
    a = ops.quantize_qk_int8(q, k, layout="HND")
    b = ops.quantize_qk_int8(q.transpose(1, 2), k.transpose(1, 2), layout="NHD")  # strided NHD views
    assert torch.equal(a[0], b[0].transpose(1, 2)) and torch.equal(a[1], b[1])
    assert torch.equal(a[2], b[2].transpose(1, 2)) and torch.equal(a[3], b[3])


@pytest.mark.parametrize("case", QK_CASES[1:4], ids=lambda c: "b{}h{}q{}k{}d{}bq{}bk{}".format(*c))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_quantize_qk_int8_given_k_mean(device, case, layout):
    """A given k_mean (sla_block_map's) replaces the computed one: the single-pass K kernel's codes and
    scales are the recipe's on k - k_mean, bit for bit, and with the op's own mean they are its output."""
    b, h, nq, nk, d, blk_q, blk_k = case
    q = attention_inputs(b, h, nq, d, layout, torch.bfloat16, device=device)
    k = attention_inputs(b, h, nk, d, layout, torch.bfloat16, family="bias", device=device)
    km = to_bhnd(k, layout).float().mean(2) + 0.01 * torch.randn(b, h, d, device=device)
    poison_allocator(device)
    out = ops.quantize_qk_int8(q, k, layout=layout, blk_q=blk_q, blk_k=blk_k, k_mean=km)
    e_k_i8, e_k_s = ref.int8_blockwise(to_bhnd(k.cpu(), layout).float() - km.cpu()[:, :, None, :], blk_k)
    msg = f"case {case} {layout}"
    assert torch.equal(to_bhnd(out[2].cpu(), layout), e_k_i8), msg
    assert torch.equal(out[3].cpu(), e_k_s), msg
    assert torch.equal(out[4], km) and out[4].data_ptr() != km.data_ptr(), msg  # a copy
    own = ops.quantize_qk_int8(q, k, layout=layout, blk_q=blk_q, blk_k=blk_k)
    again = ops.quantize_qk_int8(q, k, layout=layout, blk_q=blk_q, blk_k=blk_k, k_mean=own[4])
    for i in range(5):
        assert torch.equal(own[i], again[i]), f"{msg}: output {i}"


def test_quantize_qk_int8_zero_blocks(device):
    q = torch.zeros(1, 40, 2, 64, dtype=torch.float16, device=device)
    q[:, 20:] = 1.5
    k = torch.full((1, 33, 2, 64), 2.0, dtype=torch.float16, device=device)  # k - mean == 0 everywhere
    q_i8, q_s, k_i8, k_s, km = ops.quantize_qk_int8(q, k, blk_q=16, blk_k=16)
    assert q_s[0, :, 0].eq(0).all() and q_s[0, :, 2].gt(0).all()
    assert q_i8[:, :16].eq(0).all() and q_i8[:, 32:].eq(127).all()
    assert k_s.eq(0).all() and k_i8.eq(0).all() and km.eq(2.0).all()
    assert not any(t.isnan().any() for t in (q_s, k_s, km))


# --------------------------------------------------------------------------------------------------
# quantize_v_fp8
V_CASES = [(1, 2, 1, 64, 128), (1, 2, 17, 128, 128), (2, 3, 127, 64, 16), (1, 2, 1000, 128, 64),
           (1, 1, 700, 64, 128)]  # (b, h, n, d, pad_to)


@pytest.mark.parametrize("case", V_CASES, ids=lambda c: "b{}h{}n{}d{}pad{}".format(*c))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_quantize_v_fp8_matches_reference(device, case, layout, dtype):
    b, h, n, d, pad_to = case
    v = attention_inputs(b, h, n, d, layout, dtype, family="bias", device=device)
    poison_allocator(device)
    v8, vs = ops.quantize_v_fp8(v, layout=layout, pad_to=pad_to)
    r8, rs = ref.quantize_v_fp8(v.cpu(), layout, pad_to)
    n_pad = (n + pad_to - 1) // pad_to * pad_to
    assert v8.shape == (b, h, d, n_pad) and v8.dtype == torch.float8_e4m3fn
    assert torch.equal(vs.cpu(), rs), f"scales differ: {case} {layout}"
    assert torch.equal(v8.cpu().view(torch.uint8), r8.view(torch.uint8)), f"codes differ: {case} {layout}"


def test_quantize_v_fp8_layout_semantics(device):
    """Undo the permutation and padding independently: the dequantized V is close to V."""
    v = attention_inputs(1, 2, 45, 64, "NHD", torch.bfloat16, device=device)
    v8, vs = ops.quantize_v_fp8(v, pad_to=32)
    assert v8.shape[-1] == 64
    perm = [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15]
    inv = torch.empty(64, dtype=torch.long)
    for g in range(4):
        for p, t in enumerate(perm):
            inv[16 * g + t] = 16 * g + p
    tokens = v8.float().cpu()[..., inv]  # [B, H, D, n_pad] in token order
    assert tokens[..., 45:].eq(0).all(), "padding must be zero"
    deq = tokens[..., :45] * vs.cpu()[..., None]
    x = to_bhnd(v.cpu(), "NHD").float().transpose(2, 3)
    err = (deq - x).abs() / x.abs().amax(dim=-1, keepdim=True)
    assert err.max() < 2 ** -4, f"fp8 E4M3 relative error {err.max():.4f}"  # 3 mantissa bits, values <= 448


def test_quantize_qk_int8_no_keys(device):
    """Nk = 0: no K code or scale, and k's mean is NaN (0 / 0, the reference's), not uninitialised memory."""
    q = torch.randn(1, 5, 2, 64, dtype=torch.bfloat16, device=device)
    k = torch.randn(1, 0, 2, 64, dtype=torch.bfloat16, device=device)
    poison_allocator(device)
    q_i8, q_s, k_i8, k_s, km = ops.quantize_qk_int8(q, k, blk_q=64, blk_k=64)
    r = ref.quantize_qk_int8(q.cpu(), k.cpu(), "NHD", 64, 64, 1.0)
    assert torch.equal(q_i8.cpu(), r[0]) and torch.equal(q_s.cpu(), r[1])
    assert k_i8.shape == (1, 0, 2, 64) and k_s.shape == (1, 2, 0)
    assert km.shape == (1, 2, 64) and km.isnan().all()


@pytest.mark.parametrize("case", V_CASES[1:4], ids=lambda c: "b{}h{}n{}d{}pad{}".format(*c))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_quantize_v_fp8_given_amax(device, case, layout):
    """A given v_amax (sla_linear_state's) replaces the computed one: the single-pass kernel's codes and scales
    are the reference's with that amax, bit for bit, and with the true amax they are the two-phase kernel's."""
    b, h, n, d, pad_to = case
    v = attention_inputs(b, h, n, d, layout, torch.bfloat16, family="bias", device=device)
    amax = to_bhnd(v, layout).float().abs().amax(2)
    bigger = amax * 1.5 + 0.25
    poison_allocator(device)
    v8, vs = ops.quantize_v_fp8(v, layout=layout, pad_to=pad_to, v_amax=bigger)
    r8, rs = ref.quantize_v_fp8(v.cpu(), layout, pad_to, bigger.cpu())
    msg = f"case {case} {layout}"
    assert torch.equal(v8.cpu().view(torch.uint8), r8.view(torch.uint8)), msg
    assert torch.equal(vs.cpu(), rs), msg
    own = ops.quantize_v_fp8(v, layout=layout, pad_to=pad_to)
    again = ops.quantize_v_fp8(v, layout=layout, pad_to=pad_to, v_amax=amax)
    assert torch.equal(own[0].view(torch.uint8), again[0].view(torch.uint8)) and torch.equal(own[1], again[1]), msg


@pytest.mark.parametrize("name", ["k_mean", "v_amax"])
def test_quantize_given_statistic_is_checked(device, name):
    x = attention_inputs(1, 2, 40, 64, "NHD", torch.float16, device=device)
    call = {"k_mean": lambda t: ops.quantize_qk_int8(x, x, k_mean=t),
            "v_amax": lambda t: ops.quantize_v_fp8(x, v_amax=t)}[name]
    good = torch.zeros(1, 2, 64, device=device)
    bads = [(good.double(), "float32"), (good[:, :1], "shape"), (torch.zeros(1, 4, 64, device=device)[:, ::2],
                                                                "contiguous")]
    if device != "cpu":
        bads.append((good.cpu(), "tensor on"))
    for bad, words in bads:
        with pytest.raises((TypeError, ValueError), match=name) as e:
            call(bad)
        assert words in str(e.value), str(e.value)


# --------------------------------------------------------------------------------------------------
# quantize_per_token_int8
@pytest.mark.parametrize("shape", [(1, 8), (7, 1536), (3, 5, 200), (3, 8960), (4, 13824), (2, 20000), (5, 77)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_quantize_per_token_int8_matches_reference(device, shape, dtype):
    x = (torch.randn(shape) * torch.rand(shape[:-1] + (1,)) * 5).to(dtype=dtype, device=device)
    poison_allocator(device)
    q, s = ops.quantize_per_token_int8(x)
    rq, rs = ref.quantize_per_token_int8(x.cpu())
    assert q.shape == x.shape and s.shape == x.shape[:-1]
    assert torch.equal(s.cpu(), rs) and torch.equal(q.cpu(), rq), f"shape {shape}"
    deq = q.float() * s[..., None]
    assert ((deq - x.float()).abs() <= s[..., None] / 2 + 1e-6).all()


def test_quantize_per_token_int8_strided_rows(device):
    base = torch.randn(64, 3 * 512, dtype=torch.bfloat16, device=device)
    x = base[:, 512:1024]  # rows with a stride of 1536
    q, s = ops.quantize_per_token_int8(x)
    rq, rs = ref.quantize_per_token_int8(x.cpu())
    assert torch.equal(q.cpu(), rq) and torch.equal(s.cpu(), rs)
    z = torch.zeros(3, 64, dtype=torch.float16, device=device)
    qz, sz = ops.quantize_per_token_int8(z)
    assert qz.eq(0).all() and sz.eq(0).all()


# --------------------------------------------------------------------------------------------------
# GPU-only: long sequences (several tiles per CTA of V's persistent kernel), many slices (several slice
# groups; K's mean over many tiles), stream/graph friendliness.
@pytest.mark.gpu
@pytest.mark.parametrize("b,h,n,d", [(1, 2, 32760, 128), (1, 1, 75600, 128), (3, 16, 1000, 64), (1, 40, 4096, 128)])
def test_quantize_kv_long_and_many_slices_cuda(b, h, n, d):
    k = attention_inputs(b, h, n, d, "NHD", torch.bfloat16, family="bias", device="cuda")
    poison_allocator("cuda")
    q_i8, q_s, k_i8, k_s, km = ops.quantize_qk_int8(k, k, blk_q=64, blk_k=128)
    r = ref.quantize_qk_int8(k.cpu(), k.cpu(), "NHD", 64, 128, 1.0)
    assert torch.equal(q_i8.cpu(), r[0]) and torch.equal(q_s.cpu(), r[1])
    torch.testing.assert_close(km.cpu(), r[4], rtol=1e-5, atol=1e-5)
    e_i8, e_s = ref.int8_blockwise(to_bhnd(k.cpu(), "NHD").float() - km.cpu()[:, :, None], 128)
    assert torch.equal(to_bhnd(k_i8.cpu(), "NHD"), e_i8) and torch.equal(k_s.cpu(), e_s)
    v8, vs = ops.quantize_v_fp8(k)
    r8, rs = ref.quantize_v_fp8(k.cpu(), "NHD", 128)
    assert torch.equal(vs.cpu(), rs) and torch.equal(v8.cpu().view(torch.uint8), r8.view(torch.uint8))


@pytest.mark.gpu
def test_quantize_ops_capture_in_cuda_graph():
    q = attention_inputs(1, 4, 3000, 128, "NHD", torch.bfloat16, device="cuda")
    x = torch.randn(300, 1536, dtype=torch.bfloat16, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):  # warm-up on a side stream, as graph capture requires
        ops.quantize_qk_int8(q, q), ops.quantize_v_fp8(q), ops.quantize_per_token_int8(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out_qk = ops.quantize_qk_int8(q, q)
        out_v = ops.quantize_v_fp8(q)
        out_x = ops.quantize_per_token_int8(x)
    q.copy_(attention_inputs(1, 4, 3000, 128, "NHD", torch.bfloat16, device="cuda"))
    x.normal_()
    g.replay()
    torch.cuda.synchronize()
    want_qk = ops.quantize_qk_int8(q, q)
    for i in (0, 1):  # q: no reduction, bit-identical
        assert torch.equal(out_qk[i], want_qk[i])
    # k's mean is summed with float atomics (order varies between runs): equal up to rounding.
    torch.testing.assert_close(out_qk[4], want_qk[4], rtol=1e-5, atol=1e-5)
    assert (out_qk[2].int() - want_qk[2].int()).abs().max() <= 1
    for got, want in zip(out_v + out_x, ops.quantize_v_fp8(q) + ops.quantize_per_token_int8(x)):
        assert torch.equal(got.view(torch.uint8) if got.dtype == torch.float8_e4m3fn else got,
                           want.view(torch.uint8) if want.dtype == torch.float8_e4m3fn else want)


def test_quantize_weight_int8_per_channel():
    from turbodiffusion.quant import quantize_weight_int8_per_channel

    w = torch.randn(96, 200) * torch.rand(96, 1)
    w[3, 7] = 9.0
    q, s = quantize_weight_int8_per_channel(w)
    assert q.dtype == torch.int8 and s.shape == (96,)
    assert int(q[3, 7]) == 127 and s[3].item() == pytest.approx(9.0 / 127, rel=1e-7)
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-7).all()
    with pytest.raises(ValueError, match="w"):
        quantize_weight_int8_per_channel(w[0])
