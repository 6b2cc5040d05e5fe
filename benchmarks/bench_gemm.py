"""W8A8 GEMM at the standard DiT shapes (benchmarks/metrics.py GEMM_SHAPES), against torch.matmul bf16,
torch._int_mm (INT8, no scales) and torch._scaled_mm FP8 row-wise (scales + bias, use_fast_accum=False:
float32 accumulation like ours), all in this process; and Int8Linear from bf16 input (quantize kernel +
GEMM) against nn.Linear bf16.

  python -m benchmarks.bench_gemm --out benchmarks/results

Targets (issue 3): INT8 >= 1.7x bf16 matmul and >= 1.4x _int_mm (geometric means), FP8 >= 1.0x
_scaled_mm, Int8Linear >= 1.35x nn.Linear.

--sweep (Hopper): instead, time every compiled sm90 tile (ops.GEMM_SM90_TILES; build with
TD_GEMM_ALL_CONFIGS=1 to compile the candidates) x raster order x swizzle at each shape, next to the
heuristics' choice and the baselines. Prints one table per input type, then the winners per shape and
per tile; writes gemm-sweep-<card>.{json,md}. Set csrc/include/turbodiffusion/gemm/heuristics.h
(sm90_choose, default_build) from the winners.
"""
from __future__ import annotations

import itertools
import math

import torch

from turbodiffusion import ops
from turbodiffusion.nn.linear import Int8Linear

from .harness import geomean_ratio, main, Row, print_table, rotation_count, time_ms, write_results
from .metrics import GEMM_SHAPES, gemm_flops

FP8 = torch.float8_e4m3fn


def _problem(m: int, k: int, n: int, fp8: bool) -> dict:
    """The inputs of one shape: bf16 x sets (rotated past L2), bf16 w and bias, their per-token /
    per-channel INT8 quantization and, when fp8, the E4M3 quantization (scales amax / 448)."""
    dev = "cuda"
    nsets = rotation_count(m * k + n * k + 2 * m * n)
    g = torch.Generator(device=dev).manual_seed(m + k + n)
    w16 = (torch.randn(n, k, device=dev, generator=g) * 0.02).to(torch.bfloat16)
    bias = (torch.randn(n, device=dev, generator=g) * 0.1).to(torch.bfloat16)
    xs16 = [torch.randn(m, k, device=dev, generator=g).to(torch.bfloat16) for _ in range(nsets)]
    wq, ws = ops.quantize_per_token_int8(w16)
    p = dict(w16=w16, bias=bias, xs16=xs16, wq=wq, ws=ws, q=[ops.quantize_per_token_int8(x) for x in xs16])
    if fp8:
        p["w8"] = (w16.float() / (ws[:, None] * 127 / 448)).clamp(-448, 448).to(FP8)
        p["w8_scale"] = ws * 127 / 448
        f = []
        for x in xs16:
            amax = x.float().abs().amax(dim=1, keepdim=True)
            f.append(((x.float() * (448 / amax)).to(FP8), (amax / 448).squeeze(1).contiguous()))
        p["f"] = f
    return p


def _baselines(p: dict) -> dict[str, float]:
    """Milliseconds of the baselines every comparison divides by."""
    t = {"torch.matmul bf16": time_ms(lambda x: torch.matmul(x, p["w16"].T), [(x,) for x in p["xs16"]]),
         "torch._int_mm": time_ms(lambda a: torch._int_mm(a, p["wq"].T), [(a,) for a, _ in p["q"]])}
    if "f" in p:
        w8, wsc, bias = p["w8"], p["w8_scale"], p["bias"]
        t["torch._scaled_mm row-wise"] = time_ms(
            lambda a, s: torch._scaled_mm(a, w8.T, scale_a=s[:, None], scale_b=wsc[None, :], bias=bias,
                                          out_dtype=torch.bfloat16, use_fast_accum=False), p["f"])
    return t


def run(out_dir: str, shapes=GEMM_SHAPES, sweep: bool = False) -> list[Row]:
    if sweep:
        return run_sweep(out_dir, shapes)
    dev = "cuda"
    sm90 = torch.cuda.get_device_capability()[0] == 9
    groups: dict[str, list[Row]] = {}

    def add(group, name, tag, ms, base_name, base_ms, flops, metric):
        groups.setdefault(group, []).append(Row(name, tag, ms, base_name, base_ms, base_ms / ms, metric,
                                                flops / ms / 1e9))

    for m, k, n in shapes:
        tag = f"{m}x{k}x{n}"
        flops = gemm_flops(m, n, k)
        p = _problem(m, k, n, fp8=sm90)
        wq, ws, bias, w16, xs16 = p["wq"], p["ws"], p["bias"], p["w16"], p["xs16"]
        base = _baselines(p)
        t_bf16, t_int_mm = base["torch.matmul bf16"], base["torch._int_mm"]
        t_lin = time_ms(lambda x: torch.nn.functional.linear(x, w16, bias), [(x,) for x in xs16])
        t_ours = time_ms(lambda a, s: ops.w8a8_gemm(a, s, wq, ws, bias), p["q"])
        t_mma = time_ms(lambda a, s: ops.w8a8_gemm(a, s, wq, ws, bias, backend="mma"), p["q"])
        add("int8 vs bf16", "w8a8_gemm int8 (auto)", tag, t_ours, "torch.matmul bf16", t_bf16, flops, "TOPS")
        add("int8 vs _int_mm", "w8a8_gemm int8 (auto)", tag, t_ours, "torch._int_mm", t_int_mm, flops, "TOPS")
        add("int8 mma.sync vs bf16", "w8a8_gemm int8 (mma)", tag, t_mma, "torch.matmul bf16", t_bf16, flops, "TOPS")
        add("baselines", "torch._int_mm", tag, t_int_mm, "torch.matmul bf16", t_bf16, flops, "TOPS")

        lin = Int8Linear.from_linear(torch.nn.Linear(k, n, dtype=torch.bfloat16, device=dev))
        t_i8lin = time_ms(lambda x: lin(x), [(x,) for x in xs16])
        add("Int8Linear vs nn.Linear", "Int8Linear (bf16 in)", tag, t_i8lin, "nn.Linear bf16", t_lin, flops, "TOPS")
        del lin

        if sm90:
            w8, wsc = p["w8"], p["w8_scale"]
            t_fp8 = time_ms(lambda a, s: ops.w8a8_gemm(a, s, w8, wsc, bias), p["f"])
            t_scaled = base["torch._scaled_mm row-wise"]
            add("fp8 vs _scaled_mm", "w8a8_gemm fp8 (sm90)", tag, t_fp8, "torch._scaled_mm row-wise", t_scaled, flops,
                "TFLOPS")
            add("baselines", "torch._scaled_mm row-wise", tag, t_scaled, "torch.matmul bf16", t_bf16, flops, "TFLOPS")
            del w8, wsc
        del p, wq, ws, bias, w16, xs16
        torch.cuda.empty_cache()

    rows, notes = [], {}
    for name, rs in groups.items():
        print_table(rs, name)
        notes[f"geomean {name}"] = round(geomean_ratio(rs), 3)
        rows += rs
    notes["targets"] = ("int8 vs bf16 >= 1.7, int8 vs _int_mm >= 1.4, fp8 vs _scaled_mm >= 1.0, "
                        "Int8Linear vs nn.Linear >= 1.35 (geometric means)")
    print(notes, flush=True)
    write_results("gemm", rows, out_dir, notes)
    return rows


# --------------------------------------------------------------------------------------------------
# --sweep: every compiled sm90 (tile, raster, swizzle) per shape
SWEEP_BASELINE = {torch.int8: "torch.matmul bf16", FP8: "torch._scaled_mm row-wise"}
SWEEP_TIME = dict(warmup=3, reps=20)  # about 1 minute for the six standard shapes on an H100


def _config_name(dtype, config) -> str:
    tile, along_m, swizzle = config
    return f"t{tile} {ops.GEMM_SM90_TILES[dtype][tile].split(' (')[0]}, raster {'M' if along_m else 'N'}, " \
           f"swizzle {swizzle}"


def _compiled(tile: int, call) -> bool:
    """Whether this build compiled the tile (candidates need TD_GEMM_ALL_CONFIGS=1)."""
    try:
        call((tile, 0, 1))
    except ValueError as e:
        if "not compiled in this build" in str(e):
            return False
        raise
    return True


def run_sweep(out_dir: str, shapes=GEMM_SHAPES) -> list[Row]:
    if torch.cuda.get_device_capability()[0] != 9:
        raise SystemExit("--sweep times the sm90 kernel's configs: needs a Hopper GPU")
    rows: dict[torch.dtype, list[Row]] = {torch.int8: [], FP8: []}
    # winners[dtype][shape] = (heuristics' ms, best config, best ms, baseline ms)
    winners: dict[torch.dtype, dict[str, tuple]] = {torch.int8: {}, FP8: {}}
    # per_tile[dtype][tile] = [best ratio to the baseline over raster/swizzle, per shape]
    per_tile: dict[torch.dtype, dict[int, list[float]]] = {torch.int8: {}, FP8: {}}
    skipped = set()
    for m, k, n in shapes:
        tag = f"{m}x{k}x{n}"
        flops = gemm_flops(m, n, k)
        p = _problem(m, k, n, fp8=True)
        base = _baselines(p)
        for dtype, w, w_scale, sets in ((torch.int8, p["wq"], p["ws"], p["q"]),
                                        (FP8, p["w8"], p["w8_scale"], p["f"])):
            metric = "TOPS" if dtype == torch.int8 else "TFLOPS"
            base_name = SWEEP_BASELINE[dtype]
            base_ms = base[base_name]

            def gemm(a, s, config, w=w, w_scale=w_scale, bias=p["bias"]):
                return ops.w8a8_gemm(a, s, w, w_scale, bias, backend="sm90", sm90_config=config)

            def call(config, a=sets[0][0], s=sets[0][1], gemm=gemm):
                return gemm(a, s, config)

            def timed(config, sets=sets, gemm=gemm):
                return time_ms(lambda a, s: gemm(a, s, config), sets, **SWEEP_TIME)

            t_auto = timed(None)
            rows[dtype].append(Row("heuristics (sm90_choose)", tag, t_auto, base_name, base_ms, base_ms / t_auto, metric,
                                   flops / t_auto / 1e9))
            best = (None, math.inf)
            for tile in range(len(ops.GEMM_SM90_TILES[dtype])):
                if not _compiled(tile, call):
                    skipped.add(f"{str(dtype)[6:]} t{tile}")
                    continue
                tile_best = math.inf
                for along_m, swizzle in itertools.product((0, 1), ops.GEMM_SM90_SWIZZLES):
                    config = (tile, along_m, swizzle)
                    ms = timed(config)
                    rows[dtype].append(Row(_config_name(dtype, config), tag, ms, base_name, base_ms, base_ms / ms,
                                           metric, flops / ms / 1e9))
                    tile_best = min(tile_best, ms)
                    if ms < best[1]:
                        best = (config, ms)
                per_tile[dtype].setdefault(tile, []).append(base_ms / tile_best)
            winners[dtype][tag] = (t_auto, best[0], best[1], base_ms)
        del p
        torch.cuda.empty_cache()

    # All rows first (write_results prints them), then the summaries, last, where they are easy to find.
    notes, summary = {}, []
    for dtype, name in ((torch.int8, "int8"), (FP8, "fp8")):
        lines = ["| shape | heuristics ms | best config | best ms | best / heuristics | best vs baseline |",
                 "|---|---|---|---|---|---|"]
        for tag, (t_auto, config, ms, base_ms) in winners[dtype].items():
            lines.append(f"| {tag} | {t_auto:.4f} | {_config_name(dtype, config)} | {ms:.4f} | {t_auto / ms:.3f}x | "
                         f"{base_ms / ms:.3f}x |")
        g_auto = math.exp(sum(math.log(b / t) for t, _, _, b in winners[dtype].values()) / len(winners[dtype]))
        g_best = math.exp(sum(math.log(b / ms) for _, _, ms, b in winners[dtype].values()) / len(winners[dtype]))
        tiles = ", ".join(f"t{t} {math.exp(sum(map(math.log, r)) / len(r)):.3f}x" for t, r in per_tile[dtype].items())
        summary.append(f"### winners {name} (geomean vs {SWEEP_BASELINE[dtype]}: heuristics {g_auto:.3f}x, best "
                       f"per shape {g_best:.3f}x)\n\n" + "\n".join(lines) + "\n\nper tile, with its best raster/"
                       f"swizzle at each shape, geomean vs {SWEEP_BASELINE[dtype]}: {tiles}\n")
        notes[f"geomean {name} heuristics"] = round(g_auto, 3)
        notes[f"geomean {name} best per shape"] = round(g_best, 3)
        notes[f"winners {name} [tile, raster_along_m, swizzle]"] = {tag: list(w[1]) for tag, w in winners[dtype].items()}
    if skipped:
        notes["not compiled (build with TD_GEMM_ALL_CONFIGS=1)"] = sorted(skipped)
        summary.append(f"not compiled in this build (build with TD_GEMM_ALL_CONFIGS=1): {sorted(skipped)}\n")
    all_rows = rows[torch.int8] + rows[FP8]
    md = write_results("gemm-sweep", all_rows, out_dir, notes).with_suffix(".md")
    md.write_text(md.read_text() + "\n" + "\n".join(summary))
    print("\n".join(summary), flush=True)
    return all_rows


if __name__ == "__main__":
    main(run, __doc__, {"--sweep": "time every compiled sm90 (tile, raster, swizzle) per shape instead (Hopper)"})
