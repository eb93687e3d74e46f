"""MixGRPO (arXiv 2507.21802): a sliding SDE window that advances over training, ODE outside it.

MixGRPO mixes the samplers like Flow-GRPO-Fast (SDE inside a window of ``window_size`` transitions, ODE
elsewhere, only the window trained) but moves the window deterministically instead of drawing it: it
starts at the first, highest-noise transitions and moves ``stride`` transitions later every
``shift_interval`` iterations, until it reaches the end of its range, where it stays (the paper's
"progressive" strategy: optimise the noisiest steps first, where the reward depends most on the
choice). With T = 10 and the defaults it covers transitions 0-1 for iterations 0-9, 1-2 for 10-19, 2-3
for 20-29 and 3-4 from iteration 30 on. [decision] The window's range is the first half of the schedule,
as Flow-GRPO-Fast's, so that the two differ only in how the window is placed (``--set window_range=1``
lets it travel the whole schedule). The paper's higher-order ODE solver outside the window
(MixGRPO-Flash) is not reproduced: the ODE steps are Euler steps, as everywhere in this project.

:class:`MixGRPORef` (preset ``mixgrpo-ref``) is the reference recipe: shared initial noise within a group,
per-group advantage std, no KL (docs/ALGORITHMS.md, "Reference recipes").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from opgrpo_bench.algorithms.base import RolloutPlan
from opgrpo_bench.algorithms.flow_grpo_fast import SDEWindowConfig, SDEWindowGRPO
from opgrpo_bench.validation import setting


@dataclass
class MixGRPOConfig(SDEWindowConfig):
    """The window's movement (defaults scaled to T = 10 and ~100-iteration CPU runs)."""

    shift_interval: int = 10
    """Iterations between two moves of the window."""
    stride: int = 1
    """Transitions the window moves each time."""


class MixGRPO(SDEWindowGRPO):
    """MixGRPO: the window at ``min((iteration // shift_interval) * stride, last start)``."""

    name = "mixgrpo"
    config_cls = MixGRPOConfig
    config: MixGRPOConfig

    def __init__(self, config: MixGRPOConfig | None = None):
        super().__init__(config)
        if self.config.shift_interval < 1 or self.config.stride < 0:
            raise ValueError("shift_interval must be >= 1 and stride >= 0")

    def window_start(self, num_steps: int, iteration: int, generator: torch.Generator) -> int:
        return min((iteration // self.config.shift_interval) * self.config.stride, self.window_limit(num_steps) - 1)


@dataclass
class MixGRPORefConfig(MixGRPOConfig):
    """MixGRPO's reference recipe: shared initial noise within a group, per-group advantage std, no KL.

    A separate class so that the configuration every earlier ``mixgrpo`` result records stays what it was."""

    shared_noise: bool = setting(True)
    """Every member of a group starts from the same initial noise (the reference's ``--init_same_noise``)."""
    global_std: bool = False
    """Per-group advantage std (the reference's group-relative advantages)."""
    beta: float = 0.0
    """No KL term (the reference's ``kl_coeff=0.0``)."""


class MixGRPORef(MixGRPO):
    """MixGRPO with the reference recipe's group noise, advantages and KL weight."""

    name = "mixgrpo-ref"
    config_cls = MixGRPORefConfig
    config: MixGRPORefConfig

    def plan(self, num_groups: int, group_size: int, num_steps: int, iteration: int,
             generator: torch.Generator, draw_prompts: Callable[[int], list[int]]) -> RolloutPlan:
        """MixGRPO's plan (same prompts and window), with the group's shared initial noise when set."""
        plan = super().plan(num_groups, group_size, num_steps, iteration, generator, draw_prompts)
        plan.shared_noise = self.config.shared_noise
        return plan
