"""The original Wan flow-matching sampler (Euler), with timestep shift and classifier-free guidance.

For baselines against rCM: many steps (Wan uses 50) with two network calls each under CFG. With flow
time sigma from 1 (noise) to 0 (data), Wan's shift maps sigma -> shift * sigma / (1 + (shift - 1) sigma),
spending more steps at high noise; each Euler step is x += (sigma' - sigma) v, with
v = v_uncond + guidance * (v_cond - v_uncond).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .common import Denoiser, NoiseSource, StepCallback, generator_noise, network_timestep


def shift_flow_times(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's timestep shift: shift * sigma / (1 + (shift - 1) * sigma)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_matching_times(num_steps: int, shift: float) -> torch.Tensor:
    """float64 [num_steps + 1]: uniform flow times from 1 to 0, shifted; the last one is 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps: expected at least 1, got {num_steps}")
    if not shift > 0:
        raise ValueError(f"shift: expected a positive number, got {shift}")
    return shift_flow_times(torch.linspace(1, 0, num_steps + 1, dtype=torch.float64), shift)


def sample_flow_matching(net: Denoiser, shape: Sequence[int], *, num_steps: int = 50, shift: float = 5.0,
                         guidance_scale: float = 5.0, uncond_net: Optional[Denoiser] = None,
                         net_dtype: torch.dtype = torch.bfloat16, generator: Optional[torch.Generator] = None,
                         device=None, noise: Optional[NoiseSource] = None,
                         on_step: Optional[StepCallback] = None) -> torch.Tensor:
    """Euler sampling from noise of `shape` [B, C, T, H, W]; returns the latent as float32.

    `net` is the conditional denoiser; `uncond_net` (e.g. the negative prompt) is required unless
    guidance_scale == 1, where it is not called.
    """
    if guidance_scale != 1 and uncond_net is None:
        raise ValueError(f"uncond_net: required for classifier-free guidance (guidance_scale {guidance_scale})")
    times = flow_matching_times(num_steps, shift).to(device)
    shape = tuple(shape)
    x = (noise or generator_noise(generator, device))(shape).to(torch.float64)
    for i in range(num_steps):
        xin, ts = x.to(net_dtype), network_timestep(times[i], shape[0], net_dtype)
        v = net(xin, ts).to(torch.float64)
        if guidance_scale != 1:
            v_uncond = uncond_net(xin, ts).to(torch.float64)
            v = v_uncond + guidance_scale * (v - v_uncond)
        x = x + (times[i + 1] - times[i]) * v
        if on_step is not None:
            on_step(i, x)
    return x.float()
