"""What the samplers share: the denoiser interface, the network's time input and the noise source."""
from __future__ import annotations

from typing import Callable, Optional

import torch

# v = denoiser(x, timestep): x the noisy latent in the network dtype, timestep [B, 1] = flow time * 1000 in the
# network dtype; returns the velocity v (any float dtype). Conditioning (text, I2V y) is bound by the caller.
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# noise(shape) -> float32 standard normal tensor; called in the order the sampler consumes noise.
NoiseSource = Callable[[tuple], torch.Tensor]
# on_step(step_index, x) after every update (x is the float64 state).
StepCallback = Callable[[int, torch.Tensor], None]


def network_timestep(t: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1] time input of the network for flow time t (0-dim float64): float64(float32(t)) * 1000, cast to
    `dtype` (for bf16 torch rounds float64 -> float32 -> bf16, as the reference pipeline does)."""
    return (t.float().double() * torch.ones(batch, 1, dtype=torch.float64, device=t.device) * 1000).to(dtype)


def generator_noise(generator: Optional[torch.Generator], device=None) -> NoiseSource:
    """Noise drawn from `generator` (float32 N(0, 1)) on `device`."""
    return lambda shape: torch.randn(*shape, dtype=torch.float32, device=device, generator=generator)
