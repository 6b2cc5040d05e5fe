"""Frame sizes and counts the Wan pipelines accept, and the latent shape they imply."""
from __future__ import annotations

VAE_STRIDE_T, VAE_STRIDE_HW = 4, 8  # Wan2.1 VAE compression (time, space)
LATENT_CHANNELS = 16
SIZE_MULTIPLE = 16  # VAE stride 8 x DiT patch 2

# (width, height) per resolution and aspect ratio (W:H), as in TurboDiffusion's inference scripts.
RESOLUTIONS: dict[str, dict[str, tuple[int, int]]] = {
    "480p": {"16:9": (832, 480), "9:16": (480, 832), "1:1": (640, 640), "4:3": (640, 480), "3:4": (480, 640)},
    "720p": {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (960, 960), "4:3": (960, 720), "3:4": (720, 960)},
}
# The tiny model's default sizes: small enough for a CPU run in seconds.
TINY_SIZES: dict[str, tuple[int, int]] = {"16:9": (160, 96), "9:16": (96, 160), "1:1": (128, 128),
                                          "4:3": (128, 96), "3:4": (96, 128)}
ASPECT_RATIOS = tuple(TINY_SIZES)


def video_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(width, height) of a resolution ("480p", "720p", or "tiny") at an aspect ratio ("16:9", ...)."""
    table = TINY_SIZES if resolution == "tiny" else RESOLUTIONS.get(resolution)
    if table is None:
        raise ValueError(f"resolution: expected one of {tuple(RESOLUTIONS)}, got {resolution!r}")
    if aspect_ratio not in table:
        raise ValueError(f"aspect_ratio: expected one of {ASPECT_RATIOS}, got {aspect_ratio!r}")
    return table[aspect_ratio]


def check_num_frames(num_frames: int) -> int:
    """The VAE maps 1 + 4k pixel frames to 1 + k latent frames: require num_frames = 4n + 1 >= 1."""
    if num_frames < 1 or (num_frames - 1) % VAE_STRIDE_T:
        raise ValueError(f"num_frames: expected 4n+1 frames (e.g. 17, 81), got {num_frames}")
    return num_frames


def latent_shape(num_frames: int, width: int, height: int, batch: int = 1) -> tuple[int, int, int, int, int]:
    """[B, 16, 1 + (F-1)/4, H/8, W/8] for F frames of width x height (multiples of 16)."""
    check_num_frames(num_frames)
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE or width <= 0 or height <= 0:
        raise ValueError(f"width, height: expected positive multiples of {SIZE_MULTIPLE}, got {width} x {height}")
    return (batch, LATENT_CHANNELS, 1 + (num_frames - 1) // VAE_STRIDE_T, height // VAE_STRIDE_HW,
            width // VAE_STRIDE_HW)
