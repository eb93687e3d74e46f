"""The ``digits-number-v1`` base model: the digits-v1 architecture on [1, 8, 24], started from the digits-v1
base model's weights and pretrained on composed images of the *training* numbers only
(``python scripts/build_digits_number_assets.py`` regenerates it; the reward reuses the digits-v1
classifier). The task's module docstring gives the measurements behind the recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from opgrpo_bench.backbones.digits import DIGITS_ASSETS, NUMBER_ASSETS, NUMBER_SHAPE
from opgrpo_bench.pretraining import common
from opgrpo_bench.pretraining.common import adamw, compose, flow_matching_step, new_pixel_model, trained
from opgrpo_bench.pretraining.digits import vocabulary
from opgrpo_bench.pretraining.digits_pair import jitter
from opgrpo_bench.tasks.digits_number import N_DIGITS, N_TRAIN, SPLIT_SEED, TEMPLATE, number_split

PRETRAIN_STEPS = 500
JITTER_STEPS = 0
PRETRAIN_LR = 3e-3
PRETRAIN_BATCH = 32


def number_vocabulary() -> list[str]:
    """digits-v1's vocabulary (it has the template words and the ten numerals), so that its text encoder's
    token embeddings can initialise this task's (:func:`pretrain_number_model`)."""
    words = vocabulary()
    assert all(w in words for w in TEMPLATE.split() if "{" not in w) and all(str(d) in words for d in range(10))
    return words


def build_number_tokenizer():
    """Word-level tokenizer that splits runs of numerals into single digits: ``[BOS] the number 3 7 4 [EOS]``."""
    return common.build_tokenizer(number_vocabulary(), split_digits=True)


class NumberImages:
    """Draws composed images of given numbers from the digits of scikit-learn's training split."""

    def __init__(self, numbers: Sequence[str]):
        x_train, y_train, _, _ = common.load_split()
        order = torch.argsort(y_train, stable=True)
        self.data = (x_train * 2 - 1)[order]  # pixel space in [-1, 1], grouped by label
        counts = torch.bincount(y_train, minlength=10)
        self.counts, self.starts = counts, torch.cumsum(counts, 0) - counts
        self.numbers = list(numbers)
        self.digits = torch.tensor([[int(c) for c in n] for n in self.numbers])  # [M, N_DIGITS]

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """(images [B, 1, 8, 8 * N_DIGITS] in [-1, 1], their numbers)."""
        which = torch.randint(len(self.numbers), (batch_size,), generator=generator)
        labels = self.digits[which]  # [B, N_DIGITS]
        u = torch.rand(labels.shape, generator=generator)
        idx = self.starts[labels] + (u * self.counts[labels]).long().clamp_max(self.counts[labels] - 1)
        images = compose(*(self.data[idx[:, j]] for j in range(labels.shape[1])))
        return images, [self.numbers[i] for i in which.tolist()]


def pretrain_number_model(steps: int = PRETRAIN_STEPS, jitter_steps: int = JITTER_STEPS, seed: int = 0,
                          batch_size: int = PRETRAIN_BATCH, lr: float = PRETRAIN_LR, caption_dropout: float = 0.1,
                          numbers: Sequence[str] | None = None, init_from: str | Path | None = DIGITS_ASSETS,
                          callback=None):
    """Flow-matching pretraining of transformer + text encoder on composed images of the training numbers.

    Each example is a random training number drawn as three random training-split digits, captioned
    ``"the number 374"`` (or ``""`` with probability ``caption_dropout``). The last ``jitter_steps`` shift
    every digit by up to one pixel (:func:`opgrpo_bench.pretraining.digits_pair.jitter`). ``callback(step,
    transformer, text_encoder, tokenizer)`` is called after every step (for measurements; None in the build).
    ``numbers`` defaults to the training numbers of :func:`opgrpo_bench.tasks.digits_number.number_split`.
    ``init_from`` is a digits-v1 base model folder whose text encoder and transformer weights (all but the
    fixed position grid, which is sized by the image) start the training; None starts from random weights.
    Returns (transformer, text_encoder, tokenizer, scheduler).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    source = NumberImages(number_split()[0] if numbers is None else numbers)
    backbone = new_pixel_model(number_vocabulary(), sample_size=max(NUMBER_SHAPE[1:]), latent_shape=NUMBER_SHAPE,
                               split_digits=True)
    transformer, text_encoder = backbone.transformer, backbone.prompt_encoder.text_encoder
    if init_from is not None:
        from safetensors.torch import load_file

        folder = Path(init_from)
        text_encoder.load_state_dict(load_file(folder / "text_encoder" / "model.safetensors"))
        weights = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
        weights.pop("pos_embed.pos_embed")  # a fixed sincos grid, rebuilt for this image size
        missing, unexpected = transformer.load_state_dict(weights, strict=False)
        assert missing == ["pos_embed.pos_embed"] and not unexpected, (missing, unexpected)
    text_encoder.train()
    params, opt = adamw(backbone, lr)
    for step in range(steps):
        x0, numbers = source.draw(batch_size, gen)
        if step >= steps - jitter_steps:
            cells = x0.reshape(batch_size, 1, 8, N_DIGITS, 8).permute(0, 3, 1, 2, 4).reshape(-1, 1, 8, 8)
            cells = jitter(cells, gen)
            x0 = cells.reshape(batch_size, N_DIGITS, 1, 8, 8).permute(0, 2, 3, 1, 4).reshape(x0.shape)
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        prompts = ["" if drop[k] else TEMPLATE.format(n=n) for k, n in enumerate(numbers)]
        flow_matching_step(backbone, params, opt, x0, prompts, gen)
        if callback is not None:
            callback(step + 1, transformer, text_encoder, backbone.prompt_encoder.tokenizer)
    return trained(backbone)


def build_number_assets(out: str | Path = NUMBER_ASSETS, steps: int = PRETRAIN_STEPS,
                        jitter_steps: int = JITTER_STEPS, seed: int = 0, lr: float = PRETRAIN_LR,
                        batch_size: int = PRETRAIN_BATCH, init_from: str | Path | None = DIGITS_ASSETS) -> dict:
    """Pretrain the base model and save it under ``out`` (safetensors folders + ``base_model.json``).

    The reward reuses the digits-v1 classifier (``assets/digits-v1/classifier.safetensors``); the weights
    start from the digits-v1 base model in ``init_from`` (None: random).
    """
    transformer, text_encoder, tokenizer, scheduler = pretrain_number_model(
        steps, jitter_steps, seed=seed, lr=lr, batch_size=batch_size, init_from=init_from)
    meta = {"pretrain_steps": steps, "jitter_steps": jitter_steps, "pretrain_lr": lr, "pretrain_batch": batch_size,
            "seed": seed, "init_from": None if init_from is None else Path(init_from).name,
            "image_shape": list(NUMBER_SHAPE), "split_seed": SPLIT_SEED, "n_train_numbers": N_TRAIN,
            "classifier": "digits-v1/classifier.safetensors"}
    return common.save_base_model(out, transformer, text_encoder, tokenizer, scheduler, meta)
