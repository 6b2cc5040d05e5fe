"""The one benchmark harness: CUDA-event medians after warm-up with inputs rotated through more
memory than L2 holds, rows with a ratio to a named baseline, a printed table, and a JSON + markdown
result file per suite: benchmarks/results/<suite>-<card>.{json,md}."""
from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import math
import os
import pathlib
import subprocess
from typing import Callable, Sequence

import torch

L2_ROTATE_FACTOR = 3  # rotate through at least 3x the L2 size of inputs


@dataclasses.dataclass
class Row:
    name: str           # what was timed
    shape: str          # shape tag
    ms: float           # median time
    baseline: str       # what the ratio divides by
    baseline_ms: float
    ratio: float        # baseline_ms / ms: > 1 means faster than the baseline
    metric: str         # unit of `value` (TFLOPS, TOPS, GB/s, ...)
    value: float


def card_name() -> str:
    name = torch.cuda.get_device_name().lower()
    for tag in ("h200", "h100", "a100", "l40s", "rtx 5090", "rtx 4090", "b200"):
        if tag in name:
            return tag.replace("rtx ", "rtx")
    return name.replace(" ", "_")


def commit() -> str:
    if os.environ.get("TD_COMMIT"):
        return os.environ["TD_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def rotation_count(bytes_per_set: float) -> int:
    """How many input sets to rotate through so that their total exceeds L2_ROTATE_FACTOR x L2."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return max(2, min(16, math.ceil(L2_ROTATE_FACTOR * l2 / max(bytes_per_set, 1.0))))


def sample_ms(fn: Callable, input_sets: Sequence[tuple], warmup: int = 5, reps: int = 30) -> list[float]:
    """Milliseconds of each of `reps` calls fn(*inputs) over CUDA events after `warmup` calls, cycling through
    input_sets."""
    sets = itertools.cycle(input_sets)
    for _ in range(warmup):
        fn(*next(sets))
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        args = next(sets)
        s.record()
        fn(*args)
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def median(xs: Sequence[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def time_ms(fn: Callable, input_sets: Sequence[tuple], warmup: int = 5, reps: int = 30) -> float:
    """Median milliseconds of fn(*inputs) over CUDA events, cycling through input_sets."""
    return median(sample_ms(fn, input_sets, warmup, reps))


def time_interleaved(cands: dict[str, tuple[Callable, Sequence[tuple]]], rounds: int = 3, warmup: int = 3,
                     reps: int = 30) -> dict[str, float]:
    """Median milliseconds of each candidate {name: (fn, input_sets)}, timed in `rounds` rounds that take every
    candidate in turn (about reps / rounds calls each per round): the candidates see the card in the same
    thermal and power state, where timing each in one block measures a later one on a card the earlier ones
    heated (on the H100 at its power cap a run of 20 bf16 SDPA calls before ours moved our median by up to 7%)."""
    per_round = max(2, -(-reps // rounds))
    samples: dict[str, list[float]] = {name: [] for name in cands}
    for r in range(rounds):
        for name, (fn, sets) in cands.items():
            samples[name] += sample_ms(fn, sets, warmup if r == 0 else 1, per_round)
    return {name: median(xs) for name, xs in samples.items()}


def graphed(fn: Callable, input_sets: Sequence[tuple]) -> list[tuple]:
    """One CUDA graph of fn(*inputs) per input set, as 1-tuples for time_ms(replay, ...): timing the
    replays leaves the host's dispatch out, which otherwise bounds ops of a few tens of microseconds (the
    GPU waits for the next launch). The calls run once outside capture first (lazy set-up); the graphs
    share one memory pool (their outputs are not read)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for args in input_sets:
            fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    pool, graphs = torch.cuda.graph_pool_handle(), []
    for args in input_sets:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            fn(*args)
        graphs.append((g,))
    return graphs


def replay(g: torch.cuda.CUDAGraph) -> None:
    g.replay()


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda a, b: b.copy_(a), [(src, dst)], warmup=3, reps=20)
    return 2 * nbytes / ms / 1e6


def geomean_ratio(rows: Sequence[Row]) -> float:
    """Geometric mean of the rows' ratios (nan for none)."""
    ratios = [r.ratio for r in rows if r.ratio > 0]
    return math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")


def main(run: Callable[..., object], doc: str | None, flags: dict[str, str] | None = None) -> None:
    """Command line of a benchmark suite: `python -m benchmarks.bench_<suite> [--out DIR] [--flag ...]`;
    each of `flags` ({"--name": help}) is a switch passed to run as the keyword name=True/False."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    for flag, help_text in (flags or {}).items():
        p.add_argument(flag, action="store_true", help=help_text)
    args = vars(p.parse_args())
    run(args.pop("out"), **args)


def print_table(rows: Sequence[Row], title: str) -> str:
    head = f"| name | shape | ms | baseline | baseline ms | ratio | value |\n|---|---|---|---|---|---|---|\n"
    body = "".join(f"| {r.name} | {r.shape} | {r.ms:.4f} | {r.baseline} | {r.baseline_ms:.4f} | {r.ratio:.2f}x | "
                   f"{r.value:.1f} {r.metric} |\n" for r in rows)
    text = f"### {title}\n\n{head}{body}\ngeometric mean ratio: {geomean_ratio(rows):.3f}x\n"
    print(text, flush=True)
    return text


def write_report(suite: str, out_dir: str | os.PathLike, payload: dict, markdown: str,
                 notes: dict | None = None) -> pathlib.Path:
    """benchmarks/results/<suite>-<card>.{json,md}: card, date, commit, torch and `notes`, then the suite's
    `payload` (JSON) and `markdown` (its table)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = card_name()
    meta = {"card": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(), "commit": commit(),
            "torch": torch.__version__, "cuda": torch.version.cuda, **(notes or {})}
    path = out / f"{suite}-{card}.json"
    path.write_text(json.dumps({**meta, **payload}, indent=1))
    header = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    (out / f"{suite}-{card}.md").write_text(f"# {suite} on {meta['card']}\n\n{header}\n\n{markdown}")
    return path


def write_results(suite: str, rows: Sequence[Row], out_dir: str | os.PathLike, notes: dict | None = None) -> pathlib.Path:
    return write_report(suite, out_dir, {"rows": [dataclasses.asdict(r) for r in rows]}, print_table(rows, suite),
                        notes)
