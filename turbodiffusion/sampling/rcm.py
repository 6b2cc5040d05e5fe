"""rCM few-step sampler (TurboDiffusion's Wan2.1 T2V / Wan2.2 I2V inference), golden rcm_sampler.json.

Schedule: TrigFlow times [atan(sigma_max), 1.5, 1.4, 1.0][:steps] + [0], mapped to rectified-flow time
t = sin / (sin + cos). Starting from x = noise * t_0 (float64 state), each step calls the network once
(v = net(x, 1000 t), no CFG) and
    SDE (default):  x = (1 - t') (x - t v) + t' noise_new   (t' noise in float32: t' rounded to float32)
    ODE:            x = x - (t - t') v
For Wan2.2-A14B the high-noise expert runs until the first step whose t < boundary (0.9); from there on,
permanently, the low-noise expert. Noise order: the initial noise, then (SDE) one draw after each network
call, including the last step where t' = 0.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .common import Denoiser, NoiseSource, StepCallback, generator_noise, network_timestep

MID_TRIGFLOW_TIMES = (1.5, 1.4, 1.0)
MAX_STEPS = len(MID_TRIGFLOW_TIMES) + 1
SIGMA_MAX_T2V, SIGMA_MAX_I2V = 80.0, 200.0
EXPERT_BOUNDARY = 0.9


def rcm_trigflow_times(num_steps: int, sigma_max: float) -> torch.Tensor:
    """[atan(sigma_max), *mid[:num_steps-1], 0] float64."""
    if not 1 <= num_steps <= MAX_STEPS:
        raise ValueError(f"num_steps: expected 1 to {MAX_STEPS}, got {num_steps}")
    if not sigma_max > 0:
        raise ValueError(f"sigma_max: expected a positive number, got {sigma_max}")
    return torch.tensor([math.atan(sigma_max), *MID_TRIGFLOW_TIMES[: num_steps - 1], 0.0], dtype=torch.float64)


def rcm_flow_times(num_steps: int, sigma_max: float) -> torch.Tensor:
    """Rectified-flow times sin / (cos + sin) of the TrigFlow schedule, float64 [num_steps + 1], last = 0."""
    theta = rcm_trigflow_times(num_steps, sigma_max)
    return torch.sin(theta) / (torch.cos(theta) + torch.sin(theta))


def rcm_experts(flow_times: Sequence[float], boundary: float = EXPERT_BOUNDARY) -> list[str]:
    """The expert of each step, "high" or "low": the low-noise expert from the first step with t < boundary on."""
    experts, low = [], False
    for t in flow_times[:-1]:
        low = low or float(t) < boundary
        experts.append("low" if low else "high")
    return experts


def sample_rcm(net: Denoiser, shape: Sequence[int], *, num_steps: int = 4, sigma_max: float = SIGMA_MAX_T2V,
               ode: bool = False, net_dtype: torch.dtype = torch.bfloat16,
               generator: Optional[torch.Generator] = None, device=None, noise: Optional[NoiseSource] = None,
               low_noise_net: Optional[Denoiser] = None, boundary: float = EXPERT_BOUNDARY,
               on_step: Optional[StepCallback] = None) -> torch.Tensor:
    """Sample a latent of `shape` [B, C, T, H, W] in 1-4 network calls; returns it as float32.

    Noise comes from `noise` (called with a shape, in consumption order) or else from `generator` on
    `device`. With `low_noise_net` (Wan2.2-A14B), `net` is the high-noise expert (see the module doc).
    """
    draw = noise or generator_noise(generator, device)
    times = rcm_flow_times(num_steps, sigma_max).to(device)
    experts = rcm_experts(times.tolist(), boundary) if low_noise_net is not None else ["high"] * num_steps
    shape = tuple(shape)
    x = draw(shape).to(torch.float64) * times[0]
    for i in range(num_steps):
        t_cur, t_next = times[i], times[i + 1]
        denoiser = low_noise_net if experts[i] == "low" else net
        v = denoiser(x.to(net_dtype), network_timestep(t_cur, shape[0], net_dtype)).to(torch.float64)
        if ode:
            x = x - (t_cur - t_next) * v
        else:
            # t_next (0-dim float64) times the float32 noise is computed in float32, as in the reference
            x = (1 - t_next) * (x - t_cur * v) + t_next * draw(shape)
        if on_step is not None:
            on_step(i, x)
    return x.float()
