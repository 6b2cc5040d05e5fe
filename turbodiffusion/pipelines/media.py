"""Image input and mp4 output (imageio with the ffmpeg that imageio-ffmpeg ships; imported lazily)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F

FPS = 16


def load_image(path: Union[str, os.PathLike], width: int, height: int) -> torch.Tensor:
    """Read an image as RGB, resize it to width x height (bilinear, antialiased; no crop, like the reference)
    and scale to [-1, 1]: float32 [3, height, width]."""
    import imageio.v3 as iio

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image: file {str(p)!r} not found")
    pixels = torch.from_numpy(iio.imread(p)).float()
    if pixels.dim() == 2:  # grayscale
        pixels = pixels[..., None].expand(-1, -1, 3)
    if pixels.dim() != 3 or pixels.shape[-1] not in (3, 4):
        raise ValueError(f"image: expected an RGB(A) or grayscale image in {str(p)!r}, got an array of shape "
                         f"{tuple(pixels.shape)}")
    image = pixels[..., :3].permute(2, 0, 1)[None] / 255.0
    image = F.interpolate(image, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return (image[0].clamp(0, 1) * 2 - 1).contiguous()


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """Video [3, T, H, W] in [-1, 1] (clamped here) -> uint8 frames [T, H, W, 3]."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu()


def write_mp4(frames: torch.Tensor, path: Union[str, os.PathLike], fps: int = FPS) -> Path:
    """Write uint8 frames [T, H, W, 3] as an H.264 mp4 (H and W multiples of 16 are kept exactly)."""
    import imageio.v2 as iio

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    writer = iio.get_writer(p, fps=fps, codec="libx264", quality=8, macro_block_size=16, ffmpeg_log_level="error")
    try:
        for frame in frames.numpy():
            writer.append_data(frame)
    finally:
        writer.close()
    return p
