"""Samplers over a backbone: the SDE rollout with per-step log-probs, and the ODE used for evaluation.

The step math is :mod:`opgrpo_bench.core.sde`; this module only loops over the schedule and calls the
backbone. One feature serves OP-GRPO without a second sampler: *forced prefixes*. A row with
``forced_len[i] = K`` follows a stored trajectory for its first ``K`` transitions (its log-probs are then
those of the stored transitions under the current weights, i.e. ``logp_old`` on the replayed prefix) and
continues with fresh SDE (or ODE) steps from ``x_K``. Noise is drawn for every row at every step, so the
random stream does not depend on which rows are forced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opgrpo_bench.backbones.base import Backbone, Cond
from opgrpo_bench.core.sde import ode_step, transition_function


@dataclass
class Trajectories:
    """``latents`` [N, T+1, *latent_shape] (x_0 = noise ... x_T = sample), ``log_probs`` [N, T] float32;
    ``means`` [N, T, *latent_shape] float32, the transitions' means, when asked for (else None)."""

    latents: torch.Tensor
    log_probs: torch.Tensor
    means: torch.Tensor | None = None


def _rows(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (x.ndim - 1)))


@torch.no_grad()
def sample_sde(
    backbone: Backbone,
    cond: Cond,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    noise_level: float,
    guidance: float = 1.0,
    generator: torch.Generator | None = None,
    forced: torch.Tensor | None = None,
    forced_len: torch.Tensor | None = None,
    ode_after_forced: bool | torch.Tensor = False,
    logprob_reduction: str = "mean",
    sde_steps: torch.Tensor | None = None,
    transition: str = "sde",
    return_means: bool = False,
) -> Trajectories:
    """Roll out the Flow-GRPO SDE from ``noise`` [N, *shape] along ``sigmas`` [T+1].

    Args:
        forced: [N, K+1, *shape] stored trajectories (x_0..x_K) for rows with ``forced_len > 0``.
        forced_len: [N] number of forced transitions per row (0 = a fresh trajectory).
        ode_after_forced: continue forced rows (all, or those of an [N] bool mask) with ODE (Euler) steps
            instead of the SDE; the log-probs of those steps are meaningless and must not be trained
            (OP-GRPO's ``suffix = "ode"``).
        sde_steps: [T] bool, the transitions sampled by the SDE; the others are ODE steps for every unforced
            row (windowed samplers), their log-probs meaningless. None = all SDE.
        return_means: also return every transition's mean (GRPO-Guard's ratio needs the sampler's).
        transition: ``"sde"`` (Flow-GRPO's SDE step) or ``"cps"`` (the coefficient-preserving step), see
            :func:`opgrpo_bench.core.sde.transition_function`; both draw one noise tensor per step.

    Noise is drawn for every row at every step whatever the row does, so the random stream does not depend
    on forcing or on ODE steps.
    """
    n, steps = noise.shape[0], len(sigmas) - 1
    step_fn = transition_function(transition)
    x = noise.clone()
    ode_mask = torch.zeros(n, dtype=torch.bool, device=noise.device)
    if forced is not None:
        assert forced_len is not None
        x = torch.where(_rows(forced_len > 0, x), forced[:, 0].to(x.dtype), x)
        ode_mask = (forced_len > 0) & torch.as_tensor(ode_after_forced, dtype=torch.bool, device=noise.device)
    latents, log_probs, means = [x], [], []
    for k in range(steps):
        sigma, sigma_next = sigmas[k].expand(n), sigmas[k + 1].expand(n)
        v = backbone.velocity(x, sigma, cond, guidance)
        x_next, logp, mean, _ = step_fn(
            v, sigma, sigma_next, x, noise_level, generator=generator, sigma_max=sigmas[1],
            logprob_reduction=logprob_reduction)
        ode_step_all = sde_steps is not None and not bool(sde_steps[k])
        if forced is not None or ode_step_all:
            replay = forced_len > k if forced is not None else torch.zeros(n, dtype=torch.bool, device=x.device)
            ode_rows = (ode_mask & ~replay) | (~replay if ode_step_all else torch.zeros_like(replay))
            if bool(replay.any() or ode_rows.any()):
                if forced is not None:
                    stored = forced[:, min(k + 1, forced.shape[1] - 1)].to(x.dtype)
                    x_next = torch.where(_rows(replay, x), stored, x_next)
                x_next = torch.where(_rows(ode_rows, x), ode_step(v, sigma, sigma_next, x).to(x.dtype), x_next)
                _, logp, _, _ = step_fn(
                    v, sigma, sigma_next, x, noise_level, prev_sample=x_next, sigma_max=sigmas[1],
                    logprob_reduction=logprob_reduction)
        x = x_next
        latents.append(x)
        log_probs.append(logp)
        if return_means:  # the mean does not depend on the drawn sample, only on x and v
            means.append(mean)
    return Trajectories(torch.stack(latents, 1), torch.stack(log_probs, 1),
                        torch.stack(means, 1) if return_means else None)


def skip_sde_noise(generator: torch.Generator | None, num_rows: int, num_steps: int,
                   latent_shape: tuple[int, ...]) -> None:
    """Advance ``generator`` exactly as :func:`sample_sde` would for ``num_rows`` rows over ``num_steps``
    transitions, without sampling: one [num_rows, *latent_shape] float32 draw per transition (the
    sampler draws at every transition, forced and ODE ones included).

    A data-parallel rank calls this for the blocks another rank samples, so that its noise stream stays
    the 1-process stream (:mod:`opgrpo_bench.distributed`). Must change together with :func:`sample_sde`.
    """
    if generator is None:
        return
    for _ in range(num_steps):
        torch.randn((num_rows, *latent_shape), generator=generator, dtype=torch.float32, device=generator.device)


@torch.no_grad()
def sample_ode(backbone: Backbone, cond: Cond, noise: torch.Tensor, sigmas: torch.Tensor,
               guidance: float = 1.0, batch_size: int | None = None) -> torch.Tensor:
    """Deterministic Euler sampling (evaluation): final latents [N, *shape]."""
    n = noise.shape[0]
    batch_size = batch_size or n
    outs = []
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        x = noise[rows].clone()
        sub = {k: v[rows] for k, v in cond.items()}
        for k in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[k].expand(x.shape[0]), sigmas[k + 1].expand(x.shape[0])
            x = ode_step(backbone.velocity(x, sigma, sub, guidance), sigma, sigma_next, x).to(x.dtype)
        outs.append(x)
    return torch.cat(outs)
