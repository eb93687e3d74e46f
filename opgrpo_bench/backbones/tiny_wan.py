"""A tiny but complete Wan2.1 text-to-video pipeline, built in code (no downloads, no files shipped).

It has every part of a real Wan2.1-T2V pipeline, at toy sizes: a ``WanTransformer3DModel`` (1x2x2
patches, 3-D rotary embeddings, self- and cross-attention with RMS-normalised queries and keys), a
``UMT5EncoderModel`` text encoder, an ``AutoencoderKLWan`` causal 3-D VAE with Wan2.1's temporal (4) and
spatial (8) compression and its per-channel ``latents_mean`` / ``latents_std``, and a
``FlowMatchEulerDiscreteScheduler`` with Wan2.1's 480p flow shift 3.0. The real folders ship a UniPC
scheduler instead; the tiny one ships the Euler scheduler the backbone samples with, so that a whole
``WanPipeline.__call__`` can be compared with the backbone's own sampling step for step. The tokenizer is
the in-process T5 (unigram) tokenizer of :mod:`opgrpo_bench.backbones.tiny` (UMT5 uses the same format).

The pipeline is saved with ``WanPipeline.save_pretrained`` so that
:meth:`opgrpo_bench.backbones.wan.WanBackbone.from_pretrained` loads it through exactly the code path of a
real Wan2.1-T2V-1.3B-Diffusers folder. :func:`tiny_wan_folder` builds it once into a cache folder keyed by a
hash of the configuration, the seed and the library versions (:func:`opgrpo_bench.backbones.tiny.cached_folder`).

Sizes (defaults): 2 blocks of 2 heads x 12 channels; 9 frames of 32x32 pixels -> latents [16, 3, 4, 4]
-> 3 x 2 x 2 = 12 tokens; UMT5 d_model 32 with 16 tokens; VAE base width 8.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from opgrpo_bench.backbones.tiny import _config_dict, _versions, build_t5_tokenizer, cached_folder, config_hash

@dataclass(frozen=True)
class TinyWanConfig:
    """Sizes of the tiny Wan pipeline. Every field enters the cache key."""

    height: int = 32
    width: int = 32
    num_frames: int = 9
    """Frames the folder is meant for: 4k + 1 (latent frames (9 - 1) / 4 + 1 = 3)."""
    latent_channels: int = 16
    """Wan2.1's VAE has 16 latent channels (``z_dim``)."""
    vae_base_dim: int = 8
    """VAE width (Wan2.1: 96); four levels with 2x spatial downsampling between them: scale 8, as Wan2.1."""
    num_layers: int = 2
    """Transformer blocks; Wan2.1-T2V-1.3B: 30."""
    num_attention_heads: int = 2
    attention_head_dim: int = 12
    """Split by the 3-D rotary embedding into frame/row/column parts (4 + 4 + 4 here; 1.3B: 44 + 42 + 42)."""
    ffn_dim: int = 48
    freq_dim: int = 32
    """Sinusoidal timestep features (Wan2.1: 256)."""
    text_dim: int = 32
    """UMT5 d_model, also the transformer's ``text_dim`` (UMT5-XXL: 4096)."""
    text_layers: int = 2
    max_length: int = 16
    """The tokenizer's model_max_length; the backbone's ``max_sequence_length`` sets the padded length."""
    flow_shift: float = 3.0
    """Wan2.1's flow shift at 480p."""

    @property
    def latent_frames(self) -> int:
        return (self.num_frames - 1) // 4 + 1


def build_tiny_wan_pipeline(config: TinyWanConfig = TinyWanConfig(), seed: int = 0):
    """A randomly initialised ``WanPipeline`` of the given sizes (seeded, CPU, float32)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    if (config.num_frames - 1) % 4:
        raise ValueError("num_frames - 1 must be a multiple of 4 (the VAE's temporal compression)")
    tokenizer = build_t5_tokenizer(max_length=config.max_length)

    torch.manual_seed(seed + 1)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=config.text_dim, d_kv=8, d_ff=2 * config.text_dim,
        num_layers=config.text_layers, num_heads=4, relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLWan(
        base_dim=config.vae_base_dim, z_dim=config.latent_channels, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        # latents_mean / latents_std: the class defaults, Wan2.1's own statistics, so that the tiny folder
        # exercises a non-trivial per-channel normalisation
        temperal_downsample=[False, True, True],
    ).eval()
    torch.manual_seed(seed + 3)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=config.num_attention_heads,
        attention_head_dim=config.attention_head_dim, in_channels=config.latent_channels,
        out_channels=config.latent_channels, text_dim=config.text_dim, freq_dim=config.freq_dim,
        ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=config.flow_shift)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer)


def build_tiny_wan_folder(path: str | os.PathLike[str], config: TinyWanConfig = TinyWanConfig(),
                          seed: int = 0) -> Path:
    """Build the tiny pipeline and ``save_pretrained`` it into ``path`` (a diffusers Wan folder)."""
    path = Path(path)
    pipe = build_tiny_wan_pipeline(config, seed)
    pipe.save_pretrained(path, safe_serialization=True)
    meta = {"config": _config_dict(config), "seed": seed, "versions": _versions()}
    (path / "opgrpo_tiny_wan.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def tiny_wan_folder(config: TinyWanConfig = TinyWanConfig(), seed: int = 0,
                    root: str | os.PathLike[str] | None = None) -> Path:
    """The cached tiny Wan folder for ``(config, seed)`` under ``<cache>/tiny-wan/``, built on first use."""
    return cached_folder("tiny-wan", config_hash(config, seed), lambda tmp: build_tiny_wan_folder(tmp, config, seed),
                         root)
