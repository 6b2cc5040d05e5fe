"""Unit tests of the Wan DiT's plumbing (the numerics are held to the goldens in test_golden_wan_dit.py):
pluggable attention and linear kinds, SLA parameters, input checks, dtypes, configs."""
from __future__ import annotations

import math

import pytest
import torch

from turbodiffusion.models.wan import layers
from turbodiffusion.models.wan.config import CONFIGS, WanConfig, get_config
from turbodiffusion.models.wan.dit import WanDiT
from turbodiffusion.nn import attention as attn


def _inputs(model_type="t2v", b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, 2, 4, 6, generator=g)
    t = torch.tensor([900.0, 300.0][:b])
    ctx = torch.randn(b, 7, 64, generator=g)
    y = torch.randn(b, 20, 2, 4, 6, generator=g) if model_type == "i2v" else None
    return x, t, ctx, y


def test_sdpa_on_bnhd_matches_softmax_math():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, n, 3, 64, generator=g, dtype=torch.float64) for n in (11, 5, 5))
    out = attn.attention(q, k, v)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(64)
    ref = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)
    assert out.shape == (2, 11, 3, 64)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["sagesla", "sla"])  # every kind has landed: a stand-in for one that has not
def test_attention_kinds_without_kernels_raise_clearly(kind, monkeypatch):
    monkeypatch.setitem(attn._KINDS, kind, None)
    q = torch.randn(1, 4, 2, 64)
    with pytest.raises(RuntimeError, match=f"{kind}.*not landed"):
        attn.attention(q, q, q, kind=kind)
    with pytest.raises(RuntimeError, match="not landed"):
        WanDiT(get_config("tiny-t2v"), dtype=torch.float32, attention=kind)


def test_attention_unknown_kind_and_bad_options():
    q = torch.randn(1, 4, 2, 64)
    with pytest.raises(ValueError, match="expected one of"):
        attn.attention(q, q, q, kind="flash9")
    with pytest.raises(TypeError, match="sdpa.*no options"):
        attn.attention(q, q, q, kind="sdpa", topk=0.1)
    with pytest.raises(ValueError, match=r"q \[B, Nq, H, D\]"):
        attn.attention(q, q[:, :, :1], q)


def test_registered_sla_kind_receives_proj_l_and_options(monkeypatch):
    seen = {}

    def fake_sla(q, k, v, *, proj_l, topk):
        seen.update(proj_l=proj_l, topk=topk)
        return attn.attention(q, k, v, kind="sdpa")

    monkeypatch.setitem(attn._KINDS, "sla", fake_sla)
    model = WanDiT.tiny(attention="sla", attention_opts={"topk": 0.15})
    reference = WanDiT.tiny()
    with torch.no_grad():
        out = model(*_inputs())
        ref = reference(*_inputs())
    assert seen["topk"] == 0.15 and seen["proj_l"] is model.blocks[1].self_attn.attn_op.local_attn.proj_l
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_sla_params_are_fp32_zero_and_unused_by_sdpa():
    with_sla = WanDiT.tiny(sla_params=True, dtype=torch.bfloat16)
    without = WanDiT.tiny(dtype=torch.bfloat16)
    extra = set(with_sla.state_dict()) - set(without.state_dict())
    assert extra == {f"blocks.{i}.self_attn.attn_op.local_attn.proj_l.{p}" for i in range(2) for p in ("weight", "bias")}
    proj = with_sla.blocks[0].self_attn.attn_op.local_attn.proj_l
    assert proj.weight.dtype == torch.float32 and proj.weight.shape == (64, 64) and not proj.weight.any()
    with torch.no_grad():
        torch.testing.assert_close(with_sla(*_inputs()), without(*_inputs()), rtol=0, atol=0)


def test_dtypes_and_bf16_close_to_fp32():
    m32 = WanDiT.tiny(dtype=torch.float32)
    m16 = WanDiT.tiny(dtype=torch.bfloat16)
    assert m16.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert m16.blocks[0].self_attn.norm_q.weight.dtype == torch.float32  # norms keep float32 weights
    assert m16.blocks[0].norm3.bias.dtype == torch.float32
    with torch.no_grad():
        out32, out16 = m32(*_inputs()), m16(*_inputs())
    assert out16.dtype == torch.float32  # head in float32, like the reference
    rel = ((out16 - out32).norm() / out32.norm()).item()
    assert rel < 0.05, f"bf16 vs fp32 relative error {rel:.3g}"


def test_timestep_shapes_are_equivalent():
    model = WanDiT.tiny()
    x, t, ctx, _ = _inputs(b=2)
    with torch.no_grad():
        a = model(x, t, ctx)
        b = model(x, t[:, None], ctx)
        c = model(x[:1], t[0], ctx[:1])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a[:1], c, rtol=1e-6, atol=1e-6)


def test_input_checks_name_the_problem():
    t2v, i2v = WanDiT.tiny("t2v"), WanDiT.tiny("i2v")
    x, t, ctx, y = _inputs("i2v")
    with pytest.raises(ValueError, match="y: an i2v model needs"):
        i2v(x, t, ctx)
    with pytest.raises(ValueError, match="y: a t2v model takes no"):
        t2v(x, t, ctx, y)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        t2v(x[..., :3], t, ctx)
    with pytest.raises(ValueError, match=r"expected \[B, 16, T, H, W\]"):
        t2v(torch.cat([x, x], 1), t, ctx)


def test_linear_kinds():
    from turbodiffusion.nn.linear import Int8Linear

    model = WanDiT(get_config("tiny-t2v"), linear="int8")  # W8A8 kernels landed (tests/test_gemm.py)
    assert isinstance(model.blocks[0].ffn[0], Int8Linear)
    with pytest.raises(ValueError, match="linear kind: expected one of"):
        layers.make_linear(4, 4, kind="int4")
    assert set(layers.linear_kinds()) == {"bf16", "int8", "fp8"}


def test_real_configs():
    c13, c14, a14 = get_config("wan2.1-t2v-1.3b"), get_config("wan2.1-t2v-14b"), get_config("wan2.2-i2v-a14b")
    assert (c13.dim, c13.num_heads, c13.num_layers, c13.ffn_dim, c13.head_dim) == (1536, 12, 30, 8960, 128)
    assert (c14.dim, c14.num_heads, c14.num_layers, c14.ffn_dim, c14.head_dim) == (5120, 40, 40, 13824, 128)
    assert (a14.model_type, a14.in_dim, a14.dim) == ("i2v", 36, 5120)
    assert {"tiny-t2v", "tiny-i2v"} <= set(CONFIGS)
    with pytest.raises(ValueError, match="in_dim: expected 36"):
        WanConfig("bad", "i2v", dim=128, ffn_dim=256, num_heads=2, num_layers=1)
    with pytest.raises(ValueError, match="config name"):
        get_config("wan3")


@pytest.mark.parametrize("model_type", ["t2v", "i2v"])
@pytest.mark.parametrize("chunk", [1, 5, 12, 1000])  # L = 2 x 2 x 3 = 12 tokens
def test_token_chunking_gives_the_same_velocity(model_type, chunk):
    """Chunks of 1 token, odd sizes that leave a partial last chunk, exactly L, and more than L."""
    model = WanDiT.tiny(model_type, seed=4, dtype=torch.float64)
    x, t, ctx, y = _inputs(model_type)
    x, ctx = x.double(), ctx.double()
    y = None if y is None else y.double()
    with torch.no_grad():
        ref = model(x, t, ctx, y)
        model.token_chunk = chunk
        out = model(x, t, ctx, y)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13)


def test_token_chunk_must_be_positive():
    with pytest.raises(ValueError, match="token_chunk: expected None or a positive number of tokens, got 0"):
        WanDiT(get_config("tiny-t2v"), device="meta", token_chunk=0)


@pytest.mark.parametrize("kind,opts,chunk", [("sage", {}, 20), ("sagesla", {"topk": 0.5, "blkq": 64, "blkk": 64}, 80)])
def test_token_chunking_keeps_quantized_and_sparse_attention(kind, opts, chunk):
    """Chunks are rounded down to the kind's query block (16 rows of an INT8 Q scale, blkq of the block map),
    so chunked attention quantizes and pools the same query blocks as unchunked attention."""
    model = WanDiT.tiny("t2v", seed=5, attention=kind, attention_opts=opts)
    assert model.blocks[0].self_attn.attn_op.query_block == (16 if kind == "sage" else 64)
    g = torch.Generator().manual_seed(2)
    x, ctx = torch.randn(1, 16, 2, 12, 16, generator=g), torch.randn(1, 7, 64, generator=g)  # 96 tokens
    t = torch.tensor([700.0])
    with torch.no_grad():
        ref = model(x, t, ctx)
        model.token_chunk = chunk
        out = model(x, t, ctx)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
