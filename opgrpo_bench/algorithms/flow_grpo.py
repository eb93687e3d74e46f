"""Flow-GRPO (arXiv 2505.05470): on-policy group-relative policy optimisation over SDE trajectories.

The algorithm only turns a scored rollout into a training batch (advantages, the log-probs each ratio
divides by, per-sample weights, which (sample, step) pairs are trained). The trainer owns the loop,
the optimizer and the I/O; the math is in :mod:`opgrpo_bench.core`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from opgrpo_bench.core.advantages import finite_group_mask, group_advantages, nonzero_std_group_mask
from opgrpo_bench.core.replay import ReplayEntry


@dataclass
class FlowGRPOConfig:
    """Flow-GRPO's update (ALGORITHMS.md section 2); defaults are the paper's SD3.5 values."""

    clip_range: float = 1e-4
    """PPO clip epsilon on the per-step ratio (on the "mean" log-prob scale)."""
    beta: float = 0.04
    """KL weight towards the reference (base) model; 0 skips the reference forward pass."""
    adv_clip: float = 5.0
    """Advantages are clipped to [-adv_clip, adv_clip]."""
    global_std: bool = True
    """Normalise advantages by the std over the whole batch (Flow-GRPO's SD3.5 default) or per group."""
    filter_zero_std: bool = True
    """Drop groups whose rewards are all equal (they carry no signal)."""
    kl_include_dt: bool = False
    """Use the exact Gaussian KL scale s^2*(-dt) instead of Flow-GRPO's s^2."""
    train_fraction: float = 0.99
    """Train the first floor(train_fraction * T) denoising steps (the last, lowest-noise step never)."""


@dataclass
class Rollout:
    """One iteration's scored samples (N = groups x group size), in group order.

    Attributes:
        prompt_ids: [N] index into the task's training prompts.
        group_ids: [N] explicit group membership.
        prompts / metas: per-sample prompt text and reward metadata.
        latents: [N, T+1, *shape] trajectories; ``sigmas`` [T+1] their schedule.
        log_probs: [N, T] log-probs of every transition under the sampling weights (theta_old).
        behaviour_log_probs: [N, T] log-probs under the policy that generated each transition
            (equal to ``log_probs`` except on replayed prefixes, where they are the stored ``logp_off``).
        forced_len: [N] transitions taken from the replay buffer (0 = fresh sample).
        rewards: [N] scores (float32); NaN means "not applicable" (masked out of advantages and buffer).
        iteration: the iteration that produced it.
        cond / cond_index: prompt conditioning, one row per group, and each sample's row [N].
    """

    prompt_ids: torch.Tensor
    group_ids: torch.Tensor
    prompts: list[str]
    metas: list[dict[str, Any]]
    latents: torch.Tensor
    sigmas: torch.Tensor
    log_probs: torch.Tensor
    behaviour_log_probs: torch.Tensor
    forced_len: torch.Tensor
    rewards: torch.Tensor
    iteration: int = 0
    cond: dict[str, torch.Tensor] = field(default_factory=dict)
    cond_index: torch.Tensor | None = None

    @property
    def replayed(self) -> torch.Tensor:
        """[N] bool: the sample continues a stored (off-policy) prefix."""
        return self.forced_len > 0

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]


@dataclass
class TrainBatch:
    """What the trainer optimises: for each sample i and step k with ``train_mask[i, k]``, the loss
    ``weights[i] * clipped(exp(logp_theta - old_log_probs[i, k]), advantages[i])`` (+ beta * KL)."""

    rollout: Rollout
    advantages: torch.Tensor  # [N]
    old_log_probs: torch.Tensor  # [N, T]
    weights: torch.Tensor  # [N] float32, constant
    train_mask: torch.Tensor  # [N, T] bool
    metrics: dict[str, Any] = field(default_factory=dict)


class FlowGRPO:
    """Flow-GRPO: fresh groups only; every sample is on-policy (``w = 1``)."""

    name = "flow-grpo"
    config_cls = FlowGRPOConfig

    def __init__(self, config: FlowGRPOConfig | None = None):
        self.config = config or self.config_cls()

    # -- hooks the trainer calls, in this order, once per iteration -------------------------------
    def replay_entries(self, num_groups: int, iteration: int, generator: torch.Generator) -> list[ReplayEntry]:
        """Stored trajectories to replay this iteration, one per replay group (none for Flow-GRPO)."""
        return []

    def trained_steps(self, num_steps: int) -> torch.Tensor:
        """[T] bool: which denoising steps are trained."""
        mask = torch.zeros(num_steps, dtype=torch.bool)
        mask[: math.floor(self.config.train_fraction * num_steps)] = True
        return mask

    def prepare(self, rollout: Rollout) -> TrainBatch:
        """Advantages (group-relative), ratio denominators, weights and the trained (sample, step) mask.

        NaN rewards ("not applicable") are masked out: such samples get advantage 0 and are never trained,
        the group means and the batch std use the finite rewards only, and a group with fewer than two finite
        rewards carries no signal (not trained, counted in ``train/zero_std_group_frac``). An all-NaN
        rollout yields a batch with nothing to train. ``train/nan_reward_frac`` is the fraction of
        non-finite rewards.
        """
        cfg = self.config
        rewards = rollout.rewards.float()
        advantages = group_advantages(rewards, rollout.group_ids, global_std=cfg.global_std,
                                      clip=cfg.adv_clip).float()
        informative = nonzero_std_group_mask(rewards, rollout.group_ids)  # finite, group not all equal
        keep = informative if cfg.filter_zero_std else finite_group_mask(rewards, rollout.group_ids)
        train_mask = self.trained_steps(rollout.num_steps).expand(len(rewards), -1) & keep[:, None]
        batch = TrainBatch(rollout, advantages, rollout.log_probs.clone(), torch.ones_like(rewards),
                           train_mask.clone())
        groups = torch.unique(rollout.group_ids)
        kept_groups = torch.unique(rollout.group_ids[informative]) if informative.any() else groups[:0]
        batch.metrics["train/zero_std_group_frac"] = 1.0 - len(kept_groups) / len(groups)
        batch.metrics["train/nan_reward_frac"] = (~torch.isfinite(rewards)).float().mean().item()
        self.adjust(batch)
        return batch

    def adjust(self, batch: TrainBatch) -> None:
        """Off-policy corrections (OP-GRPO overrides); Flow-GRPO trains everything on-policy."""

    def observe(self, rollout: Rollout) -> dict[str, Any]:
        """Called once per iteration with its rollout, right after :meth:`prepare` and before the optimizer
        steps (it never depends on the weights); returns diagnostics for step records."""
        return {}

    # -- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
