"""Golden tests of the rCM sampler (golden rcm_sampler.json, README §6): every schedule, and every
recorded run reproduced bit for bit with the JSON's stand-in network and recorded noises, in both
variants (network fed float64, and fed bf16 like the real pipeline)."""
from __future__ import annotations

import json

import pytest
import torch

from turbodiffusion.sampling.common import network_timestep
from turbodiffusion.sampling.rcm import rcm_experts, rcm_flow_times, rcm_trigflow_times, sample_rcm

safetensors_torch = pytest.importorskip("safetensors.torch")

VARIANT_DTYPES = {"netdtype_float64": torch.float64, "netdtype_bf16": torch.bfloat16}


@pytest.fixture
def rcm_golden(golden):
    return (json.loads((golden / "rcm_sampler.json").read_text()),
            safetensors_torch.load_file(str(golden / "rcm_sampler.safetensors")))


def _standin(coefficients, y=None):
    """The JSON's stand-in network, in its stated evaluation order (only + - * / abs, in float64)."""
    a_coef, b_coef, c_coef = coefficients

    def net(x, timestep):
        x, s = x.to(torch.float64), timestep.to(torch.float64) / 1000
        w = torch.arange(1, x.shape[1] + 1, dtype=torch.float64) / 16
        a = x * a_coef
        b = x / (1 + x.abs())
        b = b * b_coef
        c = (s * c_coef).view(-1, 1, 1, 1, 1) * w.view(1, -1, 1, 1, 1)
        v = a + b
        v = v + c
        if y is not None:
            yy = y.to(torch.float64)
            v = v + yy[:, 4:20] * 0.1
            v = v + yy[:, 0:1] * 0.05
        return v

    return net


class _Recorder:
    """Serves the recorded noises in order and records what the network saw."""

    def __init__(self, noises):
        self.noises = list(noises)
        self.timesteps, self.experts = [], []

    def noise(self, shape):
        n = self.noises.pop(0)
        assert tuple(n.shape) == tuple(shape)
        return n

    def wrap(self, net, expert):
        def wrapped(x, timestep):
            self.timesteps.append(timestep[0, 0].item())
            self.experts.append(expert)
            return net(x, timestep)
        return wrapped


@pytest.mark.golden
def test_golden_rcm_schedules(rcm_golden):
    meta, tensors = rcm_golden
    for label, steps in meta["schedules"].items():
        script, sigma, n = label.split()
        sigma_max, num_steps = float(sigma.split("=")[1]), int(n.split("=")[1])
        trig, rf = rcm_trigflow_times(num_steps, sigma_max), rcm_flow_times(num_steps, sigma_max)
        assert trig.tolist() == [s["trigflow_t"] for s in steps], label
        assert rf.tolist() == [s["rf_t"] for s in steps], label
        for s, t in zip(steps[:-1], rf[:-1]):
            assert network_timestep(t, 1, torch.float64).item() == s["net_timestep_float64 = float64(float32(rf_t))*1000"]
            assert network_timestep(t, 1, torch.bfloat16).item() == s["net_timestep_bf16 (what the real pipeline feeds)"]
        if "i2v" in script:
            assert rcm_experts(rf.tolist(), meta["defaults"]["wan2.2_i2v_infer.py"]["boundary"]) == \
                [s["expert"] for s in steps[:-1]], label
    for run in meta["runs"]:
        rf = rcm_flow_times(run["num_steps"], run["sigma_max"])
        assert torch.equal(rf, tensors[run["schedule_tensors"]["rf_t"]]), run["name"]
        assert torch.equal(rcm_trigflow_times(run["num_steps"], run["sigma_max"]),
                           tensors[run["schedule_tensors"]["trigflow_t"]]), run["name"]


def _bitexact(what, got, ref):
    assert got.dtype == ref.dtype and got.shape == ref.shape, f"{what}: {got.dtype}{tuple(got.shape)}"
    n_diff = (got != ref).sum().item()
    assert n_diff == 0, f"{what}: {n_diff} of {ref.numel()} values differ, max {(got - ref).abs().max().item():.3g}"


@pytest.mark.golden
@pytest.mark.parametrize("variant", list(VARIANT_DTYPES))
def test_golden_rcm_runs_bit_exact(rcm_golden, variant):
    meta, tensors = rcm_golden
    coefficients = meta["standin_network"]["coefficients (A, Bc, C)"]
    net_dtype = VARIANT_DTYPES[variant]
    assert meta["runs"], "no runs in the golden"
    for run in meta["runs"]:
        name, shape = run["name"], run["latent_shape"]
        rec = _Recorder(tensors[k] for k in run["noises"])
        y = None
        if run["encoded_latent"]:
            latent = tensors[run["encoded_latent"]].repeat(run["num_samples"], 1, 1, 1, 1)
            mask = torch.zeros(latent.shape[0], 4, *latent.shape[2:], dtype=net_dtype)
            mask[:, :, 0] = 1
            y = torch.cat([mask, latent.to(net_dtype)], dim=1)
        if run["script"].startswith("wan2.2_i2v"):
            high = rec.wrap(_standin(coefficients["i2v high-noise expert"], y), "high")
            low = rec.wrap(_standin(coefficients["i2v low-noise expert"], y), "low")
        else:
            high, low = rec.wrap(_standin(coefficients["t2v"]), "t2v"), None
        states = []
        samples = sample_rcm(high, shape, num_steps=run["num_steps"], sigma_max=run["sigma_max"],
                             ode=run["mode"] == "ode", net_dtype=net_dtype, noise=rec.noise, low_noise_net=low,
                             on_step=lambda i, x: states.append(x))
        ref = run["variants"][variant]
        assert not rec.noises, f"{name}: {len(rec.noises)} recorded noises left unused"
        assert rec.timesteps == ref["net_timesteps"], name
        assert rec.experts == ref["experts_per_step"], name
        for i, key in enumerate(ref["tensors"]["x_after_step"]):
            _bitexact(f"{name} {variant} x after step {i}", states[i], tensors[key])
        _bitexact(f"{name} {variant} final x", states[-1], tensors[ref["tensors"]["final_x_float64"]])
        _bitexact(f"{name} {variant} samples", samples, tensors[ref["tensors"]["samples_float32"]])
