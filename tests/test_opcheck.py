"""torch.library.opcheck for every declared op: schema, fake (meta) implementation, dispatch
registrations and AOT dispatch, on every device."""
from __future__ import annotations

import pytest
import torch

from turbodiffusion import ops


def _samples(device):
    bf = dict(dtype=torch.bfloat16, device=device)
    return {
        "quantize_qk_int8": [(torch.randn(1, 33, 2, 64, **bf), torch.randn(1, 17, 2, 64, **bf), "NHD", 16, 32, 0.5),
                             (torch.randn(2, 2, 40, 128, **bf), torch.randn(2, 2, 50, 128, **bf), "HND", 64, 128, 1.0)],
        "quantize_v_fp8": [(torch.randn(1, 33, 2, 64, **bf), "NHD", 128),
                           (torch.randn(1, 2, 20, 128, dtype=torch.float16, device=device), "HND", 16)],
        "quantize_per_token_int8": [(torch.randn(3, 4, 96, **bf),), (torch.randn(5, 33, dtype=torch.float16,
                                                                                  device=device),)],
    }


def test_every_op_has_samples():
    assert set(_samples("cpu")) == set(ops.OPS), "add opcheck samples for every op in turbodiffusion.ops.OPS"


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_opcheck(device, name):
    op = getattr(torch.ops.turbodiffusion, name)
    for args in _samples(device)[name]:
        torch.library.opcheck(op, args)
