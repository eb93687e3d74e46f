"""What every digits base model's pretraining shares: the data split, the model components, one
flow-matching step and saving the folder the backbones load."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch

from opgrpo_bench.backbones.digits import MAX_TOKENS

IMAGE_SIZE = 8
"""Side of one scikit-learn digit, in pixels."""


@lru_cache(maxsize=1)
def load_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test) of scikit-learn's 1,797 digits, stratified 80/20 (seed 0); images in
    [0, 1], shape [N, 1, 8, 8]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=0.2, random_state=0, stratify=y.numpy())
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def compose(*digits: torch.Tensor) -> torch.Tensor:
    """[N, 1, 8, 8] digit images, left to right -> [N, 1, 8, 8 * len(digits)] (digits-pair-v1, digits-number-v1)."""
    return torch.cat(digits, dim=-1)


def special_tokens() -> list[str]:
    """The tokenizers' special tokens, first in every vocabulary (``[PAD]`` is id 0)."""
    return ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]


def build_tokenizer(words: Sequence[str], split_digits: bool = False):
    """Word-level tokenizer built in process (no files): ``[BOS] words [EOS]``, padded to MAX_TOKENS.

    ``words`` is the vocabulary, special tokens first. ``split_digits`` also splits every run of numerals
    into single digits (``the number 374`` -> ``the number 3 7 4``; digits-number-v1).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                  pre_tokenizers.Digits(individual_digits=True)])
                         if split_digits else pre_tokenizers.Whitespace())
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]", model_max_length=MAX_TOKENS)


def build_text_encoder(vocab_size: int, hidden_size: int = 64):
    """The 2-layer CLIP text encoder of the digits tasks (width ``hidden_size``; ``digits-video-v1``: 32)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
                         projection_dim=hidden_size, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return CLIPTextModelWithProjection(cfg)


def build_transformer(sample_size: int = IMAGE_SIZE):
    """The tiny pixel-space SD3 transformer (patch 2, 1 channel) for images up to ``sample_size`` a side.

    The position-embedding grid is ``sample_size // 2`` patches a side; diffusers crops its centre to the
    input's patch grid, so non-square inputs (``digits-pair-v1``: 8x16) work when their longer side fits.
    """
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=1, out_channels=1, num_layers=4,
        attention_head_dim=16, num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=64,
        pooled_projection_dim=64, pos_embed_max_size=sample_size // 2,
    )


def build_scheduler():
    """The digits models' schedule: flow matching, 1000 training timesteps, no shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def new_pixel_model(words: Sequence[str], sample_size: int = IMAGE_SIZE, latent_shape: tuple[int, ...] | None = None,
                    split_digits: bool = False) -> Any:
    """A freshly initialised pixel-space SD3 digits model as its trainable backbone: a tokenizer over
    ``words`` (:func:`build_tokenizer`), then (drawing from torch's global generator, in this order) the
    text encoder and the transformer for images up to ``sample_size`` a side, and the schedule."""
    from opgrpo_bench.backbones.digits import ClipPromptEncoder, pixel_backbone

    tokenizer = build_tokenizer(words, split_digits=split_digits)
    text_encoder = build_text_encoder(len(tokenizer))
    transformer = build_transformer(sample_size=sample_size)
    return trainable(pixel_backbone(transformer, ClipPromptEncoder(tokenizer, text_encoder), build_scheduler(),
                                    latent_shape))


def adamw(backbone: Any, lr: float) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    """(parameters, optimizer) of a pretraining: the transformer's and the text encoder's parameters, in that
    order, under AdamW with weight decay 1e-4."""
    params = list(backbone.transformer.parameters()) + list(backbone.prompt_encoder.text_encoder.parameters())
    return params, torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)


def trained(backbone: Any) -> tuple[Any, Any, Any, Any]:
    """(transformer, text_encoder, tokenizer, scheduler) of a pretrained backbone, networks in eval mode."""
    encoder = backbone.prompt_encoder
    backbone.transformer.eval()
    encoder.text_encoder.eval()
    return backbone.transformer, encoder.text_encoder, encoder.tokenizer, backbone.scheduler


def trainable(backbone: Any) -> Any:
    """``backbone`` with its transformer trainable again (a backbone freezes its network; pretraining
    trains all of it, and the text encoder, which the backbone leaves as it is)."""
    backbone.transformer.requires_grad_(True)
    return backbone


def flow_matching_step(backbone: Any, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
                       x0: torch.Tensor, prompts: list[str], gen: torch.Generator) -> float:
    """One step of the digits base models' pretraining (shared by every digits task's build): a
    logit-normal sigma per image (SD3's training density), the flow-matching velocity target
    ``noise - x0`` at ``x_sigma = (1 - sigma) x0 + sigma noise``, AdamW with gradient clipping at 1.

    ``x0`` [B, 1, H, W] (videos: [B, 1, F, H, W]) in [-1, 1]; draws sigma, then the noise, from ``gen``. The
    network call is the backbone's own :meth:`~opgrpo_bench.backbones.base.Backbone.velocity` on
    :meth:`~opgrpo_bench.backbones.diffusers_backbone.DiffusersBackbone.conditioning` (no CFG), so the
    model is pretrained exactly as RL later calls it. Returns the loss.
    """
    batch_size = x0.shape[0]
    sigma = torch.sigmoid(torch.randn(batch_size, generator=gen))
    noise = torch.randn(x0.shape, generator=gen)
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    x_t = (1 - s) * x0 + s * noise
    v = backbone.velocity(x_t, sigma, backbone.conditioning(prompts))
    loss = torch.nn.functional.mse_loss(v, noise - x0)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item()


def save_base_model(out: str | Path, transformer: Any, text_encoder: Any, tokenizer: Any, scheduler: Any,
                    meta: dict[str, Any]) -> dict[str, Any]:
    """Save a base model's folder under ``out`` (safetensors folders the backbones load, and
    ``base_model.json`` = ``meta``); returns ``meta``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(out / "transformer")
    text_encoder.save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    scheduler.save_pretrained(out / "scheduler")
    (out / "base_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
