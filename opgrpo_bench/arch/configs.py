"""The published configurations of the three real model families, as diffusers/transformers keyword arguments.

Every value below is the ``config.json`` of the named component in the public Hugging Face repository
(``stabilityai/stable-diffusion-3.5-medium``, ``black-forest-labs/FLUX.1-dev``,
``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``, and the text encoders they ship: OpenAI CLIP ViT-L/14, OpenCLIP
ViT-bigG/14, Google T5 v1.1 XXL, Google UMT5-XXL), as the diffusers and transformers documentation of each
model class describes it. They are written down from those sources, never downloaded. The parameter counts
they give are checked in ``tests/capacity/test_arch_configs.py`` against the published sizes (SD3.5-Medium
2.5B with its position-embedding table, FLUX.1-dev 12B, Wan2.1 1.3B, T5-XXL encoder 4.7B, ...).

A *depth* reduces the number of blocks of every stack (transformer blocks, text-encoder layers) and keeps
every width, head count, vocabulary and layer type: the variant's name says ``-depthN``. The VAEs are kept
whole (they are small and have no stack of identical blocks).

Nothing here imports diffusers or transformers at module load: :func:`family_components` returns classes
by name and keyword arguments, so that the planner and the folder builder share one source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("sd3.5-medium", "flux.1-dev", "wan2.1-t2v-1.3b")
"""The real architectures this module knows, by the name used in folder names and the planner."""

# -- text encoders ---------------------------------------------------------------------------------------
# OpenAI CLIP ViT-L/14 text tower (openai/clip-vit-large-patch14 config.json, text_config; the same in
# SD3.5's text_encoder/ and FLUX.1's text_encoder/): 12 layers of width 768, 12 heads, quick_gelu. The
# token ids 0/2/1 for bos/eos/pad are what those config files say (transformers then pools at the argmax
# token id, the end-of-text token, as for the original checkpoints).
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
              bos_token_id=0, eos_token_id=2, pad_token_id=1, layer_norm_eps=1e-5)
# OpenCLIP ViT-bigG/14 text tower (SD3.5's text_encoder_2/config.json, CLIPTextModelWithProjection):
# 32 layers of width 1280, 20 heads, gelu, projection 1280.
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
              num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
              bos_token_id=0, eos_token_id=2, pad_token_id=1, layer_norm_eps=1e-5)
# Google T5 v1.1 XXL encoder (google/t5-v1_1-xxl config.json; SD3.5's text_encoder_3/ and FLUX.1's
# text_encoder_2/): d_model 4096, 64 heads of 64, gated-GELU feed-forward 10240, 24 layers, vocab 32128.
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
              feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
              tie_word_embeddings=False)
# Google UMT5-XXL encoder (google/umt5-xxl config.json; Wan2.1's text_encoder/): T5-XXL's shape with the
# 256,384-entry multilingual vocabulary.
UMT5_XXL = dict(T5_XXL, vocab_size=256384)

TOKENIZER_SIZES = {"clip": 49408, "t5": 32100, "umt5": 256300}
"""Tokenizer vocabularies: CLIP's BPE (49,408 with its two special tokens), T5's SentencePiece model (32,000
pieces + 100 sentinel ids; the embedding has 32,128 rows, padded), UMT5's (256,000 + 300 sentinels; the
embedding has 256,384 rows)."""

# -- VAEs -------------------------------------------------------------------------------------------------
# The 16-channel SD3 VAE (SD3.5's vae/config.json): four levels 128-256-512-512, two resnets per level,
# no quant convs; latents are (z - 0.0609) * 1.5305.
SD3_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=1024, scaling_factor=1.5305,
               shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
# FLUX.1's VAE (FLUX.1-dev vae/config.json): the same network, latents (z - 0.1159) * 0.3611.
FLUX_VAE = dict(SD3_VAE, scaling_factor=0.3611, shift_factor=0.1159)
# Wan2.1's causal 3-D VAE (Wan2.1-T2V-1.3B-Diffusers vae/config.json; these are also AutoencoderKLWan's
# defaults, including its latents_mean / latents_std): base width 96, multipliers 1-2-4-4, 4x temporal.
WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True], dropout=0.0)

# -- transformers -----------------------------------------------------------------------------------------
# SD3.5-Medium's MMDiT-X (transformer/config.json): 24 joint blocks of width 1536 (24 heads of 64), the first
# 13 with a second, image-only attention; QK RMS-norm; 384x384 position-embedding table (a persistent
# buffer of 226M values, counted in the published 2.5B).
SD35M_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                         attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                         caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                         dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
# FLUX.1-dev (transformer/config.json): 19 double-stream and 38 single-stream blocks of width 3072 (24 heads
# of 128), guidance embedding, rotary axes 16/56/56.
FLUX_DEV_TRANSFORMER = dict(patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
                            attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                            pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
# Wan2.1-T2V-1.3B (transformer/config.json): 30 blocks of width 1536 (12 heads of 128), FFN 8960, 1x2x2
# patches, cross-attention to 4096-wide UMT5 tokens.
WAN21_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                         out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                         cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
                         added_kv_proj_dim=None, rope_max_seq_len=1024)

# -- schedulers -------------------------------------------------------------------------------------------
SD35M_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)  # scheduler/scheduler_config.json
FLUX_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                          max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
# Wan2.1 ships a UniPC multistep solver with flow sigmas, shift 3.0 (480p).
WAN21_SCHEDULER = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                       flow_shift=3.0, solver_order=2)

PUBLISHED_PARAMS = {"sd3.5-medium": 2.5e9, "flux.1-dev": 12e9, "wan2.1-t2v-1.3b": 1.3e9}
"""The transformer sizes the model cards state (SD3.5-Medium's includes its position-embedding buffer)."""


@dataclass(frozen=True)
class Component:
    """One pipeline component: its library, class name and constructor keyword arguments."""

    library: str
    """``diffusers`` or ``transformers``."""
    cls: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    config_class: str | None = None
    """transformers models take a config object: its class name (``CLIPTextConfig``, ...)."""
    tokenizer: str | None = None
    """For tokenizers: ``clip``, ``clip-g`` or ``t5``/``umt5`` (built in process, :mod:`opgrpo_bench.arch.tokenizers`)."""
    max_length: int | None = None


def _depth(full: int, depth: int | None) -> int:
    return full if depth is None else max(1, min(full, depth))


def transformer_kwargs(family: str, depth: int | None = None) -> dict[str, Any]:
    """The family's transformer keyword arguments, with ``depth`` blocks per stack (None: all)."""
    if family == "sd3.5-medium":
        n = _depth(24, depth)
        if depth is not None and n < 2:
            n = 2  # the last block is the context-pre-only type; keep one ordinary block beside it
        # the first 13 of 24 blocks are MMDiT-X (dual attention); keep both kinds in a reduced stack
        dual = tuple(range(13)) if n == 24 else tuple(range(max(1, n // 2)))
        return dict(SD35M_TRANSFORMER, num_layers=n, dual_attention_layers=dual)
    if family == "flux.1-dev":
        return dict(FLUX_DEV_TRANSFORMER, num_layers=_depth(19, depth), num_single_layers=_depth(38, depth))
    if family == "wan2.1-t2v-1.3b":
        return dict(WAN21_TRANSFORMER, num_layers=_depth(30, depth))
    raise KeyError(family)


def _clip(base: dict[str, Any], depth: int | None) -> dict[str, Any]:
    return dict(base, num_hidden_layers=_depth(base["num_hidden_layers"], depth))


def _t5(base: dict[str, Any], depth: int | None) -> dict[str, Any]:
    return dict(base, num_layers=_depth(base["num_layers"], depth))


def family_components(family: str, depth: int | None = None) -> dict[str, Component]:
    """Every component of the family's diffusers pipeline folder (name -> :class:`Component`).

    ``depth`` (None: the published model) caps every stack: transformer blocks (FLUX: double- and
    single-stream each), CLIP and T5 layers. Widths, heads, vocabularies and layer types are unchanged.
    """
    tr = transformer_kwargs(family, depth)
    if family == "sd3.5-medium":
        return {
            "transformer": Component("diffusers", "SD3Transformer2DModel", tr),
            "vae": Component("diffusers", "AutoencoderKL", dict(SD3_VAE)),
            "text_encoder": Component("transformers", "CLIPTextModelWithProjection", _clip(CLIP_L, depth),
                                      "CLIPTextConfig"),
            "text_encoder_2": Component("transformers", "CLIPTextModelWithProjection", _clip(CLIP_G, depth),
                                        "CLIPTextConfig"),
            "text_encoder_3": Component("transformers", "T5EncoderModel", _t5(T5_XXL, depth), "T5Config"),
            "tokenizer": Component("transformers", "CLIPTokenizer", tokenizer="clip", max_length=77),
            "tokenizer_2": Component("transformers", "CLIPTokenizer", tokenizer="clip-g", max_length=77),
            "tokenizer_3": Component("transformers", "T5TokenizerFast", tokenizer="t5", max_length=256),
            "scheduler": Component("diffusers", "FlowMatchEulerDiscreteScheduler", dict(SD35M_SCHEDULER)),
        }
    if family == "flux.1-dev":
        return {
            "transformer": Component("diffusers", "FluxTransformer2DModel", tr),
            "vae": Component("diffusers", "AutoencoderKL", dict(FLUX_VAE)),
            "text_encoder": Component("transformers", "CLIPTextModel", _clip(CLIP_L, depth), "CLIPTextConfig"),
            "text_encoder_2": Component("transformers", "T5EncoderModel", _t5(T5_XXL, depth), "T5Config"),
            "tokenizer": Component("transformers", "CLIPTokenizer", tokenizer="clip", max_length=77),
            "tokenizer_2": Component("transformers", "T5TokenizerFast", tokenizer="t5", max_length=512),
            "scheduler": Component("diffusers", "FlowMatchEulerDiscreteScheduler", dict(FLUX_DEV_SCHEDULER)),
        }
    if family == "wan2.1-t2v-1.3b":
        return {
            "transformer": Component("diffusers", "WanTransformer3DModel", tr),
            "vae": Component("diffusers", "AutoencoderKLWan", dict(WAN_VAE)),
            "text_encoder": Component("transformers", "UMT5EncoderModel", _t5(UMT5_XXL, depth), "UMT5Config"),
            "tokenizer": Component("transformers", "T5TokenizerFast", tokenizer="umt5", max_length=512),
            "scheduler": Component("diffusers", "UniPCMultistepScheduler", dict(WAN21_SCHEDULER)),
        }
    raise KeyError(f"unknown family '{family}' (known: {', '.join(FAMILIES)})")


def variant_name(family: str, depth: int | None) -> str:
    """``sd3.5-medium`` for the published model, ``sd3.5-medium-depth2`` for a depth-reduced one."""
    return family if depth is None else f"{family}-depth{depth}"


def build_module(component: Component, device: str = "meta") -> Any:
    """An instance of a model component (random weights; on the meta device by default: no memory)."""
    import importlib

    import torch

    lib = importlib.import_module(component.library)
    with torch.device(device):
        if component.config_class:
            config = getattr(lib, component.config_class)(**component.kwargs)
            return getattr(lib, component.cls)(config)
        return getattr(lib, component.cls)(**component.kwargs)
