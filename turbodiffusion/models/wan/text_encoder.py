"""umT5 text encoder (the encoder half of umT5-XXL), as Wan and TurboDiffusion use it.

T5 conventions that differ from most transformers (golden README §5):
- RMSNorm without mean subtraction or bias, eps 1e-6, statistics in at least float32;
- attention logits are NOT scaled by 1/sqrt(head_dim) (T5 folds the scale into its weights);
- each block has its own relative-position bias table (umT5: no sharing across layers);
- FFN `fc2(fc1(x) * gelu_tanh(gate(x)))`, no biases anywhere.

Module and parameter names equal the reference's, so `models_t5_umt5-xxl-enc-bf16.pth` loads with a
strict key match.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .tokenizer import ByteTokenizer, Tokenizer, UMT5Tokenizer, tokenize_batch

CHECKPOINT_NAME = "models_t5_umt5-xxl-enc-bf16.pth"
CHECKPOINT_SOURCE = "the Wan2.1 release (every Wan-AI/Wan2.1-* model folder ships it; so does Wan2.2-A14B)"


@dataclasses.dataclass(frozen=True)
class UMT5Config:
    vocab_size: int
    dim: int
    dim_attn: int
    dim_ffn: int
    num_heads: int
    num_layers: int
    num_buckets: int = 32
    max_dist: int = 128
    eps: float = 1e-6


TINY = UMT5Config(vocab_size=256, dim=64, dim_attn=64, dim_ffn=160, num_heads=4, num_layers=2)
XXL = UMT5Config(vocab_size=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24)


def relative_position_buckets(length: int, num_buckets: int, max_dist: int,
                              device: Optional[torch.device] = None) -> torch.Tensor:
    """Bidirectional T5 buckets, int64 [L, L], for query i and key j (rel = j - i).

    Half the buckets per direction; the first half of those are exact distances, the rest are
    log-spaced up to max_dist and saturate beyond. The log is taken in float32 on purpose, as in the
    reference: float64 would move some boundary distances into the neighbouring bucket.
    """
    pos = torch.arange(length, device=device)
    rel = pos[None, :] - pos[:, None]
    per_side = num_buckets // 2
    max_exact = per_side // 2
    side = (rel > 0).long() * per_side
    dist = rel.abs()
    log_scaled = torch.log(dist.float() / max_exact) / math.log(max_dist / max_exact) * (per_side - max_exact)
    far = (max_exact + log_scaled.long()).clamp(max=per_side - 1)  # .long() truncates like the reference
    return side + torch.where(dist < max_exact, dist, far)


class RMSNorm(nn.Module):
    """T5LayerNorm: x * rsqrt(mean(x^2) + eps) * weight, the statistics in float32 (or float64)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x.to(self.weight.dtype)


class RelativePositionBias(nn.Module):
    """Per-block table: bucket -> one bias per head."""

    def __init__(self, num_buckets: int, num_heads: int):
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)  # [1, heads, Lq, Lk]


class Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim]; bias [B, heads, L, L] (position bias, finfo.min on masked keys)."""
        b, n = x.shape[:2]
        q, k, v = (proj(x).view(b, n, self.num_heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)  # T5: no 1/sqrt(d)
        return self.o(y.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class Block(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.eps)
        self.attn = Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = RMSNorm(cfg.dim, cfg.eps)
        self.ffn = FeedForward(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = RelativePositionBias(cfg.num_buckets, cfg.num_heads)

    def forward(self, x: torch.Tensor, buckets: torch.Tensor, key_masked: torch.Tensor) -> torch.Tensor:
        # The reference replaces (not adds to) the position bias of masked keys with finfo.min.
        bias = self.pos_embedding(buckets).to(x.dtype).masked_fill(key_masked, torch.finfo(x.dtype).min)
        x = x + self.attn(self.norm1(x), bias)
        return x + self.ffn(self.norm2(x))


class UMT5Encoder(nn.Module):
    """umT5 encoder with its tokenizer. `forward` maps token ids to hidden states; `encode` maps
    prompts to the DiT's text context."""

    def __init__(self, cfg: UMT5Config = XXL, tokenizer: Optional[Tokenizer] = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.eps)

    @classmethod
    def tiny(cls, seed: int = 0) -> "UMT5Encoder":
        """The golden's tiny config with deterministic seeded random weights and the byte tokenizer."""
        model = cls(TINY, ByteTokenizer())
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                noise = torch.randn(p.shape, generator=gen)
                if "norm" in name:
                    p.copy_(1 + 0.2 * noise)
                elif "embedding" in name:  # token and position tables: N(0, 1)
                    p.copy_(noise)
                else:  # Linear: N(0, 1/fan_in)
                    p.copy_(noise / p.shape[1] ** 0.5)
        return model.eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path, tokenizer_dir, dtype: torch.dtype = torch.bfloat16,
                        device="cpu") -> "UMT5Encoder":
        """Load `models_t5_umt5-xxl-enc-bf16.pth` (strict key and shape match) and the tokenizer folder.

        The model is built on the meta device and takes the memory-mapped tensors as its parameters:
        the 11 GB file is not copied in RAM before the dtype/device cast.
        """
        from .checkpoint import load_flat_checkpoint  # lazy: checkpoint imports the DiT

        # The tokenizer folder is checked inside build(), after the file check and before the large read.
        return load_flat_checkpoint(lambda: cls(XXL, UMT5Tokenizer(tokenizer_dir)), path, what="umT5-XXL encoder",
                                    file_name=CHECKPOINT_NAME, source=CHECKPOINT_SOURCE, dtype=dtype, device=device)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask int64 [B, L] (mask 1 on real tokens) -> hidden states [B, L, dim] at every position
        (padded positions hold defined but meaningless values)."""
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise ValueError(f"ids, mask: expected two [B, L] tensors, got {tuple(ids.shape)} and {tuple(mask.shape)}")
        x = self.token_embedding(ids)
        buckets = relative_position_buckets(ids.shape[1], self.cfg.num_buckets, self.cfg.max_dist, ids.device)
        key_masked = (mask == 0)[:, None, None, :]
        for block in self.blocks:
            x = block(x, buckets, key_masked)
        return self.norm(x)

    def encode(self, prompts: Sequence[str], max_len: int = 512) -> torch.Tensor:
        """Prompts -> the DiT's context [B, max_len, dim]: each prompt's rows (EOS included), then zeros.

        Prompts longer than max_len tokens are truncated with a logged warning.
        """
        if self.tokenizer is None:
            raise ValueError("tokenizer: this UMT5Encoder was built without one; use tiny() or from_checkpoint()")
        ids, mask = tokenize_batch(self.tokenizer, prompts, max_len)
        device = self.token_embedding.weight.device
        return self.context(ids.to(device), mask.to(device))

    @torch.no_grad()
    def context(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder output with the rows past each prompt's length set to zero: what the DiT receives
        (it attends to all rows, so these must be exact zeros)."""
        return self(ids, mask).masked_fill(mask[..., None] == 0, 0.0)
