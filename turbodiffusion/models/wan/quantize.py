"""`turbodiffusion quantize`: write our W8A8 format from a bf16 (or float32) Wan DiT checkpoint.

Every block Linear (self- and cross-attention q, k, v, o; ffn.0; ffn.2) is stored as
`<layer>.int8_weight` (int8 [N, K]) and `<layer>.scale` (float32 [N], one scale per output channel,
quant.quantize_weight_int8_per_channel), which is exactly `Int8Linear`'s state dict; every other tensor
is copied unchanged (dtype, and original Wan's Conv3d patch embedding, which the loader reshapes).
The output is a `.safetensors` file written tensor by tensor (tensor_file.write_safetensors) while the
source is read lazily (mmap / safetensors slices): memory holds one layer at a time, never the model.
`load_wan_dit(out, config, linear="int8")` loads it as is; with linear="bf16" it is dequantized.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch

from ...quant import quantize_weight_int8_per_channel
from .checkpoint import INT8_SCALE, INT8_WEIGHT, CheckpointTensors, PathLike, open_checkpoint
from .tensor_file import TensorSpec, write_safetensors

logger = logging.getLogger("turbodiffusion")

# The weights of the block Linears that make_linear builds (test_wan_quantize checks it against the model).
BLOCK_LINEAR_WEIGHT = re.compile(r"blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])\.weight")
FORMAT = "turbodiffusion-w8a8-int8-per-channel"


def default_output(source: Union[PathLike, Sequence[PathLike]]) -> Path:
    """`<stem>-int8.safetensors` beside the (first) source file, or inside a source folder's parent."""
    first = Path(source if isinstance(source, (str, os.PathLike)) else list(source)[0])
    stem = first.name
    for suffix in (".safetensors.index.json", ".safetensors", ".pth", ".pt"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return first.parent / f"{stem}-int8.safetensors"


def _plan(src: CheckpointTensors) -> list[TensorSpec]:
    specs: list[TensorSpec] = []
    for key in src.keys():
        if BLOCK_LINEAR_WEIGHT.fullmatch(key):
            layer = key[: -len(".weight")]
            specs += [(layer + INT8_WEIGHT, torch.int8, src.shape(key)), (layer + INT8_SCALE, torch.float32,
                                                                          src.shape(key)[:1])]
        else:
            specs.append((key, src.dtype(key), src.shape(key)))
    return specs


def _tensors(src: CheckpointTensors, device) -> Iterator[torch.Tensor]:
    for key in src.keys():
        if BLOCK_LINEAR_WEIGHT.fullmatch(key):
            yield from quantize_weight_int8_per_channel(src.load(key).to(device))
        else:
            yield src.load(key)


def quantize_checkpoint(source: Union[PathLike, Sequence[PathLike]], output: Optional[PathLike] = None, *,
                        device: Union[str, torch.device] = "cpu") -> Path:
    """Quantize the block Linears of a Wan DiT checkpoint (TurboWan `.pth`, original Wan `.safetensors`,
    shards, index or folder) to per-channel INT8 and write `output` (default: default_output(source)).

    The quantization runs on `device` (a GPU makes a 14B model take seconds instead of minutes); the
    result is the same on every device. Returns the output path.
    """
    src = open_checkpoint(source)
    already = [k for k in src.keys() if k.endswith(INT8_WEIGHT)]
    if already:
        raise ValueError(f"source: {src.origin} is already int8-quantized ({len(already)} keys like {already[0]!r}); "
                         f"expected a bf16/float32 checkpoint")
    n_linears = sum(bool(BLOCK_LINEAR_WEIGHT.fullmatch(k)) for k in src.keys())
    if not n_linears:
        raise ValueError(f"source: {src.origin} has no Wan DiT block linears (expected keys like "
                         f"'blocks.0.self_attn.q.weight')")
    output = Path(output) if output is not None else default_output(source)
    if output.suffix != ".safetensors":
        raise ValueError(f"output: expected a .safetensors path, got {str(output)!r}")
    write_safetensors(output, _plan(src), _tensors(src, torch.device(device)),
                      {"format": FORMAT, "source": src.origin})
    logger.info("wrote %s: %d block linears quantized to int8 per channel", output, n_linears)
    return output
