"""The trainer's settings: :class:`TrainConfig` (algorithm-independent; each algorithm has its own config
dataclass beside its code). Tasks scale these in ``TaskSpec.train_defaults``; ``--set`` changes any field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from opgrpo_bench.validation import setting


@dataclass
class TrainConfig:
    """Trainer settings (algorithm-independent). Tasks scale these in ``TaskSpec.train_defaults``.

    Fields declared with :func:`~opgrpo_bench.validation.setting` carry the rule ``--set`` values are checked
    against (a group of one has no group-relative advantage, hence ``group_size >= 2``; ``grad_clip`` may be
    ``inf``, no clipping)."""

    # Upper bounds are generous (past any published recipe) and keep a typo such as lora_rank=10000000 from
    # exhausting memory before a line can be printed; seeds stop at 2**32 - 1, the range every generator
    # the run seeds (torch, numpy, scikit-learn) takes without wrapping.

    steps: int = setting(200, ge=1)
    """Budget in optimizer steps (exact: a run may end in the middle of an iteration)."""
    prompts_per_iter: int = setting(8, ge=1, le=4096)
    """Groups (prompts) per iteration."""
    group_size: int = setting(8, ge=2, le=1024)
    """Samples per group, G."""
    num_steps: int = setting(10, ge=1, le=1000)
    """SDE denoising steps per rollout, T."""
    noise_level: float = setting(0.7, gt=0)
    """SDE noise level a."""
    transition: str = setting("sde", choices=("sde", "sde-wan", "sde-constant", "cps"))
    """The stochastic step of the rollouts (:func:`opgrpo_bench.core.sde.transition_function`): Flow-GRPO's
    ``"sde"``; ``"sde-wan"``, Flow-GRPO's Wan2.1 step (no noise-level setting). An algorithm with its own
    step (CPS, DanceGRPO) replaces it."""
    guidance: float = setting(1.0, ge=0)
    """CFG scale during rollouts and training (1 = no CFG)."""
    cfg_detach_uncond: bool = setting(True)
    """No gradient through CFG's unconditional branch in the training forward (Flow-GRPO does this;
    without it the gradient gains a -(guidance - 1) * grad v_uncond term). No effect without CFG."""
    eval_num_steps: int = setting(20, ge=1, le=1000)
    """ODE steps for evaluation."""
    eval_guidance: float = setting(1.0, ge=0)
    """CFG scale for evaluation."""
    eval_every: int = setting(10, ge=1)
    """Evaluate every this many optimizer steps (and at step 0)."""
    optimizer_steps_per_iter: int = setting(2, ge=1, le=1024)
    """Optimizer steps per iteration, each over a disjoint share of the samples."""
    micro_batch: int = setting(32, ge=1, le=4096)
    """Rows per network call, in sampling and in training alike (CFG doubles the rows of a call). Each
    share of an optimizer step is cut into blocks of this many rows; see the module docstring. Bounds
    the activation memory of a training forward: on a GPU choose the largest that fits."""
    lr: float = setting(3e-4, gt=0)
    weight_decay: float = setting(1e-4, ge=0)
    adam_betas: tuple[float, float] = setting((0.9, 0.999), ge=0, lt=1)
    grad_clip: float = setting(1.0, gt=0, finite=False)
    lora_rank: int = setting(32, ge=1, le=1024)
    lora_alpha: int = setting(64, ge=1, le=65536)
    ema_decay: float = setting(0.9, ge=0, lt=1)
    """EMA of the trainable weights used for evaluation; 0 evaluates the raw weights."""
    ema_update_interval: int = setting(1, ge=1)
    """Update the EMA after every this many optimizer steps (Flow-GRPO's SD3.5 recipe: 8)."""
    logprob_reduction: str = setting("mean", choices=("mean", "sum"))
    """"mean" (Flow-GRPO's scale) or "sum" over latent dimensions."""
    seed: int = setting(0, ge=0, le=2**32 - 1)
    num_threads: int = setting(0, ge=0, le=1024)
    """torch intra-op threads (0 = leave torch's default)."""
    gradient_checkpointing: bool = False
    """Recompute the transformer's activations in the backward pass (memory for time; same numbers)."""
    compile: bool = False
    """``torch.compile`` the transformer's forward (the GPU path; other kernels, so other rounding)."""
    latent_dtype: str = setting("float32", choices=("float32", "bfloat16", "float16"))
    """dtype of the rollout latents, sampled and stored: ``float32``, ``bfloat16`` or ``float16``. The SDE
    step rounds each new latent to it and scores the rounded value, so the first ratio stays exactly 1."""
    trajectory_device: str = setting("auto", choices=("auto", "cpu"))
    """Where the rollout's trajectories are kept: ``auto`` (the backbone's device) or ``cpu`` (video-sized
    rollouts beside a large model; each training call copies its block's two latents back)."""


HASH_NEUTRAL_DEFAULTS = {"gradient_checkpointing": False, "compile": False, "latent_dtype": "float32",
                         "trajectory_device": "auto", "transition": "sde"}
"""Trainer settings added after results were published: they count in a run's identity (its configuration
hash, the leaderboard's check that a row's runs share one configuration) only when set away from these
defaults, so every earlier result keeps its hash (and stays resumable and comparable)."""


def identity_settings(train: dict[str, Any], drop: Sequence[str] = ()) -> dict[str, Any]:
    """The trainer settings that identify a run's configuration: ``train`` (a :class:`TrainConfig` as a dict,
    or a recorded ``config.train``) without the ``drop`` keys and without the hash-neutral settings left at
    their defaults. The one rule behind the configuration hash and the leaderboard's row check."""
    return {k: v for k, v in train.items()
            if k not in drop and not (k in HASH_NEUTRAL_DEFAULTS and v == HASH_NEUTRAL_DEFAULTS[k])}
