"""Composite reward: a weighted sum of registered rewards, optionally normalised per reward.

``CompositeReward({"pickscore": 1.0, "ocr": 0.5})`` builds each reward from the registry and returns
``scores = sum_i w_i * r_i`` with each ``r_i`` kept in ``components``. A reward that is NaN ("not
applicable") for a sample is left out of that sample's sum; a sample where every reward is NaN scores
NaN. Weights carry the sign: give a reward whose ``higher_is_better`` is False a negative weight.

With ``normalize_per_reward=True`` the sum is meant to be taken over *advantages* instead of raw scores
(as in multi-reward Flow-GRPO variants): each reward is normalised within its prompt group first, so a
reward with a large scale cannot drown the others. :func:`per_reward_advantages` computes that from a
``RewardOutput`` and the group id of each sample; the algorithm calls it when the reward asks for it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from opgrpo_bench.rewards.base import NAN_REASON, BaseReward, RewardOutput, nan_reason


def weighted_nansum(components: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``sum_i w_i * c_i`` over the non-NaN entries; NaN where every component is NaN."""
    stacked = torch.stack([weights[k] * components[k] for k in weights])  # [R, B]
    total = torch.nansum(stacked, dim=0)
    all_nan = torch.isnan(stacked).all(dim=0)
    return torch.where(all_nan, torch.full_like(total, math.nan), total)


def group_normalize(values: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``(x - mean_g) / (std_g + eps)`` within each group, ignoring NaN (NaN entries become 0)."""
    values = values.to(torch.float32)
    out = torch.zeros_like(values)
    for g in torch.unique(group_ids):
        sel = (group_ids == g) & ~torch.isnan(values)
        if sel.sum() == 0:
            continue
        x = values[sel]
        std = x.std(unbiased=False) if x.numel() > 1 else torch.tensor(0.0)
        out[sel] = (x - x.mean()) / (std + eps)
    return out


def per_reward_advantages(
    output: RewardOutput, group_ids: torch.Tensor, weights: Mapping[str, float] | None = None, eps: float = 1e-4
) -> torch.Tensor:
    """Weighted sum of per-reward, per-group normalised advantages of a composite's output.

    Args:
        output: a :class:`CompositeReward` output (its ``info["weights"]`` names the components).
        group_ids: [B] integer id of each sample's prompt group.
        weights: override of the composite's weights.
    """
    weights = dict(weights or output.info["weights"])
    adv = [w * group_normalize(output.components[name], group_ids, eps) for name, w in weights.items()]
    return torch.stack(adv).sum(dim=0)


class CompositeReward(BaseReward):
    """Weighted sum of registered rewards (NaN-aware); optional per-reward advantage normalisation."""

    name = "composite"
    modality = "any"
    needs = "as its parts"

    def __init__(
        self,
        weights: Mapping[str, float],
        reward_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        normalize_per_reward: bool = False,
        rewards: Mapping[str, Any] | None = None,
    ):
        """Args:
        weights: reward name -> weight.
        reward_kwargs: reward name -> constructor kwargs.
        normalize_per_reward: ask the algorithm to group-normalise each reward before summing
            (see :func:`per_reward_advantages`); ``scores`` stay the raw weighted sum.
        rewards: already-built reward objects by name (skips the registry for those names).
        """
        from opgrpo_bench.registry import REWARDS

        if not weights:
            raise ValueError("composite reward needs at least one weight")
        self.weights = {str(k): float(v) for k, v in weights.items()}
        self.normalize_per_reward = normalize_per_reward
        self.rewards: dict[str, Any] = {}
        kwargs = reward_kwargs or {}
        for name in self.weights:
            if rewards and name in rewards:
                self.rewards[name] = rewards[name]
            else:
                self.rewards[name] = REWARDS.get(name)(**dict(kwargs.get(name, {})))
        bounded = all(math.isfinite(x) for r in self.rewards.values() for x in getattr(r, "range", (-math.inf,)))
        if bounded:
            lows = [min(w * r.range[0], w * r.range[1]) for r, w in zip(self.rewards.values(), self.weights.values())]
            highs = [max(w * r.range[0], w * r.range[1]) for r, w in zip(self.rewards.values(), self.weights.values())]
            self.range = (float(sum(lows)), float(sum(highs)))  # type: ignore[misc]

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        """Score with every part; ``scores`` = NaN-aware weighted sum, parts in ``components``."""
        components: dict[str, torch.Tensor] = {}
        info: dict[str, Any] = {"weights": dict(self.weights), "normalize_per_reward": self.normalize_per_reward}
        for name, reward in self.rewards.items():
            out = reward(images, prompts, metadata)
            components[name] = out.scores
            for key, value in out.components.items():
                components[f"{name}/{key}"] = value
            if out.info:
                info[name] = out.info
        total = weighted_nansum(components, self.weights)
        info[NAN_REASON] = [
            None if not torch.isnan(total[i]) else "every part is NaN: " + "; ".join(
                f"{name}: {nan_reason(RewardOutput(components[name], info=info.get(name, {})), i) or 'no reason given'}"
                for name in self.rewards)
            for i in range(total.shape[0])
        ]
        return RewardOutput(total, components, info)
