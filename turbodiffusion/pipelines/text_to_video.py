"""Text-to-video with the rCM sampler: prompt -> umT5 context -> rCM sampling of the DiT -> VAE decode.

The stages run in that order and only pass small tensors on (context [1, 512, 4096], the latent), so with
`offload="model"` each model is on the device only for its own stage (pipelines/offload.py); with a
`vae_tile` the decode runs on spatial tiles; the DiT's own `token_chunk` bounds its activations.
docs/wan.md ("Memory") gives the peak of each stage for 14B-720p.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from ..models.wan.dit import WanDiT
from ..sampling.common import Denoiser
from ..sampling.rcm import SIGMA_MAX_T2V, sample_rcm
from .media import to_uint8_frames
from .offload import ModelOffload, StageLog, maybe_stage
from .sizes import latent_shape

ProgressCallback = Callable[[int], None]  # called with the index of each finished sampling step


class TextToVideoPipeline:
    """Generate videos from prompts with a (TurboWan, rCM-distilled) Wan T2V DiT.

    text_encoder: has `encode(prompts) -> [B, 512, text_dim]` (UMT5Encoder); vae: has
    `decode(latent, tile=None) -> video in [-1, 1]` (WanVAE).

    offload: "none" (the models are on `device` already and stay there) or "model" (they wait on the CPU,
        pinned, and each is moved to `device` for its stage only; see pipelines/offload.py).
    vae_tile: decode in tiles of this many latent pixels (WanVAE.decode), None for whole frames.
    stage_log: a StageLog to record the time and peak memory of every stage (and of every model move).
    """

    default_sigma_max = SIGMA_MAX_T2V

    def __init__(self, dit: WanDiT, text_encoder: nn.Module, vae: nn.Module, *, device="cpu", offload: str = "none",
                 vae_tile: Optional[int] = None, stage_log: Optional[StageLog] = None):
        self.dit, self.text_encoder, self.vae = dit, text_encoder, vae
        self.device = torch.device(device)
        self.vae_tile, self.stage_log = vae_tile, stage_log
        self.models = ModelOffload(self.device, offload, stage_log)
        for model in (text_encoder, vae, dit):
            self.models.adopt(model)

    def _stage(self, name: str):
        return maybe_stage(self.stage_log, name)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """The DiT's text context [1, 512, text_dim] in the DiT's dtype (long prompts truncated with a warning)."""
        with self._stage("text encoder"):
            encoder = self.models.use(self.text_encoder, "text encoder")
            return encoder.encode([prompt]).to(self.device, self.dit.dtype)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent [1, 16, T', h, w] -> uint8 frames [T, H, W, 3]."""
        with self._stage("VAE decode"), torch.no_grad():
            video = self.models.use(self.vae, "VAE").decode(latent, tile=self.vae_tile)
            frames = to_uint8_frames(video[0])
        self.models.release()
        return frames

    def denoiser(self, dit: WanDiT, name: str, context: torch.Tensor, y: Optional[torch.Tensor] = None) -> Denoiser:
        """v = dit(x, t, context[, y]) with `dit` brought to the device first (a no-op once it is there)."""
        return lambda x, t: self.models.use(dit, name)(x, t, context, y)

    def sample(self, net: Denoiser, shape, *, num_steps: int, sigma_max: float, seed: int,
               progress: Optional[ProgressCallback], **sampler_options) -> torch.Tensor:
        """rCM sampling with a generator seeded on the pipeline's device (reproducible per device)."""
        generator = torch.Generator(self.device).manual_seed(seed)
        on_step = None if progress is None else (lambda i, x: progress(i))
        with self._stage("sampling"), torch.no_grad():
            return sample_rcm(net, shape, num_steps=num_steps, sigma_max=sigma_max, net_dtype=self.dit.dtype,
                              generator=generator, device=self.device, on_step=on_step, **sampler_options)

    def __call__(self, prompt: str, *, width: int, height: int, num_frames: int = 81, num_steps: int = 4,
                 sigma_max: Optional[float] = None, seed: int = 0,
                 progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        """Generate one video: uint8 frames [num_frames, height, width, 3]."""
        shape = latent_shape(num_frames, width, height)
        context = self.encode_prompt(prompt)
        latent = self.sample(self.denoiser(self.dit, "DiT", context), shape, num_steps=num_steps,
                             sigma_max=self.default_sigma_max if sigma_max is None else sigma_max, seed=seed,
                             progress=progress)
        return self.decode(latent)
