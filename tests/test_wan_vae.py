"""Wan VAE behaviour beyond the golden: causality of the streaming passes, exact spatial tiling of
decode, input checks, checkpoint errors, bf16."""
from __future__ import annotations

import pytest
import torch

from turbodiffusion.models.wan.vae import WanVAE


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    return WanVAE.tiny(seed=0)


def _rms_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_tiny_is_seeded():
    a, b, c = WanVAE.tiny(0).state_dict(), WanVAE.tiny(0).state_dict(), WanVAE.tiny(1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["decoder.head.2.weight"], c["decoder.head.2.weight"])


def test_shapes_and_dtype(vae):
    video = torch.rand(2, 3, 9, 16, 24) * 2 - 1
    latent = vae.encode(video)
    assert latent.shape == (2, 16, 3, 2, 3) and latent.dtype == torch.float32
    assert vae.decode(latent).shape == (2, 3, 9, 16, 24)


# A shorter input is a different convolution shape, which some CPUs' float32 convolutions sum in another
# order (an AMD EPYC CPU machine, 2026-11-27: 9e-8 apart in the latents, 2.3e-6 in the decoded frames;
# bit-equal on earlier machines): prefixes are compared to 1e-5, far below what a frame leaking into an
# earlier one would change. Same-shape comparisons stay exact.
PREFIX_ATOL = 1e-5


def test_encode_is_causal(vae):
    torch.manual_seed(0)
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    latent = vae.encode(video)
    changed = video.clone()
    changed[:, :, 1:] = torch.rand_like(changed[:, :, 1:])
    assert torch.equal(vae.encode(changed)[:, :, 0], latent[:, :, 0])  # latent 0 sees pixel frame 0 only
    close = dict(rtol=0, atol=PREFIX_ATOL)
    torch.testing.assert_close(vae.encode(video[:, :, :5]), latent[:, :, :2], **close)  # chunk [1..4] -> frame 1
    torch.testing.assert_close(vae.encode(video[:, :, :1]), latent[:, :, :1], **close)  # one frame (T = 4*0 + 1)
    assert (vae.encode(changed)[:, :, 1] - latent[:, :, 1]).abs().max() > 100 * PREFIX_ATOL  # (the bound can fail)


def test_decode_is_causal(vae):
    torch.manual_seed(0)
    latent = torch.randn(1, 16, 3, 2, 2)
    video = vae.decode(latent)
    close = dict(rtol=0, atol=PREFIX_ATOL)
    torch.testing.assert_close(vae.decode(latent[:, :, :1]), video[:, :, :1], **close)
    torch.testing.assert_close(vae.decode(latent[:, :, :2]), video[:, :, :5], **close)
    changed = latent.clone()
    changed[:, :, 1:] = torch.randn_like(changed[:, :, 1:])
    assert (vae.decode(changed)[:, :, 1:5] - video[:, :, 1:5]).abs().max() > 100 * PREFIX_ATOL  # (the bound can fail)


def test_tiled_decode_matches_untiled(vae):
    # The halo (13 latent pixels for this architecture: 12.25 rounded up) must make crops exact.
    assert vae.decoder.halo == 13
    torch.manual_seed(0)
    latent = torch.randn(1, 16, 2, 8, 40)  # tile 14 -> 3 crops along W; the middle one has a full halo
    full = vae.decode(latent)
    tiled = vae.decode(latent, tile=14)
    # 0.0 measured on this machine's CPU; 2.3e-6 on the GPU machine's CPU, whose float32 convolutions
    # reassociate sums differently for different input widths.
    assert (tiled - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("shape, match", [((1, 3, 6, 16, 16), "1 \\+ 4k frames"),
                                          ((1, 3, 5, 12, 16), "multiples of 8"),
                                          ((1, 4, 5, 16, 16), "\\[B, 3, T, H, W\\]")])
def test_encode_rejects_bad_video(vae, shape, match):
    with pytest.raises(ValueError, match=match):
        vae.encode(torch.zeros(shape))


def test_decode_rejects_bad_input(vae):
    with pytest.raises(ValueError, match="latent"):
        vae.decode(torch.zeros(1, 8, 2, 4, 4))
    with pytest.raises(ValueError, match="tile"):
        vae.decode(torch.zeros(1, 16, 1, 4, 4), tile=0)


def test_bf16_close_to_float32(vae):
    torch.manual_seed(0)
    latent = torch.randn(1, 16, 2, 4, 4)
    ref = vae.decode(latent)
    out = WanVAE.tiny(0).to(torch.bfloat16).decode(latent)
    assert out.dtype == torch.float32  # results come back in the input's dtype
    assert _rms_rel(out, ref) <= 0.05  # measured 0.017 (the reference's own bf16 error: 0.021)


def test_from_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Wan2.1_VAE.pth"):
        WanVAE.from_checkpoint(tmp_path / "nope.pth")


def test_from_checkpoint_rejects_other_state_dict(tmp_path, vae):
    path = tmp_path / "tiny_vae.pth"
    torch.save(vae.state_dict(), path)  # the tiny config's shapes, not the real model's
    with pytest.raises(ValueError, match="not a Wan2.1 VAE state dict"):
        WanVAE.from_checkpoint(path, dtype=torch.float32)
