"""Image-to-video (Wan2.2-A14B style): the image conditions every step through y = [mask, VAE latent].

y has 20 channels: 4 mask channels (1 on latent frame 0, 0 after), then the normalised VAE latent of
the video [image, F-1 zero frames]. The same y serves every step and both experts; the high-noise
expert runs while the flow time is >= 0.9, then the low-noise expert (rCM sampler).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..models.wan.dit import WanDiT
from ..sampling.rcm import EXPERT_BOUNDARY, SIGMA_MAX_I2V
from .sizes import latent_shape
from .text_to_video import ProgressCallback, TextToVideoPipeline

MASK_CHANNELS = 4


class ImageToVideoPipeline(TextToVideoPipeline):
    """Generate videos from an image and a prompt with an I2V DiT (or the two experts of Wan2.2-A14B).

    `dit` is the high-noise expert; `low_noise_dit` (optional) takes over below flow time `boundary`. With
    offload="model" only one expert is on the device at a time: the switch moves the high-noise expert
    back to the CPU, then the low-noise one in. Other options: TextToVideoPipeline.
    """

    default_sigma_max = SIGMA_MAX_I2V

    def __init__(self, dit: WanDiT, text_encoder: nn.Module, vae: nn.Module, *,
                 low_noise_dit: Optional[WanDiT] = None, boundary: float = EXPERT_BOUNDARY, device="cpu", **options):
        super().__init__(dit, text_encoder, vae, device=device, **options)
        self.low_noise_dit, self.boundary = low_noise_dit, boundary
        if low_noise_dit is not None:
            self.models.adopt(low_noise_dit)

    def condition(self, image: torch.Tensor, num_frames: int) -> torch.Tensor:
        """y [1, 20, T', H/8, W/8] for an image [3, H, W] in [-1, 1], in the DiT's dtype."""
        _, h, w = image.shape
        with self._stage("VAE encode"), torch.no_grad():
            video = torch.zeros(1, 3, num_frames, h, w, device=self.device)
            video[0, :, 0] = image.to(self.device)
            latent = self.models.use(self.vae, "VAE").encode(video)
            del video
        mask = torch.zeros(1, MASK_CHANNELS, *latent.shape[2:], device=self.device)
        mask[:, :, 0] = 1
        return torch.cat([mask, latent.to(mask.dtype)], dim=1).to(self.dit.dtype)

    def __call__(self, prompt: str, *, image: torch.Tensor, num_frames: int = 81, num_steps: int = 4,
                 sigma_max: Optional[float] = None, seed: int = 0, ode: bool = False,
                 progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        """Generate one video from `image` [3, H, W] in [-1, 1] (H, W multiples of 16): uint8 frames
        [num_frames, H, W, 3]."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image: expected [3, H, W] in [-1, 1], got shape {tuple(image.shape)}")
        shape = latent_shape(num_frames, image.shape[2], image.shape[1])
        context = self.encode_prompt(prompt)
        y = self.condition(image, num_frames)
        low = self.low_noise_dit
        latent = self.sample(self.denoiser(self.dit, "DiT", context, y), shape, num_steps=num_steps,
                             sigma_max=self.default_sigma_max if sigma_max is None else sigma_max, seed=seed,
                             progress=progress, ode=ode, boundary=self.boundary,
                             low_noise_net=None if low is None else self.denoiser(low, "low-noise DiT", context, y))
        return self.decode(latent)
