"""W8A8 checkpoints on the tiny config: `quantize_checkpoint` / `turbodiffusion quantize` (streamed
safetensors), loading the result and `-quant` (128x128 block) files into int8-linear models, quantizing a
bf16 checkpoint at load, and the errors."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from turbodiffusion.cli import main
from turbodiffusion.models.wan.checkpoint import CheckpointMismatchError, load_wan_dit
from turbodiffusion.models.wan.config import get_config
from turbodiffusion.models.wan.dit import WanDiT
from turbodiffusion.models.wan.quantize import BLOCK_LINEAR_WEIGHT, quantize_checkpoint
from turbodiffusion.models.wan.tensor_file import write_safetensors
from turbodiffusion.nn.linear import Int8Linear
from turbodiffusion.quant import quantize_weight_int8_block128
from turbodiffusion.reference.gemm import block128_to_per_channel

safetensors_torch = pytest.importorskip("safetensors.torch")
CFG = get_config("tiny-t2v")


def _inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 16, 2, 4, 4, generator=g), torch.tensor([700.0]), torch.randn(1, 5, 64, generator=g)


@pytest.fixture
def bf16_model():
    return WanDiT.tiny(sla_params=True, dtype=torch.bfloat16, seed=5)


@pytest.fixture
def turbowan_pth(tmp_path, bf16_model):
    path = tmp_path / "TurboWan2.1-T2V-1.3B-480P.pth"
    torch.save({k: v.clone() for k, v in bf16_model.state_dict().items()}, path)
    return path


def _int8_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, Int8Linear)}


def test_block_linear_pattern_matches_exactly_the_int8_layers():
    model = WanDiT(CFG, device="meta", linear="int8")
    plain = WanDiT(CFG, device="meta")
    matched = {k[: -len(".weight")] for k in plain.state_dict() if BLOCK_LINEAR_WEIGHT.fullmatch(k)}
    assert matched == set(_int8_layers(model)) and len(matched) == 10 * CFG.num_layers


def test_quantize_writes_per_channel_int8_that_loads_into_int8_and_bf16_models(tmp_path, turbowan_pth, bf16_model):
    out = quantize_checkpoint(turbowan_pth)
    assert out == tmp_path / "TurboWan2.1-T2V-1.3B-480P-int8.safetensors" and not list(tmp_path.glob("*.partial"))
    stored = safetensors_torch.load_file(str(out))
    source = torch.load(turbowan_pth)
    layer = "blocks.1.cross_attn.k"
    assert stored[f"{layer}.int8_weight"].dtype == torch.int8 and stored[f"{layer}.scale"].shape == (CFG.dim,)
    assert f"{layer}.weight" not in stored
    assert torch.equal(stored["blocks.0.norm3.weight"], source["blocks.0.norm3.weight"])  # float32, unchanged
    assert stored["head.head.weight"].dtype == torch.bfloat16

    model = load_wan_dit(out, CFG, dtype=torch.bfloat16, linear="int8")
    for name, lin in _int8_layers(model).items():  # what Int8Linear.from_linear makes of the bf16 layer
        ref = Int8Linear.from_linear(bf16_model.get_submodule(name))
        assert torch.equal(lin.int8_weight, ref.int8_weight) and torch.equal(lin.scale, ref.scale), name
        assert torch.equal(lin.bias, ref.bias), name
    plain = load_wan_dit(out, CFG, dtype=torch.float32)  # dequantized: w = q * s per channel
    w = plain.blocks[0].ffn[0].weight
    lin = model.blocks[0].ffn[0]
    assert torch.equal(w, lin.int8_weight.float() * lin.scale[:, None])
    with torch.no_grad():
        v8, v = model(*_inputs()), bf16_model.float()(*_inputs())
    rel = ((v8 - v).norm() / v.norm()).item()
    assert rel < 0.05, f"int8 vs bf16 velocity rel L2 {rel:.4f}"


def test_quantize_original_wan_safetensors_and_cli(tmp_path, capsys):
    reference = WanDiT.tiny(seed=7)  # float32 original-Wan weights: Conv3d patch embedding, no proj_l
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    state["patch_embedding.weight"] = state["patch_embedding.weight"].reshape(CFG.dim, CFG.in_dim, 1, 2, 2)
    src = tmp_path / "diffusion_pytorch_model.safetensors"
    safetensors_torch.save_file(state, str(src))
    out = tmp_path / "q" / "wan-int8.safetensors"
    out.parent.mkdir()
    assert main(["quantize", str(src), "-o", str(out)]) == 0
    model = load_wan_dit(out, CFG, dtype=torch.float32, linear="int8")
    assert model.patch_embedding.weight.shape == (CFG.dim, CFG.patch_features)
    lin = model.blocks[1].self_attn.o
    w = reference.blocks[1].self_attn.o.weight
    assert torch.equal(lin.scale, w.abs().amax(dim=1) / 127)
    code, err = _cli_error(capsys, ["quantize", str(out)])  # already in our format
    assert code == 1 and "already in the per-channel int8 format" in err and "wan-int8.safetensors" in err


def _cli_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_quantize_errors(tmp_path, capsys):
    vae_like = tmp_path / "Wan2.1_VAE.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(2, 2)}, vae_like)
    with pytest.raises(ValueError, match=r"no Wan DiT block linears.*blocks\.0\.self_attn\.q\.weight"):
        quantize_checkpoint(vae_like)
    with pytest.raises(ValueError, match="output: expected a .safetensors path"):
        quantize_checkpoint(_tiny_pth(tmp_path), tmp_path / "out.pth")
    code, err = _cli_error(capsys, ["quantize", str(tmp_path / "TurboWan2.1-T2V-14B-720P.pth")])
    assert code == 1 and "TurboWan2.1-T2V-14B-720P.pth" in err and "huggingface.co" in err


def _tiny_pth(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(WanDiT.tiny(seed=1).state_dict(), path)
    return path


def test_block_quant_checkpoint_loads_into_int8_model(tmp_path, bf16_model, caplog):
    state = {k: v.clone() for k, v in bf16_model.state_dict().items()}
    for key in [k for k in state if BLOCK_LINEAR_WEIGHT.fullmatch(k)]:
        layer = key[: -len(".weight")]
        state[f"{layer}.int8_weight"], state[f"{layer}.scale"] = quantize_weight_int8_block128(state.pop(key))
    path = tmp_path / "TurboWan2.1-T2V-1.3B-480P-quant.pth"
    torch.save(state, path)
    with caplog.at_level("INFO", logger="turbodiffusion"):
        model = load_wan_dit(path, CFG, dtype=torch.bfloat16, linear="int8")
    assert "re-encoding 20 block linears from 128x128 block scales to per-channel scales" in caplog.text
    lin = model.blocks[1].ffn[2]
    q, s = block128_to_per_channel(state["blocks.1.ffn.2.int8_weight"], state["blocks.1.ffn.2.scale"])
    assert torch.equal(lin.int8_weight, q) and torch.equal(lin.scale, s)
    with torch.no_grad():
        assert torch.isfinite(model(*_inputs())).all()
    # quantize re-encodes a -quant file once, so that loading it needs no conversion
    converted = load_wan_dit(quantize_checkpoint(path), CFG, dtype=torch.bfloat16, linear="int8")
    for key, value in model.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key


def test_bf16_checkpoint_is_quantized_at_load_for_int8(turbowan_pth, bf16_model, caplog):
    with caplog.at_level("INFO", logger="turbodiffusion"):
        model = load_wan_dit(turbowan_pth, CFG, dtype=torch.bfloat16, linear="int8")
    assert "quantizing 20 block linears to int8 per channel" in caplog.text
    ref = Int8Linear.from_linear(bf16_model.blocks[0].self_attn.v)
    assert torch.equal(model.blocks[0].self_attn.v.int8_weight, ref.int8_weight)


def test_wrong_checkpoint_names_the_expected_files(turbowan_pth, tmp_path, capsys):
    with pytest.raises(CheckpointMismatchError, match=r"wan2.1-t2v-14b architecture \(one of "
                                                      r"TurboWan2.1-T2V-14B-480P.pth.*is this the right file"):
        load_wan_dit(turbowan_pth, get_config("wan2.1-t2v-14b"), device="meta")
    garbage = tmp_path / "TurboWan2.1-T2V-1.3B-480P-broken.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="broken.pth.*expected a PyTorch checkpoint"):
        load_wan_dit(garbage, CFG)


def test_streaming_writer_checks_specs_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "t.safetensors"
    t = torch.arange(6, dtype=torch.int8).view(2, 3)
    write_safetensors(path, [("a", torch.int8, (2, 3)), ("b", torch.bfloat16, ())], iter([t, torch.tensor(1.5).bfloat16()]))
    loaded = safetensors_torch.load_file(str(path))
    assert torch.equal(loaded["a"], t) and loaded["b"].item() == 1.5
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert n % 8 == 0 and "a" in json.loads(path.read_bytes()[8:8 + n])
    with pytest.raises(ValueError, match=r"a: expected torch.int8 \(2, 3\) as announced"):
        write_safetensors(tmp_path / "u.safetensors", [("a", torch.int8, (2, 3))], iter([t.float()]))
    with pytest.raises(ValueError, match="expected 2 tensors, got 1"):
        write_safetensors(tmp_path / "v.safetensors", [("a", torch.int8, (2, 3)), ("b", torch.int8, (1,))], iter([t]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]
