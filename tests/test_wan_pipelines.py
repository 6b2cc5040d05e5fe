"""Pipelines with the tiny models: seeded reproducibility, the I2V conditioning y, the expert hand-over."""
from __future__ import annotations

import pytest
import torch

from turbodiffusion.models.wan.dit import WanDiT
from turbodiffusion.models.wan.text_encoder import UMT5Encoder
from turbodiffusion.models.wan.vae import WanVAE
from turbodiffusion.pipelines.image_to_video import ImageToVideoPipeline
from turbodiffusion.pipelines.offload import StageLog
from turbodiffusion.pipelines.text_to_video import TextToVideoPipeline


def test_t2v_is_reproducible_per_seed():
    pipe = TextToVideoPipeline(WanDiT.tiny(), UMT5Encoder.tiny(), WanVAE.tiny())
    run = dict(width=64, height=48, num_frames=5, num_steps=2)
    a, b, c = pipe("fox", seed=3, **run), pipe("fox", seed=3, **run), pipe("fox", seed=4, **run)
    assert a.shape == (5, 48, 64, 3) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_i2v_conditioning_and_expert_handover():
    vae = WanVAE.tiny()
    calls = []

    class Recording(WanDiT):
        def forward(self, x, t, context, y=None):
            calls.append((self.name, t.flatten()[0].item(), y))
            return super().forward(x, t, context, y)

    high, low = Recording.tiny("i2v", seed=1), Recording.tiny("i2v", seed=2)
    high.name, low.name = "high", "low"
    pipe = ImageToVideoPipeline(high, UMT5Encoder.tiny(), vae, low_noise_dit=low)
    image = torch.rand(3, 32, 48) * 2 - 1
    frames = pipe("cat", image=image, num_frames=9, num_steps=4)
    assert frames.shape == (9, 32, 48, 3)
    assert [c[0] for c in calls] == ["high", "high", "low", "low"]  # sigma_max 200: t = .995, .934, .853, .609
    y = calls[0][2]
    assert all(c[2] is y for c in calls)  # one y for every step and both experts
    assert y.shape == (1, 20, 3, 4, 6)
    assert (y[:, :4, 0] == 1).all() and (y[:, :4, 1:] == 0).all()
    video = torch.zeros(1, 3, 9, 32, 48)
    video[0, :, 0] = image
    torch.testing.assert_close(y[:, 4:], vae.encode(video), rtol=0, atol=0)


def _t2v(**options):
    return TextToVideoPipeline(WanDiT.tiny(), UMT5Encoder.tiny(), WanVAE.tiny(), **options)


def test_offload_chunking_and_tiling_keep_the_video():
    """offload="model" moves models, token_chunk and vae_tile split work: the frames stay the same (tiled
    decode equals untiled up to float32 rounding: at most one uint8 level)."""
    run = dict(width=64, height=48, num_frames=5, num_steps=2, seed=1)
    reference = _t2v()("fox", **run)
    assert torch.equal(_t2v(offload="model")("fox", **run), reference)
    pipe = _t2v(offload="model", vae_tile=2)
    pipe.dit.token_chunk = 5
    diff = (pipe("fox", **run).int() - reference.int()).abs().max().item()
    assert diff <= 1, diff


def test_stage_order_with_offload_one_model_at_a_time():
    vae = WanVAE.tiny()
    log = StageLog("cpu")
    pipe = ImageToVideoPipeline(WanDiT.tiny("i2v", seed=1), UMT5Encoder.tiny(), vae,
                                low_noise_dit=WanDiT.tiny("i2v", seed=2), offload="model", stage_log=log)
    resident = []
    use = pipe.models.use
    pipe.models.use = lambda model, name: resident.append(name) or use(model, name)
    pipe("cat", image=torch.zeros(3, 32, 32), num_frames=5, num_steps=4)
    names = [(r["depth"], r["name"]) for r in log.records]
    assert names == [(0, "text encoder"), (1, "load text encoder to cpu"), (0, "VAE encode"), (1, "load VAE to cpu"),
                     (0, "sampling"), (1, "load DiT to cpu"), (1, "load low-noise DiT to cpu"), (0, "VAE decode"),
                     (1, "load VAE to cpu")], names
    assert resident == ["text encoder", "VAE", "DiT", "DiT", "low-noise DiT", "low-noise DiT", "VAE"]
    assert pipe.models.current is None  # everything back on the CPU after the call
    assert all(r["seconds"] >= 0 and r["peak_gib"] is None for r in log.records)
    assert "  load DiT to cpu: " in log.summary()


def test_offload_policy_is_checked():
    with pytest.raises(ValueError, match=r"offload: expected one of \('none', 'model'\), got 'all'"):
        _t2v(offload="all")


def test_pipeline_input_errors():
    pipe = _t2v()
    with pytest.raises(ValueError, match="num_frames: expected 4n\\+1 frames .* got 8"):
        pipe("x", width=64, height=48, num_frames=8)
    with pytest.raises(ValueError, match="width, height: expected positive multiples of 16, got 60 x 48"):
        pipe("x", width=60, height=48, num_frames=5)
    i2v = ImageToVideoPipeline(WanDiT.tiny("i2v"), UMT5Encoder.tiny(), WanVAE.tiny())
    with pytest.raises(TypeError, match="image"):
        i2v("x", num_frames=5)  # the image is required
    with pytest.raises(ValueError, match=r"image: expected \[3, H, W\]"):
        i2v("x", image=torch.zeros(32, 32), num_frames=5)
