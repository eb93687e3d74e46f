"""The reward protocol.

A reward maps a batch of generated images (or videos) and their prompts to one score per sample::

    out = reward(images, prompts, metadata)   # -> RewardOutput(scores=[B] float32, components, info)

``images`` is a float tensor in [0, 1] of shape [B, C, H, W] (videos: [B, F, C, H, W]).
``NaN`` in ``scores`` means "not applicable to this sample" (never a sentinel such as -10).
Every reward declares its range and direction so that targets and plots stay meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import torch


class MissingWeightsError(RuntimeError):
    """Real weights/files a reward needs are absent; the message is one user-facing line."""


@dataclass
class RewardOutput:
    """Scores for a batch.

    Attributes:
        scores: float32 tensor [B]; NaN = not applicable.
        components: named float32 tensors [B] (e.g. the per-reward scores of a composite).
        info: free-form, JSON-serialisable extras (e.g. OCR text read).
    """

    scores: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Reward(Protocol):
    """What the trainer needs from a reward."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    range: ClassVar[tuple[float, float]]

    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
    ) -> RewardOutput: ...
