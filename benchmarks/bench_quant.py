"""Quantization kernels against the device-to-device copy bandwidth (the bound of a memory-bound
kernel), at the standard attention and GEMM-activation shapes. The kernels are timed as CUDA-graph
replays of the op call (the GPU's time: an eager call of a ~30 us op also measures the host's dispatch,
which the "eager call" rows show for the attention quantizers).

  python -m benchmarks.bench_quant --out benchmarks/results
"""
from __future__ import annotations


import torch

from turbodiffusion import ops

from .harness import main, Row, copy_bandwidth_gbs, graphed, print_table, replay, rotation_count, time_ms, write_results
from .metrics import ATTENTION_SHAPES, GEMM_SHAPES, quant_bytes


def _row(name, shape, ms, nbytes, copy_gbs):
    copy_ms = nbytes / copy_gbs / 1e6
    return Row(name, shape, ms, "d2d copy of the same bytes", copy_ms, copy_ms / ms, "GB/s", nbytes / ms / 1e6)


def run(out_dir: str) -> list[Row]:
    copy_gbs = copy_bandwidth_gbs()
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s (read + write)", flush=True)
    rows = []
    def kernel_ms(fn, sets):
        return time_ms(replay, graphed(fn, sets))

    for tag, b, h, n, d in ATTENTION_SHAPES:
        elems = b * h * n * d
        sets = [tuple(torch.randn(b, n, h, d, dtype=torch.bfloat16, device="cuda") for _ in range(2))
                for _ in range(rotation_count(4 * elems))]
        qk = lambda q, k: ops.quantize_qk_int8(q, k, blk_q=64, blk_k=128)
        v = lambda q, k: ops.quantize_v_fp8(k)
        rows.append(_row("quantize_qk_int8 (q and k)", tag, kernel_ms(qk, sets), 2 * quant_bytes(elems), copy_gbs))
        rows.append(_row("quantize_v_fp8", tag, kernel_ms(v, sets), quant_bytes(elems), copy_gbs))
        rows.append(_row("quantize_qk_int8 (q and k), eager call", tag, time_ms(qk, sets), 2 * quant_bytes(elems),
                         copy_gbs))
        rows.append(_row("quantize_v_fp8, eager call", tag, time_ms(v, sets), quant_bytes(elems), copy_gbs))
        # With the statistics given (as sage_sla has them from its block map and linear branch): one pass.
        sets = [(q, k, k.float().mean(1), k.float().abs().amax(1)) for q, k in sets]
        ms = kernel_ms(lambda q, k, km, va: ops.quantize_qk_int8(q, k, blk_q=64, blk_k=128, k_mean=km), sets)
        rows.append(_row("quantize_qk_int8 (q and k), k_mean given", tag, ms, 2 * quant_bytes(elems), copy_gbs))
        ms = kernel_ms(lambda q, k, km, va: ops.quantize_v_fp8(k, v_amax=va), sets)
        rows.append(_row("quantize_v_fp8, v_amax given", tag, ms, quant_bytes(elems), copy_gbs))
        del sets
    for m, k in sorted({(m, k) for m, k, _ in GEMM_SHAPES}):
        sets = [(torch.randn(m, k, dtype=torch.bfloat16, device="cuda"),)
                for _ in range(rotation_count(2 * m * k))]
        ms = kernel_ms(ops.quantize_per_token_int8, sets)
        rows.append(_row("quantize_per_token_int8", f"{m}x{k}", ms, quant_bytes(m * k), copy_gbs))
        del sets
    print_table(rows, "quant")
    write_results("quant", rows, out_dir, {"copy_gbs": round(copy_gbs, 1),
                                           "timing": "CUDA-graph replays of the op call, unless 'eager call'",
                                           "target": "ratio >= 0.80 (80% of copy bandwidth)"})
    return rows


if __name__ == "__main__":
    main(run, __doc__)
