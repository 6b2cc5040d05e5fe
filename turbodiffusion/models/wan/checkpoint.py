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

import contextlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ...quant import dequantize_weight_int8, int8_weight_per_channel, quantize_weight_int8_per_channel
from .config import WanConfig
from .dit import WanDiT
from .tensor_file import TORCH_DTYPES

logger = logging.getLogger("turbodiffusion")

PathLike = Union[str, os.PathLike]
SLA_KEY = ".attn_op.local_attn.proj_l."
INT8_WEIGHT, INT8_SCALE, WEIGHT = ".int8_weight", ".scale", ".weight"

_HF = "https://huggingface.co"
# Where each released DiT checkpoint comes from (nothing is ever downloaded at run time).
FILE_SOURCES: dict[str, str] = {
    **{f"TurboWan2.1-T2V-{m}{q}.pth": f"{_HF}/TurboDiffusion/TurboWan2.1-T2V-{m}"
       for m in ("1.3B-480P", "14B-480P", "14B-720P") for q in ("", "-quant")},
    **{f"TurboWan2.2-I2V-A14B-{e}-720P{q}.pth": f"{_HF}/TurboDiffusion/TurboWan2.2-I2V-A14B-720P"
       for e in ("high", "low") for q in ("", "-quant")},
}

# The released TurboWan files of each architecture (named in errors about a wrong file).
_RELEASE_PREFIX = {"wan2.1-t2v-1.3b": "TurboWan2.1-T2V-1.3B-", "wan2.1-t2v-14b": "TurboWan2.1-T2V-14B-",
                   "wan2.2-i2v-a14b": "TurboWan2.2-I2V-A14B-"}


def expected_files(config_name: str) -> list[str]:
    """The released checkpoint file names of an architecture (empty for the tiny configs)."""
    prefix = _RELEASE_PREFIX.get(config_name)
    return [name for name in FILE_SOURCES if prefix and name.startswith(prefix)]


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
    """Lazy view of a checkpoint: key names, shapes and dtypes without reading data; `load(key)` reads one tensor."""

    def __init__(self, specs: Mapping[str, tuple[torch.Size, torch.dtype]], loader: Callable[[str], torch.Tensor],
                 origin: str):
        self._specs = dict(specs)
        self._loader = loader
        self.origin = origin

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], origin: str) -> "CheckpointTensors":
        """From an in-memory (or mmap-backed, or meta) state dict."""
        bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointMismatchError(f"{origin}: expected a flat state dict of tensors, got non-tensor "
                                          f"entries {bad[:5]}")
        return cls({k: (v.shape, v.dtype) for k, v in tensors.items()}, tensors.__getitem__, origin)

    def keys(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, key: str) -> bool:
        return key in self._specs

    def shape(self, key: str) -> torch.Size:
        return self._specs[key][0]

    def dtype(self, key: str) -> torch.dtype:
        return self._specs[key][1]

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


@contextlib.contextmanager
def _readable(path: Path, expected: str):
    """Turn a reader's failure on a file that is not a checkpoint (truncated, another format) into an error
    naming the file and what was expected."""
    try:
        yield
    except Exception as e:  # torch.load and safe_open raise many types for a bad file
        raise CheckpointMismatchError(f"checkpoint {str(path)!r}: expected {expected}, but it cannot be read "
                                      f"({type(e).__name__}: {e})") from e


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
            with _readable(f, "a .safetensors file"):
                h = safe_open(str(f), framework="pt", device="cpu")
            handles.update({k: h for k in h.keys()})
        specs = {k: (torch.Size(h.get_slice(k).get_shape()), TORCH_DTYPES[h.get_slice(k).get_dtype()])
                 for k, h in handles.items()}
        return CheckpointTensors(specs, lambda k: handles[k].get_tensor(k), origin)
    if len(files) != 1:
        raise ValueError(f"checkpoint paths: expected one .pth file or .safetensors shards, got {origin}")
    with _readable(files[0], "a PyTorch checkpoint saved with torch.save"):
        state = torch.load(files[0], map_location="cpu", mmap=True, weights_only=True)
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{origin}: expected a flat state dict, got {type(state).__name__}")
    return CheckpointTensors.from_tensors(state, origin)


# ---------------------------------------------------------------------------------------------------
def _summary(name: str, keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)} {name}: {keys[:limit]}{more}" if keys else ""


def _converted(source: CheckpointTensors, expected: Mapping[str, torch.Tensor], device
               ) -> tuple[list[tuple[tuple[str, ...], Callable[[], tuple[torch.Tensor, ...]]]], set, list, list, Counter]:
    """The plan of convert_state_dict: (model keys, make) entries, the source keys used, missing keys, shape
    mismatches and a count of each kind of block-linear conversion."""
    plan, used, missing, bad_shapes, conversions = [], set(), [], [], Counter()

    def take(key: str, shape: torch.Size) -> bool:
        used.add(key)
        if source.shape(key) != shape:
            bad_shapes.append(f"{key}: checkpoint {tuple(source.shape(key))}, model {tuple(shape)}")
            return False
        return True

    for key, ref in expected.items():
        layer = key.rsplit(".", 1)[0]
        qkey, skey, wkey = layer + INT8_WEIGHT, layer + INT8_SCALE, layer + WEIGHT
        if qkey in expected and key == skey:
            continue  # an int8 layer's scale: planned with its int8_weight
        if key == qkey:  # the model has an int8 block linear: int8_weight + per-channel scale
            if qkey in source and skey in source:  # a -quant file (block scales) or our per-channel format
                if take(qkey, ref.shape):
                    used.add(skey)
                    plan.append(((qkey, skey), lambda q=qkey, s=skey: int8_weight_per_channel(
                        source.load(q).to(device), source.load(s).to(device))))
                    if len(source.shape(skey)) == 2:
                        conversions["re-encoding %d block linears from 128x128 block scales to per-channel scales"] += 1
            elif wkey in source:  # a plain weight: quantized here
                if take(wkey, ref.shape):
                    plan.append(((qkey, skey), lambda w=wkey: quantize_weight_int8_per_channel(source.load(w).to(device))))
                    conversions["quantizing %d block linears to int8 per channel"] += 1
            else:
                missing += [qkey, skey]
        elif key in source:
            shape = source.shape(key)
            if key == "patch_embedding.weight" and len(shape) == 5 and shape.numel() == ref.numel():
                # original Wan's Conv3d weight [dim, in_dim, kt, kh, kw] is the Linear weight, reshaped
                used.add(key)
                plan.append(((key,), lambda key=key, ref=ref: (source.load(key).reshape(ref.shape),)))
            elif take(key, ref.shape):
                plan.append(((key,), lambda key=key: (source.load(key),)))
        elif key == wkey and qkey in source and skey in source:  # a plain model, an int8 checkpoint
            if take(qkey, ref.shape):
                used.add(skey)
                plan.append(((key,), lambda q=qkey, s=skey, ref=ref: (dequantize_weight_int8(
                    source.load(q).to(device), source.load(s).to(device), ref.dtype),)))
                conversions[f"dequantizing %d block linears to {str(ref.dtype).replace('torch.', '')}"] += 1
        else:
            missing.append(key)
    return plan, used, missing, bad_shapes, conversions


def convert_state_dict(source: CheckpointTensors, expected: Mapping[str, torch.Tensor], *,
                       device: Union[str, torch.device] = "cpu") -> dict[str, torch.Tensor]:
    """Map a checkpoint onto the keys, shapes and dtypes of `expected` (a model's state dict, e.g. on meta).

    Handles the Conv3d patch embedding of original Wan and every pairing of stored and requested block
    linears: plain weights into a plain model; INT8 weights (`-quant` 128x128 block scales or our
    per-channel format) dequantized into a plain model (a WARNING log line says so), or loaded into an
    int8 model (block scales re-encoded per channel, docs/quantization.md); plain weights quantized
    per channel into an int8 model. Raises CheckpointMismatchError listing missing, unexpected and
    mis-shaped keys. Tensors are read, converted and moved one layer at a time.
    """
    plan, used, missing, bad_shapes, conversions = _converted(source, expected, device)
    unexpected = set(source.keys()) - used
    if missing or unexpected or bad_shapes:
        report = "; ".join(s for s in (_summary("missing keys", missing), _summary("unexpected keys", unexpected),
                                       _summary("shape mismatches", bad_shapes)) if s)
        raise CheckpointMismatchError(f"checkpoint {source.origin} does not match the model: {report}")
    for what, count in conversions.items():
        if what.startswith("dequantizing"):  # a bigger model than asked for: say so loudly
            logger.warning("checkpoint %s is int8-quantized but plain (bf16) linears were requested: " + what,
                           source.origin, count)
        else:
            logger.info("checkpoint %s: " + what, source.origin, count)
    state = {}
    for keys, make in plan:
        for key, tensor in zip(keys, make()):
            state[key] = tensor.to(device=device, dtype=expected[key].dtype)
    return state


def load_wan_dit(checkpoint: Union[PathLike, Sequence[PathLike], CheckpointTensors], config: WanConfig, *,
                 dtype: torch.dtype = torch.bfloat16, device: Union[str, torch.device] = "cpu",
                 attention: str = "sdpa", attention_opts: Optional[dict] = None,
                 linear: str = "bf16", token_chunk: Optional[int] = None) -> WanDiT:
    """Build a WanDiT for `config` on the meta device and load a checkpoint into it strictly, on `device`.

    `checkpoint` is a path (or shard paths, see open_checkpoint) or an opened CheckpointTensors. Recognises TurboWan checkpoints (SLA's proj_l present: the model gets it too), `-quant` files and
    original Wan weights. Returns the model in eval mode without gradients.
    """
    source = checkpoint if isinstance(checkpoint, CheckpointTensors) else open_checkpoint(checkpoint)
    sla_params = any(SLA_KEY in k for k in source.keys())
    model = WanDiT(config, dtype=dtype, device="meta", attention=attention, attention_opts=attention_opts,
                   linear=linear, sla_params=sla_params, token_chunk=token_chunk)
    try:
        state = convert_state_dict(source, model.state_dict(), device=device)
    except CheckpointMismatchError as e:
        names = expected_files(config.name)
        expected = f" (one of {', '.join(names)}, or its original Wan weights)" if names else ""
        raise CheckpointMismatchError(f"{e}. Expected a checkpoint of the {config.name} architecture{expected}; "
                                      f"is this the right file?") from None
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
