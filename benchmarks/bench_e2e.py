"""End-to-end DiT sampling on the GPU: 4-step rCM with random weights at the standard Wan shapes, time per
step and peak memory for each attention / linear kind, against the sdpa + bf16 model of the same size.

  python -m benchmarks.bench_e2e --out benchmarks/results          (--smoke: tiny model on CPU, no files)
  python -m benchmarks.bench_e2e --cases wan1.3b-480p,wan14b-480p --merge benchmarks/results/e2e-h100.json

--cases runs some shapes (all by default), --kinds some attention/linear pairs of them (the shape's baseline
always runs too, so every ratio has its own baseline); --merge keeps the rows of another result file for the
shapes not run now, so the matrix can be split over several GPU calls.

Random weights are drawn on the device (normal for floating parameters, random codes and small scales for
W8A8 buffers), so no checkpoint is needed; the timings are those of a real forward, the outputs are noise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import time
import traceback

import torch

from turbodiffusion.models.wan.config import get_config
from turbodiffusion.models.wan.dit import WanDiT
from turbodiffusion.pipelines.sizes import latent_shape, video_size
from turbodiffusion.sampling.rcm import sample_rcm

from .harness import Row, commit, print_table, write_results

# (shape tag, config, resolution, frames, [(attention, linear[, token_chunk]), ...]); the first pair is the
# baseline. A token_chunk pair measures what the 24 GB plan's chunking (bench_memory.TOKEN_CHUNK) costs
# against the same pair unchunked, in the same run.
TOKEN_CHUNK = 16384
CASES = [
    ("wan1.3b-480p", "wan2.1-t2v-1.3b", "480p", 81, [("sdpa", "bf16"), ("sage", "bf16"), ("sdpa", "int8"),
                                                      ("sage", "int8"), ("sagesla", "int8"), ("sla", "bf16")]),
    ("wan1.3b-720p", "wan2.1-t2v-1.3b", "720p", 81, [("sdpa", "bf16"), ("sage", "int8"), ("sagesla", "int8"),
                                                      ("sla", "bf16")]),
    ("wan14b-480p", "wan2.1-t2v-14b", "480p", 81, [("sdpa", "bf16"), ("sage", "int8"), ("sagesla", "int8"),
                                                    ("sla", "bf16")]),
    ("wan14b-720p", "wan2.1-t2v-14b", "720p", 81, [("sdpa", "bf16"), ("sdpa", "int8"), ("sdpa", "int8", TOKEN_CHUNK),
                                                    ("sage", "int8"),
                                                    ("sagesla", "int8"), ("sla", "bf16")]),
]
SMOKE = [("tiny", "tiny-t2v", None, 5, [("sdpa", "bf16"), ("sage", "bf16"), ("sdpa", "int8"), ("sagesla", "int8"),
                                         ("sla", "bf16")])]
SLA_TOPK = 0.1  # TurboWan's top-k; sagesla and sla run with the default 64x64 blocks


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for p in model.parameters():
        fan_in = p[0].numel() if p.dim() > 1 else 1  # Linear: in_features; conv: in_channels x kernel
        p.normal_(0, fan_in ** -0.5, generator=gen)
    for name, b in model.named_buffers():
        if b is None or not b.numel():
            continue
        if b.dtype in (torch.int8, torch.float8_e4m3fn):
            codes = torch.randint(-127, 128, b.shape, generator=gen, device=b.device)
            b.copy_(codes.to(b.dtype) if b.dtype == torch.int8 else (codes / 4.0).to(b.dtype))
        elif name.endswith("scale"):
            b.fill_(1.0 / (127 * b.shape[-1] ** 0.5) if b.dim() else 1e-3)
        elif b.is_floating_point():
            b.normal_(0, 0.1, generator=gen)


def run_case(config: str, shape, attention: str, linear: str, device: str, dtype,
             token_chunk: int | None = None) -> tuple[float, float]:
    """(median ms per step, peak GiB) of a 4-step rCM sample."""
    opts = {"topk": SLA_TOPK} if attention in ("sagesla", "sla") else None
    model = WanDiT(get_config(config), dtype=dtype, device=device, attention=attention, attention_opts=opts,
                   linear=linear, token_chunk=token_chunk).eval()
    randomize(model)
    cfg = model.config
    context = torch.randn(shape[0], 512 if device == "cuda" else 12, cfg.text_dim, dtype=dtype, device=device)
    marks = []

    def mark(*_):
        if device == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            marks.append(e)
        else:
            marks.append(time.perf_counter())

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    mark()
    with torch.no_grad():
        sample_rcm(lambda x, t: model(x, t, context), shape, num_steps=4, device=device,
                   generator=torch.Generator(device=device).manual_seed(0), on_step=mark)
    if device == "cuda":
        torch.cuda.synchronize()
        steps = [a.elapsed_time(b) for a, b in zip(marks, marks[1:])]
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        steps = [1e3 * (b - a) for a, b in zip(marks, marks[1:])]
        peak = 0.0
    return statistics.median(steps), peak


def select(cases, tags: str | None, kinds: str | None):
    """The cases of the comma-separated shape `tags` (all if None), each with its pairs limited to the
    comma-separated `kinds` ("attention/linear[/token_chunk]"; all if None) plus its baseline."""
    known = {c[0] for c in cases}
    wanted = set(tags.split(",")) if tags else known
    pairs = set(kinds.split(",")) if kinds else None
    if wanted - known:
        raise SystemExit(f"--cases: unknown {sorted(wanted - known)}; known: {[c[0] for c in cases]}")
    return [(*c[:4], [p for i, p in enumerate(c[4]) if i == 0 or pairs is None or "/".join(map(str, p)) in pairs])
            for c in cases if c[0] in wanted]


def merge(rows: list[Row], path: str, notes: dict) -> list[Row]:
    """rows + the rows of result file `path` for shapes not in rows, grouped by shape in CASES order; sets
    notes["measured"]: per shape tag, the commit and date of its rows."""
    old = json.loads(pathlib.Path(path).read_text())
    tag = lambda shape: shape.split(" ")[0]
    now = f"commit {commit()}, {datetime.date.today().isoformat()}"
    measured = {tag(r.shape): now for r in rows}
    kept = [Row(**r) for r in old["rows"] if tag(r["shape"]) not in measured]
    for r in kept:
        measured.setdefault(tag(r.shape), old.get("measured", {}).get(tag(r.shape),
                                                                      f"commit {old['commit']}, {old['date']}"))
    order = [c[0] for c in CASES]
    notes["measured"] = {t: measured[t] for t in sorted(measured, key=order.index)}
    return sorted(rows + kept, key=lambda r: order.index(tag(r.shape)))


def run(out_dir: str, smoke: bool = False, cases: str | None = None, kinds: str | None = None,
        merge_from: str | None = None) -> list[Row]:
    """Runs the selected cases; the result files are rewritten after every shape (a cut-off run keeps its
    finished shapes). A pair that fails is reported and left out."""
    device, dtype = ("cpu", torch.float32) if smoke else ("cuda", torch.bfloat16)
    notes = {"what": "median time of the 4 steps of one rCM sample, random weights, DiT only (no text encoder, "
                     "no VAE), batch 1, 81 frames; sla/sagesla top-k 0.1, 64x64 blocks"}
    rows = []
    for tag, config, resolution, frames, pairs in select(SMOKE if smoke else CASES, cases, kinds):
        if resolution is None:
            shape = (1, 16, 2, 8, 8)
        else:
            width, height = video_size(resolution, "16:9")
            shape = latent_shape(frames, width, height)
        base_ms = None
        for attention, linear, *chunk in pairs:
            try:
                ms, peak = run_case(config, shape, attention, linear, device, dtype, *chunk)
            except Exception:  # noqa: BLE001 - the other pairs still run
                traceback.print_exc()
                print(f"{tag} {attention}/{linear} {chunk}: FAILED", flush=True)
                continue
            finally:
                if device == "cuda":
                    torch.cuda.empty_cache()
            base_ms = base_ms or ms
            kind = f"{attention}, {linear}" + (f", token_chunk {chunk[0]}" if chunk else "")
            rows.append(Row(f"DiT rCM step ({kind}; peak {peak:.1f} GiB)", f"{tag} {list(shape)}", ms,
                            "sdpa + bf16 step", base_ms, base_ms / ms, "GiB peak", peak))
            print(f"{tag} {kind}: {ms:.1f} ms per step, peak {peak:.2f} GiB", flush=True)
        if not smoke:
            write_results("e2e", merge(rows, merge_from, notes) if merge_from else rows, out_dir, notes)
    print_table(rows, "e2e")
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU (checks the script, times nothing real)")
    p.add_argument("--cases", help=f"comma-separated shapes (default all: {','.join(c[0] for c in CASES)})")
    p.add_argument("--kinds", help="comma-separated attention/linear[/token_chunk] pairs, e.g. sla/bf16 (default all)")
    p.add_argument("--merge", dest="merge_from", help="result JSON whose rows of the shapes not run now are kept")
    args = p.parse_args()
    run(args.out, args.smoke, args.cases, args.kinds, args.merge_from)
