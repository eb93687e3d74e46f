"""The backbone protocol: everything the trainer needs from a text-to-image/video flow model.

A backbone hides the model family (SD3, FLUX, Wan, the CPU digits model). The trainer and the
algorithms only ever call these methods; the SDE math lives in :mod:`opgrpo_bench.core.sde`. The diffusers
backbones share one implementation of everything family-independent,
:class:`opgrpo_bench.backbones.diffusers_backbone.DiffusersBackbone`; a backbone need not derive from it,
only provide what :class:`Backbone` lists.

Conventions: latents ``x`` have shape [B, *latent_shape]; ``sigma`` is a per-sample tensor [B] with
``x_sigma = (1 - sigma) * x_data + sigma * noise``; the network predicts the velocity ``noise - x_data``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import torch

Cond = dict[str, torch.Tensor]
"""Prompt conditioning: named tensors whose first dimension is the batch."""


def index_cond(cond: Cond, index: torch.Tensor | Sequence[int] | slice) -> Cond:
    """Select rows of every tensor in a conditioning dict."""
    return {k: v[index] for k, v in cond.items()}


def cat_cond(conds: Iterable[Cond]) -> Cond:
    """Concatenate conditioning dicts along the batch dimension."""
    conds = list(conds)
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}


@runtime_checkable
class Backbone(Protocol):
    """What a model family must provide."""

    latent_shape: tuple[int, ...]
    """Shape of one sample's latents: [C, H, W] for images, [C, F, H, W] for videos."""
    dtype: torch.dtype
    """The base weights' dtype (network inputs are cast to it; LoRA adapters stay float32)."""
    transformer: torch.nn.Module
    """The denoising network that carries the LoRA adapters: the trainer enables its gradient
    checkpointing, compiles it, shards its frozen weights under FSDP and exports its adapters."""

    @property
    def device(self) -> torch.device:
        """Where the network runs; callers put noises and conditioning there (any device is accepted)."""
        ...

    def add_lora(self, rank: int = 32, alpha: int = 64, target_modules: Sequence[str] | None = None,
                 init: str | bool = "gaussian") -> None:
        """Attach trainable LoRA adapters (float32) that start as the identity; ``target_modules`` None =
        the family's default targets. Called once, before :meth:`trainable_parameters`."""
        ...

    def encode(self, prompts: Sequence[str]) -> Cond:
        """Conditioning for ``prompts`` (no grad; frozen text encoders), plus whatever CFG needs."""
        ...

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, guidance: float = 1.0,
                 detach_uncond: bool = False) -> torch.Tensor:
        """Velocity [B, *latent_shape] at noise level ``sigma`` [B]; CFG when ``guidance != 1``.

        ``detach_uncond``: no gradient through CFG's unconditional branch (same value).
        """
        ...

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], [B, C, H, W] (videos [B, F, C, H, W]), from final latents."""
        ...

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """Sampling schedule [num_steps + 1], from 1 down to 0 (shift applied)."""
        ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters RL updates (LoRA adapters)."""
        ...

    def reference(self) -> AbstractContextManager[Any]:
        """Context in which ``velocity`` is the frozen base model (adapters disabled)."""
        ...

    def nfe_per_sample(self, guidance: float) -> int:
        """Network evaluations per sample and step (2 with CFG)."""
        ...
