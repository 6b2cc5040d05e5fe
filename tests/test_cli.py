"""`turbodiffusion generate`: tiny T2V and I2V runs to a real mp4 (read back with imageio), and the
errors a user meets (missing checkpoint, missing image, bad frame count or resolution, long prompt,
kinds whose kernels have not landed)."""
from __future__ import annotations

import pytest
import torch

from turbodiffusion.cli import main

iio = pytest.importorskip("imageio.v2")
pytest.importorskip("imageio_ffmpeg")


def _read_mp4(path):
    reader = iio.get_reader(path)
    try:
        meta = reader.get_meta_data()
        return reader.count_frames(), meta["size"], meta["fps"]
    finally:
        reader.close()


def _run_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_tiny_t2v_writes_mp4_with_the_memory_options(tmp_path, caplog):
    out = tmp_path / "video" / "t2v.mp4"
    with caplog.at_level("INFO"):
        assert main(["generate", "a red fox in the snow", "--model", "tiny", "--frames", "9", "--steps", "2",
                     "--offload", "model", "--token-chunk", "100", "--vae-tile", "7", "-o", str(out),
                     "--device", "cpu"]) == 0
    assert _read_mp4(out) == (9, (160, 96), 16.0)  # size is (width, height)
    assert "load DiT to cpu" in caplog.text and "VAE decode" in caplog.text


def test_tiny_i2v_writes_mp4_and_long_prompt_is_truncated(tmp_path, caplog):
    np = pytest.importorskip("numpy")
    image = tmp_path / "input.png"
    iio.imwrite(image, (np.random.default_rng(0).random((70, 50, 3)) * 255).astype("uint8"))
    out = tmp_path / "i2v.mp4"
    long_prompt = "a cat surfing a wave " * 30  # 630 bytes: over 512 tokens with the tiny byte tokenizer
    with caplog.at_level("WARNING"):
        assert main(["generate", long_prompt, "--image", str(image), "--aspect-ratio", "1:1", "--frames", "5",
                     "--steps", "4", "--ode", "-o", str(out), "--device", "cpu"]) == 0
    assert "truncated" in caplog.text
    assert _read_mp4(out) == (5, (128, 128), 16.0)


def test_missing_checkpoint_names_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/ folder here
    code, err = _run_error(capsys, ["generate", "x", "--model", "1.3b", "--device", "cpu"])
    assert code == 1
    assert "TurboWan2.1-T2V-1.3B-480P.pth" in err and "huggingface.co/TurboDiffusion/TurboWan2.1-T2V-1.3B-480P" in err
    assert "--dit" in err
    code, err = _run_error(capsys, ["generate", "x", "--model", "14b", "--dit", str(tmp_path / "mine.pth")])
    assert code == 1 and "'mine.pth' not found" in err


@pytest.mark.parametrize("argv, message", [
    (["--model", "a14b"], "--image: --model a14b is image-to-video and needs a conditioning image"),
    (["--frames", "80"], "argument --frames: expected 4n+1 frames"),
    (["--resolution", "1080p"], "argument --resolution: invalid choice: '1080p'"),
    (["--steps", "5"], "argument --steps: invalid choice: 5"),
    (["--topk", "0.2"], "--topk: applies to --attention sla/sagesla only"),
    (["--token-chunk", "0"], "argument --token-chunk: expected a positive integer, got '0'"),
    (["--offload", "all"], "argument --offload: invalid choice: 'all'"),
])
def test_argument_errors(capsys, argv, message):
    code, err = _run_error(capsys, ["generate", "x", *argv])
    assert code == 2 and message in err and "turbodiffusion generate" in err


def test_missing_image_file(tmp_path, capsys):
    code, err = _run_error(capsys, ["generate", "x", "--image", str(tmp_path / "nope.png"), "--device", "cpu"])
    assert code == 1 and "nope.png" in err and "not found" in err


class _StandInVAE:
    """Shapes of the WanVAE interface (8x space, 4x time compression) at no cost."""

    def encode(self, video):
        b, _, t, h, w = video.shape
        return torch.zeros(b, 16, 1 + (t - 1) // 4, h // 8, w // 8)

    def decode(self, latent, tile=None):
        b, _, t, h, w = latent.shape
        return latent[:, :3, :1, :1, :1].tanh().expand(b, 3, 1 + 4 * (t - 1), 8 * h, 8 * w)


@pytest.mark.parametrize("model", ["1.3b", "a14b"])
def test_real_model_wiring_with_stand_ins(tmp_path, monkeypatch, model):
    """The real-model path (file checks, load_wan_dit of one or two experts, T2V/I2V choice) with the tiny
    architecture, the tiny text encoder and a cheap VAE standing in (the real ones need the real files)."""
    from turbodiffusion.models.wan import config as config_module
    from turbodiffusion.models.wan.dit import WanDiT
    from turbodiffusion.models.wan.text_encoder import UMT5Encoder
    from turbodiffusion.models.wan.vae import WanVAE

    kind = "i2v" if model == "a14b" else "t2v"
    monkeypatch.setattr(config_module, "get_config", lambda name: config_module.CONFIGS[f"tiny-{kind}"])
    monkeypatch.setattr(WanVAE, "from_checkpoint", classmethod(lambda cls, path, **kw: _StandInVAE()))
    monkeypatch.setattr(UMT5Encoder, "from_checkpoint", classmethod(lambda cls, path, tok, **kw: UMT5Encoder.tiny()))
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "checkpoints"
    (ckpt / "google" / "umt5-xxl").mkdir(parents=True)
    for name in ("Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth"):
        (ckpt / name).write_bytes(b"stand-in")
    names = (["TurboWan2.2-I2V-A14B-high-720P.pth", "TurboWan2.2-I2V-A14B-low-720P.pth"] if model == "a14b"
             else ["TurboWan2.1-T2V-1.3B-480P.pth"])
    for seed, name in enumerate(names):
        torch.save(WanDiT.tiny(kind, seed=seed, sla_params=True, dtype=torch.bfloat16).state_dict(), ckpt / name)
    argv = ["generate", "x", "--model", model, "--resolution", "480p", "--aspect-ratio", "4:3", "--frames", "5",
            "--steps", "4", "-o", "out.mp4", "--device", "cpu"]  # a14b: 4 steps run high, high, low, low
    if model == "a14b":
        image = tmp_path / "in.png"
        iio.imwrite(image, torch.zeros(20, 20, 3, dtype=torch.uint8).numpy())
        argv += ["--image", str(image)]
    assert main(argv) == 0
    assert _read_mp4(tmp_path / "out.mp4") == (5, (640, 480), 16.0)
