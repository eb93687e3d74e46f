"""Policy-gradient losses and diagnostics, ALGORITHMS.md sections 2 and 3.3.

All functions work on per-sample quantities for one denoising step (or, for
:func:`sequence_log_weight`, on a [N, K] table of per-step log-probs); averaging over samples and steps
is left to the caller so that fresh and replayed samples can be reported separately.
"""

from __future__ import annotations

import torch

from opgrpo_bench.core.sde import expand_like

__all__ = ["clipped_surrogate", "kl_to_reference", "sequence_log_weight", "approx_kl", "guard_log_ratio",
           "divergence_masked_surrogate"]


def clipped_surrogate(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    weight: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate loss, per sample, optionally scaled by a constant weight.

    ``ratio = exp(log_prob - old_log_prob)`` and
    ``loss = w * max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))``.

    ``old_log_prob``, ``advantages`` and ``weight`` are constants of the update and are detached here,
    so a caller cannot leak gradient through them by accident. ``weight`` is OP-GRPO's sequence-level
    importance weight ``w_i`` (section 3.3); it multiplies the whole clipped objective and so leaves the
    per-step ratio inside the clip -- and the meaning of the clip -- unchanged.

    Args:
        log_prob: [N] log-probs under the current policy (differentiable).
        old_log_prob: [N] log-probs under the behaviour policy of the ratio (theta_old).
        advantages: [N] advantages.
        clip_range: ``eps`` (Flow-GRPO: 1e-4, on the "mean" log-prob scale).
        weight: [N] (or scalar) per-sample weight; None means 1.

    Returns:
        ``(loss, ratio, clipped)``, each [N]: the per-sample loss (float32), the ratio, and a bool mask
        ``|ratio - 1| > eps``. The mask is Flow-GRPO's clip-fraction metric: the ratio left the trust
        region, whatever the advantage's sign (for the sign that moves the ratio back inwards, the
        unclipped branch is the max and the gradient still flows).
    """
    log_ratio = log_prob.float() - old_log_prob.detach().float()
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().float()
    unclipped = -adv * ratio
    clipped_loss = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped_loss)
    if weight is not None:
        loss = loss * torch.as_tensor(weight, dtype=torch.float32, device=loss.device).detach()
    clipped = (ratio.detach() - 1.0).abs() > clip_range
    return loss, ratio, clipped


def kl_to_reference(
    mean: torch.Tensor,
    ref_mean: torch.Tensor,
    std_dev_t: torch.Tensor | float,
    dt: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """KL penalty between the current and the reference policy's Gaussian transitions.

    Both transitions share the variance ``s^2 (-dt)``, so their KL per element is
    ``(mean - ref_mean)^2 / (2 s^2 (-dt))``. Flow-GRPO omits the ``-dt`` (``dt=None``, the default,
    computes ``(mean - ref_mean)^2 / (2 s^2)``); passing ``dt`` gives the exact KL, averaged over
    elements.

    Args:
        mean: [N, *rest] transition mean under the current weights (differentiable).
        ref_mean: [N, *rest] transition mean under the reference (LoRA disabled); detached here.
        std_dev_t: ``s`` as returned by :func:`~opgrpo_bench.core.sde.sde_step_with_logprob`,
            [N, 1, ..., 1], [N] or a scalar (without ``sqrt(-dt)``).
        dt: ``sigma_next - sigma`` (< 0), [N] or a scalar, or None for Flow-GRPO's convention.

    Returns:
        [N] float32: the mean over non-batch dimensions of the per-element KL.

    Raises:
        ValueError: a transition variance that is not positive and finite (a deterministic step has no
            KL to speak of; dividing by it would spread infinities or NaNs into the gradient).
    """
    diff = mean.float() - ref_mean.detach().float()
    variance = expand_like(std_dev_t, diff) ** 2
    if dt is not None:
        variance = variance * (-expand_like(dt, diff))
    if not bool(torch.all(torch.isfinite(variance) & (variance > 0))):
        raise ValueError("the KL to the reference needs a positive, finite transition variance; a step with "
                         "s = 0 (or dt = 0) has none")
    kl = diff**2 / (2 * variance)
    if kl.ndim == 1:
        return kl
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def sequence_log_weight(
    logp_old: torch.Tensor,
    logp_off: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """OP-GRPO's sequence-level log importance weight ``log w_i = sum_k (logp_old[k] - logp_off[k])``.

    The sum runs over the replayed prefix steps (all K columns, or those selected by ``mask``). Summing
    many close log-probs cancels most digits, so the differences are accumulated in float64.

    Args:
        logp_old: [N, K] per-step log-probs of the stored transitions under theta_old.
        logp_off: [N, K] per-step behaviour log-probs recorded when the transitions were generated.
        mask: optional [N, K] bool, True for the steps that enter the sum (the prefix ``k < t_off``).

    Returns:
        [N] float32 ``log w`` (a constant: detached). ``w = exp(log w)`` is for the caller, who may clamp it.
    """
    if logp_old.shape != logp_off.shape or logp_old.ndim != 2:
        raise ValueError(
            f"logp_old and logp_off must both be [N, K]; got {tuple(logp_old.shape)} and {tuple(logp_off.shape)}"
        )
    diff = logp_old.detach().to(torch.float64) - logp_off.detach().to(torch.float64)
    if mask is not None:
        if mask.shape != diff.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(diff.shape)}")
        # where(), not multiplication: a -inf/NaN in an excluded step must not poison the sum.
        diff = torch.where(mask.to(diff.device), diff, torch.zeros_like(diff))
    return diff.sum(dim=1).to(torch.float32)


def approx_kl(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """Diagnostic ``0.5 * mean((log_prob - old_log_prob)^2)`` (a second-order KL estimate), detached.

    Args:
        log_prob: [N] (or any shape) current log-probs.
        old_log_prob: same shape, behaviour log-probs.

    Returns:
        0-dim float32 tensor.
    """
    diff = log_prob.detach().float() - old_log_prob.detach().float()
    return 0.5 * (diff**2).mean()


def guard_log_ratio(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    mean: torch.Tensor,
    old_mean: torch.Tensor,
    step_std: torch.Tensor,
) -> torch.Tensor:
    """GRPO-Guard's regulated log-ratio of one Gaussian transition, per sample.

    With ``sigma`` the transition's standard deviation (``step_std``, the SDE's ``s * sqrt(-dt)``) and
    ``mse = mean((mean - old_mean)^2)`` over the latent's elements::

        log r = (log_prob - old_log_prob) * sigma + mse / (2 * sigma)

    For a Gaussian step this equals ``mean((x' - old_mean) * (mean - old_mean)) / sigma``: the plain
    log-ratio's ``-mse / (2 sigma^2)`` term, whose expectation under the sampler is negative (the
    "negatively biased ratio" of Flow-GRPO's SDE), is removed, and multiplying by ``sigma`` puts every
    denoising step on one scale instead of letting the low-noise steps, where ``sigma`` is small,
    dominate the clipped objective. ``log_prob`` must use the "mean" reduction.

    Args:
        log_prob, old_log_prob: [N] under the current and the sampling weights.
        mean, old_mean: [N, *shape] the transition's mean under each (``mean`` differentiable).
        step_std: [N] or [N, 1, ..., 1], the transition's standard deviation.

    Returns:
        [N] float32, differentiable through ``log_prob`` and ``mean``.
    """
    sigma = step_std.float().reshape(step_std.shape[0], -1)[:, 0]
    mse = ((mean.float() - old_mean.detach().float()) ** 2).flatten(1).mean(1)
    return (log_prob.float() - old_log_prob.detach().float()) * sigma + mse / (2 * sigma)


def divergence_masked_surrogate(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    divergence: torch.Tensor,
    threshold: float,
    weight: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flow-DPPO's policy loss: the unclipped surrogate ``-A * ratio``, masked by a divergence trust region.

    A pair is masked out (loss 0, no gradient) only when its transition has left the trust region,
    ``divergence >= threshold``, *and* the update still pushes it further out: ``A > 0`` with
    ``ratio > 1``, or ``A < 0`` with ``ratio < 1``. Every other pair, including the ones whose gradient
    moves the policy back towards the sampling policy, keeps the plain ``-A * ratio``. Unlike the PPO clip
    this decides on the exact divergence of the whole Gaussian transition, not on one sample's ratio.

    Args:
        log_prob: [N] log-probs under the current policy (differentiable).
        old_log_prob: [N] log-probs under the sampling policy.
        advantages: [N] advantages.
        divergence: [N] KL between the sampling and the current transition (see :func:`kl_to_reference`
            with the sampler's means in place of the reference's); treated as a constant.
        threshold: the trust region's radius ``eps_D`` on that KL.
        weight: [N] (or scalar) per-sample weight; None means 1.

    Returns:
        ``(loss, ratio, masked)``, each [N]: the per-sample loss (float32), the ratio, and the bool mask of
        the pairs removed.
    """
    ratio = torch.exp(log_prob.float() - old_log_prob.detach().float())
    adv = advantages.detach().float()
    outside = divergence.detach().float() >= threshold
    masked = outside & (((adv > 0) & (ratio.detach() > 1.0)) | ((adv < 0) & (ratio.detach() < 1.0)))
    loss = torch.where(masked, torch.zeros_like(ratio), -adv * ratio)
    if weight is not None:
        loss = loss * torch.as_tensor(weight, dtype=torch.float32, device=loss.device).detach()
    return loss, ratio, masked
