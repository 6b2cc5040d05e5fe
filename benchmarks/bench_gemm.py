"""W8A8 GEMM at the standard DiT shapes (benchmarks/metrics.py GEMM_SHAPES), against torch.matmul bf16,
torch._int_mm (INT8, no scales) and torch._scaled_mm FP8 row-wise (scales + bias), all in this process;
and Int8Linear from bf16 input (quantize kernel + GEMM) against nn.Linear bf16.

  python -m benchmarks.bench_gemm --out benchmarks/results

Targets (issue 3): INT8 >= 1.7x bf16 matmul and >= 1.4x _int_mm (geometric means), FP8 >= 1.0x
_scaled_mm, Int8Linear >= 1.35x nn.Linear.
"""
from __future__ import annotations


import torch

from turbodiffusion import ops
from turbodiffusion.nn.linear import Int8Linear

from .harness import geomean_ratio, main, Row, print_table, rotation_count, time_ms, write_results
from .metrics import GEMM_SHAPES, gemm_flops


def run(out_dir: str, shapes=GEMM_SHAPES) -> list[Row]:
    dev = "cuda"
    sm90 = torch.cuda.get_device_capability()[0] == 9
    groups: dict[str, list[Row]] = {}

    def add(group, name, tag, ms, base_name, base_ms, flops, metric):
        groups.setdefault(group, []).append(Row(name, tag, ms, base_name, base_ms, base_ms / ms, metric,
                                                flops / ms / 1e9))

    for m, k, n in shapes:
        tag = f"{m}x{k}x{n}"
        flops = gemm_flops(m, n, k)
        nsets = rotation_count(m * k + n * k + 2 * m * n)
        g = torch.Generator(device=dev).manual_seed(m + k + n)
        w16 = (torch.randn(n, k, device=dev, generator=g) * 0.02).to(torch.bfloat16)
        bias = (torch.randn(n, device=dev, generator=g) * 0.1).to(torch.bfloat16)
        xs16 = [torch.randn(m, k, device=dev, generator=g).to(torch.bfloat16) for _ in range(nsets)]
        wq, ws = ops.quantize_per_token_int8(w16)
        q = [ops.quantize_per_token_int8(x) for x in xs16]

        t_bf16 = time_ms(lambda x: torch.matmul(x, w16.T), [(x,) for x in xs16])
        t_lin = time_ms(lambda x: torch.nn.functional.linear(x, w16, bias), [(x,) for x in xs16])
        t_int_mm = time_ms(lambda a: torch._int_mm(a, wq.T), [(a,) for a, _ in q])
        t_ours = time_ms(lambda a, s: ops.w8a8_gemm(a, s, wq, ws, bias), q)
        t_mma = time_ms(lambda a, s: ops.w8a8_gemm(a, s, wq, ws, bias, backend="mma"), q)
        add("int8 vs bf16", "w8a8_gemm int8 (auto)", tag, t_ours, "torch.matmul bf16", t_bf16, flops, "TOPS")
        add("int8 vs _int_mm", "w8a8_gemm int8 (auto)", tag, t_ours, "torch._int_mm", t_int_mm, flops, "TOPS")
        add("int8 mma.sync vs bf16", "w8a8_gemm int8 (mma)", tag, t_mma, "torch.matmul bf16", t_bf16, flops, "TOPS")
        add("baselines", "torch._int_mm", tag, t_int_mm, "torch.matmul bf16", t_bf16, flops, "TOPS")

        lin = Int8Linear.from_linear(torch.nn.Linear(k, n, dtype=torch.bfloat16, device=dev))
        t_i8lin = time_ms(lambda x: lin(x), [(x,) for x in xs16])
        add("Int8Linear vs nn.Linear", "Int8Linear (bf16 in)", tag, t_i8lin, "nn.Linear bf16", t_lin, flops, "TOPS")
        del q, lin

        if sm90:
            fp8 = torch.float8_e4m3fn
            w8 = (w16.float() / (ws[:, None] * 127 / 448)).clamp(-448, 448).to(fp8)
            wsc = ws * 127 / 448
            f = []
            for x in xs16:
                amax = x.float().abs().amax(dim=1, keepdim=True)
                f.append(((x.float() * (448 / amax)).to(fp8), (amax / 448).squeeze(1).contiguous()))
            t_fp8 = time_ms(lambda a, s: ops.w8a8_gemm(a, s, w8, wsc, bias), f)
            t_scaled = time_ms(lambda a, s: torch._scaled_mm(a, w8.T, scale_a=s[:, None], scale_b=wsc[None, :],
                                                             bias=bias, out_dtype=torch.bfloat16), f)
            add("fp8 vs _scaled_mm", "w8a8_gemm fp8 (sm90)", tag, t_fp8, "torch._scaled_mm row-wise", t_scaled, flops,
                "TFLOPS")
            add("baselines", "torch._scaled_mm row-wise", tag, t_scaled, "torch.matmul bf16", t_bf16, flops, "TFLOPS")
            del f, w8
        del xs16, w16
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


if __name__ == "__main__":
    main(run, __doc__)
