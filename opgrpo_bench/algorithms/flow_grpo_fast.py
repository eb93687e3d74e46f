"""Flow-GRPO-Fast: the SDE only inside a short window of the schedule, ODE elsewhere, only the window trained.

Flow-GRPO's Fast variant (its repository's ``sde_window_size`` / ``sde_window_range``): each iteration
picks a window of ``window_size`` consecutive transitions, its start drawn uniformly so that the window
lies in the first ``window_range`` fraction of the schedule (the high-noise part, where exploration
matters); every row takes SDE steps inside it and deterministic ODE (Euler) steps outside, and only the
window's (sample, step) pairs are trained. With T = 10 and the defaults (window 2 in the first half) a
window starts at step 0, 1, 2 or 3, and an optimizer step trains 2 of the 9 transitions Flow-GRPO trains.

The window travels in the rollout plan (``RolloutPlan.sde_steps``); the trainer and the sampler know
nothing of it. :class:`SDEWindowGRPO` is the shared mechanism (MixGRPO moves the window instead,
:mod:`opgrpo_bench.algorithms.mixgrpo`).

:class:`FlowGRPOFastRef` (preset ``flow-grpo-fast-ref``) is the reference recipe: the Fast
configurations' clip range 1e-5, no KL term and noise level 0.8 (docs/ALGORITHMS.md, "Reference recipes").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch

from opgrpo_bench.algorithms.base import RolloutPlan, SamplerSettings, TrainBatch
from opgrpo_bench.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig, Rollout
from opgrpo_bench.validation import setting


@dataclass
class SDEWindowConfig(FlowGRPOConfig):
    """The window's size and where it may lie."""

    window_size: int = 2
    """Consecutive SDE transitions per iteration (Flow-GRPO-Fast: 2)."""
    window_range: float = 0.5
    """The window lies within the first floor(window_range * T) transitions."""


class SDEWindowGRPO(FlowGRPO):
    """Flow-GRPO with SDE steps only inside a window chosen by :meth:`window_start`; only it is trained."""

    config: SDEWindowConfig

    def __init__(self, config: SDEWindowConfig | None = None):
        super().__init__(config)
        if self.config.window_size < 1:
            raise ValueError(f"window_size must be >= 1, not {self.config.window_size}")
        if not 0.0 < self.config.window_range <= 1.0:
            raise ValueError(f"window_range must be in (0, 1], not {self.config.window_range}")

    def window_limit(self, num_steps: int) -> int:
        """The last possible start + 1: the window fits in the first ``window_range * T`` transitions (and
        always in the schedule, even when that range is shorter than the window)."""
        span = max(math.floor(self.config.window_range * num_steps), self.config.window_size)
        return max(min(span, num_steps) - self.config.window_size + 1, 1)

    def window_start(self, num_steps: int, iteration: int, generator: torch.Generator) -> int:
        raise NotImplementedError

    def window(self, num_steps: int, iteration: int, generator: torch.Generator) -> torch.Tensor:
        """[T] bool: the SDE transitions of this iteration."""
        start = self.window_start(num_steps, iteration, generator)
        mask = torch.zeros(num_steps, dtype=torch.bool)
        mask[start:start + self.config.window_size] = True
        return mask

    def plan(self, num_groups: int, group_size: int, num_steps: int, iteration: int,
             generator: torch.Generator, draw_prompts: Callable[[int], list[int]]) -> RolloutPlan:
        prompts = draw_prompts(num_groups)  # the prompts first: the same stream as Flow-GRPO's
        return RolloutPlan(prompts, sde_steps=self.window(num_steps, iteration, generator))

    def prepare(self, rollout: Rollout) -> TrainBatch:
        batch = super().prepare(rollout)
        if rollout.sde_steps is not None:  # ODE transitions have no exploration to learn from
            batch.train_mask &= rollout.sde_steps.to(batch.train_mask.device)[None, :]
            batch.metrics["train/sde_window_start"] = int(rollout.sde_steps.nonzero()[0])
        return batch


class FlowGRPOFast(SDEWindowGRPO):
    """Flow-GRPO-Fast: a window at a uniformly random position each iteration."""

    name = "flow-grpo-fast"
    config_cls = SDEWindowConfig

    def window_start(self, num_steps: int, iteration: int, generator: torch.Generator) -> int:
        return int(torch.randint(self.window_limit(num_steps), (1,), generator=generator))


@dataclass
class FlowGRPOFastRefConfig(SDEWindowConfig):
    """Flow-GRPO-Fast's reference recipe: the Fast configurations' clip, KL weight and noise level.

    A separate class (not fields of :class:`SDEWindowConfig`) so that the configuration every earlier
    ``flow-grpo-fast`` result records, and hashes, stays what it was."""

    clip_range: float = 1e-5
    """The Fast configurations' clip range (ten times tighter than Flow-GRPO's 1e-4)."""
    beta: float = 0.0
    """No KL term in the Fast configurations."""
    sde_noise_level: float = setting(0.8, gt=0)
    """The sampler's noise level; replaces the trainer's ``noise_level`` (0.7) for this algorithm's rollouts."""


class FlowGRPOFastRef(FlowGRPOFast):
    """Flow-GRPO-Fast with its reference configuration's clip, KL weight and noise level."""

    name = "flow-grpo-fast-ref"
    config_cls = FlowGRPOFastRefConfig
    config: FlowGRPOFastRefConfig

    def sampler_settings(self, defaults: SamplerSettings) -> SamplerSettings:
        """The trainer's settings with the recipe's own noise level."""
        return replace(super().sampler_settings(defaults), noise_level=self.config.sde_noise_level)
