"""The trainer's settings: :class:`TrainConfig` (algorithm-independent; each algorithm has its own config
dataclass beside its code). Tasks scale these in ``TaskSpec.train_defaults``; ``--set`` changes any field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Trainer settings (algorithm-independent). Tasks scale these in ``TaskSpec.train_defaults``."""

    steps: int = 200
    """Budget in optimizer steps (exact: a run may end in the middle of an iteration)."""
    prompts_per_iter: int = 8
    """Groups (prompts) per iteration."""
    group_size: int = 8
    """Samples per group, G."""
    num_steps: int = 10
    """SDE denoising steps per rollout, T."""
    noise_level: float = 0.7
    """SDE noise level a."""
    guidance: float = 1.0
    """CFG scale during rollouts and training (1 = no CFG)."""
    cfg_detach_uncond: bool = True
    """No gradient through CFG's unconditional branch in the training forward (Flow-GRPO does this;
    without it the gradient gains a -(guidance - 1) * grad v_uncond term). No effect without CFG."""
    eval_num_steps: int = 20
    """ODE steps for evaluation."""
    eval_guidance: float = 1.0
    """CFG scale for evaluation."""
    eval_every: int = 10
    """Evaluate every this many optimizer steps (and at step 0)."""
    optimizer_steps_per_iter: int = 2
    """Optimizer steps per iteration, each over a disjoint share of the samples."""
    micro_batch: int = 32
    """Rows per network call, in sampling and in training alike (CFG doubles the rows of a call). Each
    share of an optimizer step is cut into blocks of this many rows; see the module docstring. Bounds
    the activation memory of a training forward: on a GPU choose the largest that fits."""
    lr: float = 3e-4
    weight_decay: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    lora_rank: int = 32
    lora_alpha: int = 64
    ema_decay: float = 0.9
    """EMA of the trainable weights used for evaluation; 0 evaluates the raw weights."""
    ema_update_interval: int = 1
    """Update the EMA after every this many optimizer steps (Flow-GRPO's SD3.5 recipe: 8)."""
    logprob_reduction: str = "mean"
    """"mean" (Flow-GRPO's scale) or "sum" over latent dimensions."""
    seed: int = 0
    num_threads: int = 0
    """torch intra-op threads (0 = leave torch's default)."""
    gradient_checkpointing: bool = False
    """Recompute the transformer's activations in the backward pass (memory for time; same numbers)."""
    compile: bool = False
    """``torch.compile`` the transformer's forward (the GPU path; other kernels, so other rounding)."""
    latent_dtype: str = "float32"
    """dtype of the rollout latents, sampled and stored: ``float32``, ``bfloat16`` or ``float16``. The SDE
    step rounds each new latent to it and scores the rounded value, so the first ratio stays exactly 1."""
    trajectory_device: str = "auto"
    """Where the rollout's trajectories are kept: ``auto`` (the backbone's device) or ``cpu`` (video-sized
    rollouts beside a large model; each training call copies its block's two latents back)."""
