"""A tiny but complete FLUX.1 pipeline, built in code (no downloads, no files shipped).

It has every part of a real FLUX.1-dev pipeline, at toy sizes: a ``FluxTransformer2DModel`` with double-
and single-stream blocks, rotary position embeddings and the distilled guidance embedding, a
``CLIPTextModel`` (its pooled output conditions the transformer), a ``T5EncoderModel`` (its tokens are the
sequence the transformer attends to), an ``AutoencoderKL`` with FLUX.1's latent scaling and shift factors,
and FLUX.1-dev's ``FlowMatchEulerDiscreteScheduler`` configuration (dynamic, resolution-dependent shift).
The tokenizers are the in-process ones of :mod:`opgrpo_bench.backbones.tiny`.

The pipeline is saved with ``FluxPipeline.save_pretrained`` so that
:meth:`opgrpo_bench.backbones.flux.FluxBackbone.from_pretrained` loads it through exactly the code path of a
real FLUX.1-dev folder. :func:`tiny_flux_folder` builds it once into a cache folder keyed by a hash of the
configuration, the seed and the library versions (:func:`opgrpo_bench.backbones.tiny.cached_folder`).

Sizes (defaults): 1 double-stream + 2 single-stream blocks of 2 heads x 16 channels, latents [16, 8, 8] for
32x32 RGB images (VAE scale factor 4), packed into 16 tokens of 64 features; CLIP hidden 32 (16 tokens),
T5 d_model 32 (16 tokens).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from opgrpo_bench.backbones.tiny import (
    _config_dict,
    _versions,
    build_clip_tokenizer,
    build_t5_tokenizer,
    cached_folder,
    config_hash,
)


@dataclass(frozen=True)
class TinyFluxConfig:
    """Sizes of the tiny FLUX pipeline. Every field enters the cache key."""

    resolution: int = 32
    """Image side in pixels the folder is meant for (latents ``resolution // vae_scale_factor``)."""
    latent_channels: int = 16
    """FLUX.1's VAE has 16 latent channels; the transformer takes 4x as many (2x2 patches)."""
    vae_block_out_channels: tuple[int, ...] = (8, 16, 16)
    """Three blocks: VAE scale factor 2 ** (3 - 1) = 4 (FLUX.1: four blocks, 8)."""
    num_layers: int = 1
    """Double-stream (MMDiT) blocks; FLUX.1: 19."""
    num_single_layers: int = 2
    """Single-stream blocks; FLUX.1: 38."""
    attention_head_dim: int = 16
    num_attention_heads: int = 2
    axes_dims_rope: tuple[int, int, int] = (4, 6, 6)
    """Rotary dimensions per position axis (image index, row, column); they sum to attention_head_dim,
    as FLUX.1's (16, 56, 56) sum to 128."""
    guidance_embeds: bool = True
    """FLUX.1-dev's distilled guidance embedding (FLUX.1-schnell has none)."""
    clip_hidden: int = 32
    """Also the transformer's ``pooled_projection_dim`` (FLUX: CLIP-L's 768)."""
    clip_layers: int = 2
    clip_max_length: int = 16
    """CLIP context length (77 in FLUX.1); FluxPipeline pads CLIP prompts to the tokenizer's model_max_length."""
    t5_d_model: int = 32
    """Also the transformer's ``joint_attention_dim`` (FLUX: T5-XXL's 4096)."""
    t5_layers: int = 2
    t5_max_length: int = 16
    """The T5 tokenizer's model_max_length; the backbone's ``max_sequence_length`` sets the padded length."""
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    """FLUX.1-dev's dynamic-shift configuration: mu from 0.5 (256 image tokens) to 1.15 (4096 tokens). The
    tiny pipeline keeps it unchanged, so its 16 image tokens extrapolate to mu = 0.459."""
    vae_scaling_factor: float = 0.3611
    vae_shift_factor: float = 0.1159
    """FLUX.1's VAE latent normalisation: latents = (z - shift) * scale."""

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_block_out_channels) - 1)


def build_tiny_flux_pipeline(config: TinyFluxConfig = TinyFluxConfig(), seed: int = 0):
    """A randomly initialised ``FluxPipeline`` of the given sizes (seeded, CPU, float32)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if sum(config.axes_dims_rope) != config.attention_head_dim:
        raise ValueError("axes_dims_rope must sum to attention_head_dim (rotary embedding of each head)")
    tokenizer = build_clip_tokenizer(max_length=config.clip_max_length)
    tokenizer_2 = build_t5_tokenizer(max_length=config.t5_max_length)

    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.clip_hidden, intermediate_size=2 * config.clip_hidden,
        num_hidden_layers=config.clip_layers, num_attention_heads=4,
        max_position_embeddings=config.clip_max_length, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )).eval()
    torch.manual_seed(seed + 2)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=config.t5_d_model, d_kv=8, d_ff=2 * config.t5_d_model,
        num_layers=config.t5_layers, num_heads=4, relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id, decoder_start_token_id=tokenizer_2.pad_token_id,
    )).eval()
    torch.manual_seed(seed + 3)
    n_blocks = len(config.vae_block_out_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=config.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n_blocks, up_block_types=("UpDecoderBlock2D",) * n_blocks,
        block_out_channels=config.vae_block_out_channels, layers_per_block=1, norm_num_groups=4,
        sample_size=config.resolution, scaling_factor=config.vae_scaling_factor,
        shift_factor=config.vae_shift_factor, use_quant_conv=False, use_post_quant_conv=False,
    ).eval()
    torch.manual_seed(seed + 4)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * config.latent_channels, num_layers=config.num_layers,
        num_single_layers=config.num_single_layers, attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads, joint_attention_dim=config.t5_d_model,
        pooled_projection_dim=config.clip_hidden, guidance_embeds=config.guidance_embeds,
        axes_dims_rope=config.axes_dims_rope,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=config.base_shift,
        max_shift=config.max_shift, base_image_seq_len=config.base_image_seq_len,
        max_image_seq_len=config.max_image_seq_len,
    )
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


def build_tiny_flux_folder(path: str | os.PathLike[str], config: TinyFluxConfig = TinyFluxConfig(),
                           seed: int = 0) -> Path:
    """Build the tiny pipeline and ``save_pretrained`` it into ``path`` (a diffusers FLUX folder)."""
    path = Path(path)
    pipe = build_tiny_flux_pipeline(config, seed)
    pipe.save_pretrained(path, safe_serialization=True)
    meta = {"config": _config_dict(config), "seed": seed, "versions": _versions()}
    (path / "opgrpo_tiny_flux.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def tiny_flux_folder(config: TinyFluxConfig = TinyFluxConfig(), seed: int = 0,
                     root: str | os.PathLike[str] | None = None) -> Path:
    """The cached tiny FLUX folder for ``(config, seed)`` under ``<cache>/tiny-flux/``, built on first use."""
    return cached_folder("tiny-flux", config_hash(config, seed),
                         lambda tmp: build_tiny_flux_folder(tmp, config, seed), root)
