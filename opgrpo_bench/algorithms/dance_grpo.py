"""DanceGRPO: GRPO over flow SDE trajectories with shared group noise and a random subset of trained steps.

What differs from Flow-GRPO (DanceGRPO's paper and public code, as read for this project):

- **The SDE's diffusion coefficient is constant**, ``s = eta`` (default 0.3), instead of Flow-GRPO's
  ``a * sqrt(sigma / (1 - sigma))``: the same drift-corrected flow SDE step otherwise
  (:func:`opgrpo_bench.core.sde.constant_noise_sde_step_with_logprob`); ``eta`` is this algorithm's
  setting, the trainer's ``noise_level`` is not used.
- **Shared initial noise within a group**: the members of a group start from the same ``x_T`` and
  differ only through the SDE noise, so the group compares what the sampler's choices did.
- **A random subset of the transitions is trained, per sample**: each sample trains its own random
  ``floor(timestep_fraction * (T - 1))`` (0.6: 5 of 10) of the first ``T - 1`` transitions, drawn without
  replacement; the last transition (to sigma = 0) is never trained, as in the reference, which drops it
  from the training set before drawing (``fastvideo/train_grpo_flux.py``: ``timesteps[:, :-1]``, one
  ``randperm`` per sample, ``int(len * timestep_fraction)`` of them).

Advantages, clipping and the KL term are Flow-GRPO's (DanceGRPO's own code uses per-group advantage
normalisation and no KL; choose ``global_std=False``, ``beta=0`` with ``--set`` to follow it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from opgrpo_bench.algorithms.base import RolloutPlan, SamplerSettings
from opgrpo_bench.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig


@dataclass
class DanceGRPOConfig(FlowGRPOConfig):
    """DanceGRPO's sampler and timestep selection on top of Flow-GRPO's update."""

    eta: float = 0.3
    """Constant diffusion coefficient of the SDE."""
    timestep_fraction: float = 0.6
    """Fraction of the first T - 1 transitions each sample trains (at least one), drawn per sample."""


class DanceGRPO(FlowGRPO):
    """DanceGRPO: constant-noise SDE, shared group noise, a random subset of trained transitions."""

    name = "dance-grpo"
    config_cls = DanceGRPOConfig
    config: DanceGRPOConfig

    def __init__(self, config: DanceGRPOConfig | None = None):
        super().__init__(config)
        if not self.config.eta > 0:
            raise ValueError(f"eta must be > 0, not {self.config.eta}")
        if not 0.0 < self.config.timestep_fraction <= 1.0:
            raise ValueError(f"timestep_fraction must be in (0, 1], not {self.config.timestep_fraction}")
        self._steps: torch.Tensor | None = None  # [N, T] this iteration's trained transitions (set by plan)

    def sampler_settings(self, defaults: SamplerSettings) -> SamplerSettings:
        """The constant-noise SDE step with ``eta`` as its noise parameter (the trainer's ``noise_level``
        is not used)."""
        return replace(defaults, transition="sde-constant", noise_level=self.config.eta)

    def plan(self, num_groups: int, group_size: int, num_steps: int, iteration: int,
             generator: torch.Generator, draw_prompts: Callable[[int], list[int]]) -> RolloutPlan:
        prompts = draw_prompts(num_groups)
        eligible = num_steps - 1  # the last transition is never trained
        k = max(1, int(self.config.timestep_fraction * eligible))
        self._steps = torch.zeros((num_groups * group_size, num_steps), dtype=torch.bool)
        for row in self._steps:
            row[torch.randperm(eligible, generator=generator)[:k]] = True
        return RolloutPlan(prompts, shared_noise=True)

    def trained_steps(self, num_steps: int) -> torch.Tensor:
        """[N, T] each sample's random subset (drawn by :meth:`plan`, which precedes :meth:`prepare`)."""
        if self._steps is None or self._steps.shape[1] != num_steps:
            return super().trained_steps(num_steps)
        return self._steps.clone()
