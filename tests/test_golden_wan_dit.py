"""Golden tests of the Wan DiT: the tiny T2V (Wan2.1) and I2V (Wan2.2 expert) references of
golden/wan_dit_{t2v,i2v}_tiny, reproduced in float64 (max_abs <= 1e-10, intermediates included) and
float32 (max_abs <= 2e-5, rms_rel <= 1e-5), golden README §1-2."""
from __future__ import annotations

import json

import pytest
import torch

from turbodiffusion.models.wan.config import WanConfig
from turbodiffusion.models.wan.dit import WanDiT
from turbodiffusion.models.wan.rope import rope_angles

safetensors_torch = pytest.importorskip("safetensors.torch")

GOLDENS = ("wan_dit_t2v_tiny", "wan_dit_i2v_tiny")
TOL = {torch.float64: dict(max_abs=1e-10, rms_rel=1e-10), torch.float32: dict(max_abs=2e-5, rms_rel=1e-5)}


def _load(golden, name):
    meta = json.loads((golden / f"{name}.json").read_text())
    tensors = safetensors_torch.load_file(str(golden / f"{name}.safetensors"))
    return meta, tensors


def _config(meta) -> WanConfig:
    """The WanConfig the golden was made with, from its JSON (so other golden sets of this format run too)."""
    c = meta["config"]
    return WanConfig(name=meta["reference"]["class"], model_type=c["model_type"], dim=c["dim"], ffn_dim=c["ffn_dim"],
                     num_heads=c["num_heads"], num_layers=c["num_layers"], in_dim=c["in_dim"], out_dim=c["out_dim"],
                     text_dim=c["text_dim"], freq_dim=c["freq_dim"], patch_size=tuple(c["patch_size"]), eps=c["eps"],
                     text_len=c["text_len"])


def _model(meta, tensors, dtype) -> WanDiT:
    model = WanDiT(_config(meta), dtype=dtype, device="cpu")
    weights = {k: v for k, v in tensors.items() if not k.startswith("__")}
    model.load_state_dict(weights, strict=True)
    return model.eval()


def _assert_close(what, out, ref, dtype):
    err = (out.double() - ref.double())
    max_abs = err.abs().max().item()
    rms_rel = (err.pow(2).mean().sqrt() / ref.double().pow(2).mean().sqrt()).item()
    tol = TOL[dtype]
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != golden {tuple(ref.shape)}"
    assert max_abs <= tol["max_abs"] and rms_rel <= tol["rms_rel"], (
        f"{what} ({dtype}): max_abs {max_abs:.3g} (tol {tol['max_abs']}), rms_rel {rms_rel:.3g} "
        f"(tol {tol['rms_rel']}), shape {tuple(ref.shape)}")


def _inputs(case, tensors):
    i = case["tensor_names"]
    return tensors[i["x"]], tensors[i["t"]], tensors[i["context"]], tensors[i["y"]] if "y" in i else None


@pytest.mark.golden
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", GOLDENS)
def test_golden_wan_dit_output(golden, name, dtype):
    meta, tensors = _load(golden, name)
    model = _model(meta, tensors, dtype)
    for case in meta["cases"]:
        x, t, context, y = _inputs(case, tensors)
        with torch.no_grad():
            out = model(x, t, context, y)
        assert out.dtype == dtype
        _assert_close(f"{name}{case['suffix']} output", out, tensors[case["tensor_names"]["output"]], dtype)


@pytest.mark.golden
@pytest.mark.parametrize("name", GOLDENS)
def test_golden_wan_dit_intermediates_float64(golden, name):
    """Every saved intermediate of the cases that have them, in float64: localises a failing output."""
    meta, tensors = _load(golden, name)
    model = _model(meta, tensors, torch.float64)
    cases = [c for c in meta["cases"] if "intermediates" in c["tensor_names"]]
    assert cases, f"{name}: no case with intermediates"
    for case in cases:
        names = case["tensor_names"]["intermediates"]
        x, t, context, y = _inputs(case, tensors)
        captured = {}
        hooks = [getattr(model, n).register_forward_hook(lambda m, a, o, n=n: captured.__setitem__(n, o))
                 for n in ("patch_embedding", "text_embedding", "head")]
        hooks += [b.register_forward_hook(lambda m, a, o, n=f"blocks.{i}": captured.__setitem__(n, o))
                  for i, b in enumerate(model.blocks)]
        with torch.no_grad():
            model(x, t, context, y)
            captured["time_embedding"], e0 = model.embed_time(t.reshape(-1))
        for h in hooks:
            h.remove()
        captured["time_projection"] = e0.flatten(1)
        grid = tuple(s // p for s, p in zip(case["input_shapes"]["x"][2:], model.config.patch_size))
        captured["rope_angles"] = rope_angles(grid, model.config.head_dim)
        assert set(names) <= set(captured), f"{name}: intermediates not covered: {set(names) - set(captured)}"
        for key, tensor_name in names.items():
            _assert_close(f"{name} intermediate {key}", captured[key], tensors[tensor_name], torch.float64)


# ---------------------------------------------------------------------------------------------------
# Real checkpoints' key/shape manifests (golden README §3): our configs, built on the meta device,
# must have exactly these keys and shapes, and every released format must load into them strictly.
MANIFEST_DTYPES = {"source": torch.bfloat16, "float32": torch.float32, "float32_or_source": torch.float32,
                   "int8": torch.int8}
REAL_MODELS = [  # (our config, TurboWan manifest stem, original-Wan manifest)
    ("wan2.1-t2v-1.3b", "turbowan2.1_t2v_1.3b", "wan2.1_t2v_1.3b_original"),
    ("wan2.1-t2v-14b", "turbowan2.1_t2v_14b", "wan2.1_t2v_14b_original"),
    ("wan2.2-i2v-a14b", "turbowan2.2_i2v_a14b_one_expert", "wan2.2_i2v_a14b_original_one_expert"),
]


def _manifest(golden, name):
    return json.loads((golden / "manifests" / f"{name}.json").read_text())


def _meta_checkpoint(manifest, origin, default_dtype=torch.float32):
    from turbodiffusion.models.wan.checkpoint import CheckpointTensors

    tensors = {k: torch.empty(v["shape"], dtype=MANIFEST_DTYPES.get(v["dtype"], default_dtype), device="meta")
               for k, v in manifest["keys"].items()}
    return CheckpointTensors.from_tensors(tensors, origin)


@pytest.mark.golden
@pytest.mark.parametrize("config_name, stem, original", REAL_MODELS)
def test_golden_wan_dit_manifest_network(golden, config_name, stem, original):
    from turbodiffusion.models.wan.config import get_config

    manifest = _manifest(golden, f"{stem}.network")
    config = get_config(config_name)
    for field, value in manifest["config"].items():
        if hasattr(config, field):
            assert getattr(config, field) == (tuple(value) if isinstance(value, list) else value), field
    state = WanDiT(config, dtype=torch.float32, device="meta").state_dict()
    ours = {k: list(v.shape) for k, v in state.items()}
    theirs = {k: v["shape"] for k, v in manifest["keys"].items()}
    assert ours == theirs, (f"{config_name}: only ours {sorted(set(ours) - set(theirs))[:5]}, only manifest "
                            f"{sorted(set(theirs) - set(ours))[:5]}, shapes differ "
                            f"{[k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k]][:5]}")
    assert sum(v.numel() for v in state.values()) == manifest["num_elements"]


@pytest.mark.golden
@pytest.mark.parametrize("variant", ["checkpoint", "quant_checkpoint"])
@pytest.mark.parametrize("config_name, stem, original", REAL_MODELS)
def test_golden_wan_dit_manifest_turbowan_loads(golden, config_name, stem, original, variant, caplog):
    """A TurboWan (.pth / -quant.pth) state dict with the manifest's keys, shapes and dtypes loads strictly
    into a bf16 model (on meta), -quant linears dequantized with a log line; dtypes follow the manifest."""
    from turbodiffusion.models.wan.checkpoint import load_wan_dit
    from turbodiffusion.models.wan.config import get_config

    manifest = _manifest(golden, f"{stem}.{variant}")
    with caplog.at_level("WARNING", logger="turbodiffusion"):
        model = load_wan_dit(_meta_checkpoint(manifest, variant), get_config(config_name), device="meta")
    assert ("dequantizing" in caplog.text) == (variant == "quant_checkpoint"), caplog.text
    state = model.state_dict()
    n_proj_l = sum(".attn_op.local_attn.proj_l." in k for k in state)
    assert n_proj_l == 2 * get_config(config_name).num_layers
    for key, entry in manifest["keys"].items():
        if key in state:
            assert state[key].dtype == MANIFEST_DTYPES[entry["dtype"]], key
            assert list(state[key].shape) == entry["shape"], key
        else:  # int8_weight / scale of a dequantized linear: the model holds <layer>.weight
            layer = key.rsplit(".", 1)[0]
            assert key.endswith((".int8_weight", ".scale")), key
            assert state[f"{layer}.weight"].dtype == torch.bfloat16, layer


@pytest.mark.golden
@pytest.mark.parametrize("config_name, stem, original", REAL_MODELS)
def test_golden_wan_dit_manifest_quant_loads_into_int8_linears(golden, config_name, stem, original):
    """A released -quant file (128x128 block scales) loads strictly into a model built with int8 linears: every
    block linear gets int8 codes and per-channel float32 scales."""
    from turbodiffusion.models.wan.checkpoint import load_wan_dit
    from turbodiffusion.models.wan.config import get_config
    from turbodiffusion.nn.linear import Int8Linear

    manifest = _manifest(golden, f"{stem}.quant_checkpoint")
    model = load_wan_dit(_meta_checkpoint(manifest, "quant_checkpoint"), get_config(config_name), device="meta",
                         linear="int8")
    linears = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 10 * get_config(config_name).num_layers
    for lin in linears[:10]:
        assert lin.int8_weight.dtype == torch.int8 and lin.scale.shape == (lin.out_features,)
        assert lin.scale.dtype == torch.float32


@pytest.mark.golden
@pytest.mark.parametrize("config_name, stem, original", REAL_MODELS)
def test_golden_wan_dit_manifest_original_wan_loads(golden, config_name, stem, original):
    """Original Wan weights (Conv3d patch embedding) convert and load strictly (no proj_l)."""
    from turbodiffusion.models.wan.checkpoint import load_wan_dit
    from turbodiffusion.models.wan.config import get_config

    manifest = _manifest(golden, original)
    assert manifest["keys"]["patch_embedding.weight"]["shape"][2:] == [1, 2, 2]
    model = load_wan_dit(_meta_checkpoint(manifest, original, torch.bfloat16), get_config(config_name),
                         device="meta")
    assert not any("proj_l" in k for k in model.state_dict())
    assert model.patch_embedding.weight.shape == (model.config.dim, model.config.patch_features)


@pytest.mark.golden
@pytest.mark.parametrize("fmt", ["turbowan_pth", "original_safetensors_shards"])
@pytest.mark.parametrize("name", GOLDENS)
def test_golden_wan_dit_from_checkpoint_file(golden, tmp_path, name, fmt):
    """The golden weights written as a TurboWan .pth (with proj_l) or as original-Wan safetensors shards
    (Conv3d patch embedding, index json) load with load_wan_dit and reproduce the golden in float32."""
    from turbodiffusion.models.wan.checkpoint import load_wan_dit

    meta, tensors = _load(golden, name)
    config = _config(meta)
    weights = {k: v for k, v in tensors.items() if not k.startswith("__")}
    if fmt == "turbowan_pth":
        gen = torch.Generator().manual_seed(0)
        for i in range(config.num_layers):
            prefix = f"blocks.{i}.self_attn.attn_op.local_attn.proj_l."
            weights[prefix + "weight"] = torch.randn(config.head_dim, config.head_dim, generator=gen)
            weights[prefix + "bias"] = torch.randn(config.head_dim, generator=gen)
        path = tmp_path / "TurboWan-tiny.pth"
        torch.save(weights, path)
    else:
        weights["patch_embedding.weight"] = weights["patch_embedding.weight"].reshape(
            config.dim, config.in_dim, *config.patch_size)
        keys = sorted(weights)
        shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for file, shard_keys in shards.items():
            safetensors_torch.save_file({k: weights[k].contiguous() for k in shard_keys}, str(tmp_path / file))
        index = {"weight_map": {k: f for f, ks in shards.items() for k in ks}}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
        path = tmp_path
    model = load_wan_dit(path, config, dtype=torch.float32)
    for case in meta["cases"]:
        with torch.no_grad():
            out = model(*_inputs(case, tensors))
        _assert_close(f"{name}{case['suffix']} from {fmt}", out, tensors[case["tensor_names"]["output"]],
                      torch.float32)
