"""w8a8_gemm (ARCHITECTURE §4.4, docs/gemm.md): on "cpu" the reference, on "cuda" the kernels (every
backend), compared with the reference on CPU.

Kernel exactness is tested apart from quantization error:
- integer inputs whose products are exact in fp16: the output must equal the exact int64 result bit
  for bit (scales are distinct powers of two, so a missing or swapped scale shows);
- full-range int8 (including -128) with bf16 output: bit-identical to the reference's rounding chain
  (exact int64 -> float32 -> scale -> bf16), up to the one-fp32-ulp fma difference with a bias;
- bf16 inputs quantized per token / per channel: error against the fp32 product bounded by the
  quantization error (and the kernel within one output ulp of the reference).
"""
from __future__ import annotations

import pytest
import torch

from turbodiffusion import ops
from turbodiffusion import reference as ref
from turbodiffusion.nn.linear import Fp8Linear, Int8Linear
from turbodiffusion.quant import dequantize_weight_int8_block128, quantize_weight_int8_block128

from _util import cosine, poison_allocator, rel_l1
from conftest import HAS_GPU  # noqa: F401

BACKENDS = ("auto", "mma")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _backends(device: str, dtype=torch.int8):
    if device == "cpu":
        return ("auto",)
    out = ["auto"]
    if dtype == torch.int8:
        out.append("mma")
    if torch.cuda.get_device_capability()[0] == 9:
        out.append("sm90")
    return tuple(out)


def _run(device, a, a_scale, w, w_scale, bias, out_dtype, backend, sm90_config=None):
    """The op on `device` (inputs moved there, output back on CPU)."""
    poison_allocator(device)
    mv = lambda t: None if t is None else t.to(device)  # noqa: E731
    y = ops.w8a8_gemm(mv(a), mv(a_scale), mv(w), mv(w_scale), mv(bias), out_dtype=out_dtype, backend=backend,
                      sm90_config=sm90_config)
    assert y.shape == (a.shape[0], w.shape[0]) and y.dtype == out_dtype and y.device.type == device
    return y.cpu()


def _pow2_scales(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.pow(2.0, torch.randint(-3, 2, (n,), generator=g).float())


# ------------------------------------------------------------------------------------------------
# Exactness on integer inputs
@pytest.mark.parametrize("m", [1, 2, 7, 16, 33, 64, 65, 127, 128, 129, 130])
@pytest.mark.parametrize("n,k", [(8, 16), (136, 48), (264, 208), (40, 1040)])
def test_int32_accumulator_exact_small_values(device, m, n, k):
    """|a|, |w| <= 3: every product sum is an integer below 2^11 (K <= 1040 -> |acc| <= 9360 ... scaled by
    powers of two, so fp16 holds each result exactly); the output must equal the exact result."""
    g = _gen(1000 * m + n + k)
    a = torch.randint(-3, 4, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-3, 4, (n, k), generator=g, dtype=torch.int8)
    a_s, w_s = _pow2_scales(m, g), _pow2_scales(n, g)
    exact = ref.gemm_accumulator(a, w).double() * a_s.double()[:, None] * w_s.double()[None, :]
    fits = exact.abs().max().item() <= 2048 * 2.0 ** -6 or (exact.abs() < 2048).all().item()
    for backend in _backends(device):
        y = _run(device, a, a_s, w, w_s, None, torch.float16, backend)
        if fits:
            assert torch.equal(y.double(), exact), (
                f"{backend} m={m} n={n} k={k}: {(y.double() != exact).sum().item()} of {y.numel()} differ, "
                f"max |diff| {(y.double() - exact).abs().max().item():.3g}")
        # Always: bit-identical to the reference rounding chain.
        y_ref = ref.w8a8_gemm(a, a_s, w, w_s, None, torch.float16)
        assert torch.equal(y, y_ref), f"{backend} m={m} n={n} k={k}: differs from reference"


SM90_TILES = [(dtype, tile) for dtype, names in ops.GEMM_SM90_TILES.items() for tile in range(len(names))]


@pytest.mark.parametrize("dtype,tile", SM90_TILES, ids=[f"{str(d)[6:]}-t{t}" for d, t in SM90_TILES])
@pytest.mark.parametrize("raster_along_m,swizzle", [(0, 1), (1, 2), (0, 8)])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_sm90_every_tile_exact(device, dtype, tile, raster_along_m, swizzle, out_dtype):
    """Every tile of the sm90 tables (sweep candidates included, when compiled) with an explicit raster
    order and swizzle: small integers (exact in int8 and E4M3, so the FP8 float32 accumulator is exact
    too) and power-of-two scales give the exact result, bit-identical to the reference; M, N and K
    tails of every tile; K = 1040 crosses the FP8 promotion interval (128) with a partial last k-tile."""
    if device == "cuda" and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("sm90 kernel: Hopper only")
    config = (tile, raster_along_m, swizzle)
    for m, n, k in [(1, 264, 208), (65, 200, 1040), (130, 8, 16), (257, 392, 400)]:
        g = _gen(100 * tile + m + n + k)
        a = torch.randint(-3, 4, (m, k), generator=g, dtype=torch.int8)
        w = torch.randint(-3, 4, (n, k), generator=g, dtype=torch.int8)
        a, w = a.to(dtype), w.to(dtype)
        a_s, w_s = _pow2_scales(m, g), _pow2_scales(n, g)
        y_ref = ref.w8a8_gemm(a, a_s, w, w_s, None, out_dtype)
        try:
            y = _run(device, a, a_s, w, w_s, None, out_dtype, "sm90", config)
        except ValueError as e:
            if "not compiled in this build" in str(e):
                pytest.skip(str(e))
            raise
        assert torch.equal(y, y_ref), (
            f"{config} m={m} n={n} k={k}: {(y != y_ref).sum().item()} of {y.numel()} differ from the reference")


def test_reference_accumulator_is_exact():
    """The reference's int64 sum against a Python-integer dot product (so CPU runs are not vacuous)."""
    g = _gen(7)
    a = torch.randint(-128, 128, (5, 48), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (8, 48), generator=g, dtype=torch.int8)
    a[0] = -128
    w[0] = -128
    acc = ref.gemm_accumulator(a, w)
    for i in range(5):
        for j in range(8):
            assert acc[i, j].item() == sum(int(x) * int(y) for x, y in zip(a[i].tolist(), w[j].tolist()))
    assert acc[0, 0].item() == 48 * 128 * 128


@pytest.mark.parametrize("m", [1, 5, 64, 129, 130])
@pytest.mark.parametrize("n,k", [(8, 4096), (200, 1536), (1000, 144)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_full_range_int8_matches_reference(device, m, n, k, with_bias):
    g = _gen(31 * m + n + k + with_bias)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    a[0, :] = -128  # the extreme products: 128 * 128 * K
    w[0, :] = -128
    a_s = torch.rand(m, generator=g) * 1e-3 + 1e-4
    w_s = torch.rand(n, generator=g) * 1e-3 + 1e-4
    bias = (torch.randn(n, generator=g) * 3).to(torch.bfloat16) if with_bias else None
    y_ref = ref.w8a8_gemm(a, a_s, w, w_s, bias, torch.bfloat16)
    for backend in _backends(device):
        y = _run(device, a, a_s, w, w_s, bias, torch.bfloat16, backend)
        if not with_bias:
            n_diff = (y != y_ref).sum().item()
            assert n_diff == 0, f"{backend} m={m} n={n} k={k}: {n_diff} of {y.numel()} values differ"
        else:  # one fma vs multiply + add: at most one bf16 ulp apart
            ulp = y_ref.float().abs().clamp_min(1e-30) * 2.0 ** -7
            assert ((y.float() - y_ref.float()).abs() <= ulp).all(), f"{backend} m={m} n={n} k={k}"


# ------------------------------------------------------------------------------------------------
# Quantization error from bf16 inputs, and the module path
def _quantized_problem(m, n, k, seed, dtype=torch.int8):
    g = _gen(seed)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    wf = (torch.randn(n, k, generator=g) * 0.02).to(torch.bfloat16)
    bias = (torch.randn(n, generator=g) * 0.1).to(torch.bfloat16)
    return x, wf, bias


@pytest.mark.parametrize("m,n,k", [(1, 8, 16), (77, 264, 1536), (130, 1536, 400)])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_dequantized_output_vs_fp32(device, m, n, k, out_dtype, with_bias):
    x, wf, bias = _quantized_problem(m, n, k, m + n + k)
    bias = bias.to(out_dtype) if with_bias else None
    xq, xs = ref.quantize_per_token_int8(x)
    wq, ws = ref.quantize_per_token_int8(wf)  # per-channel weight = per-row of w [N, K]
    y32 = x.float() @ wf.float().T + (0 if bias is None else bias.float())
    y_ref = ref.w8a8_gemm(xq, xs, wq, ws, bias, out_dtype)
    err_ref = rel_l1(y_ref, y32)
    assert err_ref < 0.03, f"reference quantization error {err_ref:.4f} m={m} n={n} k={k}"
    assert cosine(y_ref, y32) > 0.999 or k < 32
    for backend in _backends(device):
        y = _run(device, xq, xs, wq, ws, bias, out_dtype, backend)
        tol = y_ref.float().abs() * 2.0 ** (-7 if out_dtype == torch.bfloat16 else -10) + 1e-6
        assert ((y.float() - y_ref.float()).abs() <= tol).all(), f"{backend} m={m} n={n} k={k}"


@pytest.mark.parametrize("m,n,k", [(1, 8, 16), (130, 264, 1536), (64, 136, 4096)])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_fp8(device, m, n, k, out_dtype):
    if device == "cuda" and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("FP8 GEMM has an sm90 kernel only")
    x, wf, bias = _quantized_problem(m, n, k, 3 * m + n + k)
    bias = bias.to(out_dtype)
    xq, xs = Fp8Linear.quantize_activation(x)
    wq, ws = Fp8Linear.quantize_activation(wf)
    y32 = x.float() @ wf.float().T + bias.float()
    y_ref = ref.w8a8_gemm(xq, xs, wq, ws, bias, out_dtype)
    assert rel_l1(y_ref, y32) < 0.06, f"reference fp8 error {rel_l1(y_ref, y32):.4f}"
    # The exact accumulator: fp8 products are exact in float64; check one entry by hand.
    assert ref.gemm_accumulator(xq[:1], wq[:1]).item() == sum(
        float(p) * float(q) for p, q in zip(xq[0].float().tolist(), wq[0].float().tolist()))
    for backend in _backends(device, torch.float8_e4m3fn):
        y = _run(device, xq, xs, wq, ws, bias, out_dtype, backend)
        # float32 tensor-core accumulation (rounded) vs the exact sum: a few output ulps at most.
        tol = y_ref.float().abs() * 2.0 ** (-6 if out_dtype == torch.bfloat16 else -9) + 1e-3
        assert ((y.float() - y_ref.float()).abs() <= tol).all(), f"{backend} m={m} n={n} k={k}"


@pytest.mark.parametrize("cls", [Int8Linear, Fp8Linear])
@pytest.mark.parametrize("shape", [(3, 17, 256), (1, 1, 1536)])
def test_linear_modules(device, cls, shape):
    if cls is Fp8Linear and device == "cuda" and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("FP8 GEMM has an sm90 kernel only")
    g = _gen(sum(shape))
    lin = torch.nn.Linear(shape[-1], 200, dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.02)
        lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.1)
    x = torch.randn(shape, generator=g).to(torch.bfloat16)
    y32 = lin.float()(x.float())
    q = cls.from_linear(lin.to(torch.bfloat16)).to(device)
    y = q(x.to(device)).cpu()
    assert y.shape == shape[:-1] + (200,) and y.dtype == torch.bfloat16
    err = rel_l1(y, y32)
    assert err < (0.02 if cls is Int8Linear else 0.06), f"{cls.__name__} {shape}: rel L1 {err:.4f}"
    # From already-quantized input: identical to the bf16 path.
    xq, xs = cls.quantize_activation(x.to(device))
    y2 = q.forward_quantized(xq, xs).cpu()
    assert torch.equal(y, y2)


def test_linear_registered_kinds():
    from turbodiffusion.models.wan.layers import make_linear
    for kind, cls in (("int8", Int8Linear), ("fp8", Fp8Linear)):
        layer = make_linear(64, 32, kind=kind, dtype=torch.bfloat16, device="cpu")
        assert isinstance(layer, cls) and layer.in_features == 64 and layer.out_features == 32
        assert layer(torch.randn(2, 64, dtype=torch.bfloat16)).shape == (2, 32)


# ------------------------------------------------------------------------------------------------
# The TurboDiffusion -quant 128 x 128 block format (golden quant_int8_example.safetensors)
@pytest.mark.golden
def test_block128_golden_example(device, golden):
    st = pytest.importorskip("safetensors.torch")
    ex = st.load_file(str(golden / "quant_int8_example.safetensors"))
    q, scale = ex["w_int8"], ex["w_scale"]
    x, bias = ex["x_bf16"], ex["bias_bf16"]
    y64 = ex["y_float64_unquantized"]
    # Re-encoding with per-channel scales: the exactly dequantized weight, re-quantized per row.
    q2, s2 = ref.block128_to_per_channel(q, scale)
    w_hat = dequantize_weight_int8_block128(q, scale, torch.float32)
    torch.testing.assert_close(s2, w_hat.abs().amax(dim=1) / 127, rtol=2e-7, atol=0)
    assert ((q2.float() * s2[:, None] - w_hat).abs() <= s2[:, None] * 0.501).all()
    lin = Int8Linear.from_quant_state_dict({"int8_weight": q, "scale": scale, "bias": bias})
    assert torch.equal(lin.int8_weight, q2) and torch.equal(lin.scale, s2)
    y = lin.to(device)(x.to(device)).cpu()
    err = rel_l1(y, y64)
    err_emulated = rel_l1(ex["y_bf16_emulated"], y64)
    # Measured (docs/gemm.md): 0.0430 (per-token activations, per-channel re-encoded weight) vs 0.0425 for
    # TurboDiffusion's own 128 x 128 activation + weight tiles (the golden emulation).
    assert err < 0.045 and err < 1.05 * err_emulated, f"rel L1 {err:.4f} vs the format's own {err_emulated:.4f}"
    # TurboDiffusion's own quantizer reproduces the checkpoint's codes, so from_linear on its weight agrees too.
    qq, ss = quantize_weight_int8_block128(ex["w_bf16"])
    assert torch.equal(qq, q) and torch.equal(ss, scale)


@pytest.mark.gpu
def test_gemm_large_and_graph_capture():
    x, wf, bias = _quantized_problem(4099, 1536, 1536, 5)
    xq, xs = ref.quantize_per_token_int8(x)
    wq, ws = ref.quantize_per_token_int8(wf)
    y_ref = ref.w8a8_gemm(xq, xs, wq, ws, bias, torch.bfloat16)
    args = [t.cuda() for t in (xq, xs, wq, ws, bias)]
    for backend in _backends("cuda"):
        y = ops.w8a8_gemm(*args, backend=backend)
        tol = y_ref.float().abs() * 2.0 ** -7 + 1e-6
        assert ((y.cpu().float() - y_ref.float()).abs() <= tol).all(), backend
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            yg = ops.w8a8_gemm(*args, backend=backend)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(yg, y), backend
