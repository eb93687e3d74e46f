"""The ``digits-pair-v1`` base model: the digits-v1 architecture on [1, 8, 16], pretrained on random
composed pairs of training digits captioned with either phrasing (``python scripts/build_digits_pair_assets.py``
regenerates it; the reward reuses the digits-v1 classifier)."""

from __future__ import annotations

from pathlib import Path

import torch

from opgrpo_bench.backbones.digits import PAIR_ASSETS, PAIR_SHAPE
from opgrpo_bench.pretraining import common
from opgrpo_bench.pretraining.common import adamw, compose, flow_matching_step, new_pixel_model, trained
from opgrpo_bench.rewards.digits import DIGIT_WORDS
from opgrpo_bench.tasks.digits_pair import EVAL_TEMPLATE, TRAIN_TEMPLATE

PRETRAIN_STEPS = 700
JITTER_STEPS = 100
PRETRAIN_LR = 4e-3
"""600 steps on centred digits, then 100 on digits jittered by up to 1 px (:func:`pretrain_pair_model`)."""


def pair_vocabulary() -> list[str]:
    """Special tokens, the template words, then the ten numerals (and number words, unused but harmless)."""
    words = {w for t in (TRAIN_TEMPLATE, EVAL_TEMPLATE) for w in t.split() if "{" not in w}
    return common.special_tokens() + sorted(words) + [str(d) for d in range(10)] + list(DIGIT_WORDS)


def jitter(images: torch.Tensor, generator: torch.Generator, max_shift: int = 1,
           background: float = -1.0) -> torch.Tensor:
    """Shift each [1, 8, 8] image by a random offset in ``[-max_shift, max_shift]`` on both axes.

    Pixels pushed out are cropped and the uncovered border is ``background``: a digit placed "by hand",
    not centred the way the classifier's training digits are.
    """
    k = 2 * max_shift + 1
    h, w = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (max_shift,) * 4, value=background)
    offsets = torch.randint(k, (images.shape[0], 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


def pretrain_pair_model(steps: int = PRETRAIN_STEPS, jitter_steps: int = JITTER_STEPS, seed: int = 0,
                        batch_size: int = 128, lr: float = PRETRAIN_LR, caption_dropout: float = 0.1):
    """Flow-matching pretraining of transformer + text encoder on random composed pairs of training digits.

    Each example puts two random training-split digits side by side and captions them with either
    phrasing (so the base model knows the eval phrasing; RL trains on the "left of" phrasing only).
    The last ``jitter_steps`` of the ``steps`` shift every digit by up to one pixel (:func:`jitter`).

    Why two phases (measured on this machine, seed 0): which digit goes on which side is learnt abruptly
    (success of ODE samples 0.15 -> 0.39 -> 0.87 at 650, 720 and 1000 steps with lr 2e-3, with the swapped
    pair as frequent as the right one before that), and a base model stopped before the jump is one that
    LoRA RL hardly moves: Flow-GRPO gained at most ~0.05 in 200 steps from 350-, 600-, 670- and 685-step
    models (base success 0.07-0.2; none with the dense ``p_both`` as reward either, over 65 steps), while
    from a 720-step model (0.39, order learnt) it gained 0.09 in 100 steps. Learning the order on centred digits
    first and then fine-tuning on digits shifted by up to one pixel gives a base model that puts the
    digits in the right order (swapped pairs ~1% of samples) but rarely where the classifier, trained on
    centred digits, reads them (its held-out accuracy drops from 98% to ~48% for a 1 px shift and ~17%
    for a diagonal one): a low success rate, with a direction RL can find (centre both digits).
    Returns (transformer, text_encoder, tokenizer, scheduler).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train, _, _ = common.load_split()
    data = x_train * 2 - 1  # pixel space in [-1, 1]
    backbone = new_pixel_model(pair_vocabulary(), sample_size=max(PAIR_SHAPE[1:]), latent_shape=PAIR_SHAPE)
    templates = (TRAIN_TEMPLATE, EVAL_TEMPLATE)
    params, opt = adamw(backbone, lr)
    for step in range(steps):
        i_left = torch.randint(len(data), (batch_size,), generator=gen)
        i_right = torch.randint(len(data), (batch_size,), generator=gen)
        left, right = data[i_left], data[i_right]
        if step >= steps - jitter_steps:
            left, right = jitter(left, gen), jitter(right, gen)
        x0 = compose(left, right)
        t_idx = torch.randint(len(templates), (batch_size,), generator=gen)
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        prompts = ["" if drop[k] else templates[t_idx[k]].format(left=int(y_train[i]), right=int(y_train[j]))
                   for k, (i, j) in enumerate(zip(i_left.tolist(), i_right.tolist()))]
        flow_matching_step(backbone, params, opt, x0, prompts, gen)
    return trained(backbone)


def build_pair_assets(out: str | Path = PAIR_ASSETS, steps: int = PRETRAIN_STEPS, jitter_steps: int = JITTER_STEPS,
                      seed: int = 0, lr: float = PRETRAIN_LR) -> dict:
    """Pretrain the base model and save it under ``out`` (safetensors folders + ``base_model.json``).

    The reward reuses the digits-v1 classifier (``assets/digits-v1/classifier.safetensors``); no second
    classifier is trained.
    """
    transformer, text_encoder, tokenizer, scheduler = pretrain_pair_model(steps, jitter_steps, seed=seed, lr=lr)
    meta = {"pretrain_steps": steps, "jitter_steps": jitter_steps, "pretrain_lr": lr, "seed": seed,
            "image_shape": list(PAIR_SHAPE), "classifier": "digits-v1/classifier.safetensors"}
    return common.save_base_model(out, transformer, text_encoder, tokenizer, scheduler, meta)
