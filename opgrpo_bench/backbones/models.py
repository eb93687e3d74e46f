"""The named model backbones of the registry (``opgrpo-bench list backbones``), at the settings their tasks use.

- The papers' real models, loaded offline from a diffusers folder (``$OPGRPO_*_PATH``) or the local Hugging
  Face cache (:class:`~opgrpo_bench.backbones.folders.WeightsSource`): Stable Diffusion 3.5 Medium
  (:data:`SD35M`), FLUX.1-dev (:data:`FLUX_DEV`) and Wan2.1-T2V-1.3B (:data:`WAN21`). On a GPU their weights
  are bf16 (Flow-GRPO's precision; LoRA adapters stay float32), with a float32 VAE for FLUX and Wan; on a
  CPU everything is float32. The device is :func:`opgrpo_bench.devices.default_device`'s.
- The tiny in-code pipelines of each family (``tiny-sd3``, ``tiny-flux``, ``tiny-wan``), built on first
  use into the cache (:mod:`opgrpo_bench.backbones.tiny`) and loaded through the same ``from_pretrained``.

Importing this module loads no model library: the tasks read the weights sources from here to say, before
anything heavy loads, which weights are missing.
"""

from __future__ import annotations

from typing import Any

import torch

from opgrpo_bench.backbones.folders import FLUX_FAMILY, SD3_FAMILY, WAN_FAMILY, WeightsSource
from opgrpo_bench.devices import default_device

# -- Stable Diffusion 3.5 Medium ---------------------------------------------------------------------
SD35M = WeightsSource(env="OPGRPO_SD35M_PATH", repo="stabilityai/stable-diffusion-3.5-medium",
                      what="SD3.5-Medium weights", family=SD3_FAMILY)
SD35M_RESOLUTION = 512
SD35M_MAX_SEQUENCE_LENGTH = 128
"""Flow-GRPO encodes prompts (and the empty negative prompt) with 128 T5 tokens."""
SD35M_MAX_BATCH = 32
"""Rows per no-grad transformer/VAE call (CFG rows count): bounds the memory of 1,152-sample rollouts."""

# -- FLUX.1-dev --------------------------------------------------------------------------------------
FLUX_DEV = WeightsSource(env="OPGRPO_FLUX_PATH", repo="black-forest-labs/FLUX.1-dev", what="FLUX.1-dev weights",
                         family=FLUX_FAMILY)
FLUX_DEV_RESOLUTION = 512
FLUX_DEV_MAX_SEQUENCE_LENGTH = 128
"""Flow-GRPO encodes FLUX prompts with 128 T5 tokens (train_flux.py's compute_text_embeddings)."""
FLUX_DEV_GUIDANCE = 3.5
"""FLUX.1-dev's distilled guidance scale: ``FluxPipeline``'s default, and Flow-GRPO's in sampling, training
and evaluation."""
FLUX_DEV_MAX_BATCH = 16
"""Rows per no-grad transformer/VAE call. A memory bound for 12B bf16 weights at 512 px; not measured."""

# -- Wan2.1-T2V-1.3B ---------------------------------------------------------------------------------
WAN21 = WeightsSource(env="OPGRPO_WAN_PATH", repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                      what="Wan2.1-T2V-1.3B weights", family=WAN_FAMILY)
WAN21_HEIGHT = 240
WAN21_WIDTH = 416
WAN21_NUM_FRAMES = 33
"""Flow-GRPO's Wan2.1 OCR videos: 33 frames of 240x416 (latents [16, 9, 30, 52])."""
WAN21_MAX_SEQUENCE_LENGTH = 512
"""Flow-GRPO encodes Wan prompts with 512 UMT5 tokens (train_wan2_1.py's compute_text_embeddings)."""
WAN21_MAX_BATCH = 8
"""Rows per no-grad transformer/VAE call. A memory bound for 1.3B bf16 weights at 240x416x33; not measured."""

# -- tiny in-code pipelines --------------------------------------------------------------------------
TINY_RESOLUTION = 32
"""Image side of the tiny SD3 and FLUX pipelines (and frame side of the tiny Wan one)."""
TINY_MAX_SEQUENCE_LENGTH = 16
TINY_SEED = 0
TINY_NUM_FRAMES = 9
"""Frames of the tiny Wan pipeline's videos: 3 latent frames (the causal VAE: first frame alone, then 4
frames per latent frame)."""


def _precision(vae_float32: bool = False) -> dict[str, Any]:
    """Device and dtypes of a real model: bf16 on a GPU (a float32 VAE when asked), float32 on a CPU."""
    device = default_device()
    if device.type != "cuda":
        return {"device": device, "dtype": torch.float32}
    return {"device": device, "dtype": torch.bfloat16, **({"vae_dtype": torch.float32} if vae_float32 else {})}


def load_sd35m_backbone():
    """SD3.5-Medium at 512 px (``$OPGRPO_SD35M_PATH`` or the HF cache); bf16 on a GPU, float32 on a CPU."""
    from opgrpo_bench.backbones.sd3 import SD3Backbone

    return SD3Backbone.from_pretrained(
        SD35M.source(), max_sequence_length=SD35M_MAX_SEQUENCE_LENGTH, resolution=SD35M_RESOLUTION,
        max_batch=SD35M_MAX_BATCH, what=SD35M.what, env=SD35M.env, **_precision(),
    )


def load_flux_dev_backbone():
    """FLUX.1-dev at 512 px, distilled guidance 3.5 (``$OPGRPO_FLUX_PATH`` or the HF cache): bf16 on a GPU with
    a float32 VAE (Flow-GRPO's precisions), float32 on a CPU."""
    from opgrpo_bench.backbones.flux import FluxBackbone

    return FluxBackbone.from_pretrained(
        FLUX_DEV.source(), max_sequence_length=FLUX_DEV_MAX_SEQUENCE_LENGTH, resolution=FLUX_DEV_RESOLUTION,
        guidance_scale=FLUX_DEV_GUIDANCE, max_batch=FLUX_DEV_MAX_BATCH, what=FLUX_DEV.what, env=FLUX_DEV.env,
        **_precision(vae_float32=True),
    )


def load_wan21_backbone():
    """Wan2.1-T2V-1.3B at 240x416, 33 frames (``$OPGRPO_WAN_PATH`` or the HF cache): bf16 on a GPU with a
    float32 VAE (Flow-GRPO's precisions), float32 on a CPU. Sampled on the folder's UniPC flow-sigma grid, as
    Flow-GRPO's Wan code samples (``schedule="unipc"``; :mod:`opgrpo_bench.backbones.wan`)."""
    from opgrpo_bench.backbones.wan import WanBackbone

    return WanBackbone.from_pretrained(
        WAN21.source(), max_sequence_length=WAN21_MAX_SEQUENCE_LENGTH, height=WAN21_HEIGHT, width=WAN21_WIDTH,
        num_frames=WAN21_NUM_FRAMES, max_batch=WAN21_MAX_BATCH, what=WAN21.what, env=WAN21.env,
        schedule="unipc", **_precision(vae_float32=True),
    )


def load_tiny_sd3_backbone():
    """The tiny SD3 pipeline (cached folder, built on first use) through ``SD3Backbone.from_pretrained``."""
    from opgrpo_bench.backbones.sd3 import SD3Backbone
    from opgrpo_bench.backbones.tiny import TinySD3Config, tiny_sd3_folder

    folder = tiny_sd3_folder(TinySD3Config(resolution=TINY_RESOLUTION), seed=TINY_SEED)
    return SD3Backbone.from_pretrained(folder, resolution=TINY_RESOLUTION,
                                       max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, what="tiny SD3 pipeline")


def load_tiny_flux_backbone():
    """The tiny FLUX pipeline (cached folder, built on first use) through ``FluxBackbone.from_pretrained``."""
    from opgrpo_bench.backbones.flux import FluxBackbone
    from opgrpo_bench.backbones.tiny_flux import TinyFluxConfig, tiny_flux_folder

    folder = tiny_flux_folder(TinyFluxConfig(resolution=TINY_RESOLUTION), seed=TINY_SEED)
    return FluxBackbone.from_pretrained(folder, resolution=TINY_RESOLUTION,
                                        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, what="tiny FLUX pipeline")


def load_tiny_wan_backbone():
    """The tiny Wan pipeline (cached folder, built on first use) through ``WanBackbone.from_pretrained``."""
    from opgrpo_bench.backbones.tiny_wan import TinyWanConfig, tiny_wan_folder
    from opgrpo_bench.backbones.wan import WanBackbone

    config = TinyWanConfig(height=TINY_RESOLUTION, width=TINY_RESOLUTION, num_frames=TINY_NUM_FRAMES)
    return WanBackbone.from_pretrained(tiny_wan_folder(config, seed=TINY_SEED), height=TINY_RESOLUTION,
                                       width=TINY_RESOLUTION, num_frames=TINY_NUM_FRAMES,
                                       max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, what="tiny Wan pipeline")
