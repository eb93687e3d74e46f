"""Image grids of evaluation samples: what a text-to-image benchmark shows besides numbers.

The evaluation draws its samples from fixed noises (the same for every run of a task), so the grids of two
runs, or of two steps of one run, show the same prompts from the same starting points: differences are the
policy's. A grid holds the first :data:`GRID_IMAGES` evaluation samples in prompt order; a video
contributes its middle frame.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

GRID_IMAGES = 16
"""Evaluation samples per grid."""
TILE = 128
"""Longest side of a tile in pixels: small images are enlarged (nearest neighbour, so 8x8 digits stay
readable), large ones reduced, so that a grid stays a few hundred kilobytes whatever the task."""
IMAGES_DIR = "images"
"""A run directory's folder of evaluation grids, ``step000010.png`` and so on."""


def grid(images: torch.Tensor) -> "Image.Image":  # noqa: F821 (PIL imported on use)
    """A PIL image of ``images`` [N, C, H, W] in [0, 1] (or videos [N, F, C, H, W]: the middle frame), in
    rows of ``ceil(sqrt(N))`` tiles."""
    from PIL import Image

    if images.ndim == 5:
        images = images[:, images.shape[1] // 2]
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    scale = TILE / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    mode = "nearest" if scale >= 1 else "area"
    tiles = torch.nn.functional.interpolate(images, size=(th, tw), mode=mode)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.ones((c, rows * (th + 2) + 2, cols * (tw + 2) + 2))
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[:, 2 + r * (th + 2): 2 + r * (th + 2) + th, 2 + k * (tw + 2): 2 + k * (tw + 2) + tw] = tiles[i]
    array = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if c == 1 else array[:, :, :3], mode="L" if c == 1 else "RGB")


def save_grid(images: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write :func:`grid` of ``images`` to ``path`` as PNG (atomically, without a time stamp)."""
    from opgrpo_bench.storage import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = grid(images)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
    return path
