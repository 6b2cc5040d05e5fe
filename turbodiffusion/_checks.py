"""Input validation shared by every op's Python entry point.

Each check raises a ValueError/TypeError that names the argument, the expected and the given value.
The C++ launchers repeat the checks with the same wording (csrc/ops/checks.h), so a direct
`torch.ops.turbodiffusion.*` call on CUDA fails just as clearly.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

HALF_DTYPES = (torch.bfloat16, torch.float16)
LAYOUTS = ("NHD", "HND")


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return "/".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(name: str, t, *, dtypes: Sequence[torch.dtype] | None = None, ndim: int | None = None,
                 device: torch.device | None = None, last_dim_contiguous: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {_names(dtypes)}, got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got {t.dim()}-D with shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (like the first argument), got {t.device}")
    if last_dim_contiguous and t.dim() > 0 and t.size(-1) > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: expected a unit stride in the last dimension, got strides {tuple(t.stride())}")


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")


def check_choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {tuple(allowed)}, got {value!r}")


def check_head_dim(name: str, d: int, supported: Sequence[int] = (64, 128)) -> None:
    if d not in supported:
        raise ValueError(f"{name}: head dim {d} is not supported (supported: {tuple(supported)})")


def bhnd(t: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    """(B, H, N, D) of an attention tensor in the given layout."""
    if layout == "NHD":
        b, n, h, d = t.shape
    else:
        b, h, n, d = t.shape
    return b, h, n, d


def check_attention_tensor(name: str, t, layout: str, *, device=None) -> tuple[int, int, int, int]:
    check_tensor(name, t, dtypes=HALF_DTYPES, ndim=4, device=device)
    b, h, n, d = bhnd(t, layout)
    check_head_dim(name, d)
    return b, h, n, d
