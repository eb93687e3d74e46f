"""Tasks on SD3-family backbones.

- ``tiny-sd3-jpeg-v1``: the tiny SD3 pipeline built in code (:mod:`opgrpo_bench.backbones.tiny`; three text
  encoders, VAE, CFG) with the JPEG-compressibility reward. It exercises the whole SD3 path end to end on
  a CPU in seconds; its numbers say nothing about algorithms on real models.
- ``ocr-sd35m-v1``, ``pickscore-sd35m-v1``, ``geneval-sd35m-v1``: the papers' Stable Diffusion 3.5 Medium
  tasks (Flow-GRPO's settings, ALGORITHMS.md sections 2 and 4). They need the SD3.5-M weights
  (``$OPGRPO_SD35M_PATH`` = a diffusers folder or a repo id, else ``stabilityai/stable-diffusion-3.5-medium``
  in the local Hugging Face cache) and Flow-GRPO's prompt files (``$OPGRPO_PROMPTS_DIR`` = a copy of
  Flow-GRPO's ``dataset/`` folder: ``ocr/{train,test}.txt``, ``pickscore/{train,test}.txt``,
  ``geneval/{train,test}_metadata.jsonl``), which cannot be shipped here.
- ``ocr-sd35m-smoke-v1``, ``pickscore-sd35m-smoke-v1``, ``geneval-sd35m-smoke-v1``: SMOKE variants with a
  handful of built-in sample prompts (written for this project, not Flow-GRPO's) and a few steps, to check
  the wiring on a GPU with the real weights. Their scores are not comparable with anything.

The SD3.5-M specs are built on first access (module ``__getattr__``), because building one reads the prompt
files: a missing file raises :class:`~opgrpo_bench.errors.MissingWeightsError` with one line, which the CLI
prints before anything heavy is loaded.
"""

from __future__ import annotations

from typing import Any

from opgrpo_bench.backbones.models import SD35M
from opgrpo_bench.tasks.external import PROMPT_FILES, PROMPTS_ENV, SAMPLES, lazy_specs, paper_task_spec
from opgrpo_bench.tasks.spec import Prompt, TaskSpec, listed

__all__ = ["PROMPTS_ENV", "PROMPT_FILES", "SAMPLES", "SD35M", "TINY_SD3_JPEG_V1"]

# -- tiny-sd3-jpeg-v1 --------------------------------------------------------------------------------
TINY_TRAIN_PROMPTS = (
    "a photo of a cat", "a red car on a street", "a blue sky over the sea", "a small house in a field",
    "a yellow flower", "a dog next to a tree", "a painting of a mountain", "a cup on a table",
)
TINY_EVAL_PROMPTS = ("a photo of a dog", "a green field under a blue sky", "a white cup", "a city street")


def tiny_task(task_id: str, backbone: str, *, target: float, guidance: float, group_size: int = 8,
              reward: str = "jpeg-compressibility", **fields: Any) -> TaskSpec:
    """A task on a tiny in-code pipeline (``tiny-sd3``, ``tiny-flux``, ``tiny-wan``): the prompts above, two eval
    noises per prompt, 200 steps, an evaluation every 10, and the settings under which a random-init model
    moves at all (clip range and learning rate 1e-2, no KL, LoRA r4, 4 sampling steps), with CFG
    ``guidance`` in sampling and evaluation. ``fields``: further :class:`TaskSpec` fields (``reward_args``)."""
    return TaskSpec(
        id=task_id,
        **listed(task_id),
        backbone=backbone,
        reward=reward,
        train_prompts=tuple(Prompt(p) for p in TINY_TRAIN_PROMPTS),
        eval_prompts=tuple(Prompt(p) for p in TINY_EVAL_PROMPTS),
        eval_noises_per_prompt=2,
        target=target,
        budget_steps=200,
        eval_every=10,
        train_defaults=dict(prompts_per_iter=4, group_size=group_size, num_steps=4, eval_num_steps=4,
                            guidance=guidance, eval_guidance=guidance, lora_rank=4, lora_alpha=8, lr=1e-2,
                            clip_range=1e-2, beta=0.0, num_threads=1),
        **fields,
    )


# The model is random-init: its VAE decoder adds its own texture, so the JPEG size moves little (base eval
# score -1.546 kB; flat latents decode to about -1.39 kB). With Flow-GRPO's clip range (1e-4) and KL (0.04)
# nothing moves within hundreds of steps; with tiny_task's settings Flow-GRPO reaches about -1.50 in 100-200
# steps (25 s on 2 CPU cores).
TINY_SD3_JPEG_V1 = tiny_task("tiny-sd3-jpeg-v1", "tiny-sd3", target=-1.50, guidance=4.5)

# -- SD3.5-Medium tasks ------------------------------------------------------------------------------
# Flow-GRPO's SD3.5-M settings (its config/grpo.py: 48 groups x 24 images per epoch, two optimizer steps
# per epoch, T = 10, CFG 4.5, 40 evaluation steps, LoRA r32/alpha64, lr 3e-4, 512 px).
SD35M_TRAIN_DEFAULTS: dict[str, Any] = dict(
    prompts_per_iter=48, group_size=24, num_steps=10, noise_level=0.7, guidance=4.5, eval_num_steps=40,
    eval_guidance=4.5, optimizer_steps_per_iter=2, lora_rank=32, lora_alpha=64, lr=3e-4, ema_decay=0.9,
    ema_update_interval=8, cfg_detach_uncond=True, micro_batch=8, global_std=True,
)
"""Flow-GRPO's SD3.5-M recipe (EMA every 8 steps, CFG's unconditional branch detached in training).
``micro_batch=8`` is the size of Flow-GRPO's per-GPU sample = train batch: 16 transformer rows per call
with CFG, with gradient for one denoising step at a time, which is meant to fit one 80 GB GPU at 512 px.
Not measured here (no GPU in this project's CI); lower it with ``--set micro_batch=4`` if it does not."""
# Smoke: the same model and sampler, two groups of four, a short evaluation.
SMOKE_TRAIN_DEFAULTS: dict[str, Any] = dict(SD35M_TRAIN_DEFAULTS, prompts_per_iter=2, group_size=4,
                                            eval_num_steps=10)

# family -> (reward, beta, target, budget steps)
#   targets: Flow-GRPO's best (ALGORITHMS.md section 4); beta: 0.04 GenEval/OCR, 0.01 PickScore.
#   budget_steps [decision]: chosen above Flow-GRPO's reported training lengths; change with --steps.
FAMILIES: dict[str, tuple[str, float, float, int]] = {
    "ocr": ("ocr", 0.04, 0.92, 2000),
    "pickscore": ("pickscore", 0.01, 23.32, 4000),
    "geneval": ("geneval", 0.04, 0.95, 6000),
}


def _sd35m_spec(family: str, smoke: bool) -> TaskSpec:
    reward, beta, target, budget = FAMILIES[family]
    smoke_task = f"{family}-sd35m-smoke-v1"
    return paper_task_spec(
        smoke_task if smoke else f"{family}-sd35m-v1", smoke=smoke, smoke_task=smoke_task, family=family,
        weights=SD35M, model="SD3.5-Medium", backbone="sd35m", reward=reward,
        target=target, budget=budget,
        train_defaults=dict(SMOKE_TRAIN_DEFAULTS if smoke else SD35M_TRAIN_DEFAULTS, beta=beta),
        # GenEval: train on Flow-GRPO's partial score, evaluate GenEval's strict correctness (docs/REWARDS.md).
        reward_args={"mode": "partial"} if family == "geneval" else {},
        eval_metric="correct" if family == "geneval" else None,
    )


# Module attribute -> builder; the registry imports "opgrpo_bench.tasks.sd3_tasks:<NAME>".
_spec, __getattr__ = lazy_specs(__name__, {
    f"{family.upper()}_SD35M{'_SMOKE' if smoke else ''}_V1": (lambda f=family, s=smoke: _sd35m_spec(f, s))
    for family in FAMILIES for smoke in (False, True)
})
