"""A tiny but complete Stable Diffusion 3 pipeline, built in code (no downloads, no files shipped).

It has every part of a real SD3.5 pipeline, at toy sizes: an ``SD3Transformer2DModel`` with SD3.5's
QK RMS-norm and one dual-attention (MMDiT-X) block, two ``CLIPTextModelWithProjection`` encoders, a
``T5EncoderModel``, an ``AutoencoderKL`` with SD3's latent scaling and shift factors, and SD3.5's
``FlowMatchEulerDiscreteScheduler`` (shift 3). The tokenizers are built in process: a byte-level BPE
CLIP tokenizer and a unigram T5 tokenizer whose merges/pieces come from a small word list.

The pipeline is saved with ``StableDiffusion3Pipeline.save_pretrained`` so that
:meth:`opgrpo_bench.backbones.sd3.SD3Backbone.from_pretrained` loads it through exactly the code path of
a real SD3.5-Medium folder. :func:`tiny_sd3_folder` builds it once into a cache folder keyed by a hash of
the configuration, the seed and the library versions (same key, same bytes), atomically, so that
concurrent processes never see a half-written folder.

Sizes (defaults): transformer 2 layers x 32 channels, latents [16, 8, 8] for 32x32 RGB images
(VAE scale factor 4), CLIP hidden 32 (projection 32), T5 d_model 64, context = 16 CLIP + 16 T5 tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from opgrpo_bench.storage import atomic_folder, cache_root

BASE_WORDS = (
    "a an the of on in with and at to by under over next left right above below behind front photo picture "
    "image painting drawing sign that says text word letter red green blue yellow black white orange purple "
    "pink brown gray cat dog bird car bus boat tree flower house city street sky sea mountain field table "
    "chair cup apple banana cake person man woman child small large big tiny two three four simple flat "
    "plain bright dark colorful background wall poster book shop open close hello world"
).split()
"""Words that get whole-word tokens in both tokenizers; other words fall back to characters (never UNK)."""


@dataclass(frozen=True)
class TinySD3Config:
    """Sizes of the tiny SD3 pipeline. Every field enters the cache key."""

    resolution: int = 32
    """Native image side in pixels; the transformer's ``sample_size`` is ``resolution // vae_scale_factor``."""
    latent_channels: int = 16
    """SD3's VAE has 16 latent channels."""
    vae_block_out_channels: tuple[int, ...] = (8, 16, 16)
    """Three blocks: VAE scale factor 2 ** (3 - 1) = 4."""
    num_layers: int = 2
    attention_head_dim: int = 8
    num_attention_heads: int = 4
    patch_size: int = 2
    qk_norm: str | None = "rms_norm"
    """SD3.5 normalises queries and keys (SD3 did not)."""
    dual_attention_layers: tuple[int, ...] = (0,)
    """SD3.5-Medium's MMDiT-X blocks carry a second (image-only) attention ``attn2``."""
    clip_hidden: int = 32
    clip_projection: int = 32
    clip_layers: int = 2
    clip_max_length: int = 16
    """CLIP context length (77 in SD3); the pipeline pads CLIP prompts to the tokenizer's model_max_length."""
    t5_d_model: int = 64
    """Also the transformer's ``joint_attention_dim``; must be >= 2 * clip_hidden (the pipeline pads)."""
    t5_layers: int = 2
    scheduler_shift: float = 3.0
    """SD3.5's scheduler shift."""
    vae_scaling_factor: float = 1.5305
    vae_shift_factor: float = 0.0609
    """SD3's VAE latent normalisation: latents = (z - shift) * scale."""

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_block_out_channels) - 1)

    @property
    def sample_size(self) -> int:
        return self.resolution // self.vae_scale_factor


# -- tokenizers ------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable unicode character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_clip_tokenizer(words: Iterable[str] = BASE_WORDS, max_length: int = 16):
    """A byte-level BPE CLIP tokenizer built in process.

    Vocabulary: the 256 byte characters, the same with CLIP's end-of-word suffix ``</w>``, and for each word
    of ``words`` the chain of left-to-right merges that spells it (so common words are one token); any
    other text falls back to byte characters, never to UNK.
    """
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(c, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(w.lower() for w in words):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_t5_tokenizer(words: Iterable[str] = BASE_WORDS, max_length: int = 16):
    """A unigram (SentencePiece-style) T5 tokenizer built in process.

    Pieces: ``<pad>``, ``</s>``, ``<unk>`` (T5's ids 0, 1, 2), the word boundary ``▁``, printable ASCII
    characters (low score: the fallback) and ``▁word`` for each word (high score: preferred).
    """
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    seen = {p for p, _ in pieces}
    for c in (chr(i) for i in range(33, 127)):
        if c not in seen:
            pieces.append((c, -6.0))
            seen.add(c)
    for word in dict.fromkeys(w.lower() for w in words):
        piece = "▁" + word
        if piece not in seen:
            pieces.append((piece, -1.0))
            seen.add(piece)
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


# -- the pipeline ----------------------------------------------------------------------------------
def build_tiny_sd3_pipeline(config: TinySD3Config = TinySD3Config(), seed: int = 0):
    """A randomly initialised ``StableDiffusion3Pipeline`` of the given sizes (seeded, CPU, float32)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    if config.t5_d_model < 2 * config.clip_hidden:
        raise ValueError("t5_d_model must be >= 2 * clip_hidden: SD3 pads the two CLIP embeddings to T5's width")
    tokenizer = build_clip_tokenizer(max_length=config.clip_max_length)
    tokenizer_2 = build_clip_tokenizer(max_length=config.clip_max_length)
    tokenizer_3 = build_t5_tokenizer(max_length=config.clip_max_length)

    def clip_encoder(offset: int):
        torch.manual_seed(seed + offset)
        cfg = CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=config.clip_hidden, intermediate_size=2 * config.clip_hidden,
            num_hidden_layers=config.clip_layers, num_attention_heads=4, projection_dim=config.clip_projection,
            max_position_embeddings=config.clip_max_length, hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return CLIPTextModelWithProjection(cfg).eval()

    text_encoder, text_encoder_2 = clip_encoder(1), clip_encoder(2)
    torch.manual_seed(seed + 3)
    text_encoder_3 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_3), d_model=config.t5_d_model, d_kv=16, d_ff=2 * config.t5_d_model,
        num_layers=config.t5_layers, num_heads=4, relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer_3.pad_token_id,
        eos_token_id=tokenizer_3.eos_token_id, decoder_start_token_id=tokenizer_3.pad_token_id,
    )).eval()
    torch.manual_seed(seed + 4)
    n_blocks = len(config.vae_block_out_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=config.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n_blocks, up_block_types=("UpDecoderBlock2D",) * n_blocks,
        block_out_channels=config.vae_block_out_channels, layers_per_block=1, norm_num_groups=4,
        sample_size=config.resolution, scaling_factor=config.vae_scaling_factor,
        shift_factor=config.vae_shift_factor, use_quant_conv=False, use_post_quant_conv=False,
    ).eval()
    torch.manual_seed(seed + 5)
    transformer = SD3Transformer2DModel(
        sample_size=config.sample_size, patch_size=config.patch_size, in_channels=config.latent_channels,
        out_channels=config.latent_channels, num_layers=config.num_layers,
        attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
        joint_attention_dim=config.t5_d_model,
        caption_projection_dim=config.attention_head_dim * config.num_attention_heads,
        pooled_projection_dim=2 * config.clip_projection,
        # room for images up to twice the native side
        pos_embed_max_size=2 * config.sample_size // config.patch_size,
        qk_norm=config.qk_norm, dual_attention_layers=config.dual_attention_layers,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=config.scheduler_shift)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )


def build_tiny_sd3_folder(path: str | os.PathLike[str], config: TinySD3Config = TinySD3Config(),
                          seed: int = 0) -> Path:
    """Build the tiny pipeline and ``save_pretrained`` it into ``path`` (a diffusers SD3 folder)."""
    path = Path(path)
    pipe = build_tiny_sd3_pipeline(config, seed)
    pipe.save_pretrained(path, safe_serialization=True)
    meta = {"config": _config_dict(config), "seed": seed, "versions": _versions()}
    (path / "opgrpo_tiny_sd3.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


# -- cached folder ---------------------------------------------------------------------------------
def _config_dict(config: Any) -> dict[str, Any]:
    """A tiny-pipeline config dataclass as JSON-ready values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def _versions() -> dict[str, str]:
    # Random initialisation may change between library versions, so versions enter the cache key.
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def config_hash(config: Any = TinySD3Config(), seed: int = 0) -> str:
    """Cache key: configuration (any tiny-pipeline config dataclass), seed and library versions."""
    payload = json.dumps({"config": _config_dict(config), "seed": seed, "versions": _versions()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def tiny_sd3_folder(config: TinySD3Config = TinySD3Config(), seed: int = 0,
                    root: str | os.PathLike[str] | None = None) -> Path:
    """The cached tiny SD3 folder for ``(config, seed)``, built on first use (see :func:`cached_folder`)."""
    return cached_folder("tiny-sd3", config_hash(config, seed), lambda tmp: build_tiny_sd3_folder(tmp, config, seed),
                         root)


def cached_folder(kind: str, key: str, build: Callable[[Path], Any],
                  root: str | os.PathLike[str] | None = None) -> Path:
    """``<root>/<kind>/<key>``, made by ``build(folder)`` on first use (any tiny pipeline family).

    The folder is written to a temporary sibling and renamed into place, so a reader never sees a partial
    folder; if another process wins the race, its (identical) folder is kept. A folder holding
    ``model_index.json`` counts as built (the rename makes a folder appear whole or not at all).
    """
    root = Path(root) if root is not None else cache_root()
    folder = root / kind / key
    if (folder / "model_index.json").is_file():
        return folder
    return atomic_folder(folder, build, replace=False)
