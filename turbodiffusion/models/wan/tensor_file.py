"""A streaming `.safetensors` writer: the header is written first from the tensors' names, dtypes and
shapes, then each tensor's bytes as it is produced, so a 14B checkpoint is never held in memory.

File layout (the safetensors format): an 8-byte little-endian header length, a JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}} padded with
spaces to a multiple of 8 bytes, then the tensors' little-endian C-order bytes back to back in header
order. Files written here load with `safetensors.safe_open` (and with `open_checkpoint`).
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

import torch

# torch dtype <-> safetensors dtype name
SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
TORCH_DTYPES: dict[str, torch.dtype] = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}

TensorSpec = tuple[str, torch.dtype, Sequence[int]]  # name, dtype, shape


def _nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def write_safetensors(path: Union[str, os.PathLike], specs: Sequence[TensorSpec], tensors: Iterable[torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write `tensors` (an iterable yielding them in `specs` order, e.g. a generator) to `path`.

    Each tensor must match its spec's dtype and shape; it is copied to the CPU and written before the
    next is drawn. The file is written under a `.partial` name and renamed when complete.
    """
    header, offset = {}, 0
    for name, dtype, shape in specs:
        if dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: dtype {dtype} has no safetensors name; expected one of {list(SAFETENSORS_DTYPES)}")
        size = _nbytes(dtype, shape)
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    written = 0
    try:
        with open(partial, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for (name, dtype, shape), tensor in zip(specs, tensors):
                if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                    raise ValueError(f"{name}: expected {dtype} {tuple(shape)} as announced in the header, got "
                                     f"{tensor.dtype} {tuple(tensor.shape)}")
                f.write(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
                written += 1
        if written != len(specs):
            raise ValueError(f"tensors: expected {len(specs)} tensors, got {written}")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    return path
