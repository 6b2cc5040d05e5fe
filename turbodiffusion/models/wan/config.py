"""Architecture configs of the Wan DiTs (Wan2.1 T2V 1.3B / 14B, one Wan2.2-I2V-A14B expert, tiny)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MODEL_TYPES = ("t2v", "i2v")
I2V_COND_CHANNELS = 20  # I2V conditioning y: 4 mask channels + 16 VAE-latent channels


@dataclass(frozen=True)
class WanConfig:
    """Architecture of one Wan DiT (for Wan2.2-A14B: of one expert; both experts share it)."""

    name: str
    model_type: str  # "t2v" or "i2v" (the network input is cat([x, y]) with in_dim = 16 + 20 channels)
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    text_len: int = 512  # context rows the pipeline pads to; the network accepts any length

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type: expected one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim / num_heads: expected an even head dim, got dim {self.dim}, "
                             f"num_heads {self.num_heads}")
        expected_in = self.out_dim + (I2V_COND_CHANNELS if self.model_type == "i2v" else 0)
        if self.in_dim != expected_in:
            raise ValueError(f"in_dim: expected {expected_in} for a {self.model_type} model with out_dim "
                             f"{self.out_dim}, got {self.in_dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_features(self) -> int:
        """Features of one input token: in_dim * kt * kh * kw."""
        kt, kh, kw = self.patch_size
        return self.in_dim * kt * kh * kw

    def replace(self, **changes) -> "WanConfig":
        return dataclasses.replace(self, **changes)


_TINY = dict(dim=128, ffn_dim=256, num_heads=2, num_layers=2, text_dim=64)  # the golden's tiny config
_1_3B = dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)

CONFIGS: dict[str, WanConfig] = {c.name: c for c in (
    WanConfig("tiny-t2v", "t2v", **_TINY),
    WanConfig("tiny-i2v", "i2v", in_dim=36, **_TINY),
    WanConfig("wan2.1-t2v-1.3b", "t2v", **_1_3B),
    WanConfig("wan2.1-t2v-14b", "t2v", **_14B),
    WanConfig("wan2.2-i2v-a14b", "i2v", in_dim=36, **_14B),  # one expert (high- and low-noise are alike)
)}


def get_config(name: str) -> WanConfig:
    """The named config (see CONFIGS)."""
    if name not in CONFIGS:
        raise ValueError(f"config name: expected one of {tuple(CONFIGS)}, got {name!r}")
    return CONFIGS[name]
