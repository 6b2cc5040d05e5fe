"""Wan2.1 VAE: the module saved as `Wan2.1_VAE.pth` (Wan2.2-A14B uses the same file).

A causal 3-D convolutional autoencoder: 8x spatial and 4x temporal compression, 16 latent channels.
Time is processed as a stream, like the reference: encode feeds the pixel frames in chunks
[0], [1..4], [5..8], ... and decode feeds one latent frame at a time. Every causal conv keeps the
last frames of its own input stream in a `StreamState`, so a chunked pass computes exactly what the
reference's feature cache computes, while only one chunk's activations are alive at a time.

Module and parameter names equal the reference's, so `Wan2.1_VAE.pth` loads with a strict key match.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# Per-channel latent statistics of the real model (the reference writes them as 4-decimal literals).
LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

CHECKPOINT_NAME = "Wan2.1_VAE.pth"
CHECKPOINT_SOURCE = ("the Wan2.1 release (the Wan-AI/Wan2.1-T2V-1.3B or Wan2.1-T2V-14B model folder; "
                     "Wan2.2-A14B ships the same file)")

# One streaming pass: module -> what it carries over to the next chunk (past input frames, or True
# for "the first chunk has been seen"). A fresh dict starts a new video.
StreamState = dict


class CausalConv3d(nn.Conv3d):
    """Conv3d that is causal in time: output frame t sees input frames t-k+1 .. t.

    Frames before the start of the stream are zeros. With a `state`, the call continues the stream:
    the last k-1 input frames of the previous call stand in for the zeros and are updated.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size, stride=1, padding=0):
        super().__init__(in_dim, out_dim, kernel_size, stride, padding=0)
        pad_t, pad_h, pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        self.past_frames = 2 * pad_t  # the reference pads 2*p zeros in front and none behind
        self.pad_hw = (pad_h, pad_w)

    def forward(self, x: torch.Tensor, state: Optional[StreamState] = None) -> torch.Tensor:
        past, (ph, pw) = self.past_frames, self.pad_hw
        if past == 0 and ph == 0 and pw == 0:
            return super().forward(x)
        b, c, t, h, w = x.shape
        # One padded buffer (zeros = the reference's zero padding) instead of cat + pad: one copy less.
        buf = x.new_zeros(b, c, past + t, h + 2 * ph, w + 2 * pw)
        inner = (slice(None), slice(None), slice(None), slice(ph, ph + h), slice(pw, pw + w))
        buf[inner][:, :, past:] = x
        if past and state is not None:
            prev = state.get(self)
            if prev is not None:
                buf[inner][:, :, :past] = prev
            state[self] = buf[inner][:, :, -past:].clone()
        return super().forward(buf)


class RMSNorm(nn.Module):
    """Normalise over channels (dim 1): x / ||x|| * sqrt(C) * gamma, with F.normalize's eps 1e-12."""

    def __init__(self, dim: int, spatial_dims: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1).mul_(self.scale).mul_(self.gamma)  # in place: no extra copies


def _per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of a [B, C, T, H, W] video."""
    b, _, t = x.shape[:3]
    y = fn(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, t)).transpose(1, 2)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        # Index 5 is the reference's Dropout (p = 0); Identity keeps the parameter names. The SiLUs
        # act in place on the norms' fresh outputs.
        self.residual = nn.Sequential(
            RMSNorm(in_dim, 3), nn.SiLU(inplace=True), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, 3), nn.SiLU(inplace=True), nn.Identity(), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        return _stream(self.residual, x, state).add_(self.shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (scaled by 1/sqrt(C))."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, 2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).flatten(2).transpose(1, 2).unsqueeze(1)  # [N, 1, HW, 3C]
        q, k, v = qkv.chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(n, c, h, w)
        return x + self.proj(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _per_frame(self._attend, x)


class Resample(nn.Module):
    """2x spatial up/down-sampling, optionally with 2x temporal up/down-sampling ("...3d" modes).

    Temporal semantics (the reference's): the first chunk of a stream passes through the time conv
    untouched (frame 0 is an image); later chunks go through it. Down: a stride-2 conv over
    [last frame of the previous chunk, chunk]. Up: a causal conv whose 2C outputs become 2 frames.
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"mode: expected one of {self.MODES}, got {mode!r}")
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:  # the reference pads right/bottom only before the stride-2 conv
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._upsample_time(x, state)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._downsample_time(x, state)
        return x

    def _upsample_time(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        if self not in state:
            state[self] = True
            return x
        b, c, t, h, w = x.shape
        y = self.time_conv(x, state)  # [B, 2C, T, H, W]: channel half j is output frame 2t + j
        return y.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)

    def _downsample_time(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        prev = state.get(self)
        state[self] = x[:, :, -1:].clone()
        if prev is None:
            return x
        return self.time_conv(torch.cat([prev, x], dim=2))


_STREAMING = (CausalConv3d, ResidualBlock, Resample)


def _stream(layers: nn.Sequential, x: torch.Tensor, state: StreamState) -> torch.Tensor:
    for layer in layers:
        x = layer(x, state) if isinstance(layer, _STREAMING) else layer(x)
    return x


def _head(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(in_dim, 3), nn.SiLU(inplace=True), CausalConv3d(in_dim, out_dim, 3, padding=1))


class Encoder3d(nn.Module):
    def __init__(self, dim: int, z_dim: int, dim_mult: tuple, num_res_blocks: int, temporal_downsample: tuple):
        super().__init__()
        dims = [dim * u for u in (1,) + tuple(dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "downsample3d" if temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = nn.Sequential(ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]),
                                    ResidualBlock(dims[-1], dims[-1]))
        self.head = _head(dims[-1], z_dim)

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        x = self.conv1(x, state)
        for part in (self.downsamples, self.middle, self.head):
            x = _stream(part, x, state)
        return x


class Decoder3d(nn.Module):
    def __init__(self, dim: int, z_dim: int, dim_mult: tuple, num_res_blocks: int, temporal_upsample: tuple):
        super().__init__()
        dims = [dim * u for u in (dim_mult[-1],) + tuple(dim_mult[::-1])]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # every upsampling conv halves the channels
            for _ in range(num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*blocks)
        self.head = _head(dims[-1], 3)
        self.halo = math.ceil(_receptive_radius(nn.Sequential(self.upsamples, self.head)))

    def trunk(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        """conv1 and the middle blocks, at latent resolution; the attention here sees the whole frame."""
        return _stream(self.middle, self.conv1(x, state), state)

    def branch(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        """Upsampling blocks and head: local (3x3 convs, nearest upsampling), so a crop of the trunk's
        output with `halo` latent pixels of margin decodes its centre exactly."""
        return _stream(self.head, _stream(self.upsamples, x, state), state)

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        return self.branch(self.trunk(x, state), state)


def _receptive_radius(layers: nn.Module) -> float:
    """How far (in input pixels, each side) an output pixel of `layers` reaches: each k x k conv adds
    k // 2 pixels of its own resolution, which each 2x upsampling before it makes half as wide."""
    radius, scale = 0.0, 1
    for m in layers.modules():  # registration order = execution order in these blocks
        if isinstance(m, nn.Upsample):
            scale *= 2
        elif isinstance(m, (nn.Conv2d, nn.Conv3d)):
            radius += (m.kernel_size[-1] // 2) / scale
    return radius


class WanVAE(nn.Module):
    """The Wan2.1 VAE. `encode` gives the normalised posterior mean, `decode` inverts it.

    Latents are normalised per channel, `(mu - mean) / std`, which is what the DiT consumes.
    Computation runs in the parameters' dtype; results come back in the input's dtype.
    """

    def __init__(self, dim: int = 96, z_dim: int = 16, dim_mult: tuple = (1, 2, 4, 4), num_res_blocks: int = 2,
                 temporal_downsample: tuple = (False, True, True)):
        super().__init__()
        if z_dim != len(LATENTS_MEAN):
            raise ValueError(f"z_dim: expected {len(LATENTS_MEAN)} (the latent statistics' size), got {z_dim}")
        self.z_dim = z_dim
        self.encoder = Encoder3d(dim, 2 * z_dim, dim_mult, num_res_blocks, temporal_downsample)
        self.conv1 = CausalConv3d(2 * z_dim, 2 * z_dim, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, tuple(temporal_downsample[::-1]))

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def tiny(cls, seed: int = 0) -> "WanVAE":
        """The golden's tiny config (base width 8) with deterministic seeded random weights."""
        model = cls(dim=8)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("gamma"):
                    p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
                elif name.endswith("bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
                else:  # conv weight: N(0, 1/fan_in) keeps activations O(1) through the depth
                    p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
        return model.eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path, dtype: torch.dtype = torch.bfloat16, device="cpu") -> "WanVAE":
        """Load `Wan2.1_VAE.pth` (a flat state dict of the real config), strict key and shape match.

        The model is built on the meta device and takes the memory-mapped tensors as its parameters,
        so the file is read once and no second copy is made before the dtype/device cast.
        """
        from .checkpoint import load_flat_checkpoint  # lazy: checkpoint imports the DiT

        return load_flat_checkpoint(cls, path, what="Wan2.1 VAE", file_name=CHECKPOINT_NAME, source=CHECKPOINT_SOURCE,
                                    dtype=dtype, device=device)

    # ---- latent normalisation ------------------------------------------------------------------
    @staticmethod
    def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1/std) as [1, C, 1, 1, 1] in `like`'s dtype and device. The reciprocal is taken in
        that dtype, as the reference does (its bf16 pipeline keeps these constants in bf16)."""
        def as_col(values):
            return torch.tensor(values, dtype=torch.float64).to(like).view(1, -1, 1, 1, 1)
        return as_col(LATENTS_MEAN), 1.0 / as_col(LATENTS_STD)

    @property
    def _dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    # ---- encode / decode -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1], T = 1 + 4k, H and W multiples of 8 ->
        normalised latent [B, 16, 1 + k, H/8, W/8] (posterior mean, no sampling)."""
        _check_video("video", video)
        x = video.to(self._dtype)
        state: StreamState = {}
        # Frame 0 alone, then 4 frames at a time (a 1-frame video has no second chunk: split() of an
        # empty tensor would return one empty chunk).
        chunks = [x[:, :, :1]] + (list(x[:, :, 1:].split(4, dim=2)) if x.shape[2] > 1 else [])
        out = torch.cat([self.encoder(chunk, state) for chunk in chunks], dim=2)
        mu = self.conv1(out)[:, :self.z_dim]  # channels [z:] are the log-variance, unused
        mean, inv_std = self._stats(mu)
        return ((mu - mean) * inv_std).to(video.dtype)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, tile: Optional[int] = None) -> torch.Tensor:
        """Normalised latent [B, 16, T_lat, h, w] -> video [B, 3, 1 + 4 (T_lat - 1), 8h, 8w], not clamped.

        With `tile` (latent pixels), the upsampling part of the decoder (where the memory goes: its
        last stage is 96 channels x 4 frames at full resolution) runs on tile x tile crops one after
        the other, each with `decoder.halo` latent pixels of margin: the result equals the untiled
        decode up to rounding, while peak memory scales with the crop instead of the frame.
        """
        if latent.dim() != 5 or latent.shape[1] != self.z_dim:
            raise ValueError(f"latent: expected shape [B, {self.z_dim}, T, h, w], got {tuple(latent.shape)}")
        if tile is not None and tile < 1:
            raise ValueError(f"tile: expected None or a positive number of latent pixels, got {tile}")
        z = latent.to(self._dtype)
        mean, inv_std = self._stats(z)
        z = self.conv2(z / inv_std + mean)  # the reference divides by 1/std
        b, _, t_lat, h, w = z.shape
        out = torch.empty(b, 3, 1 + 4 * (t_lat - 1), 8 * h, 8 * w, dtype=latent.dtype, device=latent.device)
        if tile is None:
            _stream_frames(self.decoder, z, out)
            return out
        trunk_state: StreamState = {}
        trunk = torch.cat([self.decoder.trunk(z[:, :, i:i + 1], trunk_state) for i in range(t_lat)], dim=2)
        halo = self.decoder.halo
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
                ya, xa = max(0, y0 - halo), max(0, x0 - halo)
                crop = trunk[..., ya:min(h, y1 + halo), xa:min(w, x1 + halo)]
                piece = out.new_empty(b, 3, out.shape[2], 8 * crop.shape[-2], 8 * crop.shape[-1])
                _stream_frames(self.decoder.branch, crop, piece)
                out[..., 8 * y0:8 * y1, 8 * x0:8 * x1] = piece[..., 8 * (y0 - ya):8 * (y1 - ya), 8 * (x0 - xa):8 * (x1 - xa)]
        return out


def _stream_frames(decoder, z: torch.Tensor, out: torch.Tensor) -> None:
    """Feed the latent frames of z to `decoder(frame, state)` one at a time (one stream), writing the
    1 (first) or 4 (later) pixel frames each produces into out."""
    state: StreamState = {}
    for i in range(z.shape[2]):
        frames = decoder(z[:, :, i:i + 1], state)
        start = 0 if i == 0 else 1 + 4 * (i - 1)
        out[:, :, start:start + frames.shape[2]] = frames


def _check_video(name: str, video: torch.Tensor) -> None:
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"{name}: expected shape [B, 3, T, H, W], got {tuple(video.shape)}")
    t, h, w = video.shape[2:]
    if (t - 1) % 4:
        # TurboDiffusion's encoder also feeds a trailing partial chunk of (T-1) % 4 frames, but its
        # stride-2 temporal convs then get fewer than 3 frames and fail; Wan2.1 drops those frames.
        raise ValueError(f"{name}: expected 1 + 4k frames, got T = {t}")
    if h % 8 or w % 8:
        raise ValueError(f"{name}: expected height and width multiples of 8, got {h} x {w}")
