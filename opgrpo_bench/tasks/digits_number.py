"""``digits-number-v1``: a CPU miniature of the OP-GRPO paper's visual-text (OCR) task.

- Prompts: ``"the number 374"``, a 3-digit number from 000-999 to render. A seeded permutation
  (:func:`number_split`) gives 800 training numbers and 100 held-out eval numbers, disjoint; the other
  100 are unused. The tokenizer splits every run of numerals into single digits (``the number 3 7 4``),
  so a held-out number is a new composition of digit tokens the model has learnt, not an unknown word.
- Images: 8x24 pixels, 1 channel: three of scikit-learn's 8x8 handwritten digits side by side (the same
  stratified 80/20 split as ``digits-v1``, :func:`opgrpo_bench.pretraining.common.load_split`).
- Base model: the ``digits-v1`` architecture (4-layer pixel-space diffusers ``SD3Transformer2DModel``,
  patch 2, + 2-layer CLIP text encoder) on an 8x24 input: the position-embedding grid is 12x12 patches
  (``pos_embed_max_size`` 12), which diffusers crops to the input's 4x12 patch grid. The tokenizer has
  digits-v1's vocabulary, so both networks start from the digits-v1 base model's weights (all but the
  fixed sincos position grid), then 500 flow-matching steps (batch 32, lr 3e-3) on composed images of
  the *training* numbers only (:func:`opgrpo_bench.pretraining.digits_number.pretrain_number_model`): eval
  numbers are unseen in pretraining and in RL.
- Reward ``digit-number``: the digits-v1 classifier reads each 8x8 position; score
  ``1 - edit_distance(read, target) / 3``; components ``success`` (all three right) and ``char_acc``
  (:class:`opgrpo_bench.rewards.digits.DigitNumberReward`). The eval score is the mean reward, as in
  Flow-GRPO's OCR task; ``success`` and ``char_acc`` are logged beside it (``eval/success``).
- Pool variants for a regime map: ``digits-number-pool20-v1`` and ``digits-number-pool100-v1`` train on
  the first 20 / 100 training numbers of the same permutation (nested subsets of each other and of the
  800); base model, eval set, target and settings are the same.

The shipped assets (``opgrpo_bench/assets/digits-number-v1``) are regenerated bit-for-bit on CPU by
``python scripts/build_digits_number_assets.py`` (54 s on one core; checked: same safetensors).

Measured on this machine (2 cores, one per process, ``nice -n 10``), eval = 100 held-out numbers x 2
fixed noises, 20 ODE steps:

- Pretraining (why these settings): held-out score / success (100 eval numbers x 2 noises of its own)
  after N steps of the shipped recipe, measured by a ``callback`` of ``pretrain_number_model``, from
  digits-v1 weights: 300: 0.18 / 0.00, 400: 0.33 / 0.04, 500: 0.56 / 0.13, 600: 0.68 / 0.30,
  700: 0.70 / 0.32, 800: 0.86 / 0.64 (composition is learnt abruptly; 500 leaves success under 20%).
  The same recipe from random weights reaches only 0.25 / 0.01 after 1000 steps.
- Base model (the step-0 eval of the runs below): score 0.547, success 0.145, char_acc 0.547. Its fresh
  SDE rollouts (T = 10, noise level 0.7; 128 groups of 8 over the training numbers): success 0.121,
  reward 0.511; 48% of the groups have no success at all, none has zero reward variance (the reward is
  graded by thirds).
- Flow-GRPO, ``nice -n 10 opgrpo-bench run -t digits-number-v1 -a flow-grpo -s SEED --steps 150``:
  seeds 0 / 1 / 2 reach the target 0.63 at steps 100 / 90 / 90 (score at 150: 0.668 / 0.633 / 0.702;
  best 0.670 / 0.647 / 0.702). A 300-step seed-0 run (with 4 noises per eval prompt then, base 0.543)
  plateaus at 0.68-0.70 from step ~160 on (best 0.696).
- One seed each, indicative only (140 steps, target 0.63): Flow-GRPO seed 0 on pool20 / pool100 reaches
  it at step 140 / 110 (full pool: 100); OP-GRPO seed 0 at step 90 on the full pool and 130 on pool20.
- Cost: a 150-step Flow-GRPO run takes 305 s wall on one core (220 s training, 16 evals of ~5.3 s),
  hence the 140-step budget (about 290 s; 314-332 s when two runs share the 2 cores with other load).
"""

from __future__ import annotations

from typing import Sequence

from opgrpo_bench.backbones.digits import NUMBER_SHAPE
from opgrpo_bench.tasks.digits import PIXEL_TASK_DEFAULTS
from opgrpo_bench.tasks.spec import Prompt, TaskSpec, listed

TEMPLATE = "the number {n}"
N_DIGITS = 3
IMAGE_SHAPE = NUMBER_SHAPE
"""[C, H, W] of one image (and one latent: the model works in pixel space)."""
SPLIT_SEED = 0
N_TRAIN, N_EVAL = 800, 100
POOL_SIZES = (20, 100)
"""Training-pool sizes of the nested variants (the first this many training numbers)."""


def number_split(seed: int = SPLIT_SEED) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training numbers, eval numbers) as 3-character strings, from a seeded permutation of 000-999.

    numpy's legacy ``RandomState`` is used because its stream is frozen across numpy versions.
    """
    import numpy as np

    perm = np.random.RandomState(seed).permutation(10 ** N_DIGITS).tolist()
    numbers = [f"{i:0{N_DIGITS}d}" for i in perm]
    return tuple(numbers[:N_TRAIN]), tuple(numbers[N_TRAIN:N_TRAIN + N_EVAL])


def make_number_prompts(numbers: Sequence[str]) -> tuple[Prompt, ...]:
    """One prompt per number, with the number (a string: leading zeros count) in the metadata."""
    return tuple(Prompt(TEMPLATE.format(n=n), {"number": n}) for n in numbers)


# -- the task specs --------------------------------------------------------------------------------
TARGET = 0.63
"""Between the base model's eval score (0.547) and what Flow-GRPO reaches in the budget (0.63-0.70); see
the module docstring."""
BUDGET_STEPS = 140


def number_task(task_id: str, pool: int | None = None) -> TaskSpec:
    """The digits-number spec training on the first ``pool`` training numbers (None: all of them)."""
    train, evals = number_split()
    train = train if pool is None else train[:pool]
    return TaskSpec(
        id=task_id,
        **listed(task_id),
        backbone="digits-number-v1-base",
        reward="digit-number",
        gold_reward="digit-number",
        gold_reward_args={"classifier": "gold"},
        train_prompts=make_number_prompts(train),
        eval_prompts=make_number_prompts(evals),
        eval_noises_per_prompt=2,
        target=TARGET,
        budget_steps=BUDGET_STEPS,
        eval_every=10,
        train_defaults=dict(PIXEL_TASK_DEFAULTS),
    )


DIGITS_NUMBER_V1 = number_task("digits-number-v1")
DIGITS_NUMBER_POOL20_V1 = number_task("digits-number-pool20-v1", pool=POOL_SIZES[0])
DIGITS_NUMBER_POOL100_V1 = number_task("digits-number-pool100-v1", pool=POOL_SIZES[1])
