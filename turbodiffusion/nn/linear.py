"""W8A8 linear layers on `turbodiffusion.ops.w8a8_gemm` (ARCHITECTURE §4.4, docs/gemm.md).

`Int8Linear`: weight INT8 with one float32 scale per output channel, activations INT8 per token
(`ops.quantize_per_token_int8`), y = (x_q @ w_q^T) * s_x[m] * s_w[n] + bias[n]. `Fp8Linear`: the same
with FP8 E4M3 codes (scale = amax / 448). Both:
- `from_linear(nn.Linear)`: per-channel quantization of the weight;
- `from_quant_state_dict({"int8_weight", "scale", "bias"})` (Int8Linear) / `load_state_dict` of a
  TurboDiffusion `-quant` layer: the 128 x 128 block scales are re-encoded to per-channel scales
  (`reference.block128_to_per_channel`; what that costs is measured in docs/gemm.md);
- `forward(x)` from bf16/fp16 x [..., K], and `forward_quantized(x_q, x_scale)` from codes a fused
  producer (norm + quantize) already made.
Buffers: `int8_weight` / `fp8_weight` [N, K], `scale` float32 [N], `bias` [N] in the model dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .. import ops
from ..reference.gemm import block128_to_per_channel

FP8_MAX = 448.0


class _W8A8Linear(nn.Module):
    CODE_DTYPE: torch.dtype
    WEIGHT_KEY: str

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype=None, device=None):
        super().__init__()
        if in_features % 16 or out_features % 8:
            raise ValueError(f"{type(self).__name__}: in_features must be a multiple of 16 and out_features of 8 "
                             f"(w8a8_gemm), got {in_features} and {out_features}")
        self.in_features, self.out_features = in_features, out_features
        dtype = dtype or torch.bfloat16
        self.register_buffer(self.WEIGHT_KEY, torch.zeros(out_features, in_features, dtype=self.CODE_DTYPE,
                                                          device=device))
        self.register_buffer("scale", torch.zeros(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @property
    def weight_codes(self) -> torch.Tensor:
        return getattr(self, self.WEIGHT_KEY)

    @staticmethod
    def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "_W8A8Linear":
        """Quantize an nn.Linear's weight per output channel; the bias is kept in the weight's dtype."""
        w = linear.weight.detach()
        dtype = w.dtype if w.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype=dtype, device=w.device)
        q, s = cls.quantize_activation(w.to(dtype))  # a weight row is quantized like a token
        getattr(mod, cls.WEIGHT_KEY).copy_(q)
        mod.scale.copy_(s)
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach().to(dtype))
        return mod

    def forward_quantized(self, x_q: torch.Tensor, x_scale: torch.Tensor,
                          out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """y [..., N] from codes x_q [..., K] and per-token scales x_scale [...] (float32)."""
        out_dtype = out_dtype or (self.bias.dtype if self.bias is not None else torch.bfloat16)
        lead = x_q.shape[:-1]
        bias = None if self.bias is None else self.bias.to(out_dtype)
        y = ops.w8a8_gemm(x_q.reshape(-1, self.in_features), x_scale.reshape(-1), self.weight_codes, self.scale,
                          bias, out_dtype=out_dtype)
        return y.view(*lead, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x @ w^T + b from bf16/fp16 x [..., K] (quantized per token here), in x's dtype. A float32 x
        (CPU pipelines) goes through bf16, whose 8-bit mantissa is below the 8-bit quantization's error."""
        if x.dtype == torch.float32:
            return self.forward(x.to(torch.bfloat16)).float()
        x_q, x_scale = self.quantize_activation(x)
        return self.forward_quantized(x_q, x_scale, out_dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(_W8A8Linear):
    """W8A8 INT8 linear: per-channel INT8 weight, per-token INT8 activations, fused scale + bias epilogue."""

    CODE_DTYPE = torch.int8
    WEIGHT_KEY = "int8_weight"

    @staticmethod
    def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token INT8 (ops.quantize_per_token_int8): (codes like x, scales x.shape[:-1] float32)."""
        return ops.quantize_per_token_int8(x)

    @classmethod
    def from_quant_state_dict(cls, state: dict, prefix: str = "", *, dtype: Optional[torch.dtype] = None
                              ) -> "Int8Linear":
        """From a TurboDiffusion `-quant` layer: `<prefix>int8_weight` int8 [N, K], `<prefix>scale` float32
        128 x 128 block scales [ceil(N/128), ceil(K/128)] (or per-channel [N]), `<prefix>bias` [N] (optional)."""
        q = state[prefix + "int8_weight"]
        bias = state.get(prefix + "bias")
        dtype = dtype or (bias.dtype if bias is not None else torch.bfloat16)
        mod = cls(q.shape[1], q.shape[0], bias is not None, dtype=dtype, device=q.device)
        mod.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        return mod

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A -quant checkpoint's 128 x 128 block scales: re-encode the codes with per-channel scales.
        qk, sk = prefix + "int8_weight", prefix + "scale"
        if qk in state_dict and sk in state_dict and state_dict[sk].dim() == 2:
            state_dict = dict(state_dict)
            state_dict[qk], state_dict[sk] = block128_to_per_channel(state_dict[qk], state_dict[sk])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class Fp8Linear(_W8A8Linear):
    """W8A8 FP8 E4M3 linear (sm90 kernel on CUDA): per-channel weight, per-token activations."""

    CODE_DTYPE = torch.float8_e4m3fn
    WEIGHT_KEY = "fp8_weight"

    @staticmethod
    def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token E4M3: s = amax / 448, codes = sat(rn(x * (448 / amax))) (0 for all-zero rows).
        PyTorch ops (no fused FP8 activation quantizer yet)."""
        x32 = x.float()
        amax = x32.abs().amax(dim=-1, keepdim=True)
        inv = torch.where(amax > 0, torch.full_like(amax, FP8_MAX) / amax, torch.zeros_like(amax))
        codes = (x32 * inv).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return codes, (amax / torch.full_like(amax, FP8_MAX)).squeeze(-1)


def int8_linear_factory(in_features: int, out_features: int, *, dtype=None, device=None) -> Int8Linear:
    """The "int8" kind of models.wan.layers.make_linear (weights filled by loading or from_linear)."""
    return Int8Linear(in_features, out_features, True, dtype=dtype, device=device)


def fp8_linear_factory(in_features: int, out_features: int, *, dtype=None, device=None) -> Fp8Linear:
    """The "fp8" kind of models.wan.layers.make_linear."""
    return Fp8Linear(in_features, out_features, True, dtype=dtype, device=device)
