"""Whole-pipeline GPU memory on a 24 GB budget: Wan2.1 14B-720p T2V with int8 linears and Wan2.2 A14B
I2V (two int8 experts), umT5-XXL and the Wan VAE at full size, all with random weights (no checkpoints:
built on the meta device, materialised on the GPU with random values, then handed to the pipeline).

  PYTHONPATH=$PWD python3 benchmarks/bench_memory.py [--steps 4] [--frames 81] [--out benchmarks/results]
  PYTHONPATH=$PWD python3 benchmarks/bench_memory.py --smoke      (tiny models on CPU: checks the script)
  PYTHONPATH=$PWD python3 benchmarks/bench_memory.py --estimate   (CPU, seconds: the DiT stage's peak from a
                                                                    forward on meta tensors, see estimate_dit_peak)
  PYTHONPATH=$PWD python3 benchmarks/bench_memory.py --vae-decode (the VAE decode alone, untiled vs tiled:
                                                                    <out>/vae-<card>.{json,md}; with --smoke on CPU)

Memory policy under test (docs/wan.md, "Memory"): offload="model" (one model on the GPU at a time, the
others in pinned CPU memory), DiT token_chunk, VAE decode tiles. The process is capped at --cap-gb
(torch.cuda.set_per_process_memory_fraction, default 24 GB) while the pipelines run, so an overrun is
an out-of-memory error, recorded as such. Writes the time and the peak torch.cuda.max_memory_allocated
of every stage (model moves included) to <out>/memory-<card>.{json,md}.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time
import traceback
import weakref
from typing import Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.bench_e2e import TOKEN_CHUNK, randomize
from benchmarks.harness import Row, print_table, write_report, write_results
from turbodiffusion.models.wan.config import get_config
from turbodiffusion.models.wan.dit import WanDiT
from turbodiffusion.models.wan.text_encoder import TINY, XXL, UMT5Encoder
from turbodiffusion.models.wan.tokenizer import ByteTokenizer
from turbodiffusion.models.wan.vae import WanVAE
from turbodiffusion.nn.attention import register_attention
from turbodiffusion.pipelines.image_to_video import ImageToVideoPipeline
from turbodiffusion.pipelines.offload import StageLog
from turbodiffusion.pipelines.sizes import video_size
from turbodiffusion.pipelines.text_to_video import TextToVideoPipeline

PROMPT = "a red panda rolling down a grassy hill, slow motion, golden hour"
VAE_TILE = 45  # docs/wan.md: VAE decode 4.3 GiB at 720p (TOKEN_CHUNK: DiT activations 4.6 GiB)


def materialize(build, device, seed: int, dtype=None):
    """build() on the meta device (cast to `dtype` there if given), then storage on `device` filled with
    random values."""
    with torch.device("meta"):
        model = build()
        if dtype is not None:
            model = model.to(dtype)
    model = model.to_empty(device=device)
    randomize(model, seed)
    return model.eval().requires_grad_(False)


def build_models(smoke: bool, device, dtype):
    """(text encoder, VAE, DiT factory(config, seed)) at full size (tiny for --smoke). The encoder and VAE
    are built in float32 and cast (bf16 on the GPU); the DiT is built in its dtype (norms stay float32)."""
    encoder = materialize(lambda: UMT5Encoder(TINY if smoke else XXL, ByteTokenizer()), device, 1, dtype)
    vae = materialize(lambda: WanVAE(dim=8) if smoke else WanVAE(), device, 2, dtype)

    def dit(config: str, seed: int):
        return materialize(lambda: WanDiT(get_config(config), dtype=dtype, linear="int8", token_chunk=TOKEN_CHUNK),
                           device, seed)
    return encoder, vae, dit


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of the storages that ops create while the mode is on (meta tensors included: their
    storages have sizes but no memory). A storage counts until its last tensor is gone, as in the allocator;
    the caching allocator's rounding and fragmentation are not modelled."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()  # PyTorch keeps one Python object per live storage
        key, size = id(storage), storage.nbytes()
        if key in self._seen:
            return
        self._seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def _fused_attention(q, k, v, **opts):
    """Stand-in for flash/cuDNN attention on meta tensors: allocates what they do (the [B, H, N, D] output; the
    float32 log-sum-exp [B, H, N] is < 1% of it), not the L x L scores that the math fallback would."""
    b, n, h, d = q.shape
    return q.new_empty(b, h, n, d).transpose(1, 2)


@contextlib.contextmanager
def _attention_stand_in():
    previous = register_attention("sdpa", _fused_attention)
    try:
        yield
    finally:
        register_attention("sdpa", previous)


def estimate_dit_peak(config: str, token_chunk: Optional[int], frames: int = 81, resolution: str = "720p",
                      linear: str = "int8") -> tuple[float, float]:
    """(weights GiB, activation peak GiB) of one DiT forward (bf16, batch 1, 512 text tokens), run on meta
    tensors: exact tensor sizes and lifetimes of our code, no compute, a few seconds on a CPU."""
    cfg = get_config(config)
    model = WanDiT(cfg, dtype=torch.bfloat16, device="meta", linear=linear, token_chunk=token_chunk, sla_params=True)
    weights = sum(t.nbytes for t in (*model.parameters(), *model.buffers()))
    width, height = video_size(resolution, "16:9")
    shape = (1, 1 + (frames - 1) // 4, height // 8, width // 8)
    mode = LiveBytes()
    with _attention_stand_in(), mode, torch.no_grad():
        x = torch.empty(1, cfg.out_dim, *shape[1:], device="meta", dtype=torch.bfloat16)
        y = torch.empty(1, cfg.in_dim - cfg.out_dim, *shape[1:], device="meta", dtype=torch.bfloat16) \
            if cfg.model_type == "i2v" else None
        context = torch.empty(1, cfg.text_len, cfg.text_dim, device="meta", dtype=torch.bfloat16)
        model(x, torch.empty(1, 1, device="meta", dtype=torch.bfloat16), context, y)
    return weights / 2**30, mode.peak / 2**30


def print_estimates(cap_gb: float) -> list[str]:
    lines = ["| DiT (int8 linears, 720p, 81 frames) | token_chunk | weights GiB | activations GiB | stage GiB | "
             f"fits {cap_gb:g} GB |", "|---|---|---|---|---|---|"]
    for config in ("wan2.1-t2v-14b", "wan2.2-i2v-a14b"):
        for chunk in (None, TOKEN_CHUNK, TOKEN_CHUNK // 2):
            w, a = estimate_dit_peak(config, chunk)
            lines.append(f"| {config} | {chunk} | {w:.2f} | {a:.2f} | {w + a:.2f} | "
                         f"{'yes' if (w + a) * 2**30 <= cap_gb * 1e9 else 'no'} |")
    print("\n".join(lines), flush=True)
    return lines


def run_pipeline(name: str, make_pipeline, call, device, cap_bytes: int) -> dict:
    """Run one pipeline call under the memory cap; returns its stages, step times and peak (or the OOM)."""
    log = StageLog(device)
    steps: list[float] = []

    def progress(i: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        steps.append(time.perf_counter())

    result = {"pipeline": name, "error": None, "setup_seconds": None}
    pipeline = None
    start = time.perf_counter()
    try:
        pipeline = make_pipeline(log)  # builds the DiT(s), then offload="model" copies all into pinned CPU memory
        result["setup_seconds"] = time.perf_counter() - start
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total))
        start = time.perf_counter()
        with log.stage("whole pipeline"):
            frames = call(pipeline, progress)
        result["frames"] = list(frames.shape)
    except Exception as e:  # recorded, so that the other pipeline still runs and the results are written
        what = (f"out of memory under the {cap_bytes / 1e9:.0f} GB cap" if isinstance(e, torch.cuda.OutOfMemoryError)
                else f"failed ({type(e).__name__})")
        result["error"] = f"{what}: {str(e).splitlines()[0] if str(e) else ''}"
        result["traceback"] = traceback.format_exc()
        print(result["traceback"], flush=True)
        if pipeline is not None:
            pipeline.models.release()
    finally:
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0)
    result["seconds"] = time.perf_counter() - start
    result["stages"] = log.records
    result["step_seconds"] = [b - a for a, b in zip(steps, steps[1:])]
    result["peak_gib"] = max((r["peak_gib"] or 0.0 for r in log.records), default=0.0) if device.type == "cuda" \
        else None
    print(f"\n{name}: {result['error'] or 'ok'}\n{log.summary()}", flush=True)
    return result


def _gib(value) -> str:
    return "" if value is None else f"{value:.2f}"


def markdown(results: list[dict], cap_bytes: int) -> str:
    lines = []
    for r in results:
        peak = r["peak_gib"]
        verdict = r["error"] or ("no GPU: memory not measured" if peak is None else
                                 f"peak {peak:.2f} GiB = {peak * 2**30 / 1e9:.2f} GB: "
                                 f"{'fits' if peak * 2**30 <= cap_bytes else 'OVER'} {cap_bytes / 1e9:.0f} GB")
        steps = ", ".join(f"{s:.2f}" for s in r["step_seconds"])
        lines += [f"### {r['pipeline']}", "", f"{verdict}; {r['seconds']:.1f} s in all (setup: random DiT(s), all "
                  f"models to pinned CPU memory {r['setup_seconds']:.1f} s); seconds between step ends (from the 1st): [{steps}]", "",
                  "| stage | seconds | peak GiB |", "|---|---|---|"]
        lines += [f"| {'&nbsp;&nbsp;' * s['depth']}{s['name']} | {s['seconds']:.2f} | {_gib(s['peak_gib'])} |"
                  for s in r["stages"]]
        lines.append("")
    return "\n".join(lines)


def run(out_dir: str, steps: int, frames: int, cap_gb: float, smoke: bool) -> list[dict]:
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    cap = int(cap_gb * 1e9)
    width, height = (64, 48) if smoke else video_size("720p", "16:9")
    frames = 5 if smoke else frames
    options = dict(device=device, offload="model", vae_tile=4 if smoke else VAE_TILE)
    start = time.perf_counter()
    encoder, vae, dit = build_models(smoke, device, dtype)
    print(f"text encoder and VAE built in {time.perf_counter() - start:.1f} s", flush=True)
    results = []

    # each DiT is built inside its pipeline's setup, so it is gone when its run_pipeline returns
    t2v, i2v = ("tiny-t2v", "tiny-i2v") if smoke else ("wan2.1-t2v-14b", "wan2.2-i2v-a14b")
    results.append(run_pipeline(
        f"T2V 14B-720p int8, {frames} frames, {steps} steps", lambda log: TextToVideoPipeline(
            dit(t2v, 3), encoder, vae, stage_log=log, **options),
        lambda p, progress: p(PROMPT, width=width, height=height, num_frames=frames, num_steps=steps,
                              progress=progress), device, cap))
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    results.append(run_pipeline(
        f"I2V A14B-720p int8 (two experts), {frames} frames, {steps} steps", lambda log: ImageToVideoPipeline(
            dit(i2v, 4), encoder, vae, low_noise_dit=dit(i2v, 5), stage_log=log, **options),
        lambda p, progress: p(PROMPT, image=image, num_frames=frames, num_steps=steps, progress=progress),
        device, cap))
    notes = {"what": "peak torch.cuda.max_memory_allocated and time per stage of whole pipelines, random weights; "
                     f"offload='model', DiT token_chunk {TOKEN_CHUNK}, VAE tile {VAE_TILE}, sdpa attention; "
                     f"process capped at {cap_gb:g} GB while the pipelines run",
             "budget_bytes": cap}
    text = markdown(results, cap)
    print(text, flush=True)
    if not smoke:
        write_report("memory", out_dir, {"results": results}, text, notes)
    return results


def run_vae_decode(out_dir: str, frames: int, smoke: bool) -> list[Row]:
    """What tiling costs: Wan VAE decode (bf16, random weights) of a `frames`-frame latent at 480p and 720p,
    untiled and with the 24 GB plan's tiles (VAE_TILE), time and peak torch.cuda.max_memory_allocated (the
    resident weights, the float32 latent and the float32 video included). One timed call per row, after an
    untimed call of the same tiling on a 2-latent-frame input (cuDNN algorithm choice, allocator warm-up)."""
    device = torch.device("cpu" if smoke else "cuda")
    frames = 5 if smoke else frames
    vae = materialize(lambda: WanVAE(dim=8) if smoke else WanVAE(), device, 2,
                      torch.float32 if smoke else torch.bfloat16)
    gen = torch.Generator(device).manual_seed(0)
    rows = []
    for resolution in ("480p", "720p"):
        width, height = (64, 48) if smoke else video_size(resolution, "16:9")
        shape = (1, 16, 1 + (frames - 1) // 4, height // 8, width // 8)
        latent = torch.randn(shape, generator=gen, device=device)
        base = None
        for tile in (None, 4 if smoke else VAE_TILE):
            with torch.no_grad():
                vae.decode(latent[:, :, :2], tile=tile)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                video = vae.decode(latent, tile=tile)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                ms = 1e3 * (time.perf_counter() - start)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
            del video
            base = base or ms
            what = "untiled" if tile is None else f"tile {tile}"
            rows.append(Row(f"VAE decode, {what} (peak {peak:.2f} GiB)", f"{resolution} latent {list(shape)}", ms,
                            "untiled decode", base, base / ms, "GiB peak", peak))
            print(f"VAE decode {resolution} {what}: {ms:.0f} ms, peak {peak:.2f} GiB", flush=True)
    if smoke:
        print_table(rows, "vae")
    else:
        write_results("vae", rows, out_dir, {"what": f"Wan VAE decode of a {frames}-frame latent (16:9), bf16, random "
                                                    "weights, float32 latent in and video out; one call per row"})
    return rows


if __name__ == "__main__":
    # read when CUDA's allocator starts (first allocation): limits fragmentation as a 24 GB card would need
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--steps", type=int, default=4, help="rCM steps (default 4; the I2V expert switch needs >= 3)")
    p.add_argument("--frames", type=int, default=81, help="frames, 4n+1 (default 81)")
    p.add_argument("--cap-gb", type=float, default=24.0, help="GPU memory cap while the pipelines run (GB, 1e9 B)")
    p.add_argument("--smoke", action="store_true", help="tiny models on CPU (checks the script, measures nothing)")
    p.add_argument("--estimate", action="store_true", help="print the DiT stage's estimated peak (CPU, meta tensors)")
    p.add_argument("--vae-decode", action="store_true", help="only the VAE decode, untiled vs tiled, 480p and 720p")
    args = p.parse_args()
    if args.estimate:
        print_estimates(args.cap_gb)
    elif args.vae_decode:
        run_vae_decode(args.out, args.frames, args.smoke)
    else:
        run(args.out, args.steps, args.frames, args.cap_gb, args.smoke)
