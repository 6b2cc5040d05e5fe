"""Pluggable attention on Wan's native [B, N, H, D] layout.

`attention(q, k, v, kind=...)` is the single entry point the models call. Each kind is an
implementation registered by name; "sdpa" (torch's scaled_dot_product_attention) is always there,
the low-bit and sparse kinds register themselves when their kernels land. Inputs and output are
[B, N, H, D]; implementations take strided views, so no layout copy is made on the way in.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

AttentionImpl = Callable[..., torch.Tensor]

# Kinds whose output includes SLA's linear branch; they need the per-layer `proj_l` (ARCHITECTURE §4.3).
SLA_KINDS = ("sla", "sagesla")


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **opts) -> torch.Tensor:
    """Dense softmax(q k^T / sqrt(D)) v via torch SDPA on [B, H, N, D] views; returns a [B, N, H, D] view."""
    if opts:
        raise TypeError(f"attention kind 'sdpa' takes no options, got {sorted(opts)}")
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


# name -> implementation; None marks a kind whose kernels have not landed yet.
def _sage(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **opts) -> torch.Tensor:
    """INT8/FP8 SageAttention (turbodiffusion.nn.sage), imported on first use. float32 inputs (CPU
    pipelines) go through bf16, whose rounding is below the INT8/FP8 quantization's error."""
    from .sage import sage_attention_nhd

    if q.dtype == torch.float32:
        return sage_attention_nhd(q.bfloat16(), k.bfloat16(), v.bfloat16(), **opts).float()
    return sage_attention_nhd(q, k, v, **opts)


def _sagesla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **opts) -> torch.Tensor:
    """SageSLA (turbodiffusion.nn.sla): top-k block-sparse INT8/FP8 attention + SLA's linear branch."""
    from .sla import sagesla_attention_nhd

    return sagesla_attention_nhd(q, k, v, **opts)


def _sla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **opts) -> torch.Tensor:
    """SLA without quantization (turbodiffusion.nn.sla), for accuracy comparisons."""
    from .sla import sla_attention_nhd

    return sla_attention_nhd(q, k, v, **opts)


_KINDS: dict[str, Optional[AttentionImpl]] = {"sdpa": _sdpa, "sage": _sage, "sagesla": _sagesla, "sla": _sla}


def register_attention(kind: str, impl: Optional[AttentionImpl]) -> Optional[AttentionImpl]:
    """Register (or replace) the implementation of an attention kind: impl(q, k, v, **opts) -> [B, N, H, D].
    Returns the implementation it replaces (None if there was none), so a caller can put it back."""
    previous = _KINDS.get(kind)
    _KINDS[kind] = impl
    return previous


def attention_kinds() -> tuple[str, ...]:
    """Every known attention kind, available or not."""
    return tuple(_KINDS)


def check_attention_kind(kind: str) -> None:
    """Raise ValueError for an unknown kind and RuntimeError for a kind whose kernels have not landed."""
    if kind not in _KINDS:
        raise ValueError(f"attention kind: expected one of {attention_kinds()}, got {kind!r}")
    if _KINDS[kind] is None:
        raise RuntimeError(f"attention kind {kind!r}: its kernels have not landed yet in this build; "
                           f"use kind='sdpa'")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, kind: str = "sdpa", **opts) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v (or the kind's approximation of it) on q [B, Nq, H, D], k/v [B, Nk, H, D].

    Returns [B, Nq, H, D] (possibly a strided view). `opts` are the kind's own options (e.g. topk, proj_l).
    """
    check_attention_kind(kind)
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or (q.shape[0], q.shape[2:]) != (k.shape[0], k.shape[2:]):
        raise ValueError(f"attention: expected q [B, Nq, H, D] and k, v [B, Nk, H, D], got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    return _KINDS[kind](q, k, v, **opts)


class SLALinearBranch(nn.Module):
    """Parameters of SLA's linear-attention branch: `proj_l`, an fp32 Linear(D, D) shared by the heads.

    Zero-initialised (an untuned model adds nothing); released TurboWan checkpoints carry tuned values.
    """

    def __init__(self, head_dim: int, *, device=None):
        super().__init__()
        self.proj_l = nn.Linear(head_dim, head_dim, dtype=torch.float32, device=device)
        nn.init.zeros_(self.proj_l.weight)
        nn.init.zeros_(self.proj_l.bias)


class AttentionOp(nn.Module):
    """Self-attention operator of one layer: the kind, its options and (for SLA models) `local_attn.proj_l`.

    `sla_params=True` creates `local_attn` even for kinds that do not use it, so TurboWan checkpoints
    (which always carry proj_l) load strictly whatever the attention kind.
    """

    def __init__(self, kind: str, head_dim: int, *, sla_params: bool = False, opts: Optional[dict] = None,
                 device=None):
        super().__init__()
        check_attention_kind(kind)
        self.kind = kind
        self.opts = dict(opts or {})
        if sla_params or kind in SLA_KINDS:
            self.local_attn = SLALinearBranch(head_dim, device=device)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.kind in SLA_KINDS:
            return attention(q, k, v, kind=self.kind, proj_l=self.local_attn.proj_l, **self.opts)
        return attention(q, k, v, kind=self.kind, **self.opts)

    @property
    def query_block(self) -> int:
        """Query rows the kind quantizes or pools together (sage: one INT8 scale per 16 rows; sla, sagesla:
        the block map's query blocks of blkq rows; others: 1). Attention run on query chunks equals the
        unchunked attention when every chunk starts at a multiple of it."""
        if self.kind == "sage":
            from ..ops import ATTN_MMA_BLK_Q  # the rows sage_attention quantizes with one scale

            return ATTN_MMA_BLK_Q
        if self.kind in SLA_KINDS:
            from .sla import DEFAULT_BLKQ

            return int(self.opts.get("blkq", DEFAULT_BLKQ))
        return 1

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, opts={self.opts}"
