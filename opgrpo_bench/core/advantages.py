"""Group-relative advantages (GRPO), ALGORITHMS.md section 2.

A batch holds several groups of samples, each group generated from one prompt. Membership is always an
explicit integer group id per sample (never a prompt string, which two different groups may share);
ids need not be sorted, contiguous or start at 0, and groups may have different sizes.
"""

from __future__ import annotations

import torch

__all__ = ["group_advantages", "nonzero_std_group_mask", "group_index"]


def group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary integer group ids to dense indices.

    Args:
        group_ids: [N] integer tensor.

    Returns:
        ``(index, num_groups)`` where ``index`` is [N] long in ``[0, num_groups)``; groups are numbered
        in increasing order of their id.
    """
    if group_ids.ndim != 1:
        raise ValueError(f"group_ids must be 1-D [N], got shape {tuple(group_ids.shape)}")
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise TypeError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    unique, index = torch.unique(group_ids, sorted=True, return_inverse=True)
    return index, unique.numel()


def _check_rewards(rewards: torch.Tensor, group_ids: torch.Tensor) -> None:
    if rewards.ndim != 1 or rewards.shape != group_ids.shape:
        raise ValueError(
            f"rewards and group_ids must both be [N]; got {tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )


def _group_mean_and_pop_var(
    values: torch.Tensor, index: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and population variance of [N] float64 values, gathered back to [N]."""
    counts = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(
        0, index, torch.ones_like(values)
    )
    sums = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, index, values)
    mean = (sums / counts)[index]
    # Two-pass (centre first) rather than E[x^2] - E[x]^2: rewards such as PickScore (~22 +- 0.5) would
    # otherwise lose most of their digits to cancellation.
    sq_dev = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(
        0, index, (values - mean) ** 2
    )
    return mean, (sq_dev / counts)[index]


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    global_std: bool = True,
    eps: float = 1e-4,
    clip: float | None = 5.0,
) -> torch.Tensor:
    """GRPO advantages ``A_i = clip((r_i - mean_{group(i)} r) / (std + eps), -clip, clip)``.

    ``std`` is the *population* standard deviation (ddof = 0, as ``numpy.std`` in Flow-GRPO's
    ``PerPromptStatTracker``), taken over the whole batch's raw rewards when ``global_std`` (Flow-GRPO's
    SD3.5 default) or over the sample's own group otherwise. A group of one sample, or whose rewards are
    all equal, gets advantage 0 with ``global_std=False`` (0 / eps).

    Computed in float64; rewards must be finite (a NaN spreads to the whole batch with ``global_std``).

    Args:
        rewards: [N] float rewards.
        group_ids: [N] integer group ids.
        global_std: normalise by the batch std (True) or by the per-group std (False).
        eps: added to the std, Flow-GRPO's 1e-4.
        clip: symmetric clip bound (Flow-GRPO's ``adv_clip_max`` 5); None disables clipping.

    Returns:
        [N] advantages in ``rewards.dtype`` (float32 if rewards are not floating point).
    """
    _check_rewards(rewards, group_ids)
    out_dtype = rewards.dtype if rewards.dtype.is_floating_point else torch.float32
    r = rewards.detach().to(torch.float64)
    index, num_groups = group_index(group_ids.to(r.device))
    mean, group_var = _group_mean_and_pop_var(r, index, num_groups)
    if global_std:
        std = r.std(correction=0)
    else:
        std = group_var.sqrt()
    advantages = (r - mean) / (std + eps)
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    return advantages.to(out_dtype)


def nonzero_std_group_mask(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """The zero-std filter: True for samples whose group's rewards are not all equal.

    Equal-reward groups have zero advantage for every member and carry no learning signal. The test is
    exact equality (group max == group min), so it does not depend on a tolerance.

    Args:
        rewards: [N] rewards.
        group_ids: [N] integer group ids.

    Returns:
        [N] bool mask. A group of one sample is "all equal", hence False.
    """
    _check_rewards(rewards, group_ids)
    r = rewards.detach()
    if not r.dtype.is_floating_point:
        r = r.to(torch.float64)
    index, num_groups = group_index(group_ids.to(r.device))
    group_max = torch.full((num_groups,), float("-inf"), dtype=r.dtype, device=r.device)
    group_min = torch.full((num_groups,), float("inf"), dtype=r.dtype, device=r.device)
    group_max = group_max.scatter_reduce(0, index, r, reduce="amax")
    group_min = group_min.scatter_reduce(0, index, r, reduce="amin")
    return (group_max != group_min)[index]
