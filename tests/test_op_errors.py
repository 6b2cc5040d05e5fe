"""Bad input gets a clear error naming the argument, on every device (CPU: the checks in
turbodiffusion/ops.py; CUDA: the launchers' checks in csrc/ops/checks.h, reached through the
dispatcher without the Python wrappers)."""
from __future__ import annotations

import pytest
import torch

from turbodiffusion import ops

QK = torch.ops.turbodiffusion.quantize_qk_int8
V = torch.ops.turbodiffusion.quantize_v_fp8
TOK = torch.ops.turbodiffusion.quantize_per_token_int8


def _t(shape, device, dtype=torch.bfloat16):
    return torch.randn(shape).to(dtype=dtype, device=device)


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
        (lambda: TOK(_t((4, 64), device, torch.float32)), TypeError, ["x", "float32"]),
        (lambda: TOK(_t((4, 64), device)[:, ::2]), ValueError, ["x", "unit stride"]),
        (lambda: TOK(_t((4, 0), device)), ValueError, ["x", "non-empty"]),
    ]


@pytest.mark.parametrize("index", range(18))
def test_bad_input_names_the_argument(device, index):
    call, exc, words = _cases(device)[index]
    with pytest.raises(exc) as info:
        call()
    text = str(info.value)
    for w in words:
        assert w in text, f"message {text!r} lacks {w!r}"


def test_cuda_tensor_mixed_with_cpu_tensor_on_public_api(device):
    q = _t((1, 16, 2, 64), device)
    with pytest.raises((ValueError, RuntimeError), match="k: expected a tensor on"):
        ops.quantize_qk_int8(q, _t((1, 16, 2, 64), _other_device(device)))
