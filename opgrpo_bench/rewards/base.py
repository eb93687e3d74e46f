"""The reward protocol.

A reward maps a batch of generated images (or videos) and their prompts to one score per sample::

    out = reward(images, prompts, metadata)   # -> RewardOutput(scores=[B] float32, components, info)

``images`` is a float tensor in [0, 1] of shape [B, C, H, W] (videos: [B, F, C, H, W]).
``NaN`` in ``scores`` means "not applicable to this sample" (never a sentinel such as -10). A reward may
say why in ``info["nan_reason"]`` (:data:`NAN_REASON`): one ``str | None`` per sample, None where the
score is a number; ``opgrpo-bench score`` prints it.
Every reward declares its range and direction so that targets and plots stay meaningful.

:class:`BaseReward` is an optional convenience base: it validates inputs, runs :meth:`BaseReward.score`
under ``torch.no_grad`` and normalises the output (float32, CPU, shape [B]). Rewards that need files or
optional packages raise :class:`MissingWeightsError` / :class:`MissingDependencyError` *on construction*
with a one-line, user-facing message; the CLI prints that line and exits with code 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np
import torch


try:  # the project's user-facing errors (the CLI prints them as one line and exits with code 2)
    from opgrpo_bench.errors import MissingWeightsError as _ProjectMissingWeightsError
    from opgrpo_bench.errors import UserError as _UserError
except ImportError:  # pragma: no cover - older checkouts without opgrpo_bench.errors
    class _UserError(Exception):  # type: ignore[no-redef]
        """Stand-in for ``opgrpo_bench.errors.UserError``."""

    class _ProjectMissingWeightsError(_UserError, RuntimeError):  # type: ignore[no-redef]
        """Stand-in for ``opgrpo_bench.errors.MissingWeightsError``."""


class RewardUnavailableError(_UserError, RuntimeError):  # type: ignore[misc, valid-type]
    """A reward cannot be built here; ``str()`` is one user-facing line saying what is missing and how to fix it."""


class MissingWeightsError(RewardUnavailableError, _ProjectMissingWeightsError):  # type: ignore[misc, valid-type]
    """Real weights/files a reward needs are absent; the message is one user-facing line."""


class MissingDependencyError(RewardUnavailableError):
    """An optional Python package a reward needs is not installed; the message names the package/extra."""


NAN_REASON = "nan_reason"
"""``info`` key of a per-sample list saying why a score is NaN (None where it is not)."""


def nan_reason(out: "RewardOutput", index: int) -> str | None:
    """Why sample ``index`` scored NaN, from ``info["nan_reason"]`` or, for a composite, its parts' infos."""
    own = out.info.get(NAN_REASON)
    if isinstance(own, list) and index < len(own) and own[index]:
        return str(own[index])
    parts = []
    for key, value in out.info.items():
        if isinstance(value, dict) and isinstance(value.get(NAN_REASON), list):
            reasons = value[NAN_REASON]
            if index < len(reasons) and reasons[index]:
                parts.append(f"{key}: {reasons[index]}")
    return "; ".join(parts) or None


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


Metadata = Sequence[dict[str, Any]]


class BaseReward:
    """Convenience base class implementing the :class:`Reward` protocol.

    Subclasses set the class attributes and implement :meth:`score`. ``__call__`` checks shapes,
    fills in empty metadata, disables autograd and returns float32 CPU tensors of shape [B].

    Class attributes:
        name: registry name.
        higher_is_better: direction of the score.
        range: (low, high) of possible scores; ``inf`` where unbounded.
        modality: ``"image"`` ([B, C, H, W]), ``"video"`` ([B, F, C, H, W]) or ``"any"``.
        needs: short human description of requirements ("CPU", "GPU recommended; weights: ...").
    """

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[tuple[float, float]] = (-math.inf, math.inf)
    modality: ClassVar[str] = "image"
    needs: ClassVar[str] = "CPU"

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        """Score a validated batch. ``images`` is float32 in [0, 1] on CPU."""
        raise NotImplementedError

    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Metadata | None = None
    ) -> RewardOutput:
        """Validate the batch, score it without autograd and return float32 CPU tensors of shape [B]."""
        images, prompts_l, metadata_l = check_inputs(images, prompts, metadata, self.modality, self.name)
        with torch.no_grad():
            out = self.score(images, prompts_l, metadata_l)
        return finalize_output(out, images.shape[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_inputs(
    images: torch.Tensor,
    prompts: Sequence[str],
    metadata: Metadata | None,
    modality: str = "image",
    name: str = "",
) -> tuple[torch.Tensor, list[str], list[dict[str, Any]]]:
    """Validate a batch and return (float32 images in [0, 1], prompts list, metadata list)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"reward '{name}': images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif not images.is_floating_point():
        raise TypeError(f"reward '{name}': images must be float in [0, 1] (or uint8), got {images.dtype}")
    expected = {"image": (4,), "video": (5,), "any": (4, 5)}[modality]
    if images.ndim not in expected:
        shape = {"image": "[B, C, H, W]", "video": "[B, F, C, H, W]", "any": "[B, C, H, W] or [B, F, C, H, W]"}
        hint = " (wrap an image reward with the 'video' reward to score videos frame-wise)" if images.ndim == 5 else ""
        raise ValueError(f"reward '{name}' expects {shape[modality]}, got shape {tuple(images.shape)}{hint}")
    if isinstance(prompts, str):
        raise TypeError(f"reward '{name}': prompts must be a list of str, not a single str")
    prompts_l = list(prompts)
    if len(prompts_l) != images.shape[0]:
        raise ValueError(f"reward '{name}': {images.shape[0]} images but {len(prompts_l)} prompts")
    if metadata is None:
        metadata_l: list[dict[str, Any]] = [{} for _ in prompts_l]
    else:
        metadata_l = [dict(m or {}) for m in metadata]
        if len(metadata_l) != len(prompts_l):
            raise ValueError(f"reward '{name}': {len(prompts_l)} prompts but {len(metadata_l)} metadata dicts")
    # NaN pixels (a diverged sample) become 0 so that they cannot poison batched kernels or other samples.
    images = torch.nan_to_num(images.detach().to(torch.float32), nan=0.0).clamp(0.0, 1.0)
    return images, prompts_l, metadata_l


def finalize_output(out: RewardOutput, batch_size: int) -> RewardOutput:
    """Cast scores and components to float32 CPU tensors of shape [B]."""
    out.scores = torch.as_tensor(out.scores).detach().to("cpu", torch.float32).reshape(-1)
    if out.scores.shape[0] != batch_size:
        raise RuntimeError(f"reward returned {out.scores.shape[0]} scores for a batch of {batch_size}")
    out.components = {
        k: torch.as_tensor(v).detach().to("cpu", torch.float32).reshape(-1) for k, v in out.components.items()
    }
    return out


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] float in [0, 1] -> uint8 numpy [B, H, W, 3] (grey is replicated, alpha dropped)."""
    x = images.detach().to("cpu", torch.float32).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 4:
        x = x[:, :3]
    elif x.shape[1] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got {x.shape[1]}")
    return (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] with C in {1, 3, 4} -> [B, 3, H, W]."""
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] == 4:
        return images[:, :3]
    return images
