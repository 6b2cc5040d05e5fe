"""Sampler behaviour beyond the golden (test_golden_rcm_sampler.py): exactness on a known velocity field,
seeding, noise accounting, the expert switch, the flow-matching baseline with shift and CFG."""
from __future__ import annotations

import pytest
import torch

from turbodiffusion.sampling.flow_matching import flow_matching_times, sample_flow_matching
from turbodiffusion.sampling.rcm import SIGMA_MAX_I2V, rcm_flow_times, sample_rcm

SHAPE = (2, 16, 2, 4, 6)


def _point_field(target):
    """The exact rectified-flow velocity when all data sits at `target`: v = (x - target) / t."""
    def net(x, timestep):
        t = timestep.to(torch.float64).view(-1, 1, 1, 1, 1) / 1000
        return (x.to(torch.float64) - target) / t
    return net


@pytest.mark.parametrize("ode", [False, True])
@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_rcm_reaches_the_data_point(steps, ode):
    target = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = sample_rcm(_point_field(target), SHAPE, num_steps=steps, ode=ode, net_dtype=torch.float64,
                     generator=torch.Generator().manual_seed(0))
    # the timestep is fed as float32(t) * 1000, so x0 = x - t v is exact only to float32 precision of t
    torch.testing.assert_close(out, target.float(), rtol=0, atol=1e-4 * (1 + 100 * ode))


def test_rcm_seeding_and_noise_count():
    draws = []

    def counting_noise(shape):
        draws.append(shape)
        return torch.randn(shape, generator=gen)

    net = _point_field(torch.zeros(SHAPE, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    sample_rcm(net, SHAPE, num_steps=3, noise=counting_noise)
    assert len(draws) == 1 + 3  # initial noise + one after every SDE step (the last one included)
    draws.clear()
    sample_rcm(net, SHAPE, num_steps=3, ode=True, noise=counting_noise)
    assert len(draws) == 1

    def run(seed):
        return sample_rcm(lambda x, t: x * 0.5, SHAPE, num_steps=4, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


def test_rcm_expert_switch_is_permanent_from_first_t_below_boundary():
    calls = []

    def expert(name):
        return lambda x, t: (calls.append((name, t[0, 0].item())), torch.zeros_like(x))[1]

    sample_rcm(expert("high"), SHAPE, num_steps=4, sigma_max=SIGMA_MAX_I2V, low_noise_net=expert("low"),
               generator=torch.Generator().manual_seed(0), net_dtype=torch.float64)
    assert [c[0] for c in calls] == ["high", "high", "low", "low"]
    assert all((name == "low") == (t / 1000 < 0.9) for name, t in calls)
    calls.clear()
    sample_rcm(expert("high"), SHAPE, num_steps=2, sigma_max=SIGMA_MAX_I2V, low_noise_net=expert("low"))
    assert [c[0] for c in calls] == ["high", "high"]


def test_rcm_argument_errors():
    with pytest.raises(ValueError, match="num_steps: expected 1 to 4, got 5"):
        rcm_flow_times(5, 80.0)
    with pytest.raises(ValueError, match="sigma_max: expected a positive number"):
        sample_rcm(lambda x, t: x, SHAPE, sigma_max=0.0)


def test_flow_matching_exact_field_shift_and_cfg():
    times = flow_matching_times(10, 5.0)
    assert times[0] == 1 and times[-1] == 0 and (times[1:] < times[:-1]).all()
    assert times[5] > 0.5  # shift > 1 spends more steps at high noise
    c_cond, c_uncond = torch.full(SHAPE, 0.5, dtype=torch.float64), torch.full(SHAPE, -0.25, dtype=torch.float64)
    out = sample_flow_matching(_point_field(c_cond), SHAPE, num_steps=6, guidance_scale=1.0,
                               net_dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, c_cond.float(), rtol=0, atol=1e-4)
    out = sample_flow_matching(_point_field(c_cond), SHAPE, num_steps=6, guidance_scale=3.0,
                               uncond_net=_point_field(c_uncond), net_dtype=torch.float64,
                               generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, (c_uncond + 3.0 * (c_cond - c_uncond)).float(), rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="uncond_net: required"):
        sample_flow_matching(_point_field(c_cond), SHAPE, guidance_scale=5.0)
