"""Frame-wise video rewards and the composite reward."""

from __future__ import annotations

import math

import pytest
import torch

from opgrpo_bench.rewards.base import BaseReward, RewardOutput
from opgrpo_bench.rewards.composite import CompositeReward, group_normalize, per_reward_advantages, weighted_nansum
from opgrpo_bench.rewards.video import FrameWiseReward, aggregate_frames, frame_indices


class MeanPixel(BaseReward):
    """Mean pixel value; NaN when the prompt is 'skip'."""

    name = "mean-pixel"
    range = (0.0, 1.0)

    def score(self, images, prompts, metadata):  # type: ignore[no-untyped-def]
        s = images.mean(dim=(1, 2, 3))
        s[torch.tensor([p == "skip" for p in prompts])] = math.nan
        return RewardOutput(s, components={"double": 2 * s})


def test_frame_indices() -> None:
    assert frame_indices(5, None) == [0, 1, 2, 3, 4]
    assert frame_indices(33, 3) == [0, 16, 32]
    assert frame_indices(4, 10) == [0, 1, 2, 3]
    assert frame_indices(9, 1) == [0]


def test_aggregations_ignore_nan_frames() -> None:
    x = torch.tensor([[0.2, math.nan, 0.6], [math.nan, math.nan, math.nan]])
    assert aggregate_frames(x, "mean")[0].item() == pytest.approx(0.4)
    assert aggregate_frames(x, "min")[0].item() == pytest.approx(0.2)
    assert aggregate_frames(x, "max")[0].item() == pytest.approx(0.6)
    for how in ("mean", "min", "max", "median"):
        assert math.isnan(aggregate_frames(x, how)[1].item())
    with pytest.raises(ValueError):
        aggregate_frames(x, "mode")


def test_frame_wise_reward() -> None:
    video = torch.stack([torch.full((3, 4, 4), v) for v in (0.1, 0.5, 0.9)])[None]  # [1, 3, C, H, W]
    for how, expected in (("mean", 0.5), ("min", 0.1), ("max", 0.9)):
        out = FrameWiseReward(MeanPixel(), aggregate=how)(video, ["p"])
        assert out.scores.item() == pytest.approx(expected)
        assert out.components["double"].item() == pytest.approx(2 * expected)
        assert out.info["aggregate"] == how
    assert FrameWiseReward(MeanPixel(), frames=2)(video, ["p"]).info["frame_indices"] == [0, 2]
    assert math.isnan(FrameWiseReward(MeanPixel())(video, ["skip"]).scores.item())
    with pytest.raises(ValueError):
        FrameWiseReward(MeanPixel())(video[0], ["p"])  # an image batch is not a video


def test_composite_weighted_sum_and_nan() -> None:
    comp = CompositeReward({"a": 1.0, "b": -0.5}, rewards={"a": MeanPixel(), "b": MeanPixel()})
    images = torch.stack([torch.full((3, 4, 4), 0.4), torch.full((3, 4, 4), 0.8)])
    out = comp(images, ["p", "skip"])
    assert out.scores[0].item() == pytest.approx(0.4 - 0.2)
    assert math.isnan(out.scores[1].item())
    assert set(out.components) == {"a", "b", "a/double", "b/double"}
    assert comp.range == (-0.5, 1.0)
    partial = weighted_nansum({"a": torch.tensor([1.0, math.nan]), "b": torch.tensor([math.nan, 2.0])},
                              {"a": 1.0, "b": 3.0})
    assert partial.tolist() == [1.0, 6.0]


def test_composite_from_registry() -> None:
    comp = CompositeReward({"jpeg-compressibility": 1.0, "jpeg-incompressibility": 1.0})
    out = comp(torch.rand(2, 3, 16, 16), ["", ""])
    assert torch.allclose(out.scores, torch.zeros(2), atol=1e-6)


def test_per_reward_advantages_normalise_each_reward_in_its_group() -> None:
    big = torch.tensor([100.0, 300.0, 1.0, 1.0])
    small = torch.tensor([0.2, 0.1, 0.3, 0.1])
    groups = torch.tensor([0, 0, 1, 1])
    out = RewardOutput(big + small, {"big": big, "small": small}, {"weights": {"big": 1.0, "small": 1.0}})
    adv = per_reward_advantages(out, groups)
    expected = group_normalize(big, groups) + group_normalize(small, groups)
    assert torch.allclose(adv, expected)
    assert abs(adv[0].item()) < 1.5  # the large-scale reward no longer dominates: +-1 each
    assert torch.allclose(group_normalize(torch.tensor([1.0, math.nan, 3.0]), torch.tensor([0, 0, 0])),
                          torch.tensor([-1.0, 0.0, 1.0]), atol=1e-3)
