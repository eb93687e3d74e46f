"""The ``digits-v1`` assets: the reward classifier and the base model (also ``digits-sparse-v1``'s).

The base model is a 4-layer pixel-space SD3 transformer (8x8x1, patch 2) and a 2-layer CLIP text encoder,
pretrained together with the flow-matching loss (:func:`pretrain_base_model`), deliberately briefly so that
the base model is mediocre. ``python scripts/build_digits_assets.py`` regenerates the folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from opgrpo_bench.backbones.digits import DIGITS_ASSETS
from opgrpo_bench.pretraining import common
from opgrpo_bench.pretraining.classifiers import build_classifier_assets
from opgrpo_bench.pretraining.common import adamw, flow_matching_step, new_pixel_model, trained
from opgrpo_bench.rewards.digits import DIGIT_WORDS
from opgrpo_bench.tasks.digits import EVAL_TEMPLATES, TRAIN_TEMPLATES


def vocabulary() -> list[str]:
    """Special tokens, the template words, the ten numerals and the ten number words."""
    words = {w for t in TRAIN_TEMPLATES + EVAL_TEMPLATES for w in t.split() if "{" not in w}
    return common.special_tokens() + sorted(words) + [str(d) for d in range(10)] + list(DIGIT_WORDS)


def pretrain_base_model(steps: int, seed: int = 0, batch_size: int = 128, lr: float = 1e-3,
                        caption_dropout: float = 0.1):
    """Flow-matching pretraining of transformer + text encoder on the training split.

    Captions are random train/eval templates of each image's label (the base model knows every phrasing;
    RL later trains on the train templates only). Returns (transformer, text_encoder, tokenizer, scheduler).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train, _, _ = common.load_split()
    data = x_train * 2 - 1  # pixel space in [-1, 1]
    backbone = new_pixel_model(vocabulary())
    templates = TRAIN_TEMPLATES + EVAL_TEMPLATES
    params, opt = adamw(backbone, lr)
    for _ in range(steps):
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        x0 = data[idx]
        t_idx = torch.randint(len(templates), (batch_size,), generator=gen)
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        prompts = ["" if drop[i] else templates[t_idx[i]].format(d=int(y_train[j]), w=DIGIT_WORDS[int(y_train[j])])
                   for i, j in enumerate(idx.tolist())]
        flow_matching_step(backbone, params, opt, x0, prompts, gen)
    return trained(backbone)


def build_assets(out: str | Path = DIGITS_ASSETS, steps: int = 200, seed: int = 0) -> dict:
    """Train the classifier and the base model and save them under ``out`` (safetensors folders)."""
    info = build_classifier_assets(out, seed=seed)
    transformer, text_encoder, tokenizer, scheduler = pretrain_base_model(steps, seed=seed)
    meta = {"pretrain_steps": steps, "seed": seed, **{f"classifier_{k}": v for k, v in info.items()}}
    return common.save_base_model(out, transformer, text_encoder, tokenizer, scheduler, meta)
