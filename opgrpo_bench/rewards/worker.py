"""Background reward scoring, so that scoring batch k overlaps the rollout of batch k + 1.

    worker = AsyncRewardWorker(reward)
    pending = worker.submit(images, prompts, metadata)   # returns at once
    next_rollout = sample(...)                           # runs while the reward scores
    rewards = pending.result()                           # RewardOutput

A single worker thread scores batches in submission order. This overlaps well because the heavy parts
of every reward here (torch kernels, onnxruntime, Pillow's JPEG encoder) release the GIL. Images are
detached and copied to CPU at submission, so the caller may reuse its buffers. Rewards with conflicting
dependencies run in another process instead: see :mod:`opgrpo_bench.rewards.server`.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import torch

from opgrpo_bench.rewards.base import RewardOutput


class AsyncRewardWorker:
    """Runs ``reward(images, prompts, metadata)`` on a background thread; at most ``max_pending`` queued."""

    def __init__(self, reward: Any, max_pending: int = 2):
        self.reward = reward
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")
        self._slots = threading.BoundedSemaphore(max_pending)

    def submit(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
    ) -> "Future[RewardOutput]":
        """Queue a batch; blocks only while ``max_pending`` batches are already waiting."""
        images = images.detach().to("cpu", copy=True)
        prompts = list(prompts)
        metadata = None if metadata is None else [dict(m) for m in metadata]
        self._slots.acquire()
        try:
            future = self._pool.submit(self.reward, images, prompts, metadata)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def close(self, wait: bool = True) -> None:
        """Stop the worker thread (after the queued batches when ``wait``)."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> "AsyncRewardWorker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
