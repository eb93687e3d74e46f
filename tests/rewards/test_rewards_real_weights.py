"""Sanity checks with the real released weights (``pytest -m weights``); each test skips when its files are absent.

Provide the files through the Hugging Face cache or the environment variables each reward names
(``opgrpo-bench list rewards``); nothing is downloaded.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import reward_standins as standins
from opgrpo_bench.registry import REWARDS
from opgrpo_bench.rewards.base import RewardUnavailableError

pytestmark = pytest.mark.weights


@pytest.fixture(autouse=True)
def _real_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    if standins.REAL_HF_CACHE:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", standins.REAL_HF_CACHE)


def build(name: str, **kwargs: Any) -> Any:
    try:
        return REWARDS.get(name)(**kwargs)
    except RewardUnavailableError as exc:
        pytest.skip(str(exc))


def squares() -> torch.Tensor:
    red, blue = torch.zeros(3, 224, 224), torch.zeros(3, 224, 224)
    red[:, :, :] = 1.0
    blue[:, :, :] = 1.0
    red[:, 56:168, 56:168] = torch.tensor([0.9, 0.05, 0.05])[:, None, None]
    blue[:, 56:168, 56:168] = torch.tensor([0.05, 0.1, 0.9])[:, None, None]
    return torch.stack([red, blue])


@pytest.mark.parametrize("name", ["clipscore", "pickscore", "hpsv2", "image-reward"])
def test_text_image_rewards_prefer_the_matching_prompt(name: str) -> None:
    reward = build(name)
    images = squares()
    matched = reward(images, ["a red square", "a blue square"]).scores
    swapped = reward(images, ["a blue square", "a red square"]).scores
    assert (matched > swapped).all(), (matched, swapped)


def test_aesthetic_scores_are_in_the_usual_band() -> None:
    out = build("aesthetic")(squares(), ["", ""]).scores
    assert ((out > 0) & (out < 10)).all(), out


def test_geneval_rejects_an_absent_object() -> None:
    reward = build("geneval")
    meta = {"tag": "single_object", "include": [{"class": "giraffe", "count": 1}]}
    out = reward(squares()[:1], ["a photo of a giraffe"], [meta])
    assert out.scores[0] == 0.0 and not math.isnan(out.components["partial"][0])
