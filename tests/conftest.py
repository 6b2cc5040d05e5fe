"""Shared test fixtures.

Tests are written once and run on every available device: `device` is "cpu" (the op runs its
reference) and, with a GPU and the compiled extension, "cuda" (the kernel, compared with the
reference). GPU-only tests carry the `gpu` marker and are skipped with a visible reason elsewhere.
"""
from __future__ import annotations

import os
import pathlib

import pytest
import torch

import turbodiffusion

REPO = pathlib.Path(__file__).resolve().parents[1]
HAS_GPU = torch.cuda.is_available() and turbodiffusion.HAS_KERNELS
GPU_SKIP_REASON = ("no CUDA device" if not torch.cuda.is_available()
                   else "turbodiffusion._C not built") if not HAS_GPU else ""

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def golden_dir() -> pathlib.Path:
    """The golden folder: $TD_GOLDEN_DIR, default ../shared/golden beside the repository."""
    return pathlib.Path(os.environ.get("TD_GOLDEN_DIR", REPO.parent / "shared" / "golden"))


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def golden() -> pathlib.Path:
    d = golden_dir()
    if not d.is_dir():
        pytest.fail(f"golden folder {d} not found: set TD_GOLDEN_DIR to a folder of the shared/golden format")
    return d


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason=f"GPU test skipped: {GPU_SKIP_REASON}")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)
