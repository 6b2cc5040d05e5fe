"""torch.library.opcheck for every declared op: schema, fake (meta) implementation, dispatch
registrations and AOT dispatch, on every device."""
from __future__ import annotations

import pytest
import torch

from turbodiffusion import ops

from _util import skip_unless_kernel_runs


def _samples(device):
    bf = dict(dtype=torch.bfloat16, device=device)
    return {
        "quantize_qk_int8": [(torch.randn(1, 33, 2, 64, **bf), torch.randn(1, 17, 2, 64, **bf), "NHD", 16, 32, 0.5),
                             (torch.randn(2, 2, 40, 128, **bf), torch.randn(2, 2, 50, 128, **bf), "HND", 64, 128, 1.0),
                             (torch.randn(1, 2, 20, 64, **bf), torch.randn(1, 2, 30, 64, **bf), "HND", 16, 16, 1.0,
                              torch.randn(1, 2, 64, device=device))],  # a given k_mean
        "quantize_v_fp8": [(torch.randn(1, 33, 2, 64, **bf), "NHD", 128),
                           (torch.randn(1, 2, 20, 128, dtype=torch.float16, device=device), "HND", 16),
                           (torch.randn(1, 2, 20, 64, **bf), "HND", 64, torch.rand(1, 2, 64, device=device) + 1)],
        "w8a8_gemm": [(torch.randint(-128, 128, (5, 48), dtype=torch.int8, device=device), torch.rand(5, device=device),
                       torch.randint(-128, 128, (24, 48), dtype=torch.int8, device=device),
                       torch.rand(24, device=device), None, torch.bfloat16, "auto"),
                      (torch.randint(-128, 128, (130, 32), dtype=torch.int8, device=device),
                       torch.rand(130, device=device), torch.randint(-128, 128, (8, 32), dtype=torch.int8, device=device),
                       torch.rand(8, device=device), torch.randn(8, dtype=torch.float16, device=device), torch.float16,
                       "mma")] + _sm90_gemm_samples(device),
        "quantize_per_token_int8": [(torch.randn(3, 4, 96, **bf),), (torch.randn(5, 33, dtype=torch.float16,
                                                                                  device=device),)],
        "attention_int8_fp8_mma": [_attention_sample(1, 33, 17, 2, 64, "NHD", torch.bfloat16, device),
                                   _attention_sample(2, 20, 70, 1, 128, "HND", torch.float16, device)],
        "attention_int8_fp8_sm90": [_attention_sample(1, 33, 17, 2, 64, "NHD", torch.bfloat16, device),
                                    _attention_sample(2, 130, 70, 1, 128, "HND", torch.float16, device)],
        "sla_block_map": [(torch.randn(1, 70, 2, 64, **bf), torch.randn(1, 130, 2, 64, **bf), "NHD", 16, 32, 0.3),
                          (torch.randn(2, 1, 40, 128, **bf), torch.randn(2, 1, 9, 128, **bf), "HND", 64, 64, 1.0)],
        "sla_block_map_quantize_qk": [
            (torch.randn(1, 70, 2, 64, **bf), torch.randn(1, 130, 2, 64, **bf), "NHD", 64, 32, 0.3, 16, 32, 0.5),
            (torch.randn(2, 1, 300, 128, dtype=torch.float16, device=device),
             torch.randn(2, 1, 90, 128, dtype=torch.float16, device=device), "HND", 128, 64, 1.0, 64, 16, 1.0),
            (torch.randn(1, 70, 2, 64, **bf), torch.randn(1, 130, 2, 64, **bf), "NHD", 64, 32, 0.3, 16, 32, 0.5,
             torch.randn(1, 2, 5, 64, device=device))],
        "sla_linear_state": [
            (torch.randn(1, 33, 2, 64, **bf), torch.randn(1, 33, 2, 64, **bf), torch.randn(64, 64, device=device), "NHD"),
            (torch.randn(1, 2, 70, 128, dtype=torch.float16, device=device),
             torch.randn(1, 2, 70, 128, dtype=torch.float16, device=device), torch.randn(128, 128, device=device),
             "HND"),
            (torch.randn(1, 2, 70, 128, dtype=torch.float16, device=device),
             torch.randn(1, 2, 70, 128, dtype=torch.float16, device=device), torch.randn(128, 128, device=device),
             "HND", 64)],
        "attention_int8_fp8_sparse_mma": [_sparse_sample(1, 130, 70, 2, 64, "NHD", torch.bfloat16, device, True),
                                          _sparse_sample(1, 40, 200, 1, 128, "HND", torch.float16, device, False)],
        "attention_int8_fp8_sparse_sm90": [
            _sparse_sample(1, 130, 300, 2, 64, "NHD", torch.bfloat16, device, True, blkk=128),
            _sparse_sample(1, 40, 200, 1, 128, "HND", torch.float16, device, False, blkk=128)],
    }


def _sm90_gemm_samples(device):
    """An explicit sm90_config (tile 0: compiled in every build), where the sm90 kernel runs."""
    if device == "cuda" and torch.cuda.get_device_capability()[0] != 9:
        return []
    return [(torch.randint(-128, 128, (70, 64), dtype=torch.int8, device=device), torch.rand(70, device=device),
             torch.randint(-128, 128, (24, 64), dtype=torch.int8, device=device), torch.rand(24, device=device), None,
             torch.bfloat16, "sm90", [0, 1, 4])]


def _attention_sample(b, nq, nk, h, d, layout, dtype, device):
    shape = (lambda n: (b, n, h, d)) if layout == "NHD" else (lambda n: (b, h, n, d))
    q, k, v = (torch.randn(shape(n), dtype=dtype, device=device) for n in (nq, nk, nk))
    q_i8, q_s, k_i8, k_s, km = ops.quantize_qk_int8(q, k, layout=layout, blk_q=16, blk_k=16, q_scale_factor=0.18)
    v8, vs = ops.quantize_v_fp8(v, layout=layout, pad_to=64)
    return (q, q_i8, q_s, k_i8, k_s, km, v8, vs, layout, 0.125)


def _sparse_sample(b, nq, nk, h, d, layout, dtype, device, linear, blkk=64):
    """A sparse attention op on a random LUT with 64 x blkk blocks (one row left empty), with or without
    the linear epilogue."""
    q, *quantized, layout, sm = _attention_sample(b, nq, nk, h, d, layout, dtype, device)
    mq, mk = -(-nq // 64), -(-nk // blkk)
    lut = torch.randint(0, mk, (b, h, mq, 2), dtype=torch.int32, device=device)
    count = torch.randint(1, 3, (b, h, mq), dtype=torch.int32, device=device)
    count[..., 0] = 0
    lin = lin_bias = None
    if linear:
        k = torch.randn((b, nk, h, d) if layout == "NHD" else (b, h, nk, d), dtype=dtype, device=device)
        lin = ops.sla_linear_state(k, k, torch.randn(d, d, device=device), layout=layout)
        lin_bias = torch.randn(d, device=device)
    return (q, *quantized, lut, count, lin, lin_bias, layout, sm, 64, blkk)


def test_every_op_has_samples():
    assert set(_samples("cpu")) == set(ops.OPS), "add opcheck samples for every op in turbodiffusion.ops.OPS"


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_opcheck(device, name):
    skip_unless_kernel_runs(device, name.rsplit("_", 1)[-1])
    op = getattr(torch.ops.turbodiffusion, name)
    for args in _samples(device)[name]:
        torch.library.opcheck(op, args, test_utils=_test_utils(args))


def _test_utils(args):
    """Every opcheck test, except test_schema for float8 inputs: its mutation check calls
    torch.allclose on the inputs, which has no float8 kernel ("mul_cpu_reduced_float")."""
    utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    if any(isinstance(a, torch.Tensor) and a.dtype == torch.float8_e4m3fn for a in args):
        utils = utils[1:]
    return utils
