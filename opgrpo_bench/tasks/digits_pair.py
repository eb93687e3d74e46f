"""``digits-pair-v1``: a sparse-reward CPU task. Two real digits side by side, placed as the prompt says.

- Images: 8x16 pixels, 1 channel: two of scikit-learn's 8x8 handwritten digits side by side (the same
  stratified 80/20 split as ``digits-v1``, :func:`opgrpo_bench.tasks.digits.load_split`).
- Prompts: ``"a 3 left of a 7"`` (train) and ``"a 7 right of a 3"`` (eval) over the 90 ordered pairs of
  distinct digits; both phrasings describe the same image (3 on the left, 7 on the right).
- Base model: the ``digits-v1`` architecture (4-layer pixel-space diffusers ``SD3Transformer2DModel``,
  patch 2, + 2-layer CLIP text encoder over a word-level tokenizer) on an 8x16 input. diffusers' SD3
  patch embedding crops its ``pos_embed_max_size`` grid (8x8 patches here) to the input's 4x8 patch grid,
  so the non-square input needs no padding. Pretrained by the project with the flow-matching loss on
  random composed pairs captioned with either phrasing: 600 steps on the digits as scikit-learn centres
  them, then 100 steps with every digit shifted by up to one pixel (:func:`pretrain_pair_model` says why).
  The base model puts the prompted digits in the prompted order but places them loosely, so the
  classifier (trained on centred digits) rarely reads both halves right: the reward is binary, about half
  of the fresh groups of 8 carry no signal, and OP-GRPO's replay of rare successes has something to do.
- Reward ``digit-pair``: 1 when the ``digits-v1`` classifier reads the left half as the left digit and the
  right half as the right digit (argmax), else 0 (:class:`opgrpo_bench.rewards.digits.DigitPairReward`).

The shipped assets (``opgrpo_bench/assets/digits-pair-v1``) are regenerated bit-for-bit on CPU by
``python scripts/build_digits_pair_assets.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from opgrpo_bench.rewards.digits import DIGIT_WORDS, PAIR_ASSETS
from opgrpo_bench.tasks.digits import (
    PIXEL_TASK_DEFAULTS,
    ClipPromptEncoder,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    flow_matching_step,
    load_pixel_backbone,
    load_split,
)
from opgrpo_bench.tasks.spec import Prompt

TRAIN_TEMPLATE = "a {left} left of a {right}"
EVAL_TEMPLATE = "a {right} right of a {left}"
IMAGE_SHAPE = (1, 8, 16)
"""[C, H, W] of one image (and one latent: the model works in pixel space)."""
PRETRAIN_STEPS = 700
JITTER_STEPS = 100
PRETRAIN_LR = 4e-3
"""600 steps on centred digits, then 100 on digits jittered by up to 1 px (:func:`pretrain_pair_model`)."""
PAIRS = tuple((a, b) for a in range(10) for b in range(10) if a != b)
"""The 90 ordered (left, right) pairs of distinct digits."""


def make_pair_prompts(template: str, pairs: tuple[tuple[int, int], ...] = PAIRS) -> tuple[Prompt, ...]:
    """One prompt per (left, right) pair, with both digits in the metadata."""
    return tuple(Prompt(template.format(left=a, right=b), {"left": a, "right": b}) for a, b in pairs)


def pair_vocabulary() -> list[str]:
    """Special tokens, the template words, then the ten numerals (and number words, unused but harmless)."""
    words = {w for t in (TRAIN_TEMPLATE, EVAL_TEMPLATE) for w in t.split() if "{" not in w}
    return ["[PAD]", "[UNK]", "[BOS]", "[EOS]"] + sorted(words) + [str(d) for d in range(10)] + list(DIGIT_WORDS)


def compose(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Two [N, 1, 8, 8] digit images -> [N, 1, 8, 16] with ``left`` on the left."""
    return torch.cat([left, right], dim=-1)


def load_pair_backbone(path: str | Path | None = None):
    """The digits-pair-v1 base model from its saved folder (latents [1, 8, 16])."""
    return load_pixel_backbone(Path(path) if path else PAIR_ASSETS, task="digits-pair-v1",
                               script="scripts/build_digits_pair_assets.py", latent_shape=IMAGE_SHAPE)


# -- pretraining (the project's own base model) ----------------------------------------------------
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
    x_train, y_train, _, _ = load_split()
    data = x_train * 2 - 1  # pixel space in [-1, 1]
    tokenizer = build_tokenizer(pair_vocabulary())
    text_encoder = build_text_encoder(len(tokenizer))
    transformer = build_transformer(sample_size=max(IMAGE_SHAPE[1:]))
    encoder = ClipPromptEncoder(tokenizer, text_encoder)
    templates = (TRAIN_TEMPLATE, EVAL_TEMPLATE)
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
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
        flow_matching_step(transformer, encoder, params, opt, x0, prompts, gen)
    transformer.eval()
    text_encoder.eval()
    return transformer, text_encoder, tokenizer, build_scheduler()


def build_pair_assets(out: str | Path = PAIR_ASSETS, steps: int = PRETRAIN_STEPS, jitter_steps: int = JITTER_STEPS,
                      seed: int = 0, lr: float = PRETRAIN_LR) -> dict:
    """Pretrain the base model and save it under ``out`` (safetensors folders + ``base_model.json``).

    The reward reuses the digits-v1 classifier (``assets/digits-v1/classifier.safetensors``); no second
    classifier is trained.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    transformer, text_encoder, tokenizer, scheduler = pretrain_pair_model(steps, jitter_steps, seed=seed, lr=lr)
    transformer.save_pretrained(out / "transformer")
    text_encoder.save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    scheduler.save_pretrained(out / "scheduler")
    meta = {"pretrain_steps": steps, "jitter_steps": jitter_steps, "pretrain_lr": lr, "seed": seed, "image_shape": list(IMAGE_SHAPE),
            "classifier": "digits-v1/classifier.safetensors"}
    (out / "base_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# -- the task spec ---------------------------------------------------------------------------------
def _digits_pair_v1():
    from opgrpo_bench.tasks.spec import TaskSpec

    return TaskSpec(
        id="digits-pair-v1",
        description="two 8x8 digits side by side as prompted (8x16), tiny SD3 transformer; reward = both "
                    "digits right (binary, sparse)",
        backbone="digits-pair-v1-base",
        reward="digit-pair",
        gold_reward="digit-pair",
        gold_reward_args={"classifier": "gold"},
        train_prompts=make_pair_prompts(TRAIN_TEMPLATE),
        eval_prompts=make_pair_prompts(EVAL_TEMPLATE),
        # 90 "right of" prompts x 4 noises = 360 eval samples (one success = 0.0028). Base: 0.067. Target
        # 0.10 (measured, 200 steps): Flow-GRPO seeds 0/1/2 reach it at steps 195/never/100 (best 0.103,
        # 0.083, 0.128); OP-GRPO seed 0 at step 115 (best 0.131).
        eval_noises_per_prompt=4,
        target=0.10,
        budget_steps=200,
        eval_every=5,
        train_defaults=dict(PIXEL_TASK_DEFAULTS),
        needs="CPU; assets shipped in the package",
    )


DIGITS_PAIR_V1 = _digits_pair_v1()
