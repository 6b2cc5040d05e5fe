"""`turbodiffusion generate`: prompt (and image) in, mp4 out, with TurboWan checkpoints in 1-4 steps.

`--model tiny` needs no files: seeded random tiny models (DiT, umT5, VAE) run anywhere, on CPU in
seconds; the video is noise-like but the whole pipeline runs. Real models load from local files only.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .models.wan.checkpoint import require_file
from .models.wan.layers import check_linear_kind, linear_kinds
from .nn.attention import SLA_KINDS, attention_kinds, check_attention_kind
from .pipelines.offload import OFFLOAD_POLICIES
from .pipelines.sizes import ASPECT_RATIOS, RESOLUTIONS, check_num_frames, video_size
from .sampling.rcm import MAX_STEPS

logger = logging.getLogger("turbodiffusion")

MODELS = ("tiny", "1.3b", "14b", "a14b")
I2V_ONLY, T2V_ONLY = ("a14b",), ("1.3b", "14b")
DEFAULT_RESOLUTION = {"1.3b": "480p", "14b": "480p", "a14b": "720p", "tiny": "tiny"}
DEFAULT_FRAMES = {"tiny": 17}  # real models: 81 (5 s at 16 fps)
CHECKPOINT_DIR = Path("checkpoints")
DEFAULT_TOPK = 0.1


def _frames(text: str) -> int:
    try:
        return check_num_frames(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 4n+1 frames (e.g. 17, 81), got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turbodiffusion", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a video from a prompt (and an image for I2V)")
    g.add_argument("prompt", help="text prompt (longer than 512 tokens: truncated with a warning)")
    g.add_argument("--image", help="conditioning image: makes it image-to-video (required for --model a14b)")
    g.add_argument("--model", choices=MODELS, default="tiny",
                   help="tiny (random weights, no files), Wan2.1 T2V 1.3b / 14b, Wan2.2 I2V a14b (default: tiny)")
    g.add_argument("--dit", help="DiT checkpoint for 1.3b/14b (TurboWan .pth, -quant.pth or original Wan weights); "
                                 "default checkpoints/TurboWan2.1-T2V-<model>-<res>.pth")
    g.add_argument("--high-noise-dit", help="a14b high-noise expert (default checkpoints/TurboWan2.2-I2V-A14B-high-720P.pth)")
    g.add_argument("--low-noise-dit", help="a14b low-noise expert (default checkpoints/TurboWan2.2-I2V-A14B-low-720P.pth)")
    g.add_argument("--vae", default=str(CHECKPOINT_DIR / "Wan2.1_VAE.pth"), help="Wan2.1 VAE checkpoint")
    g.add_argument("--text-encoder", default=str(CHECKPOINT_DIR / "models_t5_umt5-xxl-enc-bf16.pth"),
                   help="umT5-XXL encoder checkpoint")
    g.add_argument("--tokenizer", default=str(CHECKPOINT_DIR / "google" / "umt5-xxl"),
                   help="local google/umt5-xxl tokenizer folder")
    g.add_argument("--resolution", choices=tuple(RESOLUTIONS),
                   help="480p or 720p (default: 480p for 1.3b/14b, 720p for a14b; tiny: 160x96-class sizes)")
    g.add_argument("--aspect-ratio", choices=ASPECT_RATIOS, default="16:9", help="width:height (default 16:9)")
    g.add_argument("--frames", type=_frames, help="number of frames, 4n+1 (default 81; tiny: 17)")
    g.add_argument("--steps", type=int, choices=range(1, MAX_STEPS + 1), default=4, help="rCM steps (default 4)")
    g.add_argument("--sigma-max", type=float, help="initial sigma of rCM (default 80 for T2V, 200 for I2V)")
    g.add_argument("--ode", action="store_true", help="I2V: deterministic ODE steps instead of SDE")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--attention", choices=attention_kinds(), default="sdpa", help="self-attention kind")
    g.add_argument("--topk", type=float, help=f"kept fraction of key blocks for sla/sagesla (default {DEFAULT_TOPK})")
    g.add_argument("--linear", choices=linear_kinds(), default="bf16", help="block linear kind (default bf16)")
    g.add_argument("--offload", choices=OFFLOAD_POLICIES, default="none",
                   help="model: keep the models on the CPU and move each to the GPU only for its stage (text "
                        "encoder, DiT / each A14B expert, VAE); none: all stay on the device (default)")
    g.add_argument("--token-chunk", type=_positive, help="run the DiT's token-local layers this many tokens at a time "
                                                         "(bounds activation memory; e.g. 16384 for 720p on 24 GB)")
    g.add_argument("--vae-tile", type=_positive, help="VAE decode in tiles of this many latent pixels (e.g. 45)")
    g.add_argument("-o", "--output", default="output/generated_video.mp4", help="output mp4 path")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda if available, else cpu)")
    g.set_defaults(subparser=g, run=generate)  # errors after parsing are reported with this subcommand's usage
    q = sub.add_parser("quantize", help="write the W8A8 format (per-channel INT8 block linears) from a bf16 DiT "
                                        "checkpoint, streaming tensor by tensor")
    q.add_argument("checkpoint", nargs="+", help="TurboWan .pth, original Wan .safetensors (shards, index .json "
                                                 "or folder)")
    q.add_argument("-o", "--output", help="output .safetensors (default <name>-int8.safetensors beside the input); "
                                          "use it with generate --linear int8 --dit <output>")
    q.add_argument("--device", default="cpu", help="where to quantize (cuda is faster; the result is the same)")
    q.set_defaults(subparser=q, run=quantize)
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument combinations argparse cannot express; every problem exits with a message naming the option."""
    if args.model in I2V_ONLY and args.image is None:
        parser.error(f"--image: --model {args.model} is image-to-video and needs a conditioning image")
    if args.model in T2V_ONLY and args.image is not None:
        parser.error(f"--image: --model {args.model} is text-to-video; use --model a14b (or tiny) for I2V")
    if args.topk is not None and args.attention not in SLA_KINDS:
        parser.error(f"--topk: applies to --attention {'/'.join(SLA_KINDS)} only, got --attention {args.attention}")
    if args.topk is not None and not 0 < args.topk <= 1:
        parser.error(f"--topk: expected a fraction in (0, 1], got {args.topk}")
    try:
        check_attention_kind(args.attention)
        check_linear_kind(args.linear)
    except RuntimeError as e:
        parser.error(str(e))


def _checkpoint_paths(args: argparse.Namespace, resolution: str) -> dict[str, Path]:
    """The files a real model needs, each checked to exist (a missing one names itself and its source)."""
    res = resolution.upper()
    quant = "-quant" if args.linear == "int8" else ""
    if args.model == "a14b":
        dits = {"--high-noise-dit": args.high_noise_dit or CHECKPOINT_DIR / f"TurboWan2.2-I2V-A14B-high-720P{quant}.pth",
                "--low-noise-dit": args.low_noise_dit or CHECKPOINT_DIR / f"TurboWan2.2-I2V-A14B-low-720P{quant}.pth"}
    else:
        size = "1.3B-480P" if args.model == "1.3b" else f"14B-{res}"
        dits = {"--dit": args.dit or CHECKPOINT_DIR / f"TurboWan2.1-T2V-{size}{quant}.pth"}
    from .models.wan import text_encoder, tokenizer, vae

    files = {flag: require_file(path, "DiT checkpoint", flag=flag) for flag, path in dits.items()}
    files["--vae"] = require_file(args.vae, "Wan2.1 VAE", flag="--vae", source=vae.CHECKPOINT_SOURCE)
    files["--text-encoder"] = require_file(args.text_encoder, "umT5 text encoder", flag="--text-encoder",
                                           source=text_encoder.CHECKPOINT_SOURCE)
    files["--tokenizer"] = require_file(args.tokenizer, "umT5 tokenizer folder", flag="--tokenizer",
                                        source=tokenizer.TOKENIZER_SOURCE)
    return files


def _build_pipeline(args: argparse.Namespace, resolution: str, stage_log):
    """Models (real ones loaded from local files; on the CPU with --offload model, else on the device),
    wrapped in the T2V or I2V pipeline."""
    from .models.wan.dit import WanDiT
    from .models.wan.text_encoder import UMT5Encoder
    from .models.wan.vae import WanVAE
    from .pipelines.image_to_video import ImageToVideoPipeline
    from .pipelines.text_to_video import TextToVideoPipeline

    device = torch.device(args.device)
    load_device = torch.device("cpu") if args.offload == "model" else device
    opts = dict(attention=args.attention, linear=args.linear, token_chunk=args.token_chunk,
                attention_opts={"topk": args.topk or DEFAULT_TOPK} if args.attention in SLA_KINDS else None)
    i2v = args.image is not None
    if args.model == "tiny":
        # bf16 matmuls are slow on CPU: the tiny models run in float32 there
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        kind = "i2v" if i2v else "t2v"
        dits = [WanDiT.tiny(kind, seed=s, dtype=dtype, device=load_device, **opts) for s in ((1, 2) if i2v else (1,))]
        text_encoder, vae = UMT5Encoder.tiny().to(load_device), WanVAE.tiny().to(load_device)
    else:
        from .models.wan.checkpoint import load_wan_dit
        from .models.wan.config import get_config

        files = _checkpoint_paths(args, resolution)
        dtype = torch.bfloat16
        config = get_config({"1.3b": "wan2.1-t2v-1.3b", "14b": "wan2.1-t2v-14b", "a14b": "wan2.2-i2v-a14b"}[args.model])
        text_encoder = UMT5Encoder.from_checkpoint(files["--text-encoder"], files["--tokenizer"], device=load_device)
        vae = WanVAE.from_checkpoint(files["--vae"], device=load_device)
        dits = [load_wan_dit(files[f], config, dtype=dtype, device=load_device, **opts)
                for f in ("--high-noise-dit", "--low-noise-dit", "--dit") if f in files]
    options = dict(device=device, offload=args.offload, vae_tile=args.vae_tile, stage_log=stage_log)
    if i2v:
        low = dits[1] if len(dits) > 1 else None
        return ImageToVideoPipeline(dits[0], text_encoder, vae, low_noise_dit=low, **options)
    return TextToVideoPipeline(dits[0], text_encoder, vae, **options)


def _progress(total: int):
    """(per-step callback, close): a tqdm bar when tqdm is installed, else a log line per step."""
    try:
        from tqdm import tqdm
    except ImportError:
        return (lambda i: logger.info("sampling step %d/%d done", i + 1, total)), (lambda: None)
    bar = tqdm(total=total, desc="sampling", unit="step")

    def step(i: int) -> None:
        bar.update(1)
        if i + 1 == total:
            bar.close()
    return step, bar.close


def generate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    """Run `generate` for parsed arguments; returns the mp4 path."""
    from .pipelines.media import load_image, write_mp4
    from .pipelines.offload import StageLog

    _check_args(parser, args)
    resolution = args.resolution or DEFAULT_RESOLUTION[args.model]
    width, height = video_size(resolution, args.aspect_ratio)
    frames = args.frames or DEFAULT_FRAMES.get(args.model, 81)
    image = load_image(args.image, width, height) if args.image is not None else None
    if args.model == "tiny":
        logger.info("--model tiny: random-weight tiny models, no checkpoint files (the video is not meaningful)")
    start = time.perf_counter()
    stage_log = StageLog(args.device)
    pipeline = _build_pipeline(args, resolution, stage_log)
    logger.info("models ready in %.1f s; generating %d frames of %dx%d in %d step(s) on %s", time.perf_counter() - start,
                frames, width, height, args.steps, args.device)
    step, close = _progress(args.steps)
    common = dict(num_frames=frames, num_steps=args.steps, sigma_max=args.sigma_max, seed=args.seed, progress=step)
    try:
        if image is not None:
            video = pipeline(args.prompt, image=image, ode=args.ode, **common)
        else:
            video = pipeline(args.prompt, width=width, height=height, **common)
    finally:
        close()
    logger.info("stages (time, peak GPU memory):\n%s", stage_log.summary())
    path = write_mp4(video, args.output)
    logger.info("wrote %s (%d frames, %dx%d, 16 fps) in %.1f s", path, video.shape[0], width, height,
                time.perf_counter() - start)
    return path


def quantize(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    """Run `quantize` for parsed arguments; returns the output path."""
    from .models.wan.quantize import quantize_checkpoint

    start = time.perf_counter()
    path = quantize_checkpoint(args.checkpoint, args.output, device=args.device)
    logger.info("quantized in %.1f s", time.perf_counter() - start)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (`turbodiffusion`)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args, args.subparser)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(1, f"turbodiffusion {args.command}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
