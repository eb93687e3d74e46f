"""``digits-pair-v1``: a sparse-reward CPU task. Two real digits side by side, placed as the prompt says.

- Images: 8x16 pixels, 1 channel: two of scikit-learn's 8x8 handwritten digits side by side (the same
  stratified 80/20 split as ``digits-v1``, :func:`opgrpo_bench.pretraining.common.load_split`).
- Prompts: ``"a 3 left of a 7"`` (train) and ``"a 7 right of a 3"`` (eval) over the 90 ordered pairs of
  distinct digits; both phrasings describe the same image (3 on the left, 7 on the right).
- Base model: the ``digits-v1`` architecture (4-layer pixel-space diffusers ``SD3Transformer2DModel``,
  patch 2, + 2-layer CLIP text encoder over a word-level tokenizer) on an 8x16 input. diffusers' SD3
  patch embedding crops its ``pos_embed_max_size`` grid (8x8 patches here) to the input's 4x8 patch grid,
  so the non-square input needs no padding. Pretrained by the project with the flow-matching loss on
  random composed pairs captioned with either phrasing: 600 steps on the digits as scikit-learn centres
  them, then 100 steps with every digit shifted by up to one pixel
  (:func:`opgrpo_bench.pretraining.digits_pair.pretrain_pair_model` says why).
  The base model puts the prompted digits in the prompted order but places them loosely, so the
  classifier (trained on centred digits) rarely reads both halves right: the reward is binary, about half
  of the fresh groups of 8 carry no signal, and OP-GRPO's replay of rare successes has something to do.
- Reward ``digit-pair``: 1 when the ``digits-v1`` classifier reads the left half as the left digit and the
  right half as the right digit (argmax), else 0 (:class:`opgrpo_bench.rewards.digits.DigitPairReward`).

The shipped assets (``opgrpo_bench/assets/digits-pair-v1``) are regenerated bit-for-bit on CPU by
``python scripts/build_digits_pair_assets.py``.
"""

from __future__ import annotations

from opgrpo_bench.backbones.digits import PAIR_SHAPE
from opgrpo_bench.tasks.digits import PIXEL_TASK_DEFAULTS
from opgrpo_bench.tasks.spec import Prompt

TRAIN_TEMPLATE = "a {left} left of a {right}"
EVAL_TEMPLATE = "a {right} right of a {left}"
IMAGE_SHAPE = PAIR_SHAPE
"""[C, H, W] of one image (and one latent: the model works in pixel space)."""
PAIRS = tuple((a, b) for a in range(10) for b in range(10) if a != b)
"""The 90 ordered (left, right) pairs of distinct digits."""


def make_pair_prompts(template: str, pairs: tuple[tuple[int, int], ...] = PAIRS) -> tuple[Prompt, ...]:
    """One prompt per (left, right) pair, with both digits in the metadata."""
    return tuple(Prompt(template.format(left=a, right=b), {"left": a, "right": b}) for a, b in pairs)


# -- the task spec ---------------------------------------------------------------------------------
def _digits_pair_v1():
    from opgrpo_bench.tasks.spec import TaskSpec, listed

    return TaskSpec(
        id="digits-pair-v1",
        **listed("digits-pair-v1"),
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
    )


DIGITS_PAIR_V1 = _digits_pair_v1()
