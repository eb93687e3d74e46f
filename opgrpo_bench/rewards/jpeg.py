"""JPEG (in)compressibility rewards, as defined in DDPO (Black et al., 2023).

The image is quantised to uint8 (``round(x * 255)``), encoded by Pillow as JPEG at quality 95, and the
file size is measured in kilobytes (bytes / 1000). ``jpeg-incompressibility`` rewards large files
(detail, texture, noise); ``jpeg-compressibility`` is its negative (flat, simple images). Flow-GRPO
additionally divides the compressibility reward by 500; pass ``scale=1/500`` to reproduce that.
"""

from __future__ import annotations

import io
import math
from typing import Any

import torch
from PIL import Image

from opgrpo_bench.rewards.base import BaseReward, RewardOutput, to_uint8_hwc


def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """JPEG file size in kB of each image of a [B, C, H, W] batch in [0, 1]."""
    sizes = []
    for array in to_uint8_hwc(images):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegIncompressibility(BaseReward):
    """JPEG size in kB at quality 95 (DDPO): higher for detailed images."""

    name = "jpeg-incompressibility"
    higher_is_better = True
    range = (0.0, math.inf)
    needs = "CPU; Pillow only"

    def __init__(self, quality: int = 95, scale: float = 1.0):
        """Args: quality: JPEG quality; scale: multiplies the size in kB."""
        self.quality, self.scale = quality, scale

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        size = jpeg_size_kb(images, self.quality)
        return RewardOutput(self.scale * size, components={"jpeg_kb": size})


class JpegCompressibility(JpegIncompressibility):
    """Negative JPEG size in kB at quality 95 (DDPO): higher for simple, flat images."""

    name = "jpeg-compressibility"
    higher_is_better = True
    range = (-math.inf, 0.0)

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        size = jpeg_size_kb(images, self.quality)
        return RewardOutput(-self.scale * size, components={"jpeg_kb": size})
