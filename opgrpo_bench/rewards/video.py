"""Video rewards: any image reward applied frame by frame, with a declared aggregation over frames.

A video batch [B, F, C, H, W] is flattened to frames, optionally subsampled to ``frames`` evenly spaced
frames (always including the first and the last), scored by the image reward in one call (each frame
gets its video's prompt and metadata), and aggregated per video with a NaN-aware ``mean`` (default),
``min``, ``max`` or ``median``. A video whose frames are all NaN scores NaN.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from opgrpo_bench.rewards.base import BaseReward, RewardOutput

AGGREGATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": lambda x: torch.nanmean(x, dim=1),
    "median": lambda x: torch.nanmedian(x, dim=1).values,
    "min": lambda x: torch.where(torch.isnan(x), math.inf, x).amin(dim=1),
    "max": lambda x: torch.where(torch.isnan(x), -math.inf, x).amax(dim=1),
}


def aggregate_frames(scores: torch.Tensor, how: str) -> torch.Tensor:
    """Aggregate [B, F] frame scores to [B], ignoring NaN frames; all-NaN rows give NaN."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation '{how}'; choose one of {sorted(AGGREGATIONS)}")
    all_nan = torch.isnan(scores).all(dim=1)
    out = AGGREGATIONS[how](scores)
    return torch.where(all_nan, torch.full_like(out, math.nan), out)


def frame_indices(num_frames: int, frames: int | None) -> list[int]:
    """Indices of ``frames`` evenly spaced frames out of ``num_frames`` (all when None or too many)."""
    if frames is None or frames >= num_frames:
        return list(range(num_frames))
    if frames <= 1:
        return [0]
    return sorted({round(i * (num_frames - 1) / (frames - 1)) for i in range(frames)})


class FrameWiseReward(BaseReward):
    """An image reward applied to every frame of a video, aggregated per video (mean by default)."""

    name = "video"
    modality = "video"
    needs = "as the wrapped image reward"

    def __init__(
        self,
        reward: str | BaseReward = "ocr",
        aggregate: str = "mean",
        frames: int | None = None,
        reward_kwargs: dict[str, Any] | None = None,
    ):
        """Args:
        reward: registered image-reward name (built with ``reward_kwargs``) or a reward object.
        aggregate: ``mean`` | ``median`` | ``min`` | ``max`` over frames (NaN frames ignored).
        frames: score only this many evenly spaced frames (None: all frames).
        """
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation '{aggregate}'; choose one of {sorted(AGGREGATIONS)}")
        if isinstance(reward, str):
            from opgrpo_bench.registry import REWARDS

            reward = REWARDS.get(reward)(**(reward_kwargs or {}))
        self.inner = reward
        self.aggregate, self.frames = aggregate, frames
        self.higher_is_better = getattr(reward, "higher_is_better", True)  # type: ignore[misc]
        self.range = getattr(reward, "range", (-math.inf, math.inf))  # type: ignore[misc]

    def score(self, videos: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        b, f = videos.shape[:2]
        idx = frame_indices(f, self.frames)
        frames = videos[:, idx].reshape(b * len(idx), *videos.shape[2:])
        frame_prompts = [p for p in prompts for _ in idx]
        frame_meta = [m for m in metadata for _ in idx]
        inner = self.inner(frames, frame_prompts, frame_meta)
        per_frame = inner.scores.reshape(b, len(idx))
        components = {k: aggregate_frames(v.reshape(b, len(idx)), self.aggregate) for k, v in inner.components.items()}
        info = {
            "aggregate": self.aggregate,
            "frame_indices": idx,
            "frame_scores": per_frame.tolist(),
            "inner_info": inner.info,
        }
        return RewardOutput(aggregate_frames(per_frame, self.aggregate), components, info)


class VideoOcrReward(FrameWiseReward):
    """OCR reward (see ``ocr``) on every video frame, mean over frames: the Wan2.1 text-rendering task."""

    name = "video-ocr"
    higher_is_better = True
    range = (0.0, 1.0)
    needs = "CPU; PP-OCRv4 weights inside the rapidocr-onnxruntime wheel (extra 'ocr')"

    def __init__(self, aggregate: str = "mean", frames: int | None = None, **ocr_kwargs: Any):
        super().__init__("ocr", aggregate=aggregate, frames=frames, reward_kwargs=ocr_kwargs)
