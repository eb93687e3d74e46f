"""The one device policy: where a model runs when the caller names no device.

Backbones, rewards and the multi-process launcher all ask :func:`default_device`, so a run never puts its
backbone on one device and its reward model on another by accident.
"""

from __future__ import annotations

import os

import torch


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` when given; else this process's GPU (``cuda:$LOCAL_RANK``: accelerate and torchrun start
    one process per GPU and set ``LOCAL_RANK``; 0 without them); else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def has_gpu() -> bool:
    """Whether :func:`default_device` picks a GPU (the launcher's and the process group's choice too)."""
    return default_device().type == "cuda"
