"""umT5 encoder against the golden (README §5): encoder output, pipeline context, position buckets and
bias of the tiny model in float64 and float32, and the XXL model's key set against the real manifest."""
from __future__ import annotations

import json

import pytest
import torch

from turbodiffusion.models.wan.text_encoder import TINY, XXL, UMT5Config, UMT5Encoder, relative_position_buckets

safetensors_torch = pytest.importorskip("safetensors.torch")

# README "Suggested pass criteria" for umT5.
TOLERANCES = {torch.float64: dict(max_abs=1e-10, rms_rel=1e-10), torch.float32: dict(max_abs=5e-5, rms_rel=1e-5)}


def _assert_close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.shape == ref.shape
    diff = got.double() - ref.double()
    err = dict(max_abs=diff.abs().max().item(), rms_rel=(diff.norm() / ref.double().norm()).item())
    tol = TOLERANCES[dtype]
    assert err["max_abs"] <= tol["max_abs"] and err["rms_rel"] <= tol["rms_rel"], (err, tol)


@pytest.fixture
def umt5_golden(golden):
    tensors = safetensors_torch.load_file(str(golden / "umt5_tiny.safetensors"))
    meta = json.loads((golden / "umt5_tiny.json").read_text())
    return tensors, meta


def _golden_model(umt5_golden, dtype: torch.dtype) -> UMT5Encoder:
    tensors, meta = umt5_golden
    c = meta["config"]
    cfg = UMT5Config(vocab_size=c["vocab_size"], dim=c["dim"], dim_attn=c["dim_attn"], dim_ffn=c["dim_ffn"],
                     num_heads=c["num_heads"], num_layers=c["encoder_layers"], num_buckets=c["num_buckets"],
                     max_dist=c["max_dist"], eps=c["eps"])
    assert cfg == TINY
    model = UMT5Encoder(cfg)
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("__")}, strict=True)
    return model.to(dtype).eval()


@pytest.mark.golden
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_golden_umt5_encoder(umt5_golden, dtype):
    tensors, meta = umt5_golden
    ids, mask = tensors["__input__.ids"], tensors["__input__.mask"]
    assert mask.sum(1).tolist() == meta["inputs"]["valid_lengths"]
    with torch.no_grad():
        out = _golden_model(umt5_golden, dtype)(ids, mask)
    raw = tensors["__output__.encoder_raw"]
    valid = mask.bool()
    _assert_close(out[valid], raw[valid], dtype)  # the rows the DiT sees
    _assert_close(out[~valid], raw[~valid], dtype)  # padded rows are reproduced too
    with torch.no_grad():
        context = _golden_model(umt5_golden, dtype).context(ids, mask)  # what UMT5Encoder.encode returns
    _assert_close(context, tensors["__output__.pipeline_context"], dtype)
    assert torch.count_nonzero(context[~valid]) == 0


@pytest.mark.golden
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_golden_umt5_position_bias(umt5_golden, dtype):
    tensors, _ = umt5_golden
    model = _golden_model(umt5_golden, dtype)
    buckets = relative_position_buckets(tensors["__input__.ids"].shape[1], TINY.num_buckets, TINY.max_dist)
    assert torch.equal(buckets, tensors["__intermediate__.rel_buckets"])
    with torch.no_grad():
        bias = model.blocks[0].pos_embedding(buckets)
    _assert_close(bias, tensors["__intermediate__.pos_bias_block0"], dtype)


@pytest.mark.golden
def test_golden_umt5_bucket_table(umt5_golden):
    _, meta = umt5_golden
    table = meta["semantics"]["bucket_table_rel_-300_to_300"]
    # Row 300 of a 601 x 601 bucket grid holds rel = key - 300 for keys 0..600, i.e. rel -300..300.
    buckets = relative_position_buckets(601, TINY.num_buckets, TINY.max_dist)
    assert buckets[300].tolist() == table


@pytest.mark.golden
def test_golden_umt5_manifest_keys(golden):
    manifest = json.loads((golden / "manifests" / "umt5_xxl_encoder.json").read_text())
    assert manifest["config"]["dim_ffn"] == XXL.dim_ffn and manifest["config"]["vocab_size"] == XXL.vocab_size
    with torch.device("meta"):
        model = UMT5Encoder(XXL).to(torch.bfloat16)
    ours = {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}
    theirs = {k: (v["shape"], v["dtype"]) for k, v in manifest["keys"].items()}
    assert ours == theirs
    assert sum(torch.Size(s).numel() for s, _ in ours.values()) == manifest["num_elements"]
