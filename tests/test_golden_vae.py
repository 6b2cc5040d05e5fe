"""Wan2.1 VAE against the golden (README §4): encode and decode of the tiny model, float64 and float32,
and the full-size model's key set against the real checkpoint's manifest."""
from __future__ import annotations

import json

import pytest
import torch

from turbodiffusion.models.wan.vae import LATENTS_MEAN, LATENTS_STD, WanVAE

safetensors_torch = pytest.importorskip("safetensors.torch")

# README "Suggested pass criteria" for the VAE.
TOLERANCES = {torch.float64: dict(max_abs=1e-10, rms_rel=1e-10), torch.float32: dict(max_abs=2e-5, rms_rel=1e-5)}


def _errors(got: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = got.double() - ref.double()
    return dict(max_abs=diff.abs().max().item(), rms_rel=(diff.norm() / ref.double().norm()).item())


def _assert_close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.shape == ref.shape
    err, tol = _errors(got, ref), TOLERANCES[dtype]
    assert err["max_abs"] <= tol["max_abs"] and err["rms_rel"] <= tol["rms_rel"], (err, tol)


@pytest.fixture
def vae_golden(golden):
    tensors = safetensors_torch.load_file(str(golden / "wan_vae_tiny.safetensors"))
    meta = json.loads((golden / "wan_vae_tiny.json").read_text())
    return tensors, meta


def _golden_model(vae_golden, dtype: torch.dtype) -> WanVAE:
    tensors, meta = vae_golden
    cfg = meta["config"]
    model = WanVAE(dim=cfg["dim"], z_dim=cfg["z_dim"], dim_mult=tuple(cfg["dim_mult"]),
                   num_res_blocks=cfg["num_res_blocks"], temporal_downsample=tuple(cfg["temperal_downsample"]))
    weights = {k: v for k, v in tensors.items() if not k.startswith("__")}
    model.load_state_dict(weights, strict=True)
    return model.to(dtype).eval()


@pytest.mark.golden
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_golden_vae_encode(vae_golden, dtype):
    tensors, _ = vae_golden
    model = _golden_model(vae_golden, dtype)
    video = tensors["__input__.encode_video"].to(dtype)
    _assert_close(model.encode(video), tensors["__output__.encode_latent"], dtype)
    # The raw posterior mean, undoing the normalisation exactly as it was applied.
    mu = model.encode(video).double() * torch.tensor(LATENTS_STD, dtype=torch.float64).view(1, -1, 1, 1, 1) \
        + torch.tensor(LATENTS_MEAN, dtype=torch.float64).view(1, -1, 1, 1, 1)
    _assert_close(mu, tensors["__output__.encode_mu_unnormalized"], dtype)


@pytest.mark.golden
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_golden_vae_decode(vae_golden, dtype):
    tensors, _ = vae_golden
    model = _golden_model(vae_golden, dtype)
    video = model.decode(tensors["__input__.decode_latent"].to(dtype))
    _assert_close(video, tensors["__output__.decode_video"], dtype)


@pytest.mark.golden
def test_golden_vae_constants(vae_golden):
    tensors, meta = vae_golden
    assert torch.equal(tensors["__const__.latents_mean"], torch.tensor(LATENTS_MEAN, dtype=torch.float64))
    assert torch.equal(tensors["__const__.latents_std"], torch.tensor(LATENTS_STD, dtype=torch.float64))
    assert list(LATENTS_MEAN) == meta["normalisation"]["latents_mean"]


@pytest.mark.golden
def test_golden_vae_manifest_keys(golden):
    manifest = json.loads((golden / "manifests" / "wan2.1_vae.json").read_text())
    with torch.device("meta"):
        model = WanVAE()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: v["shape"] for k, v in manifest["keys"].items()}
    assert ours == theirs
    assert sum(torch.Size(s).numel() for s in ours.values()) == manifest["num_elements"]
