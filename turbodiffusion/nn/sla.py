"""Sparse-Linear Attention kinds of turbodiffusion.nn.attention (ARCHITECTURE §4.3, docs/sla.md).

"sagesla": ops.sage_sla, block-sparse INT8/FP8 attention over the top-k key blocks plus SLA's linear
branch (proj_l) fused in the kernel's epilogue. "sla": ops.sla, the same semantics without quantization
(the sparse branch in bf16 by flex_attention on CUDA, masked SDPA on CPU; fp32 linear branch), for
accuracy comparisons. Both take Wan's [B, N, H, D] and the layer's `proj_l` (nn.Linear(D, D), float32,
from attn_op.local_attn; TurboWan checkpoints carry it).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import ops
from .sage import check_sage_supported

# Block sizes (query x key) of both kinds; docs/sla.md (accuracy study) gives the reasons.
DEFAULT_BLKQ = 64
DEFAULT_BLKK = 64


def _run(fn, q, k, v, proj_l: nn.Linear, topk: float, blkq: int, blkk: int) -> torch.Tensor:
    if not isinstance(proj_l, nn.Linear):
        raise TypeError(f"proj_l: expected the layer's nn.Linear(D, D), got {type(proj_l).__name__}")
    w, b = proj_l.weight.detach(), proj_l.bias.detach()
    if w.dtype != torch.float32 or w.device != q.device:
        w, b = w.to(device=q.device, dtype=torch.float32), b.to(device=q.device, dtype=torch.float32)
    # float32 inputs (CPU pipelines) go through bf16, whose rounding is below the kernels' own error.
    x = (q, k, v) if q.dtype != torch.float32 else (q.bfloat16(), k.bfloat16(), v.bfloat16())
    out = fn(*x, w.contiguous(), b.contiguous(), topk, blkq=blkq, blkk=blkk, layout="NHD")
    return out.to(q.dtype)


def sagesla_attention_nhd(q, k, v, *, proj_l: nn.Linear, topk: float, blkq: int = DEFAULT_BLKQ,
                          blkk: int = DEFAULT_BLKK) -> torch.Tensor:
    """The "sagesla" kind: [B, N, H, D] in and out (CUDA: the sparse sm90 kernel on Hopper, else the sparse
    mma.sync kernel; CPU: the emulation)."""
    check_sage_supported(q.device, q.shape[-1])
    return _run(ops.sage_sla, q, k, v, proj_l, topk, blkq, blkk)


def sla_attention_nhd(q, k, v, *, proj_l: nn.Linear, topk: float, blkq: int = DEFAULT_BLKQ,
                      blkk: int = DEFAULT_BLKK) -> torch.Tensor:
    """The "sla" kind: [B, N, H, D] in and out, SLA without quantization."""
    return _run(ops.sla, q, k, v, proj_l, topk, blkq, blkk)
