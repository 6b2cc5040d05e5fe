"""The Wan DiT with TurboDiffusion's WanModel semantics (Wan2.1 T2V, Wan2.2 I2V experts).

Data flow of one forward, B batch, L video tokens, C = dim:
  x [B, in_dim, T, H, W] --patchify--> [B, L, in_dim*kt*kh*kw] --patch_embedding (Linear)--> [B, L, C]
  t [B] in [0, 1000] --sinusoid--> time_embedding --> e [B, C] --time_projection--> e0 [B, 6, C]
  context [B, Lc, text_dim] --text_embedding--> [B, Lc, C]
  blocks (AdaLN self-attention with 3-D RoPE, cross-attention, AdaLN FFN) --> head --> unpatchify.

Activations stay in Wan's native [B, L, H, D] layout between the projections and attention. The time
path, the modulation (AdaLN) and the head run in float32 (float64 for a float64 model), as in the
reference; the head's output, the velocity v, is returned in that dtype.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from ...nn.attention import AttentionOp, attention, check_attention_kind
from .config import WanConfig, get_config
from .layers import (LayerNorm, RMSNorm, check_linear_kind, gelu_tanh, linear_wide, make_linear, modulate,
                     time_sinusoid, wide_dtype)
from .rope import apply_rope, rope_angles, rope_cos_sin


def patchify(x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """[B, C, T, H, W] -> tokens [B, L, C*kt*kh*kw]; tokens in (t, h, w) order (w fastest), features (c, kt, kh, kw)."""
    b, c, t, h, w = x.shape
    kt, kh, kw = patch
    x = x.view(b, c, t // kt, kt, h // kh, kh, w // kw, kw)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, c * kt * kh * kw)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int]) -> torch.Tensor:
    """Head output [B, L, kt*kh*kw*C] (features (kt, kh, kw, c), c fastest) -> [B, C, T, H, W]."""
    b = tokens.shape[0]
    (gt, gh, gw), (kt, kh, kw) = grid, patch
    x = tokens.view(b, gt, gh, gw, kt, kh, kw, -1)
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, -1, gt * kt, gh * kh, gw * kw)


class _Attention(nn.Module):
    """The projections every Wan attention has: q, k, v, o Linears and q/k RMSNorm over the full width."""

    def __init__(self, cfg: WanConfig, *, linear: str, dtype, device):
        super().__init__()
        self.heads = (cfg.num_heads, cfg.head_dim)
        lin = dict(kind=linear, dtype=dtype, device=device)
        self.q, self.k, self.v, self.o = (make_linear(cfg.dim, cfg.dim, **lin) for _ in range(4))
        self.norm_q = RMSNorm(cfg.dim, cfg.eps, dtype=wide_dtype(dtype), device=device)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps, dtype=wide_dtype(dtype), device=device)


class WanSelfAttention(_Attention):
    """q, k normalised, then RoPE on both; attention of the configured kind (its op owns SLA's proj_l).

    `keys_values` and `attend` split the layer so a block can compute k, v for all tokens and then run
    the queries in chunks; `forward` is the two in one call.
    """

    def __init__(self, cfg: WanConfig, *, linear: str, attention_kind: str, attention_opts: dict,
                 sla_params: bool, dtype, device):
        super().__init__(cfg, linear=linear, dtype=dtype, device=device)
        self.attn_op = AttentionOp(attention_kind, cfg.head_dim, sla_params=sla_params, opts=attention_opts,
                                   device=device)

    def keys_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k (normalised, rotated) and v [B, L, H, D] of the tokens x [B, L, C] (cos, sin of those tokens)."""
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, self.heads), cos, sin)
        return k, self.v(x).unflatten(-1, self.heads)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> torch.Tensor:
        """Output [B, Lq, C] of the query tokens x [B, Lq, C] over all keys k and values v."""
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, self.heads), cos, sin)
        return self.o(self.attn_op(q, k, v).flatten(2))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return self.attend(x, *self.keys_values(x, cos, sin), cos, sin)


class WanCrossAttention(_Attention):
    """Attention of the video tokens to the text tokens: no mask (zero-padded rows are attended to), no RoPE.

    Always dense (sdpa): with 512 keys it is a small part of the work.
    """

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k (normalised) and v [B, Lc, H, D] of the text context [B, Lc, C]."""
        return self.norm_k(self.k(context)).unflatten(-1, self.heads), self.v(context).unflatten(-1, self.heads)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self.norm_q(self.q(x)).unflatten(-1, self.heads)
        return self.o(attention(q, k, v, kind="sdpa").flatten(2))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.attend(x, *self.keys_values(context))


def token_spans(length: int, chunk: Optional[int]) -> list[tuple[int, int]]:
    """[(start, end), ...] covering range(length) in pieces of `chunk` tokens (one piece for None)."""
    if chunk is None:
        return [(0, length)]
    return [(s, min(length, s + chunk)) for s in range(0, length, chunk)]


class WanBlock(nn.Module):
    """x += gate_sa * SelfAttn(AdaLN(x)); x += CrossAttn(norm3(x), context); x += gate_ffn * FFN(AdaLN(x)).

    Modulation order in `modulation + e0` [B, 6, C]: shift, scale, gate (self-attention), then shift,
    scale, gate (FFN). The cross-attention has no gate; norm3 is an affine LayerNorm.

    Everything but the self-attention's keys and values is local to a token, so `forward(..., chunk=n)`
    computes k, v of all tokens, then the self-attention n queries at a time, frees k, v, then runs the
    cross-attention and FFN n tokens at a time in place on the output: activation memory is x, the output
    (and k, v during the self-attention) plus one chunk's temporaries (the FFN hidden layer, the float32
    AdaLN) instead of those temporaries for the whole sequence. The result is the same: n is rounded down
    to a multiple of the attention kind's query block (AttentionOp.query_block: 16 for sage, blkq for
    sla/sagesla), so chunk boundaries never split a query scale block or a block-map query block.
    """

    def __init__(self, cfg: WanConfig, *, linear: str, attention_kind: str, attention_opts: dict,
                 sla_params: bool, dtype, device):
        super().__init__()
        self.eps = cfg.eps
        self.modulation = nn.Parameter(torch.zeros(1, 6, cfg.dim, dtype=dtype, device=device))
        self.self_attn = WanSelfAttention(cfg, linear=linear, attention_kind=attention_kind,
                                          attention_opts=attention_opts, sla_params=sla_params, dtype=dtype,
                                          device=device)
        self.norm3 = LayerNorm(cfg.dim, cfg.eps, dtype=wide_dtype(dtype), device=device)
        self.cross_attn = WanCrossAttention(cfg, linear=linear, dtype=dtype, device=device)
        lin = dict(kind=linear, dtype=dtype, device=device)
        self.ffn = nn.Sequential(make_linear(cfg.dim, cfg.ffn_dim, **lin), gelu_tanh(),
                                 make_linear(cfg.ffn_dim, cfg.dim, **lin))

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
        # [B, 6, C] in the wide dtype -> six [B, 1, C] chunks
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation + e0).unsqueeze(2).unbind(1)
        if chunk is not None:
            qb = self.self_attn.attn_op.query_block
            chunk = max(qb, chunk // qb * qb)
        spans = token_spans(x.shape[1], chunk)
        k = x.new_empty(*x.shape[:2], *self.self_attn.heads)
        v = torch.empty_like(k)
        for s, e in spans:
            k[:, s:e], v[:, s:e] = self.self_attn.keys_values(
                modulate(x[:, s:e], shift_sa, scale_sa, self.eps).to(x.dtype), cos[s:e], sin[s:e])
        out = torch.empty_like(x)
        for s, e in spans:  # self-attention of each query chunk over all keys
            xc = x[:, s:e]
            y = self.self_attn.attend(modulate(xc, shift_sa, scale_sa, self.eps).to(x.dtype), k, v, cos[s:e],
                                      sin[s:e])
            out[:, s:e] = xc + y * gate_sa.to(x.dtype)
        del k, v, y
        text_kv = self.cross_attn.keys_values(context)
        for s, e in spans:  # the token-local rest, in place on the output
            oc = out[:, s:e]
            oc += self.cross_attn.attend(self.norm3(oc), *text_kv)
            oc += self.ffn(modulate(oc, shift_ff, scale_ff, self.eps).to(x.dtype)) * gate_ff.to(x.dtype)
        return out


class WanHead(nn.Module):
    """AdaLN with (shift, scale) = modulation + e, then Linear(C, kt*kh*kw*out_dim), all in the wide dtype."""

    def __init__(self, cfg: WanConfig, *, dtype, device):
        super().__init__()
        self.eps = cfg.eps
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim, dtype=dtype, device=device))
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation + e.unsqueeze(1)).unsqueeze(2).unbind(1)
        return linear_wide(self.head, modulate(x, shift, scale, self.eps))


class WanDiT(nn.Module):
    """Wan diffusion transformer. forward(x, t, context[, y]) -> velocity v [B, out_dim, T, H, W].

    Args:
        config: the architecture.
        dtype: parameter dtype of the linears and modulations (norm weights are float32, or float64 for a
            float64 model; SLA's proj_l is float32).
        attention: self-attention kind (turbodiffusion.nn.attention); attention_opts are its options.
        linear: kind of the block linears ("bf16" = plain nn.Linear in `dtype`).
        sla_params: give every self-attention SLA's `attn_op.local_attn.proj_l` (TurboWan checkpoints carry it).
        token_chunk: run the token-local parts of each block and the head this many tokens at a time
            (None: all at once). Bounds activation memory at long sequences (docs/wan.md, "Memory"); a
            plain attribute, may be changed between calls.
    """

    def __init__(self, config: WanConfig, *, dtype: torch.dtype = torch.bfloat16, device=None,
                 attention: str = "sdpa", attention_opts: Optional[dict] = None, linear: str = "bf16",
                 sla_params: bool = False, token_chunk: Optional[int] = None):
        super().__init__()
        check_attention_kind(attention)
        if token_chunk is not None and token_chunk < 1:
            raise ValueError(f"token_chunk: expected None or a positive number of tokens, got {token_chunk}")
        self.token_chunk = token_chunk
        check_linear_kind(linear)
        self.config = config
        cfg = config
        self.patch_embedding = nn.Linear(cfg.patch_features, cfg.dim, dtype=dtype, device=device)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim, dtype=dtype, device=device),
                                            gelu_tanh(), nn.Linear(cfg.dim, cfg.dim, dtype=dtype, device=device))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim, dtype=dtype, device=device),
                                            nn.SiLU(), nn.Linear(cfg.dim, cfg.dim, dtype=dtype, device=device))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim, dtype=dtype, device=device))
        self.blocks = nn.ModuleList(
            WanBlock(cfg, linear=linear, attention_kind=attention, attention_opts=dict(attention_opts or {}),
                     sla_params=sla_params, dtype=dtype, device=device)
            for _ in range(cfg.num_layers))
        self.head = WanHead(cfg, dtype=dtype, device=device)

    @classmethod
    def tiny(cls, model_type: str = "t2v", *, seed: int = 0, dtype: torch.dtype = torch.float32, device=None,
             **options) -> "WanDiT":
        """The tiny config (the goldens') with seeded random weights, for tests and file-free runs.

        Draws like the golden's init: Linear weights N(0, 1/fan_in), biases N(0, 0.1^2), modulations
        N(0, 0.2^2), norm scales 1 + N(0, 0.2^2); SLA's proj_l stays zero (an untuned model).
        """
        model = cls(get_config(f"tiny-{model_type}"), dtype=dtype, device=device, **options)
        norm_scales = {id(m.weight) for m in model.modules() if isinstance(m, (RMSNorm, LayerNorm))}
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".proj_l." in name:
                    continue
                z = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                if id(p) in norm_scales:
                    z = 1 + 0.2 * z
                elif name.endswith("modulation"):
                    z = 0.2 * z
                elif name.endswith("bias"):
                    z = 0.1 * z
                else:
                    z = z / math.sqrt(p.shape[1])
                p.copy_(z)
        return model.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    # -- the stages of forward, public so tests can check each against the reference's intermediates --
    def embed_time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t [B] -> (e [B, C], e0 [B, 6, C]) in the wide dtype."""
        wide = wide_dtype(self.dtype)
        h = time_sinusoid(t, self.config.freq_dim).to(wide)
        e = linear_wide(self.time_embedding[2], self.time_embedding[1](linear_wide(self.time_embedding[0], h)))
        e0 = linear_wide(self.time_projection[1], self.time_projection[0](e))
        return e, e0.unflatten(1, (6, self.config.dim))

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """context [B, Lc, text_dim] -> [B, Lc, C] in the model dtype."""
        return self.text_embedding(context.to(self.dtype))

    def rope(self, grid: tuple[int, int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [L, 1, head_dim/2] of the patch grid, in the dtype RoPE is applied in."""
        return rope_cos_sin(rope_angles(grid, self.config.head_dim, device=device), wide_dtype(self.dtype))

    def _network_input(self, x: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        if cfg.model_type == "i2v":
            if y is None:
                raise ValueError(f"y: an i2v model needs the {cfg.in_dim - cfg.out_dim}-channel conditioning y, "
                                 f"got None")
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        elif y is not None:
            raise ValueError("y: a t2v model takes no conditioning y, got a tensor")
        if x.dim() != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"x (with y): expected [B, {cfg.in_dim}, T, H, W], got {tuple(x.shape)}")
        if any(s % p for s, p in zip(x.shape[2:], cfg.patch_size)):
            raise ValueError(f"x: T, H, W must be multiples of the patch size {cfg.patch_size}, "
                             f"got {tuple(x.shape[2:])}")
        return x

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Velocity v [B, out_dim, T, H, W] (wide dtype) for the latent x [B, 16, T, H, W] at flow time t * 1000.

        t: [B], [B, 1] or a scalar, in [0, 1000]; context: [B, Lc, text_dim] (no mask: zero rows count);
        y: I2V only, [B, 20, T, H, W] (4 mask channels, then 16 latent channels).
        """
        cfg = self.config
        x = self._network_input(x, y)
        b = x.shape[0]
        grid = tuple(s // p for s, p in zip(x.shape[2:], cfg.patch_size))
        tokens = self.patch_embedding(patchify(x.to(self.dtype), cfg.patch_size))
        e, e0 = self.embed_time(t.reshape(-1).expand(b))
        ctx = self.embed_text(context)
        cos, sin = self.rope(grid, x.device)
        for block in self.blocks:
            tokens = block(tokens, e0, ctx, cos, sin, chunk=self.token_chunk)
        out = torch.cat([self.head(tokens[:, a:b], e) for a, b in token_spans(tokens.shape[1], self.token_chunk)], 1)
        return unpatchify(out, grid, cfg.patch_size)
