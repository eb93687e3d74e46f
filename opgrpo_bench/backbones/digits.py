"""The CPU digits tasks' base models: tiny pixel-space flow models shipped in ``opgrpo_bench/assets``.

- ``digits-v1-base``, ``digits-pair-v1-base``, ``digits-number-v1-base``: a 4-layer diffusers
  ``SD3Transformer2DModel`` in pixel space (1 channel, patch 2) conditioned by a 2-layer CLIP text encoder
  over a word-level tokenizer (:class:`ClipPromptEncoder`), as an
  :class:`~opgrpo_bench.backbones.sd3.SD3Backbone` without a VAE, on [1, 8, 8], [1, 8, 16] and [1, 8, 24].
- ``digits-video-v1-base``: a 2-block ``WanTransformer3DModel`` on pixel-space videos [1, 4, 8, 14], as a
  :class:`~opgrpo_bench.backbones.wan.WanBackbone` without a VAE, with fixed frame/row/column maps as channel
  conditioning (:func:`coordinate_maps`) and a CLIP text encoder whose padding positions are zeroed
  (:class:`WanClipPromptEncoder`), as ``WanPipeline`` does for UMT5.

The project pretrains them itself (:mod:`opgrpo_bench.pretraining`, through the same backbones' ``velocity``)
and loads them here from their saved folders. Importing this module loads no model library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

ASSETS_ROOT = Path(__file__).resolve().parent.parent / "assets"
"""The shipped assets: one folder per digits task (base model; digits-v1's also holds the classifiers)."""
DIGITS_ASSETS = ASSETS_ROOT / "digits-v1"
PAIR_ASSETS = ASSETS_ROOT / "digits-pair-v1"
NUMBER_ASSETS = ASSETS_ROOT / "digits-number-v1"
VIDEO_ASSETS = ASSETS_ROOT / "digits-video-v1"

MAX_TOKENS = 8
"""Tokens of every digits prompt, ``[BOS]`` and ``[EOS]`` included (padded or truncated to it)."""
PAIR_SHAPE = (1, 8, 16)
"""[C, H, W] of a digits-pair-v1 image (two 8x8 digits side by side; the latents are the pixels)."""
NUMBER_SHAPE = (1, 8, 24)
"""[C, H, W] of a digits-number-v1 image (three 8x8 digits side by side)."""
VIDEO_SHAPE = (1, 4, 8, 14)
"""[C, F, H, W] of a digits-video-v1 video's latents (pixel space: 4 frames of 8x14)."""


class ClipPromptEncoder:
    """prompts -> (last hidden states [B, MAX_TOKENS, width], projected pooled embedding [B, width])."""

    def __init__(self, tokenizer: Any, text_encoder: Any):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                             return_tensors="pt")
        out = self.text_encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        return out.last_hidden_state, out.text_embeds


class WanClipPromptEncoder(ClipPromptEncoder):
    """prompts -> CLIP last hidden states [B, MAX_TOKENS, width] with the padding positions zeroed (the
    text conditioning ``WanPipeline`` builds from UMT5)."""

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:  # type: ignore[override]
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                             return_tensors="pt")
        out = self.text_encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        return out.last_hidden_state * enc.attention_mask[..., None].to(out.last_hidden_state.dtype)


def coordinate_maps(frames: int, height: int, width: int) -> torch.Tensor:
    """Fixed maps [3, frames, height, width] of the frame, row and column coordinates, each ``linspace(-1, 1)``
    (a single frame is frame 0: -1), concatenated to the latents as channel conditioning.

    Why: Wan's only position signal is its rotary embedding, which is relative; a tiny 2-block model barely
    learns *where* in the frame (and in which frame) a pixel is. Measured: without the maps, two of three
    pretraining runs (1000-1200 steps, frame phase included) learnt digit shapes but no consistent motion
    (motion term ~0.3); with them, the motion term is 0.9 after 100 whole-video steps.
    """
    t, y, x = torch.meshgrid(torch.linspace(-1, 1, frames), torch.linspace(-1, 1, height),
                             torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack([t, y, x])


def pixel_backbone(transformer: Any, prompt_encoder: ClipPromptEncoder, scheduler: Any,
                   latent_shape: tuple[int, ...] | None = None):
    """A pixel-space SD3 backbone (no VAE) over the given modules; ``latent_shape`` [C, H, W] defaults to
    the transformer's square ``sample_size``."""
    from opgrpo_bench.backbones.sd3 import SD3Backbone

    return SD3Backbone(transformer, prompt_encoder, scheduler, latent_shape=latent_shape)


def video_backbone(transformer: Any, prompt_encoder: WanClipPromptEncoder, scheduler: Any,
                   latent_shape: tuple[int, ...] = VIDEO_SHAPE):
    """A pixel-space Wan backbone (no VAE) on videos ``latent_shape`` [C, F, H, W], with the
    :func:`coordinate_maps` of that many frames as channel conditioning."""
    from opgrpo_bench.backbones.wan import WanBackbone

    return WanBackbone(transformer, prompt_encoder, scheduler, vae=None, latent_shape=latent_shape,
                       condition=coordinate_maps(*latent_shape[1:]))


def _load_modules(folder: Path, task: str, script: str, transformer_cls: str) -> tuple[Any, Any, Any, Any]:
    """(transformer, frozen text encoder, tokenizer, scheduler) saved in ``folder``; ``task`` and ``script``
    only name what is missing and how to rebuild it."""
    import diffusers
    from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerFast

    from opgrpo_bench.errors import MissingWeightsError

    if not (folder / "transformer").is_dir():
        raise MissingWeightsError(f"{task} base model not found in '{folder}'; regenerate it with "
                                  f"'python {script}'.")
    transformer = getattr(diffusers, transformer_cls).from_pretrained(folder / "transformer")
    text_encoder = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder").eval()
    text_encoder.requires_grad_(False)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    return transformer, text_encoder, tokenizer, scheduler


def load_pixel_backbone(folder: Path, task: str, script: str, latent_shape: tuple[int, ...] | None = None):
    """A pixel-space SD3 digits model (transformer, CLIP text encoder, tokenizer, scheduler) saved in
    ``folder`` (:func:`pixel_backbone`)."""
    transformer, text_encoder, tokenizer, scheduler = _load_modules(folder, task, script, "SD3Transformer2DModel")
    return pixel_backbone(transformer, ClipPromptEncoder(tokenizer, text_encoder), scheduler, latent_shape)


def load_digits_backbone(path: str | Path | None = None):
    """The digits-v1 base model from its saved folder (latents [1, 8, 8])."""
    return load_pixel_backbone(Path(path) if path else DIGITS_ASSETS, task="digits-v1",
                               script="scripts/build_digits_assets.py")


def load_pair_backbone(path: str | Path | None = None):
    """The digits-pair-v1 base model from its saved folder (latents [1, 8, 16])."""
    return load_pixel_backbone(Path(path) if path else PAIR_ASSETS, task="digits-pair-v1",
                               script="scripts/build_digits_pair_assets.py", latent_shape=PAIR_SHAPE)


def load_number_backbone(path: str | Path | None = None):
    """The digits-number-v1 base model from its saved folder (latents [1, 8, 24])."""
    return load_pixel_backbone(Path(path) if path else NUMBER_ASSETS, task="digits-number-v1",
                               script="scripts/build_digits_number_assets.py", latent_shape=NUMBER_SHAPE)


def load_video_backbone(path: str | Path | None = None):
    """The digits-video-v1 base model from its saved folder: a pixel-space ``WanBackbone`` on [1, 4, 8, 14]
    with the coordinate maps as channel conditioning (:func:`video_backbone`)."""
    transformer, text_encoder, tokenizer, scheduler = _load_modules(
        Path(path) if path else VIDEO_ASSETS, "digits-video-v1", "scripts/build_digits_video_assets.py",
        "WanTransformer3DModel")
    return video_backbone(transformer, WanClipPromptEncoder(tokenizer, text_encoder), scheduler)
