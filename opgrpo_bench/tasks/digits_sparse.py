"""``digits-sparse-v1``: the sparse-reward regime on the digits-v1 base model.

Same base model and classifier as ``digits-v1``, restricted to the five digits the base model draws
worst (1, 5, 7, 8, 9) and scored as success or failure: 1 when the classifier gives the prompted digit
probability >= 0.99, else 0. Groups are small (4 samples), so that a fresh group often has no success at
all and therefore no signal (its rewards are all equal): the regime in which OP-GRPO replays past
successes. Measured base success rates are in the README.
"""

from __future__ import annotations

from opgrpo_bench.tasks.digits import (
    EVAL_TEMPLATES,
    PIXEL_TASK_DEFAULTS,
    TRAIN_TEMPLATES,
    make_prompts,
)
from opgrpo_bench.tasks.spec import TaskSpec, listed

HARD_DIGITS = (1, 5, 7, 8, 9)
SUCCESS_THRESHOLD = 0.99


def _only(prompts, digits=HARD_DIGITS):
    return tuple(p for p in prompts if p.meta["digit"] in digits)


DIGITS_SPARSE_V1 = TaskSpec(
    id="digits-sparse-v1",
    **listed("digits-sparse-v1"),
    backbone="digits-v1-base",
    reward="threshold",
    reward_args={"reward": "digit-classifier", "threshold": SUCCESS_THRESHOLD},
    gold_reward="threshold",
    gold_reward_args={"reward": "digit-classifier", "threshold": SUCCESS_THRESHOLD,
                      "reward_args": {"classifier": "gold"}},
    train_prompts=_only(make_prompts(TRAIN_TEMPLATES)),
    eval_prompts=_only(make_prompts(EVAL_TEMPLATES)),
    eval_noises_per_prompt=8,
    target=0.45,
    budget_steps=200,
    eval_every=5,
    train_defaults={**PIXEL_TASK_DEFAULTS, "prompts_per_iter": 16, "group_size": 4},
)
