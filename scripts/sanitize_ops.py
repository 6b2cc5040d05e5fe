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
    torch.cuda.synchronize()
    print("sanitize_ops: every op ran")


if __name__ == "__main__":
    main()
