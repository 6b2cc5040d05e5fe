"""SageSLA (top-k 0.1) at the Wan shapes, each stage timed on its own and the whole call, against dense
torch SDPA (cuDNN backend, bf16) in the same process: block map (sla_block_map), linear branch (sla_linear_state:
one pass over k and v plus the proj_l fold, with the key-block sums as sage_sla runs it), the block map and the
Q/K quantizer from those sums as sage_sla runs them (sla_block_map_quantize_qk: one pass over q, none over k),
quantization (quantize_qk_int8 + quantize_v_fp8), sparse attention (the block-sparse kernel with the linear
epilogue: sm90 on Hopper at every block size, the default blocks also on the mma.sync kernel for comparison),
and the total (ops.sage_sla, wall time on the calling stream: V's quantizer runs on a side stream beside the
block map and the Q/K quantizer, so the stages add up to more than the total). Effective TOPS count the
dense-equivalent 4 B H N^2 D; the sparse kernel's row also gives the TOPS of the work it actually does
(kept / Mk of it). Dense SageAttention (same kernel,
dense) is timed too, for the "x of 10% dense" comparison. The totals (cuDNN, dense sage, sage_sla at every block
size and on the mma.sync kernel) are timed in interleaved rounds (harness.time_interleaved); the stages apart.

  python -m benchmarks.bench_sla --out benchmarks/results
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from turbodiffusion import ops

from .harness import Row, main, print_table, rotation_count, time_interleaved, time_ms, write_results
from .metrics import attention_flops

SHAPES = [("wan1.3b-480p", 1, 12, 32760, 128), ("wan14b-720p", 1, 40, 75600, 128)]
TOPK = 0.1
BLOCKS = [(64, 64), (128, 64), (64, 128), (128, 128)]  # (blkq, blkk); 1st and 3rd timed stage by stage
LOG2E = 1.4426950408889634


def _cudnn(q, k, v):
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))


def run(out_dir: str) -> list[Row]:
    rows = []
    notes = {"topk": TOPK, "kernels": "block-sparse INT8 QK + E4M3 PV with the SLA linear epilogue: sm90 wgmma on sm_90 "
             "(128-key tiles of two 64-key walk tiles at every blkk; ops.attention_int8_fp8_sparse backend auto), "
             "else mma.sync"}
    for tag, b, h, n, d in SHAPES:
        flops = attention_flops(b, h, n, n, d)
        reps = 10 if n > 50000 else 20
        sets = [tuple(torch.randn(b, n, h, d, dtype=torch.bfloat16, device="cuda") for _ in range(3))
                for _ in range(min(rotation_count(3 * b * n * h * d * 2), 3))]
        w = torch.randn(d, d, device="cuda") / math.sqrt(d)
        bias = 0.1 * torch.randn(d, device="cuda")
        # The totals in interleaved rounds (harness.time_interleaved): every candidate sees the card in the same
        # thermal and power state as cuDNN.
        cands = {"cudnn": (_cudnn, sets), "dense": (lambda q, k, v: ops.sage_attention(q, k, v), sets)}
        for blkq, blkk in BLOCKS:
            cands[f"{blkq}x{blkk}"] = (lambda q, k, v, blkq=blkq, blkk=blkk: ops.sage_sla(
                q, k, v, w, bias, TOPK, blkq=blkq, blkk=blkk), sets)
        mq, mk = BLOCKS[0]  # the default blocks on the mma.sync kernel, for comparison
        cands["mma"] = (lambda q, k, v: ops.sage_sla(q, k, v, w, bias, TOPK, blkq=mq, blkk=mk, backend="mma"), sets)
        ms = time_interleaved(cands, rounds=3, warmup=3, reps=reps)
        base, dense = ms["cudnn"], ms["dense"]
        base_name = "SDPA cuDNN bf16 (dense)"
        rows.append(Row(base_name, tag, base, base_name, base, 1.0, "TFLOPS", flops / base / 1e9))
        rows.append(Row("sage dense, best kernel (incl. quant)", tag, dense, base_name, base, base / dense, "TOPS",
                        flops / dense / 1e9))
        for blkq, blkk in BLOCKS:
            t = ms[f"{blkq}x{blkk}"]
            rows.append(Row(f"sage_sla total {blkq}x{blkk} ({t / (0.1 * dense):.2f}x of 10% dense sage)", tag, t,
                            base_name, base, base / t, "eff. TOPS", flops / t / 1e9))
        rows.append(Row(f"sage_sla total {mq}x{mk}, mma.sync kernel", tag, ms["mma"], base_name, base,
                        base / ms["mma"], "eff. TOPS", flops / ms["mma"] / 1e9))
        # Stage by stage on the first input set: the default blocks and 64x128 (TurboDiffusion's Hopper blocks).
        q, k, v = sets[0]
        for blkq, blkk in (BLOCKS[0], BLOCKS[2]):
            sm = d ** -0.5

            def stage(name, fn):
                t = time_ms(fn, [()], warmup=3, reps=reps)
                rows.append(Row(name, tag, t, base_name, base, base / t, "% of total", 100 * t / total))

            total = time_ms(lambda: ops.sage_sla(q, k, v, w, bias, TOPK, blkq=blkq, blkk=blkk), [()], warmup=3,
                            reps=reps)
            stage(f"  block map {blkq}x{blkk}", lambda: ops.sla_block_map(q, k, topk=TOPK, blkq=blkq, blkk=blkk))
            lut, count, km = ops.sla_block_map(q, k, topk=TOPK, blkq=blkq, blkk=blkk, return_k_mean=True)
            lin, v_amax, k_sums = ops.sla_linear_state(k, v, w, return_v_amax=True, key_block=blkk)
            # (as in sage_sla: the key-block sums and v's amax come from the linear branch's pass, k's mean from
            # the block map, so the map needs no pass over k and both quantizations are one pass)
            stage(f"  {blkq}x{blkk}: linear branch + key-block sums (H, z, proj_l fold; one pass over k, v)",
                  lambda: ops.sla_linear_state(k, v, w, return_v_amax=True, key_block=blkk))
            stage(f"  {blkq}x{blkk}: block map + Q/K quantization (one op from the key sums, as in sage_sla)",
                  lambda: ops.sla_block_map_quantize_qk(q, k, topk=TOPK, blkq=blkq, blkk=blkk, blk_q=16, blk_k=16,
                                                        q_scale_factor=sm * LOG2E, k_block_sums=k_sums))
            stage(f"  {blkq}x{blkk}: quantization (q, k int8; v fp8)", lambda: (
                ops.quantize_qk_int8(q, k, blk_q=16, blk_k=16, q_scale_factor=sm * LOG2E, k_mean=km),
                ops.quantize_v_fp8(v, pad_to=64, v_amax=v_amax)))
            qargs = (q, *ops.quantize_qk_int8(q, k, blk_q=16, blk_k=16, q_scale_factor=sm * LOG2E, k_mean=km),
                     *ops.quantize_v_fp8(v, pad_to=64, v_amax=v_amax))
            kept_frac = lut.shape[-1] / -(-n // blkk)
            for name, extra in ((f"  {blkq}x{blkk}: sparse attention + linear epilogue", (lin, bias)),
                                (f"  {blkq}x{blkk}: sparse attention alone", ())):
                t = time_ms(lambda: ops.attention_int8_fp8_sparse(*qargs, lut, count, *extra, sm_scale=sm, blkq=blkq,
                                                                      blkk=blkk), [()], warmup=3, reps=reps)
                rows.append(Row(f"{name} (actual {flops * kept_frac / t / 1e9:.0f} TOPS)", tag, t, base_name, base,
                                base / t, "eff. TOPS", flops / t / 1e9))
        del sets, qargs, lin, lut, count, km, v_amax, k_sums
        torch.cuda.empty_cache()
    print_table(rows, "sla")
    write_results("sla", rows, out_dir, notes)
    return rows


if __name__ == "__main__":
    main(run, __doc__)
