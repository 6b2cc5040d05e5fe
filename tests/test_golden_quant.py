"""Golden test of TurboDiffusion's int8 128x128 block quantization (golden quantization_int8.json and
quant_int8_example.safetensors): our quantizer reproduces the example's int8 values and scales bit for
bit, for the weight and for the activations (partial last row tile)."""
from __future__ import annotations

import pytest
import torch

from turbodiffusion.quant import dequantize_weight_int8_block128, quantize_weight_int8_block128

safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture
def example(golden):
    return safetensors_torch.load_file(str(golden / "quant_int8_example.safetensors"))


@pytest.mark.golden
@pytest.mark.parametrize("which", ["w", "x"])
def test_golden_quant_int8_block128_bit_exact(example, which):
    q, scale = quantize_weight_int8_block128(example[f"{which}_bf16"])
    ref_q, ref_scale = example[f"{which}_int8"], example[f"{which}_scale"]
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert torch.equal(scale, ref_scale), f"{which} scale: max diff {(scale - ref_scale).abs().max().item():.3g}"
    n_diff = (q != ref_q).sum().item()
    assert n_diff == 0, f"{which}: {n_diff} of {q.numel()} int8 values differ, shape {tuple(q.shape)}"


@pytest.mark.golden
def test_golden_quant_int8_block128_dequantize(example):
    """q * scale recovers the weight to within one step (the +amax element saturates to 127: error = scale)."""
    w = example["w_bf16"].float()
    q, scale = example["w_int8"], example["w_scale"]
    assert q[5, 7] == 127 and q[130, 300] == -128  # the planted +0.5 / -0.75 extremes
    w_hat = dequantize_weight_int8_block128(q, scale, torch.float32)
    step = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[: w.shape[0], : w.shape[1]]
    err = (w_hat - w).abs()
    assert (err <= step).all() and (err <= step / 2).float().mean() > 0.999, f"max err/step {(err / step).max():.3g}"
    assert dequantize_weight_int8_block128(q, scale, torch.bfloat16).dtype == torch.bfloat16
