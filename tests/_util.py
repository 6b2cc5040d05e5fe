"""Helpers shared by the op tests: fresh random inputs, poisoned allocations, error metrics."""
from __future__ import annotations

import torch


def poison_allocator(device: str, nbytes: int = 64 << 20) -> None:
    """Fill free memory of the caching allocator with 0xFF (NaN / -1 patterns), so an op's
    at::empty outputs start poisoned: an element the kernel forgets to write cannot pass as 0."""
    if device == "cuda":
        buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        buf.fill_(0xFF)
        del buf


def attention_inputs(b: int, h: int, n: int, d: int, layout: str, dtype: torch.dtype, *, family: str = "gaussian",
                     seed: int | None = None, device: str = "cpu") -> torch.Tensor:
    """A [B, N, H, D] (NHD) or [B, H, N, D] (HND) tensor from a standard input family:
    gaussian; bias (gaussian + per-channel offset of std 4, like K's outlier channels); peaky (x 8)."""
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % (2**31))
    x = torch.randn(b, h, n, d, generator=g)
    if family == "bias":
        x = x + 4.0 * torch.randn(b, h, 1, d, generator=g)
    elif family == "peaky":
        x = x * 8.0
    if layout == "NHD":
        x = x.transpose(1, 2).contiguous()
    return x.to(dtype=dtype, device=device)


def skip_unless_kernel_runs(device: str, kernel: str) -> None:
    """Skip a CUDA case of an arch-specific kernel ("sm90": Hopper only; "mma": every supported GPU)."""
    import pytest

    if device == "cuda" and kernel == "sm90" and torch.cuda.get_device_capability() != (9, 0):
        major, minor = torch.cuda.get_device_capability()
        pytest.skip(f"the sm90 kernel needs an sm_90 GPU, this one is sm_{major}{minor}")


def to_bhnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if layout == "NHD" else x


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().sum() / b.abs().sum().clamp_min(1e-30)).item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def lse_atol(kernel: str, atol: float = 1e-4) -> float:
    """Bound on |LSE of the kernel - LSE of its emulation| (atol: the mma.sync kernel's, whose row sums l are
    fp32 sums as in the emulation). The sm90 kernel's l are the FP8 tensor cores' sums of the E4M3 P (its P V
    wgmma with rows of ones, Sm90AttnConfig::kVRows), whose accumulator drops low-order bits (why O is
    accumulated in two levels): l comes out below the emulation's exact sum, by 5e-4 to 8e-4 relative on
    average and at most 2.5e-3 over the exactness cases (H100, 2026-11-27), and the LSE moves by l's relative
    error (ln l). O carries the same truncation, so out = O / l is consistent. The bound still tells the
    recipes apart: on the same cases the emulation with fp32 row sums differs from the E4M3 one by up to 2.4e-2
    in the LSE (and 2.5e-3 to 4.8e-3 relative L1 in out, against the tests' 2e-3)."""
    return 5e-3 if kernel == "sm90" else atol
