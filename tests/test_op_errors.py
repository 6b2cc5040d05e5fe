"""Bad input gets a clear error naming the argument, on every device (CPU: the checks in
turbodiffusion/ops.py; CUDA: the launchers' checks in csrc/ops/checks.h, reached through the
dispatcher without the Python wrappers)."""
from __future__ import annotations

import pytest
import torch

from turbodiffusion import ops

from _util import skip_unless_kernel_runs

QK = torch.ops.turbodiffusion.quantize_qk_int8
V = torch.ops.turbodiffusion.quantize_v_fp8
TOK = torch.ops.turbodiffusion.quantize_per_token_int8
GEMM = torch.ops.turbodiffusion.w8a8_gemm


def _t(shape, device, dtype=torch.bfloat16):
    return torch.randn(shape).to(dtype=dtype, device=device)


def _expect_error(call, exc, words):
    """call() raises exc with a message containing every word (argument name, expected, given)."""
    with pytest.raises(exc) as info:
        call()
    text = str(info.value)
    for w in words:
        assert w in text, f"message {text!r} lacks {w!r}"


def _other_device(device):
    return "cpu" if device == "cuda" else "meta"


def _cases(device):
    q = _t((1, 16, 2, 64), device)
    good = dict(layout="NHD", blk_q=64, blk_k=64, q_scale_factor=1.0)
    qk = lambda q, k, **kw: QK(q, k, *{**good, **kw}.values())  # noqa: E731
    return [
        # (call, exception type, words the message must contain)
        (lambda: qk(q, _t((1, 16, 2, 64), _other_device(device))), (ValueError, RuntimeError), ["k", "expected a tensor on"]),
        (lambda: qk(q.float(), q), TypeError, ["q", "bfloat16/float16", "float32"]),
        (lambda: qk(q, q.to(torch.float16)), TypeError, ["k", "like q"]),
        (lambda: qk(q[0], q), ValueError, ["q", "4-D", "3-D"]),
        (lambda: qk(_t((1, 16, 2, 96), device), _t((1, 16, 2, 96), device)), ValueError, ["q", "head dim 96"]),
        (lambda: qk(q, _t((1, 16, 2, 128), device)[..., ::2]), ValueError, ["k", "unit stride"]),
        (lambda: qk(q, _t((1, 16, 3, 64), device)), ValueError, ["k", "batch, heads and head dim"]),
        (lambda: qk(q, q, layout="BNHD"), ValueError, ["layout", "BNHD"]),
        (lambda: qk(q, q, blk_q=48), ValueError, ["blk_q", "48"]),
        (lambda: qk(q, q, q_scale_factor=0.0), ValueError, ["q_scale_factor"]),
        (lambda: V(q.float(), "NHD", 128), TypeError, ["v", "float32"]),
        (lambda: V(q[0], "NHD", 128), ValueError, ["v", "4-D"]),
        (lambda: V(_t((1, 16, 2, 96), device), "NHD", 128), ValueError, ["v", "head dim 96"]),
        (lambda: V(_t((1, 16, 2, 128), device)[..., ::2], "NHD", 128), ValueError, ["v", "unit stride"]),
        (lambda: V(q, "NHD", 24), ValueError, ["pad_to", "24"]),
        (lambda: V(_t((1, 0, 2, 64), device), "NHD", 128), ValueError, ["v", "at least one token", "[1, 0, 2, 64]"]),
        (lambda: TOK(_t((4, 64), device, torch.float32)), TypeError, ["x", "float32"]),
        (lambda: TOK(_t((4, 64), device)[:, ::2]), ValueError, ["x", "unit stride"]),
        (lambda: TOK(_t((4, 0), device)), ValueError, ["x", "non-empty"]),
    ]


def _gemm_cases(device):
    i8 = lambda *s: torch.randint(-5, 5, s, dtype=torch.int8).to(device)  # noqa: E731
    f32 = lambda *s: torch.rand(s).to(device)  # noqa: E731
    a, w = i8(4, 32), i8(16, 32)
    good = dict(a=a, a_scale=f32(4), w=w, w_scale=f32(16), bias=None, out_dtype=torch.bfloat16, backend="auto",
                sm90_config=[])
    g = lambda **kw: GEMM(*{**good, **kw}.values())  # noqa: E731
    return [
        (lambda: g(a=a.float()), TypeError, ["a", "int8/float8_e4m3fn", "float32"]),
        (lambda: g(w=w.to(torch.float8_e4m3fn)), TypeError, ["w", "like a"]),
        (lambda: g(a=i8(4, 24), w=i8(16, 24)), ValueError, ["K = 24", "multiple of 16"]),
        (lambda: g(w=i8(12, 32), w_scale=f32(12)), ValueError, ["N = 12", "multiple of 8"]),
        (lambda: g(w=i8(16, 48)), ValueError, ["w", "K like a"]),
        (lambda: g(a=i8(2, 4, 32)), ValueError, ["a", "2-D"]),
        (lambda: g(a_scale=f32(5)), ValueError, ["a_scale", "[4]"]),
        (lambda: g(w_scale=f32(16).half()), TypeError, ["w_scale", "float32"]),
        (lambda: g(bias=f32(16)), TypeError, ["bias", "bfloat16"]),
        (lambda: g(out_dtype=torch.float32), TypeError, ["out_dtype", "float32"]),
        (lambda: g(backend="cublas"), ValueError, ["backend", "cublas"]),
        (lambda: g(a=i8(4, 64)[:, ::2]), ValueError, ["a", "unit stride"]),
        (lambda: g(w=i8(16, 40)[:, :32]), ValueError, ["w", "row stride"]),
        (lambda: g(sm90_config=[0, 0, 1]), ValueError, ["sm90_config", "backend 'sm90'", "'auto'"]),
        (lambda: g(backend="sm90", sm90_config=[0, 0]), ValueError, ["sm90_config", "[tile, raster_along_m, swizzle]"]),
        (lambda: g(backend="sm90", sm90_config=[2, 0, 1]), ValueError, ["sm90_config", "tile 2", "int8", "0..1"]),
        (lambda: g(backend="sm90", sm90_config=[0, 2, 1]), ValueError, ["sm90_config", "raster_along_m", "2"]),
        (lambda: g(backend="sm90", sm90_config=[0, 0, 3]), ValueError, ["sm90_config", "swizzle", "3"]),
    ]


@pytest.mark.parametrize("index", range(18))
def test_gemm_bad_input_names_the_argument(device, index):
    _expect_error(*_gemm_cases(device)[index])


@pytest.mark.parametrize("index", range(18))
def test_bad_input_names_the_argument(device, index):
    _expect_error(*_cases(device)[index])


def test_cuda_tensor_mixed_with_cpu_tensor_on_public_api(device):
    q = _t((1, 16, 2, 64), device)
    with pytest.raises((ValueError, RuntimeError), match="k: expected a tensor on"):
        ops.quantize_qk_int8(q, _t((1, 16, 2, 64), _other_device(device)))


def _attention_cases(device, kernel):
    skip_unless_kernel_runs(device, kernel)
    op = getattr(torch.ops.turbodiffusion, f"attention_int8_fp8_{kernel}")
    q = _t((1, 40, 2, 64), device)
    kv = _t((1, 70, 2, 64), device)
    q_i8, q_s, k_i8, k_s, km = ops.quantize_qk_int8(q, kv, blk_q=16, blk_k=16)
    v8, vs = ops.quantize_v_fp8(kv, pad_to=64)
    good = dict(q=q, q_int8=q_i8, q_scale=q_s, k_int8=k_i8, k_scale=k_s, k_mean=km, v_fp8=v8, v_scale=vs,
                layout="NHD", sm_scale=0.125)
    a = lambda **kw: op(*{**good, **kw}.values())  # noqa: E731
    i8 = lambda *s: torch.zeros(s, dtype=torch.int8, device=device)  # noqa: E731
    return [
        (lambda: a(q_int8=q_i8.float()), TypeError, ["q_int8", "int8", "float32"]),
        (lambda: a(q=q.float()), TypeError, ["q", "bfloat16/float16", "float32"]),
        (lambda: a(k_int8=k_i8.to(_other_device(device))), (ValueError, RuntimeError), ["k_int8", "expected a tensor on"]),
        (lambda: a(q=_t((1, 40, 2, 96), device), q_int8=i8(1, 40, 2, 96)), ValueError, ["q", "head dim 96"]),
        (lambda: a(k_int8=i8(1, 70, 3, 64)), ValueError, ["k_int8", "batch, heads and head dim"]),
        (lambda: a(k_int8=i8(1, 0, 2, 64)), ValueError, ["k_int8", "at least one key"]),
        (lambda: a(q_scale=q_s[..., :2].contiguous()), ValueError, ["q_scale", "expected shape", "[1, 2, 3]"]),
        (lambda: a(k_scale=k_s.double()), TypeError, ["k_scale", "float32"]),
        (lambda: a(v_scale=torch.ones(1, 4, 64, device=device)[:, ::2]), ValueError, ["v_scale", "contiguous"]),
        (lambda: a(v_fp8=ops.quantize_v_fp8(kv, pad_to=16)[0]), ValueError, ["v_fp8", "multiple of 64"]),
        (lambda: a(q_int8=i8(1, 40, 2, 128)[..., ::2]), ValueError, ["q_int8", "unit stride"]),
        (lambda: a(layout="BHND"), ValueError, ["layout", "BHND"]),
        (lambda: a(sm_scale=0.0), ValueError, ["sm_scale"]),
        (lambda: ops.sage_attention(q, kv, kv[:, :30]), ValueError, ["v", "like k"]),
        (lambda: ops.sage_attention(q, kv, kv.half()), TypeError, ["v", "like q"]),
        (lambda: ops.sage_attention(q, kv, kv, backend="wgmma"), ValueError, ["backend", "wgmma", "sm90"]),
    ] + ([  # TMA loads whole rows of a contiguous tensor
        (lambda: a(k_int8=i8(1, 140, 2, 64)[:, ::2]), ValueError, ["k_int8", "contiguous", "17920, 256, 64, 1"]),
    ] if kernel == "sm90" else [])


@pytest.mark.parametrize("kernel", ["mma", "sm90"])
@pytest.mark.parametrize("index", range(17))
def test_attention_bad_input_names_the_argument(device, kernel, index):
    cases = _attention_cases(device, kernel)
    if index >= len(cases):
        pytest.skip(f"{kernel} has {len(cases)} cases")
    _expect_error(*cases[index])


SLA_MAP = torch.ops.turbodiffusion.sla_block_map
SLA_MAP_QK = torch.ops.turbodiffusion.sla_block_map_quantize_qk
SLA_LIN = torch.ops.turbodiffusion.sla_linear_state
SPARSE = torch.ops.turbodiffusion.attention_int8_fp8_sparse_mma


def _sla_cases(device):
    bf = dict(dtype=torch.bfloat16, device=device)
    q = torch.randn(1, 100, 2, 64, **bf)
    w = torch.randn(64, 64, device=device)
    q16k = torch.zeros(1, 16385, 1, 64, **bf)  # 16385^2 > 2^28 block pairs at blocks of one token
    q_i8, q_s, k_i8, k_s, km = ops.quantize_qk_int8(q, q, blk_q=16, blk_k=16, q_scale_factor=0.18)
    args = [q, q_i8, q_s, k_i8, k_s, km, *ops.quantize_v_fp8(q, pad_to=64)]
    lut = torch.zeros(1, 2, 2, 1, dtype=torch.int32, device=device)
    count = torch.ones(1, 2, 2, dtype=torch.int32, device=device)
    sp = lambda **kw: SPARSE(*args, *{**dict(lut=lut, count=count, lin=None, lin_bias=None, layout="NHD",  # noqa: E731
                                           sm_scale=0.125, blkq=64, blkk=64), **kw}.values())
    return [
        (lambda: SLA_MAP(q, q.float(), "NHD", 64, 64, 0.1), TypeError, ["k", "float32"]),
        (lambda: SLA_MAP(q, torch.randn(1, 100, 3, 64, **bf), "NHD", 64, 64, 0.1), ValueError, ["k", "heads"]),
        (lambda: SLA_MAP(q, q, "NHD", 0, 64, 0.1), ValueError, ["blkq", "0"]),
        (lambda: SLA_MAP(q, q, "NHD", 64, 64, 1.5), ValueError, ["topk", "1.5"]),
        (lambda: SLA_MAP(q, q[:, :0], "NHD", 64, 64, 0.1), ValueError, ["k", "at least one key"]),
        (lambda: SLA_MAP(q16k, q16k, "NHD", 1, 1, 0.1), ValueError, ["blkq, blkk", "16385 x 16385", "1 GiB"]),
        (lambda: SLA_MAP_QK(q, q.float(), "NHD", 64, 64, 0.1, 16, 16, 0.5), TypeError, ["k", "float32"]),
        (lambda: SLA_MAP_QK(q, q, "NHD", 64, 0, 0.1, 16, 16, 0.5), ValueError, ["blkk", "0"]),
        (lambda: SLA_MAP_QK(q, q, "NHD", 64, 64, 0.1, 48, 16, 0.5), ValueError, ["blk_q", "48"]),
        (lambda: SLA_MAP_QK(q, q, "NHD", 64, 64, 0.1, 16, 16, 0.0), ValueError, ["q_scale_factor"]),
        (lambda: SLA_LIN(q, q, w.double(), "NHD"), TypeError, ["proj_weight", "float32", "float64"]),
        (lambda: SLA_LIN(q, q, w[:32], "NHD"), ValueError, ["proj_weight", "[64, 64]", "[32, 64]"]),
        (lambda: SLA_LIN(q, q[:, :50], w, "NHD"), ValueError, ["v", "like k"]),
        (lambda: SLA_LIN(q, q, w, "NHD", -64), ValueError, ["key_block", "-64"]),
        (lambda: SLA_MAP_QK(q, q, "NHD", 64, 64, 0.1, 16, 16, 0.5, torch.zeros(1, 2, 1, 64, device=device)),
         ValueError, ["k_block_sums", "[1, 2, 2, 64]", "[1, 2, 1, 64]"]),
        (lambda: SLA_MAP_QK(q, q, "NHD", 64, 64, 0.1, 16, 16, 0.5, torch.zeros(1, 2, 2, 64, **bf)), TypeError,
         ["k_block_sums", "float32", "bfloat16"]),
        (lambda: sp(blkq=96), ValueError, ["blkq", "multiple of 64", "96"]),
        (lambda: sp(lut=lut.long()), TypeError, ["lut", "int32", "int64"]),
        (lambda: sp(lut=torch.zeros(1, 2, 3, 1, dtype=torch.int32, device=device)), ValueError,
         ["lut", "[1, 2, 2, max_kept]", "[1, 2, 3, 1]"]),
        (lambda: sp(count=count[..., :1]), ValueError, ["count", "[1, 2, 2]"]),
        (lambda: sp(lin=torch.zeros(1, 2, 72, 64, dtype=torch.float16, device=device)), ValueError, ["lin_bias"]),
        (lambda: sp(lin=torch.zeros(1, 2, 64, 64, dtype=torch.float16, device=device),
                    lin_bias=torch.zeros(64, device=device)), ValueError, ["lin", "[1, 2, 72, 64]"]),
        (lambda: sp(lin=torch.zeros(2 * 72 * 64 + 1, dtype=torch.float16, device=device)[1:].view(1, 2, 72, 64),
                    lin_bias=torch.zeros(64, device=device)), ValueError, ["lin", "4-byte aligned", "offset 1"]),
    ]


@pytest.mark.parametrize("index", range(23))
def test_sla_bad_input_names_the_argument(device, index):
    _expect_error(*_sla_cases(device)[index])
