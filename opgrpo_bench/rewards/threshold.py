"""Binarise any reward: success = 1 when the wrapped score reaches a threshold, else 0.

Sparse, success-or-failure rewards are the regime where many fresh groups carry no signal (all samples
fail) and OP-GRPO's replay of past successes is meant to help; this wrapper makes such a task out of any
dense reward without new models.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from opgrpo_bench.rewards.base import BaseReward, RewardOutput


class ThresholdReward(BaseReward):
    """``1[score >= threshold]`` (``<=`` for lower-is-better rewards) of a registered reward; NaN stays NaN.

    Args:
        reward: registered name of the wrapped reward.
        threshold: success threshold on the wrapped score.
        reward_args: constructor arguments of the wrapped reward.
    """

    name: ClassVar[str] = "threshold"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    modality: ClassVar[str] = "any"

    def __init__(self, reward: str = "digit-classifier", threshold: float = 0.5,
                 reward_args: dict[str, Any] | None = None):
        """Build the wrapped reward (see the class docstring for the arguments)."""
        from opgrpo_bench.registry import REWARDS

        if not math.isfinite(float(threshold)):
            raise ValueError(f"threshold must be finite, got {threshold}")
        self.inner = REWARDS.get(reward)(**(reward_args or {}))
        self.threshold = float(threshold)
        if hasattr(self.inner, "input_shape"):  # e.g. the digit rewards' fixed image size
            self.input_shape = self.inner.input_shape

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        """Threshold the wrapped reward's scores; its components (and ``raw``) and info are kept."""
        out = self.inner(images, prompts, metadata)
        raw = out.scores.float()
        hit = raw >= self.threshold if self.inner.higher_is_better else raw <= self.threshold
        scores = torch.where(torch.isnan(raw), raw, hit.float())
        return RewardOutput(scores, {"raw": raw, **out.components}, out.info)
