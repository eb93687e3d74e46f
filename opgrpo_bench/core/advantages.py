"""Group-relative advantages (GRPO), ALGORITHMS.md section 2.

A batch holds several groups of samples, each group generated from one prompt. Membership is always an
explicit integer group id per sample (never a prompt string, which two different groups may share);
ids need not be sorted, contiguous or start at 0, and groups may have different sizes.

Rewards that are not applicable (ALGORITHMS.md 3.6) are NaN; any non-finite reward is treated the same way.
They are left out of every statistic here: the group means, the group stds and the batch std are taken over
the finite rewards only, and a group left with fewer than two finite rewards carries no signal.
"""

from __future__ import annotations

import torch

__all__ = ["group_advantages", "nonzero_std_group_mask", "finite_group_mask", "group_index"]


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


def _group_sum(values: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """[num_groups] per-group sums of [N] values."""
    return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, index, values)


def _group_finite_stats(
    values: torch.Tensor, index: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample statistics of its group's *finite* values, for [N] float64 values.

    Returns ``(finite, count, mean, pop_var)``, each [N]: whether the sample's value is finite, and the number,
    mean and population variance of the finite values of its group (mean and variance are 0 for a group
    without finite values).
    """
    finite = torch.isfinite(values)
    weight = finite.to(values.dtype)
    clean = torch.where(finite, values, torch.zeros_like(values))
    counts = _group_sum(weight, index, num_groups)
    safe = counts.clamp(min=1)
    mean = (_group_sum(clean, index, num_groups) / safe)[index]
    # Two-pass (centre first) rather than E[x^2] - E[x]^2: rewards such as PickScore (~22 +- 0.5) would
    # otherwise lose most of their digits to cancellation.
    sq_dev = _group_sum(weight * (clean - mean) ** 2, index, num_groups)
    return finite, counts[index], mean, (sq_dev / safe)[index]


def finite_group_mask(rewards: torch.Tensor, group_ids: torch.Tensor, min_finite: int = 2) -> torch.Tensor:
    """True for samples whose reward is finite and whose group holds at least ``min_finite`` finite rewards.

    These are the samples that can carry a group-relative signal at all (a NaN reward is "not applicable";
    a group left with a single finite reward has nothing to compare it with).

    Args:
        rewards: [N] rewards (NaN: not applicable).
        group_ids: [N] integer group ids.
        min_finite: the fewest finite rewards a group needs (default 2).

    Returns:
        [N] bool mask.
    """
    _check_rewards(rewards, group_ids)
    r = rewards.detach().to(torch.float64)
    index, num_groups = group_index(group_ids.to(r.device))
    finite, count, _, _ = _group_finite_stats(r, index, num_groups)
    return finite & (count >= min_finite)


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

    Non-finite (NaN, "not applicable") rewards are left out: the group means, the group stds and the batch std
    are over finite rewards only, a NaN-reward sample gets advantage 0, and so does every member of a group
    with fewer than two finite rewards (no signal). An all-NaN batch gives all zeros. Computed in float64.

    Example: rewards ``[1, NaN, 3, 5]`` in groups ``[0, 0, 1, 1]``: group 0 has one finite reward (advantages
    0, 0); group 1 has mean 4 and the batch std over ``[1, 3, 5]`` is ``sqrt(8/3)``, so its advantages are
    ``-+1 / (sqrt(8/3) + eps)``.

    Args:
        rewards: [N] float rewards.
        group_ids: [N] integer group ids.
        global_std: normalise by the batch std (True) or by the per-group std (False).
        eps: added to the std, Flow-GRPO's 1e-4.
        clip: symmetric clip bound (Flow-GRPO's ``adv_clip_max`` 5); None disables clipping.

    Returns:
        [N] advantages in ``rewards.dtype`` (float32 if rewards are not floating point), all finite.
    """
    _check_rewards(rewards, group_ids)
    out_dtype = rewards.dtype if rewards.dtype.is_floating_point else torch.float32
    r = rewards.detach().to(torch.float64)
    index, num_groups = group_index(group_ids.to(r.device))
    finite, count, mean, group_var = _group_finite_stats(r, index, num_groups)
    if global_std:
        std = r[finite].std(correction=0) if bool(finite.any()) else r.new_zeros(())
    else:
        std = group_var.sqrt()
    advantages = (torch.where(finite, r, mean) - mean) / (std + eps)
    advantages = torch.where(finite & (count >= 2), advantages, torch.zeros_like(advantages))
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    return advantages.to(out_dtype)


def nonzero_std_group_mask(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """The zero-std filter: True for samples whose group's rewards are not all equal.

    Equal-reward groups have zero advantage for every member and carry no learning signal. The test is
    exact equality (group max == group min), so it does not depend on a tolerance. Only finite rewards
    count: a NaN-reward sample is always False, and a group with fewer than two finite rewards is "all
    equal".

    Args:
        rewards: [N] rewards (NaN: not applicable).
        group_ids: [N] integer group ids.

    Returns:
        [N] bool mask. A group of one sample is "all equal", hence False.
    """
    _check_rewards(rewards, group_ids)
    r = rewards.detach()
    if not r.dtype.is_floating_point:
        r = r.to(torch.float64)
    index, num_groups = group_index(group_ids.to(r.device))
    finite = torch.isfinite(r)
    group_max = torch.full((num_groups,), float("-inf"), dtype=r.dtype, device=r.device)
    group_min = torch.full((num_groups,), float("inf"), dtype=r.dtype, device=r.device)
    group_max = group_max.scatter_reduce(0, index, r.masked_fill(~finite, float("-inf")), reduce="amax")
    group_min = group_min.scatter_reduce(0, index, r.masked_fill(~finite, float("inf")), reduce="amin")
    # a group without finite rewards has max -inf < min inf: the finite check below keeps it False
    return finite & (group_max != group_min)[index]
