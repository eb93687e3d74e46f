"""Tasks on FLUX.1-family backbones.

- ``tiny-flux-jpeg-v1``: the tiny FLUX pipeline built in code (:mod:`opgrpo_bench.backbones.tiny_flux`;
  CLIP + T5 + VAE + a FLUX transformer with the distilled guidance embedding) with the
  JPEG-compressibility reward. It exercises the whole FLUX path end to end (packing, position ids, dynamic
  shift, guidance embedding, VAE shift and scale) on a CPU in seconds; its numbers say nothing about
  algorithms on real models.
- ``pickscore-flux-v1``: Flow-GRPO's FLUX.1-dev PickScore task (its ``config/grpo.py:pickscore_flux`` and
  ``scripts/train_flux.py``: 512 px, 6 training / 28 evaluation steps, distilled guidance 3.5, no true CFG,
  noise level 0.9, no KL, bf16, LoRA r64/alpha128, 48 groups x 24 images). It needs the FLUX.1-dev weights
  (``$OPGRPO_FLUX_PATH`` = a diffusers folder or a repo id, else ``black-forest-labs/FLUX.1-dev`` in the
  local Hugging Face cache) and Flow-GRPO's PickScore prompt files (``$OPGRPO_PROMPTS_DIR``, as the
  SD3.5-M tasks: ``pickscore/{train,test}.txt``).
- ``pickscore-flux-smoke-v1``: SMOKE variant on the built-in sample prompts of the SD3.5-M smoke task and a
  few steps, to check the wiring on a GPU with the real weights. Its scores are not comparable with anything.

FLUX.1-dev is guidance-distilled: the guidance scale is an input of the network (a backbone argument,
``guidance_scale``), so every task here keeps the trainer's CFG ``guidance`` at 1.0 (one network evaluation
per sample and step).

The FLUX.1-dev spec is built on first access (module ``__getattr__``), because building it reads the prompt
files: a missing file raises :class:`~opgrpo_bench.errors.MissingWeightsError` with one line, which the CLI
prints before anything heavy is loaded.
"""

from __future__ import annotations

from typing import Any

from opgrpo_bench.backbones.models import FLUX_DEV
from opgrpo_bench.tasks.external import lazy_specs, paper_task_spec
from opgrpo_bench.tasks.sd3_tasks import tiny_task
from opgrpo_bench.tasks.spec import TaskSpec

# -- tiny-flux-jpeg-v1 -------------------------------------------------------------------------------
# Random-init model, with tiny-sd3-jpeg-v1's settings (large clip range and learning rate, no KL) minus CFG.
# Measured (seed 0, Flow-GRPO, 2 loaded CPU cores): base eval -1.536 kB; 200 steps (78 s) end at -1.535 (all
# evals within -1.531..-1.538), i.e. no measurable progress; flat latents decode to -1.28. The target is
# tiny-sd3-jpeg-v1's and is NOT reached in the budget: this task checks FLUX wiring end to end (every stage
# on the CPU), not algorithms.
TINY_FLUX_JPEG_V1 = tiny_task("tiny-flux-jpeg-v1", "tiny-flux", target=-1.50, guidance=1.0)

# -- FLUX.1-dev tasks --------------------------------------------------------------------------------
# Flow-GRPO's FLUX.1-dev PickScore recipe (config/grpo.py:pickscore_flux, scripts/train_flux.py): 48 groups
# x 24 images per epoch and two optimizer steps per epoch, T = 6 with noise level 0.9, 28 evaluation steps,
# no KL (beta 0), EMA 0.9 every 8 steps, LoRA r64/alpha128, lr 3e-4 (base config), 512 px, bf16.
FLUX_DEV_TRAIN_DEFAULTS: dict[str, Any] = dict(
    prompts_per_iter=48, group_size=24, num_steps=6, noise_level=0.9, guidance=1.0, eval_num_steps=28,
    eval_guidance=1.0, optimizer_steps_per_iter=2, lora_rank=64, lora_alpha=128, lr=3e-4, ema_decay=0.9,
    ema_update_interval=8, beta=0.0, micro_batch=3, global_std=True,
)
"""``guidance`` 1.0: FLUX.1-dev's guidance is the backbone's distilled ``guidance_scale`` (3.5), not CFG.
``micro_batch=3`` is Flow-GRPO's per-GPU FLUX sample = train batch; not measured here (no GPU in this
project's CI)."""
FLUX_SMOKE_TRAIN_DEFAULTS: dict[str, Any] = dict(FLUX_DEV_TRAIN_DEFAULTS, prompts_per_iter=2, group_size=4,
                                                 eval_num_steps=10)
"""Smoke: the same model and sampler, two groups of four, a short evaluation."""
PICKSCORE_FLUX_TARGET = 23.5
"""[decision] A PickScore level for steps-to-target; Flow-GRPO reports no FLUX.1-dev number that this
project has checked, so it is set just above SD3.5-M's (23.32) and should be revised once measured."""
PICKSCORE_FLUX_BUDGET = 4000
"""[decision] As pickscore-sd35m-v1's budget; change with --steps."""


def _flux_dev_spec(smoke: bool) -> TaskSpec:
    return paper_task_spec(
        "pickscore-flux-smoke-v1" if smoke else "pickscore-flux-v1", smoke=smoke,
        smoke_task="pickscore-flux-smoke-v1", family="pickscore", weights=FLUX_DEV, model="FLUX.1-dev",
        backbone="flux1-dev", reward="pickscore",
        target=PICKSCORE_FLUX_TARGET, budget=PICKSCORE_FLUX_BUDGET,
        train_defaults=FLUX_SMOKE_TRAIN_DEFAULTS if smoke else FLUX_DEV_TRAIN_DEFAULTS,
    )


# Module attribute -> builder; the registry imports "opgrpo_bench.tasks.flux_tasks:<NAME>".
_spec, __getattr__ = lazy_specs(__name__, {
    "PICKSCORE_FLUX_V1": lambda: _flux_dev_spec(smoke=False),
    "PICKSCORE_FLUX_SMOKE_V1": lambda: _flux_dev_spec(smoke=True),
})
