"""SageAttention (INT8 Q K^T, FP8 P V) as a drop-in for torch's scaled_dot_product_attention.

`sage_sdpa(q, k, v)` takes SDPA's [B, H, N, D] ("HND", the default) or Wan's [B, N, H, D]
(`layout="NHD"`), bf16/fp16, head dim 64 or 128, any Nq and Nk; no mask, no causal, no dropout.
On CUDA it dispatches by compute capability: sm_90 (Hopper) runs the wgmma/TMA kernel, sm_89 (Ada)
and sm_120 (consumer Blackwell) the mma.sync kernel (FP8 mma.sync needs sm_89+); sm_80/86 would need an
FP16 PV path, which is not built, and get a clear error. CPU tensors run the float32 emulation (slow,
exact recipe).
"""
from __future__ import annotations

import torch

from .. import ops
from .._extension import HAS_KERNELS

HEAD_DIMS = (64, 128)
# (major, minor) of the GPUs the quantized attention kernels support (sm90 kernel on (9, 0), mma.sync on all).
SUPPORTED_ARCHS = {(8, 9): "sm_89 (Ada)", (9, 0): "sm_90 (Hopper)", (12, 0): "sm_120 (Blackwell)"}


def check_sage_supported(device: torch.device, head_dim: int) -> None:
    """Raise a ValueError for an unsupported head dim and a RuntimeError for an unsupported GPU."""
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"sage attention: head dim {head_dim} is not supported (supported: {HEAD_DIMS})")
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise RuntimeError(f"sage attention: expected a CUDA or CPU tensor, got device {device}")
    if not HAS_KERNELS:
        raise RuntimeError("sage attention: the CUDA extension turbodiffusion._C is not built")
    cap = torch.cuda.get_device_capability(device)
    if cap not in SUPPORTED_ARCHS:
        raise RuntimeError(f"sage attention: GPU {torch.cuda.get_device_name(device)} (sm_{cap[0]}{cap[1]}) is not "
                           f"supported; the INT8/FP8 attention kernels run on {', '.join(SUPPORTED_ARCHS.values())}. "
                           f"Use torch.nn.functional.scaled_dot_product_attention instead")


def sage_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask=None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: float | None = None, *, layout: str = "HND") -> torch.Tensor:
    """Drop-in for F.scaled_dot_product_attention (same argument names): softmax(scale q k^T) v with
    SageAttention2 numerics. Output has query's layout and dtype."""
    if attn_mask is not None or dropout_p != 0.0 or is_causal:
        raise NotImplementedError("sage attention: attn_mask, dropout_p and is_causal are not supported "
                                  f"(got attn_mask={'set' if attn_mask is not None else None}, "
                                  f"dropout_p={dropout_p}, is_causal={is_causal})")
    check_sage_supported(query.device, query.shape[-1])
    return ops.sage_attention(query, key, value, layout=layout, sm_scale=scale)


def sage_attention_nhd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **opts) -> torch.Tensor:
    """The "sage" kind of turbodiffusion.nn.attention: [B, N, H, D] in and out."""
    if opts:
        raise TypeError(f"attention kind 'sage' takes no options, got {sorted(opts)}")
    return sage_sdpa(q, k, v, layout="NHD")
