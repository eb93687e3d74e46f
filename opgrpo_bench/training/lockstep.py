"""FSDP lockstep: under FSDP every forward gathers the sharded weights from every rank, so a rank with
less work than the busiest makes idle one-row calls until the counts match (:mod:`opgrpo_bench.distributed`)."""

from __future__ import annotations

from typing import Sequence

import torch

from opgrpo_bench.backbones.base import Backbone, Cond, index_cond
from opgrpo_bench.distributed import Distributed


def spare_calls(dist: Distributed, owners: Sequence[int]) -> int:
    """How many idle calls this rank owes, given the owner of every call of a phase (the busiest rank's
    count minus this rank's); 0 without lockstep."""
    if not dist.lockstep:
        return 0
    counts = [0] * dist.world_size
    for owner in owners:
        counts[owner] += 1
    return max(counts) - counts[dist.rank]


def idle_calls(backbone: Backbone, cond: Cond, sigma: torch.Tensor, calls: int, guidance: float,
               dtype: torch.dtype, detach_uncond: bool, backward: bool = False) -> None:
    """``calls`` network calls on one zero row at noise level ``sigma`` [1] whose velocity is thrown away.

    With ``backward`` each is differentiated times 0 (the gradients gain exact zeros, the backward's gathers
    match the busy ranks'). Runs in the caller's grad mode and adapter state.
    """
    for _ in range(calls):
        x = torch.zeros((1, *backbone.latent_shape), device=sigma.device, dtype=dtype)
        v = backbone.velocity(x, sigma, index_cond(cond, [0]), guidance, detach_uncond=detach_uncond)
        if backward:
            (v.float().sum() * 0).backward()
