"""``digits-v1``: the embedded CPU task. Real data, a real (tiny) SD3 flow model, no downloads.

- Data: scikit-learn's bundled 1,797 real 8x8 handwritten digits (stratified 80/20 split, seed 0).
- Base model (``digits-v1-base``, :mod:`opgrpo_bench.backbones.digits`): a 4-layer diffusers
  ``SD3Transformer2DModel`` in pixel space (8x8x1, patch 2) conditioned by a 2-layer CLIP text encoder over a
  word-level tokenizer, both pretrained by the project with the flow-matching loss
  (:func:`opgrpo_bench.pretraining.digits.pretrain_base_model`), deliberately short so that the base model
  is mediocre.
- Reward: probability of the prompted digit under the project's digit classifier (held-out accuracy
  recorded in ``assets/digits-v1/classifier.json``).

The shipped assets (``opgrpo_bench/assets/digits-v1``) are regenerated bit-for-bit on CPU by
``python scripts/build_digits_assets.py``.
"""

from __future__ import annotations

from typing import Sequence

from opgrpo_bench.rewards.digits import DIGIT_WORDS
from opgrpo_bench.tasks.spec import Prompt

TRAIN_TEMPLATES = ("a handwritten {d}", "the digit {d}", "a handwritten {w}", "the number {w}")
EVAL_TEMPLATES = ("a {d} written by hand", "the handwritten digit {w}")


def make_prompts(templates: Sequence[str]) -> tuple[Prompt, ...]:
    """Every template for every digit, with the digit in the metadata."""
    return tuple(Prompt(t.format(d=d, w=DIGIT_WORDS[d]), {"digit": d}) for t in templates for d in range(10))


# -- the task spec ---------------------------------------------------------------------------------
PIXEL_TASK_DEFAULTS = dict(prompts_per_iter=8, group_size=8, num_steps=10, eval_num_steps=20, lora_rank=16,
                           lora_alpha=32, lr=3e-3, num_threads=1)
"""Flow-GRPO's recipe scaled to the tiny pixel-space digits models (shared by the digits tasks)."""


def _digits_v1():
    from opgrpo_bench.tasks.spec import TaskSpec, listed

    return TaskSpec(
        id="digits-v1",
        **listed("digits-v1"),
        backbone="digits-v1-base",
        reward="digit-classifier",
        gold_reward="digit-classifier",
        gold_reward_args={"classifier": "gold"},
        train_prompts=make_prompts(TRAIN_TEMPLATES),
        eval_prompts=make_prompts(EVAL_TEMPLATES),
        eval_noises_per_prompt=4,
        target=0.70,
        budget_steps=150,
        eval_every=5,
        train_defaults=dict(PIXEL_TASK_DEFAULTS),
    )


DIGITS_V1 = _digits_v1()
