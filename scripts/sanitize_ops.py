"""Calls every CUDA op once on small, odd shapes; run under `compute-sanitizer --tool memcheck`
(scripts/gpu_run.sh) to catch out-of-bounds or misaligned accesses the value tests cannot see."""
import torch

from turbodiffusion import ops


def main() -> None:
    torch.manual_seed(0)
    for d in (64, 128):
        for layout in ("NHD", "HND"):
            shape = (2, 77, 3, d) if layout == "NHD" else (2, 3, 77, d)
            q = torch.randn(shape, dtype=torch.bfloat16, device="cuda")
            k = torch.randn(shape, dtype=torch.float16, device="cuda")
            ops.quantize_qk_int8(q, q, layout=layout, blk_q=16, blk_k=128)
            ops.quantize_qk_int8(k, k, layout=layout, blk_q=128, blk_k=32)
            ops.quantize_v_fp8(q, layout=layout, pad_to=16)
            ops.quantize_v_fp8(k, layout=layout, pad_to=128)
    for shape in ((3, 77), (5, 1536), (2, 20000), (4, 13824)):
        ops.quantize_per_token_int8(torch.randn(shape, dtype=torch.bfloat16, device="cuda"))
    sm90 = torch.cuda.get_device_capability() == (9, 0)
    for d in (64, 128):  # sage attention (quantization + both kernels): partial tiles, Nq != Nk
        for layout, (nq, nk) in (("NHD", (77, 130)), ("HND", (17, 1))):
            shp = (lambda n: (2, n, 3, d)) if layout == "NHD" else (lambda n: (2, 3, n, d))
            q = torch.randn(shp(nq), dtype=torch.bfloat16, device="cuda")
            kv = torch.randn(shp(nk), dtype=torch.bfloat16, device="cuda")
            for backend in ("mma", "sm90") if sm90 else ("mma",):
                ops.sage_attention(q, kv, kv, layout=layout, return_lse=True, backend=backend)
                ops.sage_attention(q.half(), kv.half(), kv.half(), layout=layout, backend=backend)
    for d in (64, 128):  # SLA: block map, linear state, sparse kernel (empty rows, partial blocks, linear epilogue)
        for layout, (nq, nk), (blkq, blkk) in (("NHD", (77, 130), (64, 64)), ("HND", (200, 1000), (128, 64)),
                                               ("NHD", (65, 1), (64, 128)), ("HND", (300, 700), (128, 128))):
            shp = (lambda n: (2, n, 3, d)) if layout == "NHD" else (lambda n: (2, 3, n, d))
            q = torch.randn(shp(nq), dtype=torch.bfloat16, device="cuda")
            kv = torch.randn(shp(nk), dtype=torch.bfloat16, device="cuda")
            w = torch.randn(d, d, device="cuda")
            ops.sla_block_map(q, kv, topk=0.3, blkq=blkq, blkk=blkk, layout=layout)
            ops.sla_block_map(q.half(), kv.half(), topk=1.0, blkq=17, blkk=33, layout=layout)
            ops.sla_block_map_quantize_qk(q.half(), kv.half(), topk=0.2, blkq=32 if d == 128 else 256, blkk=33,
                                          layout=layout, blk_q=32, blk_k=16)  # q's means from the Q tiles
            for backend in ("mma", "sm90") if sm90 else ("mma",):
                ops.sage_sla(q, kv, kv, w, torch.randn(d, device="cuda"), 0.5, blkq=blkq, blkk=blkk, layout=layout,
                             return_lse=True, backend=backend)
            ops.sage_sla(q.half(), kv.half(), kv.half(), w, torch.randn(d, device="cuda"), 0.0, layout=layout)
        long_k = torch.randn((1, 70000, 1, d), dtype=torch.bfloat16, device="cuda")  # two pooled-k buffers
        ops.sla_block_map(torch.randn((1, 200, 1, d), dtype=torch.bfloat16, device="cuda"), long_k, topk=0.1)
    for backend in ("auto", "mma"):  # W8A8 GEMM: odd M, N and K multiples of 8 and 16 only
        for out_dtype in (torch.bfloat16, torch.float16):
            a = torch.randint(-128, 128, (77, 48), dtype=torch.int8, device="cuda")
            w = torch.randint(-128, 128, (40, 48), dtype=torch.int8, device="cuda")
            bias = torch.randn(40, dtype=out_dtype, device="cuda")
            ops.w8a8_gemm(a, torch.rand(77, device="cuda"), w, torch.rand(40, device="cuda"), bias,
                          out_dtype=out_dtype, backend=backend)
    torch.cuda.synchronize()
    print("sanitize_ops: every op ran")


if __name__ == "__main__":
    main()
