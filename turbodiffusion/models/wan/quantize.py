"""`turbodiffusion quantize`: write our W8A8 format from a bf16 (or float32) Wan DiT checkpoint.

Every block Linear (self- and cross-attention q, k, v, o; ffn.0; ffn.2) is stored as
`<layer>.int8_weight` (int8 [N, K]) and `<layer>.scale` (float32 [N], one scale per output channel,
quant.quantize_weight_int8_per_channel), which is exactly `Int8Linear`'s state dict; every other tensor
is copied unchanged (dtype, and original Wan's Conv3d patch embedding, which the loader reshapes).
The output is a `.safetensors` file written tensor by tensor (tensor_file.write_safetensors) while the
source is read lazily (mmap / safetensors slices): memory holds one layer at a time, never the model.
`load_wan_dit(out, config, linear="int8")` loads it as is; with linear="bf16" it is dequantized.
A `-quant` source has its 128x128 block scales re-encoded per channel instead.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch

from ...quant import int8_weight_per_channel, quantize_weight_int8_per_channel
from .checkpoint import INT8_SCALE, INT8_WEIGHT, WEIGHT, CheckpointTensors, PathLike, open_checkpoint
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


def _layers(src: CheckpointTensors) -> dict[str, str]:
    """Block linears of the source: layer -> "plain" (a .weight to quantize) or "block128" (a -quant layer whose
    128x128 block scales are re-encoded per channel)."""
    layers = {}
    for key in src.keys():
        if BLOCK_LINEAR_WEIGHT.fullmatch(key):
            layers[key[: -len(WEIGHT)]] = "plain"
        elif key.endswith(INT8_WEIGHT):
            layer = key[: -len(INT8_WEIGHT)]
            if len(src.shape(layer + INT8_SCALE)) != 2:
                raise ValueError(f"source: {src.origin} is already in the per-channel int8 format ({key!r} has "
                                 f"per-channel scales); expected a bf16/float32 or -quant checkpoint")
            layers[layer] = "block128"
    return layers


def _plan(src: CheckpointTensors, layers: dict[str, str]) -> list[tuple[str, list[TensorSpec]]]:
    """(source key, output specs) in source order: a linear's weight (or int8_weight) yields its two outputs,
    its -quant scale none (it is consumed with the int8_weight), every other tensor itself."""
    plan = []
    for key in src.keys():
        layer, _, leaf = key.rpartition(".")
        kind = layers.get(layer)
        if kind is not None and "." + leaf in (WEIGHT, INT8_WEIGHT):
            shape = src.shape(key)
            plan.append((key, [(layer + INT8_WEIGHT, torch.int8, shape), (layer + INT8_SCALE, torch.float32,
                                                                          shape[:1])]))
        elif kind == "block128" and "." + leaf == INT8_SCALE:
            plan.append((key, []))
        else:
            plan.append((key, [(key, src.dtype(key), src.shape(key))]))
    return plan


def _tensors(src: CheckpointTensors, plan, layers: dict[str, str], device) -> Iterator[torch.Tensor]:
    for key, specs in plan:
        layer = key.rpartition(".")[0]
        if len(specs) == 2 and layers[layer] == "plain":
            yield from quantize_weight_int8_per_channel(src.load(key).to(device))
        elif len(specs) == 2:
            yield from int8_weight_per_channel(src.load(key).to(device), src.load(layer + INT8_SCALE).to(device))
        elif specs:
            yield src.load(key)


def quantize_checkpoint(source: Union[PathLike, Sequence[PathLike]], output: Optional[PathLike] = None, *,
                        device: Union[str, torch.device] = "cpu") -> Path:
    """Quantize the block Linears of a Wan DiT checkpoint (TurboWan `.pth`, original Wan `.safetensors`,
    shards, index or folder) to per-channel INT8 and write `output` (default: default_output(source)).
    A TurboWan `-quant` file is accepted too: its 128x128 block scales are re-encoded per channel, as
    loading would do (docs/quantization.md), so the result loads without that step.

    The quantization runs on `device` (a GPU makes a 14B model take seconds instead of minutes); the
    result is the same on every device. Returns the output path.
    """
    src = open_checkpoint(source)
    layers = _layers(src)
    if not layers:
        raise ValueError(f"source: {src.origin} has no Wan DiT block linears (expected keys like "
                         f"'blocks.0.self_attn.q.weight')")
    output = Path(output) if output is not None else default_output(source)
    if output.suffix != ".safetensors":
        raise ValueError(f"output: expected a .safetensors path, got {str(output)!r}")
    plan = _plan(src, layers)
    write_safetensors(output, [spec for _, specs in plan for spec in specs], _tensors(src, plan, layers, device),
                      {"format": FORMAT, "source": src.origin})
    logger.info("wrote %s: %d block linears in int8 with per-channel scales", output, len(layers))
    return output
