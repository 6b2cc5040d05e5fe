"""The 24 GB plan on paper, checked by running our own code on meta tensors (benchmarks/bench_memory.py,
estimate_dit_peak): the 14B-720p DiT stage with int8 linears fits 24 GB only with token chunking."""
from __future__ import annotations

import torch

from benchmarks.bench_memory import LiveBytes, TOKEN_CHUNK, estimate_dit_peak

BUDGET = 24e9


def test_live_bytes_counts_storages_until_their_last_view_dies():
    mode = LiveBytes()
    with mode:
        a = torch.empty(1000, device="meta")
        b = a * 2
        view = b.view(10, 100)
        del b
        assert mode.live == 8000  # b's storage lives on in its view
        del view
        assert mode.live == 4000 and mode.peak == 8000


def test_14b_720p_int8_dit_stage_fits_24gb_with_token_chunking():
    weights, activations = estimate_dit_peak("wan2.1-t2v-14b", TOKEN_CHUNK)
    stage = (weights + activations) * 2**30
    assert 13.5 < weights < 13.6, weights  # 14.5e9 bytes of int8 weights and bf16 embeddings
    assert stage < BUDGET - 2 * 2**30, f"DiT stage {stage / 1e9:.2f} GB: less than 2 GiB of headroom under 24 GB"
    assert activations < 5.0, activations
