"""Real model weights for the ``weights`` tests: one loader per family, shared by the family contract
(``test_family_weights.py``) and the family files' own layout checks. Each family's folder comes from an
environment variable (a diffusers folder, or a repo id in the local Hugging Face cache); a test without it
skips. On a GPU the models run in bf16 at Flow-GRPO's sizes; on a CPU at smaller sizes to bound time and
memory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch


@dataclass(frozen=True)
class RealFamily:
    """One family's real checkpoint, and what the family contract expects of it."""

    env: str
    what: str
    load: Callable[[str, bool], tuple[Any, Any]]
    """(source, cuda) -> (backbone, sizes): ``sizes`` is the side of the square images, or (height, width,
    frames) of the videos."""
    prompt: str
    cond_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Shapes of ``encode([prompt])``'s tensors, by key."""
    lora: tuple[int, int] = (32, 64)
    """(rank, alpha) of Flow-GRPO's adapter for this model."""
    guidance: float | None = 4.5
    """The trainer's guidance argument (None: the backbone's distilled guidance, no CFG)."""


def _sd35m(source: str, cuda: bool) -> tuple[Any, int]:
    from opgrpo_bench.backbones.sd3 import SD3Backbone

    resolution = 512 if cuda else 256
    return SD3Backbone.from_pretrained(
        source, dtype=torch.bfloat16, device="cuda" if cuda else "cpu", max_sequence_length=128,
        resolution=resolution, max_batch=8, what="SD3.5-Medium weights", env="OPGRPO_SD35M_PATH",
    ), resolution


def _flux_dev(source: str, cuda: bool) -> tuple[Any, int]:
    from opgrpo_bench.backbones.flux import FluxBackbone

    # the 12B transformer alone is about 24 GB in bf16
    resolution = 512 if cuda else 256
    return FluxBackbone.from_pretrained(
        source, dtype=torch.bfloat16, device="cuda" if cuda else "cpu", max_sequence_length=128,
        resolution=resolution, max_batch=4, vae_dtype=torch.float32, what="FLUX.1-dev weights",
        env="OPGRPO_FLUX_PATH",
    ), resolution


def _wan21(source: str, cuda: bool) -> tuple[Any, tuple[int, int, int]]:
    from opgrpo_bench.backbones.wan import WanBackbone

    height, width, frames = (240, 416, 33) if cuda else (160, 160, 5)
    return WanBackbone.from_pretrained(
        source, dtype=torch.bfloat16, device="cuda" if cuda else "cpu", max_sequence_length=512, height=height,
        width=width, num_frames=frames, max_batch=2, vae_dtype=torch.float32, what="Wan2.1-T2V-1.3B weights",
        env="OPGRPO_WAN_PATH",
    ), (height, width, frames)


REAL = {
    # CLIP-L|CLIP-G (77 tokens) ++ T5 (128 tokens); pooled CLIP-L|CLIP-G
    "sd35m": RealFamily("OPGRPO_SD35M_PATH", "a Stable Diffusion 3.5 Medium diffusers folder", _sd35m,
                        'A sign that says "HELLO"', {"embeds": (1, 77 + 128, 4096), "pooled": (1, 2048)},
                        lora=(32, 64), guidance=4.5),
    # T5-XXL, CLIP-L; guidance-distilled: no CFG in the trainer
    "flux-dev": RealFamily("OPGRPO_FLUX_PATH", "a FLUX.1-dev diffusers folder", _flux_dev,
                           "a red fox in fresh snow at dawn", {"embeds": (1, 128, 4096), "pooled": (1, 768)},
                           lora=(64, 128), guidance=None),
    # UMT5-XXL
    "wan21": RealFamily("OPGRPO_WAN_PATH", "a Wan2.1-T2V-1.3B diffusers folder", _wan21,
                        'A wooden sign that says "NORTH RIDGE"', {"embeds": (1, 512, 4096)},
                        lora=(32, 64), guidance=4.5),
}


def load_real(name: str) -> tuple[Any, Any]:
    """(backbone, sizes) of family ``name`` from its environment variable, or a skip that says what to set."""
    family = REAL[name]
    source = os.environ.get(family.env)
    if not source:
        pytest.skip(f"set {family.env} to {family.what}")
    return family.load(source, torch.cuda.is_available())
