"""Checkpoint loading on small files written from a seeded tiny model: TurboWan .pth, -quant .pth,
original-Wan .safetensors; strictness reports; missing files; the 128x128 int8 format's edge cases.
(The real checkpoints' key manifests and the golden weights are covered in test_golden_wan_dit.py.)"""
from __future__ import annotations

import pytest
import torch

from turbodiffusion.models.wan.checkpoint import CheckpointMismatchError, load_wan_dit, require_file
from turbodiffusion.models.wan.config import get_config
from turbodiffusion.models.wan.dit import WanDiT
from turbodiffusion.quant import dequantize_weight_int8_block128, quantize_weight_int8_block128

CFG = get_config("tiny-t2v")
BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def _inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 16, 2, 4, 4, generator=g), torch.tensor([700.0]), torch.randn(1, 5, 64, generator=g)


@pytest.fixture
def turbowan_state():
    """A TurboWan-style state dict (bf16 like the released files, float32 norms, proj_l)."""
    model = WanDiT.tiny(sla_params=True, dtype=torch.bfloat16, seed=5)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_turbowan_pth_roundtrip(tmp_path, turbowan_state):
    path = tmp_path / "TurboWan2.1-T2V-1.3B-480P.pth"
    torch.save(turbowan_state, path)
    model = load_wan_dit(path, CFG, dtype=torch.bfloat16)
    state = model.state_dict()
    assert state.keys() == turbowan_state.keys()
    for k, v in turbowan_state.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_quant_pth_is_dequantized_with_a_log_line(tmp_path, turbowan_state, caplog):
    quant = dict(turbowan_state)
    for i in range(CFG.num_layers):
        for name in BLOCK_LINEARS:
            layer = f"blocks.{i}.{name}"
            quant[f"{layer}.int8_weight"], quant[f"{layer}.scale"] = quantize_weight_int8_block128(
                quant.pop(f"{layer}.weight"))
    path = tmp_path / "TurboWan2.1-T2V-1.3B-480P-quant.pth"
    torch.save(quant, path)
    with caplog.at_level("WARNING", logger="turbodiffusion"):
        model = load_wan_dit(path, CFG, dtype=torch.bfloat16)
    assert "int8-quantized" in caplog.text and "dequantizing 20 block linears to bfloat16" in caplog.text
    state = model.state_dict()
    q = quant["blocks.1.ffn.2.int8_weight"]
    expected = dequantize_weight_int8_block128(q, quant["blocks.1.ffn.2.scale"], torch.bfloat16)
    assert torch.equal(state["blocks.1.ffn.2.weight"], expected)
    assert torch.equal(state["head.head.weight"], turbowan_state["head.head.weight"])  # not quantized
    rel = ((state["blocks.0.self_attn.q.weight"].float() - turbowan_state["blocks.0.self_attn.q.weight"].float())
           .norm() / turbowan_state["blocks.0.self_attn.q.weight"].float().norm()).item()
    assert rel < 0.02, rel
    with torch.no_grad():
        assert torch.isfinite(model(*_inputs())).all()


def test_original_wan_safetensors_and_dtype_conversion(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    reference = WanDiT.tiny(seed=7)  # float32, no proj_l: an original-Wan state dict
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    state["patch_embedding.weight"] = state["patch_embedding.weight"].reshape(CFG.dim, CFG.in_dim, 1, 2, 2)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    safetensors_torch.save_file(state, str(path))
    model = load_wan_dit(path, CFG, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model(*_inputs()), reference(*_inputs()), rtol=0, atol=0)
    model64 = load_wan_dit(path, CFG, dtype=torch.float64)
    assert model64.blocks[0].ffn[0].weight.dtype == torch.float64
    assert model64.blocks[0].norm3.weight.dtype == torch.float64


def test_strict_report_lists_missing_unexpected_and_shapes(tmp_path, turbowan_state):
    broken = dict(turbowan_state)
    del broken["blocks.0.ffn.0.bias"]
    broken["blocks.0.extra.weight"] = torch.zeros(3)
    path, path_ok = tmp_path / "broken.pth", tmp_path / "ok.pth"
    torch.save(broken, path)
    torch.save(turbowan_state, path_ok)
    with pytest.raises(CheckpointMismatchError) as info:
        load_wan_dit(path, CFG)
    msg = str(info.value)
    assert "1 missing keys: ['blocks.0.ffn.0.bias']" in msg and "1 unexpected keys: ['blocks.0.extra.weight']" in msg
    assert "broken.pth" in msg
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches.*patch_embedding.weight: checkpoint "
                                                      r"\(128, 64\), model \(128, 144\)"):
        load_wan_dit(path_ok, get_config("tiny-i2v"))  # a t2v checkpoint for an i2v config


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": {"a": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointMismatchError, match="flat state dict"):
        load_wan_dit(path, CFG)


def test_missing_file_names_it_and_its_source(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_wan_dit(tmp_path / "TurboWan2.1-T2V-14B-720P-quant.pth", get_config("wan2.1-t2v-14b"))
    msg = str(info.value)
    assert "TurboWan2.1-T2V-14B-720P-quant.pth" in msg
    assert "huggingface.co/TurboDiffusion/TurboWan2.1-T2V-14B-720P" in msg and "nothing is downloaded" in msg
    with pytest.raises(FileNotFoundError, match="'my.pth' not found.*no known download location.*--dit"):
        require_file(tmp_path / "my.pth", "DiT checkpoint", flag="--dit")


def test_int8_block128_edge_cases():
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(200, 300, generator=g) * 0.02).to(torch.bfloat16)  # partial tiles in both dims
    w[:128, 256:] = 0  # an all-zero tile: amax floor 1e-8, all q = 0
    w[3, 4], w[150, 10] = 0.25, -0.5  # tile extremes: +amax saturates to 127, -amax -> -128
    q, scale = quantize_weight_int8_block128(w)
    assert q.shape == (200, 300) and scale.shape == (2, 3)
    assert q[3, 4] == 127 and q[150, 10] == -128 and scale[0, 0] == 0.25 / 128 and scale[1, 0] == 0.5 / 128
    assert scale[0, 2] == torch.tensor(1e-8) / 128 and not q[:128, 256:].any()
    w_hat = dequantize_weight_int8_block128(q, scale, torch.float32)
    step = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:200, :300]
    assert ((w_hat - w.float()).abs() <= step).all()
    with pytest.raises(ValueError, match=r"scale of shape \(2, 3\)"):
        dequantize_weight_int8_block128(q, scale[:1])
