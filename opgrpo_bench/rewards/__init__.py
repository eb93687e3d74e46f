"""Reward models. Importing this package registers the built-in rewards lazily (no heavy imports)."""

from opgrpo_bench.registry import REWARDS
from opgrpo_bench.rewards.base import MissingWeightsError, Reward, RewardOutput

REWARDS.register(
    "digit-classifier", "opgrpo_bench.rewards.digits:DigitClassifierReward",
    aliases=("digits",), description="probability of the prompted digit under the digits-v1 classifier",
    needs="CPU; weights built in-package",
)

__all__ = ["MissingWeightsError", "Reward", "RewardOutput", "REWARDS"]
