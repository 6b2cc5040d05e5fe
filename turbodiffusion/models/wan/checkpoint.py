"""Loading Wan DiT checkpoints: TurboWan `.pth` (bf16 and `-quant`) and original Wan2.1/2.2 weights.

Formats (golden README §3):
- TurboWan `.pth`: a flat state dict of TurboDiffusion's network; the patch embedding is a Linear
  [dim, in_dim*4]; every self-attention carries SLA's `attn_op.local_attn.proj_l.{weight,bias}`.
- TurboWan `-quant.pth`: in addition every block Linear stores `<layer>.int8_weight` (int8 [out, in])
  and `<layer>.scale` (float32 128x128 block scales) instead of `<layer>.weight`.
- Original Wan: `.safetensors` (one file, shards, or a folder with an index) or `.pth`; the patch
  embedding is a Conv3d [dim, in_dim, 1, 2, 2], which is the Linear weight reshaped (features c, kt, kh, kw).

Memory: the model is built on the meta device, tensors are read one at a time (`torch.load(mmap=True)`,
safetensors slices), converted to the model's dtype on the target device and assigned in place
(`load_state_dict(assign=True)`), so no second full copy of the weights is ever held.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ...quant import dequantize_weight_int8_block128
from .config import WanConfig
from .dit import WanDiT

logger = logging.getLogger("turbodiffusion")

PathLike = Union[str, os.PathLike]
SLA_KEY = ".attn_op.local_attn.proj_l."
INT8_WEIGHT, INT8_SCALE = ".int8_weight", ".scale"

_HF = "https://huggingface.co"
# Where each released DiT checkpoint comes from (nothing is ever downloaded at run time).
FILE_SOURCES: dict[str, str] = {
    **{f"TurboWan2.1-T2V-{m}{q}.pth": f"{_HF}/TurboDiffusion/TurboWan2.1-T2V-{m}"
       for m in ("1.3B-480P", "14B-480P", "14B-720P") for q in ("", "-quant")},
    **{f"TurboWan2.2-I2V-A14B-{e}-720P{q}.pth": f"{_HF}/TurboDiffusion/TurboWan2.2-I2V-A14B-720P"
       for e in ("high", "low") for q in ("", "-quant")},
}


def require_file(path: PathLike, what: str, *, flag: Optional[str] = None, source: Optional[str] = None) -> Path:
    """Return `path` as a Path if it exists, else raise FileNotFoundError naming the file, what it is for and
    where it comes from (`source`, else looked up by file name in FILE_SOURCES)."""
    p = Path(path)
    if p.exists():
        return p
    source = source or FILE_SOURCES.get(p.name)
    where = f"it comes from {source}" if source else "no known download location for this name"
    how = f" and pass its path with {flag}" if flag else ""
    raise FileNotFoundError(f"{what}: file {p.name!r} not found at {p}; {where}. Download it yourself "
                            f"(nothing is downloaded at run time){how}.")


def load_flat_checkpoint(build: Callable[[], nn.Module], path: PathLike, *, what: str, file_name: str, source: str,
                         dtype: torch.dtype, device) -> nn.Module:
    """Load a flat `.pth` state dict (the VAE's, the umT5 encoder's) strictly into `build()`.

    The module is built on the meta device and takes the memory-mapped tensors as its parameters, so the
    file is read once and no second copy is made before the dtype/device cast. Errors name the argument,
    the expected file and where it comes from.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: {what} checkpoint {str(p)!r} not found; expected the file {file_name} "
                                f"from {source}")
    with torch.device("meta"):
        model = build()
    state_dict = torch.load(p, map_location="cpu", mmap=True, weights_only=True)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"path: {str(p)!r} is not a {what} state dict ({file_name}): {e}") from e
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not match the model (message lists the differences)."""


# ---------------------------------------------------------------------------------------------------
class CheckpointTensors:
    """Lazy view of a checkpoint: key names and shapes without reading data; `load(key)` reads one tensor."""

    def __init__(self, shapes: Mapping[str, torch.Size], loader: Callable[[str], torch.Tensor], origin: str):
        self._shapes = dict(shapes)
        self._loader = loader
        self.origin = origin

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], origin: str) -> "CheckpointTensors":
        """From an in-memory (or mmap-backed, or meta) state dict."""
        bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointMismatchError(f"{origin}: expected a flat state dict of tensors, got non-tensor "
                                          f"entries {bad[:5]}")
        return cls({k: v.shape for k, v in tensors.items()}, tensors.__getitem__, origin)

    def keys(self) -> list[str]:
        return list(self._shapes)

    def __contains__(self, key: str) -> bool:
        return key in self._shapes

    def shape(self, key: str) -> torch.Size:
        return self._shapes[key]

    def load(self, key: str) -> torch.Tensor:
        return self._loader(key)


def _safetensors_files(path: Path) -> list[Path]:
    """The shard files of a .safetensors file, an index .json, or a folder holding either."""
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if len(indexes) == 1:
            return _safetensors_files(indexes[0])
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"checkpoint folder {path}: expected *.safetensors files (or one "
                                    f"*.safetensors.index.json), found none")
        return files
    if path.suffix == ".json":
        weight_map = json.loads(path.read_text())["weight_map"]
        return [require_file(path.parent / f, "checkpoint shard") for f in sorted(set(weight_map.values()))]
    return [path]


def open_checkpoint(paths: Union[PathLike, Sequence[PathLike]]) -> CheckpointTensors:
    """Open a checkpoint lazily: a `.pth`/`.pt` file (mmap), `.safetensors` file(s), an index `.json` or a folder."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for p in paths:
        p = require_file(p, "DiT checkpoint")
        files += _safetensors_files(p) if p.is_dir() or p.suffix in (".safetensors", ".json") else [p]
    origin = ", ".join(str(f) for f in files)
    if all(f.suffix == ".safetensors" for f in files):
        from safetensors import safe_open  # optional dependency (extra "wan")

        handles = {}
        for f in files:
            h = safe_open(str(f), framework="pt", device="cpu")
            handles.update({k: h for k in h.keys()})
        shapes = {k: torch.Size(h.get_slice(k).get_shape()) for k, h in handles.items()}
        return CheckpointTensors(shapes, lambda k: handles[k].get_tensor(k), origin)
    if len(files) != 1:
        raise ValueError(f"checkpoint paths: expected one .pth file or .safetensors shards, got {origin}")
    state = torch.load(files[0], map_location="cpu", mmap=True, weights_only=True)
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{origin}: expected a flat state dict, got {type(state).__name__}")
    return CheckpointTensors.from_tensors(state, origin)


# ---------------------------------------------------------------------------------------------------
def _summary(name: str, keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)} {name}: {keys[:limit]}{more}" if keys else ""


def convert_state_dict(source: CheckpointTensors, expected: Mapping[str, torch.Tensor], *,
                       device: Union[str, torch.device] = "cpu") -> dict[str, torch.Tensor]:
    """Map a checkpoint onto the keys, shapes and dtypes of `expected` (a model's state dict, e.g. on meta).

    Handles the Conv3d patch embedding of original Wan and int8 `-quant` block linears (dequantized to
    the expected dtype). Raises CheckpointMismatchError listing missing, unexpected and mis-shaped keys.
    Tensors are read, converted and moved one at a time.
    """
    plan: dict[str, Callable[[], torch.Tensor]] = {}
    used: set[str] = set()
    missing, bad_shapes = [], []
    dequantized: list[torch.dtype] = []  # target dtype of every dequantized layer
    for key, ref in expected.items():
        layer = key[: -len(".weight")]
        if key in source:
            used.add(key)
            shape = source.shape(key)
            if shape == ref.shape:
                plan[key] = lambda key=key: source.load(key)
            elif key == "patch_embedding.weight" and len(shape) == 5 and shape.numel() == ref.numel():
                # original Wan's Conv3d weight [dim, in_dim, kt, kh, kw] is the Linear weight, reshaped
                plan[key] = lambda key=key, ref=ref: source.load(key).reshape(ref.shape)
            else:
                bad_shapes.append(f"{key}: checkpoint {tuple(shape)}, model {tuple(ref.shape)}")
        elif key.endswith(".weight") and layer + INT8_WEIGHT in source and layer + INT8_SCALE in source:
            qkey, skey = layer + INT8_WEIGHT, layer + INT8_SCALE
            used.update((qkey, skey))
            if source.shape(qkey) != ref.shape:
                bad_shapes.append(f"{qkey}: checkpoint {tuple(source.shape(qkey))}, model weight {tuple(ref.shape)}")
                continue
            plan[key] = lambda qkey=qkey, skey=skey, ref=ref: dequantize_weight_int8_block128(
                source.load(qkey).to(device), source.load(skey).to(device), ref.dtype)
            dequantized.append(ref.dtype)
        else:
            missing.append(key)
    unexpected = set(source.keys()) - used
    if missing or unexpected or bad_shapes:
        report = "; ".join(s for s in (_summary("missing keys", missing), _summary("unexpected keys", unexpected),
                                       _summary("shape mismatches", bad_shapes)) if s)
        raise CheckpointMismatchError(f"checkpoint {source.origin} does not match the model: {report}")
    if dequantized:
        logger.warning("checkpoint %s is int8-quantized (-quant) but plain (bf16) linears were requested: "
                       "dequantizing %d block linears to %s", source.origin, len(dequantized),
                       "/".join(sorted({str(d).replace("torch.", "") for d in dequantized})))
    return {key: make().to(device=device, dtype=expected[key].dtype) for key, make in plan.items()}


def load_wan_dit(checkpoint: Union[PathLike, Sequence[PathLike], CheckpointTensors], config: WanConfig, *,
                 dtype: torch.dtype = torch.bfloat16, device: Union[str, torch.device] = "cpu",
                 attention: str = "sdpa", attention_opts: Optional[dict] = None,
                 linear: str = "bf16") -> WanDiT:
    """Build a WanDiT for `config` on the meta device and load a checkpoint into it strictly, on `device`.

    `checkpoint` is a path (or shard paths, see open_checkpoint) or an opened CheckpointTensors. Recognises TurboWan checkpoints (SLA's proj_l present: the model gets it too), `-quant` files and
    original Wan weights. Returns the model in eval mode without gradients.
    """
    source = checkpoint if isinstance(checkpoint, CheckpointTensors) else open_checkpoint(checkpoint)
    sla_params = any(SLA_KEY in k for k in source.keys())
    model = WanDiT(config, dtype=dtype, device="meta", attention=attention, attention_opts=attention_opts,
                   linear=linear, sla_params=sla_params)
    state = convert_state_dict(source, model.state_dict(), device=device)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
