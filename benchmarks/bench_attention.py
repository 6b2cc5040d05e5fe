"""Dense attention at the standard shapes (benchmarks/metrics.py ATTENTION_SHAPES): sage_attention
(INT8 Q K^T + FP8 P V, quantization included) with the sm90 wgmma kernel and the mma.sync kernel,
each also alone on pre-quantized inputs, against torch SDPA with the cuDNN and flash backends, all in
this process and, per shape, in interleaved rounds (harness.time_interleaved). TOPS count the dense-equivalent 4 B H N^2 D; % of peak is
against the H100's 1979 TOPS dense INT8/FP8.

  python -m benchmarks.bench_attention --out benchmarks/results
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from turbodiffusion import ops

from .harness import main, Row, print_table, rotation_count, time_interleaved, write_results
from .metrics import ATTENTION_SHAPES, attention_flops

PEAK_TOPS = 1979.0  # H100 SXM dense INT8 / FP8


def _sdpa(backend):
    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return fn


KERNELS = {"sm90": "wgmma m64n128k32 INT8 QK + m64nDk32 E4M3 PV, TMA, warp-specialized (sm90_int8_fp8_attn)",
           "mma": "mma.sync m16n8k32 INT8 QK + E4M3 PV (mma_int8_fp8_attn)"}


def run(out_dir: str) -> list[Row]:
    rows = []
    notes = {"peak_tops": PEAK_TOPS, **{f"sage {k}": v for k, v in KERNELS.items()}}
    for tag, b, h, n, d in ATTENTION_SHAPES:
        flops = attention_flops(b, h, n, n, d)
        per_set = 3 * b * n * h * d * 2
        sets = [tuple(torch.randn(b, n, h, d, dtype=torch.bfloat16, device="cuda") for _ in range(3))
                for _ in range(min(rotation_count(per_set), 3 if n > 50000 else 6))]
        reps = 10 if n > 50000 else 20
        q, k, v = sets[0]
        sm = d ** -0.5
        q_i8, q_s, k_i8, k_s, km = ops.quantize_qk_int8(q, k, blk_q=16, blk_k=16, q_scale_factor=sm * 1.4426950408889634)
        v8, vs = ops.quantize_v_fp8(v, pad_to=64)
        qargs = (q, q_i8, q_s, k_i8, k_s, km, v8, vs)
        # Every candidate of the shape in interleaved rounds (harness.time_interleaved).
        cands = {}
        for name, backend in (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                _sdpa(backend)(*sets[0])
                cands[f"SDPA {name}"] = (_sdpa(backend), sets)
            except RuntimeError as e:  # a backend unavailable in this torch build
                print(f"SDPA {name} unavailable: {e}", flush=True)
        for kernel in KERNELS:
            cands[f"sage {kernel}"] = (lambda q, k, v, kernel=kernel: ops.sage_attention(q, k, v, layout="NHD",
                                                                                         backend=kernel), sets)
            # The attention kernel alone (inputs quantized once, outside the timing).
            cands[f"sage {kernel} kernel"] = (lambda kernel=kernel: ops.attention_int8_fp8(
                *qargs, layout="NHD", sm_scale=sm, backend=kernel), [()])
        ms = time_interleaved(cands, rounds=3, warmup=3, reps=reps)
        ref_name = "SDPA cuDNN" if "SDPA cuDNN" in ms else "SDPA flash"
        ref_ms = ms[ref_name]
        for name in ("SDPA cuDNN", "SDPA flash"):
            if name in ms:
                rows.append(Row(f"{name} bf16", tag, ms[name], f"{ref_name} bf16", ref_ms, ref_ms / ms[name], "TFLOPS",
                                flops / ms[name] / 1e9))
        for kernel in KERNELS:
            for key, what in ((f"sage {kernel}", "sage {} (incl. quant, {:.1f}% peak)"),
                              (f"sage {kernel} kernel", "sage {} kernel only ({:.1f}% peak)")):
                tops = flops / ms[key] / 1e9
                rows.append(Row(what.format(kernel, 100 * tops / PEAK_TOPS), tag, ms[key], f"{ref_name} bf16", ref_ms,
                                ref_ms / ms[key], "TOPS", tops))
        del sets, qargs
        torch.cuda.empty_cache()
    print_table(rows, "attention")
    write_results("attention", rows, out_dir, notes)
    return rows


if __name__ == "__main__":
    main(run, __doc__)
