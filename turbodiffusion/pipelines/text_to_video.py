"""Text-to-video with the rCM sampler: prompt -> umT5 context -> rCM sampling of the DiT -> VAE decode."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from ..models.wan.dit import WanDiT
from ..sampling.common import Denoiser
from ..sampling.rcm import SIGMA_MAX_T2V, sample_rcm
from .media import to_uint8_frames
from .sizes import latent_shape

ProgressCallback = Callable[[int], None]  # called with the index of each finished sampling step


class TextToVideoPipeline:
    """Generate videos from prompts with a (TurboWan, rCM-distilled) Wan T2V DiT.

    text_encoder: has `encode(prompts) -> [B, 512, text_dim]` (UMT5Encoder); vae: has
    `decode(latent) -> video in [-1, 1]` (WanVAE). All three live on `device` already.
    """

    default_sigma_max = SIGMA_MAX_T2V

    def __init__(self, dit: WanDiT, text_encoder: nn.Module, vae: nn.Module, *, device="cpu"):
        self.dit, self.text_encoder, self.vae = dit, text_encoder, vae
        self.device = torch.device(device)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """The DiT's text context [1, 512, text_dim] in the DiT's dtype (long prompts truncated with a warning)."""
        return self.text_encoder.encode([prompt]).to(self.device, self.dit.dtype)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent [1, 16, T', h, w] -> uint8 frames [T, H, W, 3]."""
        with torch.no_grad():
            video = self.vae.decode(latent)
        return to_uint8_frames(video[0])

    def sample(self, net: Denoiser, shape, *, num_steps: int, sigma_max: float, seed: int,
               progress: Optional[ProgressCallback], **sampler_options) -> torch.Tensor:
        """rCM sampling with a generator seeded on the pipeline's device (reproducible per device)."""
        generator = torch.Generator(self.device).manual_seed(seed)
        on_step = None if progress is None else (lambda i, x: progress(i))
        with torch.no_grad():
            return sample_rcm(net, shape, num_steps=num_steps, sigma_max=sigma_max, net_dtype=self.dit.dtype,
                              generator=generator, device=self.device, on_step=on_step, **sampler_options)

    def __call__(self, prompt: str, *, width: int, height: int, num_frames: int = 81, num_steps: int = 4,
                 sigma_max: Optional[float] = None, seed: int = 0,
                 progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        """Generate one video: uint8 frames [num_frames, height, width, 3]."""
        shape = latent_shape(num_frames, width, height)
        context = self.encode_prompt(prompt)
        latent = self.sample(lambda x, t: self.dit(x, t, context), shape, num_steps=num_steps,
                             sigma_max=self.default_sigma_max if sigma_max is None else sigma_max, seed=seed,
                             progress=progress)
        return self.decode(latent)
