"""Stochastic sampling steps with log-probabilities for rectified-flow / flow-matching models.

Convention (docs/ALGORITHMS.md, section 1): ``x_sigma = (1 - sigma) * x_data + sigma * noise`` and the
network predicts the velocity ``v ~ noise - x_data``. Sampling walks the sigmas downwards,
``1 = sigma_0 > sigma_1 > ... > sigma_T = 0``; one step goes from ``sample`` at ``sigma`` to
``prev_sample`` at ``sigma_next`` (the diffusers naming: "prev" is the *less noisy* latent), so
``dt = sigma_next - sigma < 0``.

Three steps are provided:

* :func:`ode_step` -- the deterministic Euler step ``x + v * dt`` (evaluation; no log-prob).
* :func:`sde_step_with_logprob` -- Flow-GRPO's SDE step: the Euler step plus a score-correction drift
  and Gaussian noise, chosen so that the marginals of ``x_sigma`` are kept (in the continuous limit),
  together with the Gaussian log-density of the transition (what the policy-gradient ratios use).
* :func:`cps_step_with_logprob` -- the optional coefficient-preserving variant, whose "log-prob" is an
  unnormalised surrogate on another scale.
* :func:`constant_noise_sde_step_with_logprob` and :func:`wan_sde_step_with_logprob` -- the same flow SDE
  step with DanceGRPO's constant diffusion coefficient and with Flow-GRPO's Wan2.1 coefficient.

Everything here is pure torch: no scheduler object, sigmas are passed explicitly per sample so that a
batch may mix timesteps (e.g. when training on shuffled transitions).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch

__all__ = [
    "expand_like",
    "sde_noise_scale",
    "ode_step",
    "sde_step_with_logprob",
    "cps_step_with_logprob",
    "constant_noise_sde_step_with_logprob",
    "wan_sde_step_with_logprob",
    "transition_function",
]

LogprobReduction = Literal["mean", "sum"]
GeneratorLike = torch.Generator | Sequence[torch.Generator] | None

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def expand_like(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample quantity so that it broadcasts against a batch.

    Args:
        t: a Python number, a 0-dim tensor, a per-sample tensor of shape [B] (or [1]), or a tensor that
            is already [B, 1, ..., 1].
        x: the batch it must broadcast against, shape [B, *rest].

    Returns:
        float32 tensor on ``x.device`` of shape [B, 1, ..., 1] (or [1, 1, ..., 1] for a scalar) with
        ``x.ndim`` dimensions.
    """
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    if t.ndim == 0:
        t = t.reshape(1)
    batch = t.shape[0]
    if t.numel() != batch:
        raise ValueError(f"expected a per-sample tensor of shape [B] or [B, 1, ...], got {tuple(t.shape)}")
    if batch not in (1, x.shape[0]):
        raise ValueError(f"per-sample tensor has {batch} entries but the batch has {x.shape[0]}")
    return t.reshape(batch, *([1] * (x.ndim - 1)))


def _reduce_non_batch(values: torch.Tensor, reduction: LogprobReduction) -> torch.Tensor:
    """Reduce [B, *rest] to [B]. ``Tensor.mean(dim=())`` would reduce *everything*, hence the guard."""
    if values.ndim == 1:
        return values
    dims = tuple(range(1, values.ndim))
    if reduction == "mean":
        return values.mean(dim=dims)
    if reduction == "sum":
        return values.sum(dim=dims)
    raise ValueError(f"logprob_reduction must be 'mean' or 'sum', got {reduction!r}")


def _check_noise_level(noise_level: float) -> None:
    if not noise_level > 0:
        # At a = 0 the transition is a Dirac: its density (and so any ratio) is undefined.
        raise ValueError(
            f"noise_level must be > 0 to compute a log-prob, got {noise_level}; "
            "use ode_step for the deterministic (noise_level = 0) sampler"
        )


def _randn(shape: torch.Size, generator: GeneratorLike, device: torch.device) -> torch.Tensor:
    """Standard normal float32 noise of ``shape`` on ``device``.

    Noise is drawn on the generator's own device and then moved, so that a CPU generator gives the same
    numbers whatever device the latents live on. A list of generators (one per sample) makes each
    sample's noise independent of the batch it happens to be in.
    """
    if generator is None:
        return torch.randn(shape, dtype=torch.float32, device=device)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device).to(device)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}")
    return torch.cat(
        [torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32, device=g.device).to(device) for g in generators]
    )


def _draw_or_take(
    prev_sample: torch.Tensor | None,
    mean: torch.Tensor,
    std: torch.Tensor,
    generator: GeneratorLike,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x' in dtype, the float32 detached values to score)``.

    A drawn ``x'`` is rounded to ``dtype`` *before* it is scored, so that the log-prob belongs to the
    tensor handed back (and stored), and rescoring it later reproduces the log-prob bit for bit. A given
    ``x'`` is scored at its own values, without rounding, whatever its dtype.
    """
    if prev_sample is None:
        noise = _randn(mean.shape, generator, mean.device)
        prev_sample = (mean.detach() + std * noise).to(dtype)
        return prev_sample, prev_sample.float()
    return prev_sample.to(dtype), prev_sample.detach().float()


def sde_noise_scale(
    sigma: torch.Tensor | float,
    noise_level: float,
    sigma_max: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Flow-GRPO's diffusion coefficient ``s = a * sqrt(sigma / (1 - sigma))``.

    ``s`` diverges at ``sigma == 1``; there ``sigma_max`` (Flow-GRPO: the scheduler's ``sigmas[1]``,
    the first sigma below 1) replaces ``sigma`` in the denominator only.

    Args:
        sigma: current sigma, float or tensor of any shape (float32 is used).
        noise_level: ``a``.
        sigma_max: replacement for the denominator at ``sigma == 1``; required if some sigma equals 1.

    Returns:
        ``s`` with the shape of ``sigma``, float32.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    at_one = sigma == 1
    if sigma_max is None:
        # Only checked when sigma_max is missing, so the usual call (sigma_max given) never syncs a GPU.
        if bool(at_one.any()):
            raise ValueError(
                "sigma == 1 makes s = a*sqrt(sigma/(1-sigma)) infinite: pass sigma_max "
                "(Flow-GRPO uses the scheduler's sigmas[1]) to use in the denominator there"
            )
        denominator_sigma = sigma
    else:
        sigma_max_t = torch.as_tensor(sigma_max, dtype=torch.float32, device=sigma.device)
        if sigma_max_t.ndim == 1 and sigma.ndim > 1:
            sigma_max_t = sigma_max_t.reshape(-1, *([1] * (sigma.ndim - 1)))
        denominator_sigma = torch.where(at_one, sigma_max_t, sigma)
    return noise_level * torch.sqrt(sigma / (1 - denominator_sigma))


def ode_step(
    model_output: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    sample: torch.Tensor,
) -> torch.Tensor:
    """Deterministic Euler step of the probability-flow ODE, ``x' = x + v * (sigma_next - sigma)``.

    This is the ``noise_level = 0`` limit of :func:`sde_step_with_logprob`; it has no log-prob.

    Args:
        model_output: velocity ``v``, [B, *rest].
        sigma: current sigma, [B] (or a scalar).
        sigma_next: next (smaller) sigma, [B] (or a scalar).
        sample: current latent ``x``, [B, *rest].

    Returns:
        ``x'``, [B, *rest], in ``sample.dtype`` (computed in float32).
    """
    x = sample.float()
    dt = expand_like(sigma_next, x) - expand_like(sigma, x)
    return (x + model_output.float() * dt).to(sample.dtype)


def sde_step_with_logprob(
    model_output: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    sample: torch.Tensor,
    noise_level: float = 0.7,
    prev_sample: torch.Tensor | None = None,
    generator: GeneratorLike = None,
    sigma_max: torch.Tensor | float | None = None,
    logprob_reduction: LogprobReduction = "mean",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Flow-GRPO SDE step and the log-density of the transition (ALGORITHMS.md section 1).

    With ``s = a * sqrt(sigma / (1 - sigma))`` and ``dt = sigma_next - sigma < 0``::

        mean = x * (1 + s^2 * dt / (2 sigma)) + v * (1 + s^2 * (1 - sigma) / (2 sigma)) * dt
        x'   = mean + s * sqrt(-dt) * eps,   eps ~ N(0, I)

    i.e. the Euler step plus the drift ``(s^2 / 2) * score * (-dt)``, using that for this interpolation
    the score is ``-(x + (1 - sigma) v) / sigma``. The drift compensates the injected noise so the
    marginals of ``x_sigma`` are those of the ODE (up to discretisation error). One caveat of the
    ``sigma_max`` substitution: a first step from ``sigma = 1`` to ``sigma_max`` adds variance
    ``a^2`` whatever the number of steps, so its variance error (~``a^4 / 4``, 6 % at a = 0.7) does not
    shrink with finer schedules; it is forgotten along the trajectory (tests/core/test_core_sde_marginal.py).

    The log-prob is ``log N(x'; mean, (s * sqrt(-dt))^2)`` per element, reduced over all non-batch
    dimensions. Its default reduction, "mean", is Flow-GRPO's scale, on which the 1e-4 clip range is
    defined; "sum" is the true log-density of the whole latent.

    Precision: everything is computed in float32. When the step samples ``x'`` itself, ``x'`` is first
    rounded to ``sample.dtype`` and the log-prob is taken of that rounded value, i.e. of exactly the
    tensor returned; recomputing with ``prev_sample=`` the returned tensor and the same inputs therefore
    gives a bit-identical log-prob (ratio exactly 1), even for bf16/fp16 latents.

    Args:
        model_output: velocity ``v``, [B, *rest]; may require grad (the log-prob is differentiable
            with respect to it through ``mean``).
        sigma: current sigma per sample, [B] (a scalar is broadcast). Must be > 0.
        sigma_next: next sigma per sample, [B], with ``sigma_next < sigma``.
        sample: current latent ``x``, [B, *rest].
        noise_level: ``a`` > 0 (Flow-GRPO default 0.7). ``a = 0`` is rejected: use :func:`ode_step`.
        prev_sample: if given, ``x'`` is not drawn: this tensor ([B, *rest]) is scored instead
            (training-time recomputation of the log-prob of a stored transition), at its own values
            and detached.
        generator: a ``torch.Generator``, one per sample (a list of B), or None, for drawing ``eps``.
        sigma_max: denominator replacement where ``sigma == 1`` (Flow-GRPO: the scheduler's
            ``sigmas[1]``); a ValueError is raised if some sigma is 1 and this is None.
        logprob_reduction: "mean" (default) or "sum" over the non-batch dimensions.

    Returns:
        ``(prev_sample, log_prob, prev_sample_mean, std_dev_t)``:

        - ``prev_sample``: ``x'``, [B, *rest], in ``sample.dtype`` (the given tensor itself if it
          already has that dtype, else a cast copy).
        - ``log_prob``: [B], float32.
        - ``prev_sample_mean``: ``mean``, [B, *rest], float32 (differentiable; used by the KL term).
        - ``std_dev_t``: ``s``, [B, 1, ..., 1], float32 -- *without* the ``sqrt(-dt)`` factor.
    """
    _check_noise_level(noise_level)
    x = sample.float()
    sigma_t = expand_like(sigma, x)
    std_dev_t = sde_noise_scale(sigma_t, noise_level, sigma_max)
    return _flow_sde_step(model_output, sigma, sigma_next, sample, std_dev_t, prev_sample, generator,
                          logprob_reduction)


def constant_noise_sde_step_with_logprob(
    model_output: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    sample: torch.Tensor,
    noise_level: float = 0.3,
    prev_sample: torch.Tensor | None = None,
    generator: GeneratorLike = None,
    sigma_max: torch.Tensor | float | None = None,
    logprob_reduction: LogprobReduction = "mean",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same flow SDE step with a constant diffusion coefficient ``s = a`` (DanceGRPO's choice; Flow-GRPO's
    is ``a * sqrt(sigma / (1 - sigma))``): the mean, the noise ``s * sqrt(-dt) * eps`` and the log-density
    are those of :func:`sde_step_with_logprob` with this ``s``. It never diverges, so ``sigma_max`` is
    accepted for a common signature and ignored. DanceGRPO's default ``a`` is 0.3.
    """
    _check_noise_level(noise_level)
    del sigma_max
    x = sample.float()
    std_dev_t = torch.full_like(expand_like(sigma, x), float(noise_level))
    return _flow_sde_step(model_output, sigma, sigma_next, sample, std_dev_t, prev_sample, generator,
                          logprob_reduction)


def wan_sde_step_with_logprob(
    model_output: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    sample: torch.Tensor,
    noise_level: float = 0.7,
    prev_sample: torch.Tensor | None = None,
    generator: GeneratorLike = None,
    sigma_max: torch.Tensor | float | None = None,
    logprob_reduction: LogprobReduction = "mean",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The flow SDE step with Flow-GRPO's Wan2.1 diffusion coefficient ``s = sigma_max * sigma``.

    Flow-GRPO's Wan pipeline (``flow_grpo/diffusers_patch/wan_pipeline_with_logprob.py``,
    ``sde_step_with_logprob``) uses ``s = sigma_min + (sigmas[1] - sigma_min) * sigma`` with ``sigma_min``
    the schedule's last sigma, which is 0 on the UniPC grid of a Wan2.1 folder (``final_sigmas_type
    "zero"``), and has no noise-level setting: ``noise_level`` is accepted for a common signature and
    ignored. ``sigma_max`` (the schedule's ``sigmas[1]``) is required. The mean, the noise
    ``s * sqrt(-dt) * eps`` and the log-density are those of :func:`sde_step_with_logprob` with this ``s``.
    """
    del noise_level
    if sigma_max is None:
        raise ValueError("the Wan SDE step needs sigma_max, the schedule's sigmas[1]")
    x = sample.float()
    std_dev_t = expand_like(sigma_max, x).float() * expand_like(sigma, x).float()
    return _flow_sde_step(model_output, sigma, sigma_next, sample, std_dev_t, prev_sample, generator,
                          logprob_reduction)


def _flow_sde_step(model_output: torch.Tensor, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float,
                   sample: torch.Tensor, std_dev_t: torch.Tensor, prev_sample: torch.Tensor | None,
                   generator: GeneratorLike, logprob_reduction: LogprobReduction):
    """The flow SDE step for a given diffusion coefficient ``std_dev_t`` ([B, 1, ..., 1]); see
    :func:`sde_step_with_logprob` for the formulas and returns."""
    x = sample.float()
    v = model_output.float()
    sigma_t = expand_like(sigma, x)
    dt = expand_like(sigma_next, x) - sigma_t
    s2 = std_dev_t**2
    prev_sample_mean = x * (1 + s2 * dt / (2 * sigma_t)) + v * (1 + s2 * (1 - sigma_t) / (2 * sigma_t)) * dt
    step_std = std_dev_t * torch.sqrt(-dt)

    prev_sample, target = _draw_or_take(prev_sample, prev_sample_mean, step_std, generator, sample.dtype)
    log_prob = (
        -((target - prev_sample_mean) ** 2) / (2 * step_std**2)
        - torch.log(step_std)
        - _HALF_LOG_2PI
    )
    log_prob = _reduce_non_batch(log_prob, logprob_reduction)
    return prev_sample, log_prob, prev_sample_mean, std_dev_t.expand(x.shape[0], *std_dev_t.shape[1:])


def cps_step_with_logprob(
    model_output: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    sample: torch.Tensor,
    noise_level: float = 0.7,
    prev_sample: torch.Tensor | None = None,
    generator: GeneratorLike = None,
    sigma_max: torch.Tensor | float | None = None,
    logprob_reduction: LogprobReduction = "mean",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One coefficient-preserving (CPS) step, Flow-GRPO's ``sde_type="cps"`` (ALGORITHMS.md section 1).

    With the predictions ``x0_hat = x - sigma * v`` and ``eps_hat = x + (1 - sigma) * v``::

        s    = sigma_next * sin(a * pi / 2)
        mean = (1 - sigma_next) * x0_hat + sqrt(sigma_next^2 - s^2) * eps_hat
        x'   = mean + s * eps

    If ``x0_hat`` and ``eps_hat`` were exact, ``x'`` would again be ``(1 - sigma_next) * x0`` plus noise
    of total standard deviation ``sigma_next`` -- hence "coefficient preserving".

    **Log-prob scale.** Like Flow-GRPO, the returned "log-prob" drops every constant and the variance:
    it is ``-reduce((x' - mean)^2)``, not a log-density. Ratios ``exp(logp_new - logp_old)`` built from
    it live on a different scale from :func:`sde_step_with_logprob`'s, so a clip range tuned for one does
    not transfer to the other. At the last step (``sigma_next = 0``) ``s = 0`` and the step is
    deterministic; the surrogate is then 0 for the drawn sample rather than undefined.

    Args and returns are those of :func:`sde_step_with_logprob`; ``sigma_max`` is accepted for a common
    signature and ignored. ``std_dev_t`` is ``s`` above, [B, 1, ..., 1].
    """
    _check_noise_level(noise_level)
    del sigma_max  # CPS's noise scale depends on sigma_next only; it never diverges.
    x = sample.float()
    v = model_output.float()
    sigma_t = expand_like(sigma, x)
    sigma_next_t = expand_like(sigma_next, x)

    std_dev_t = sigma_next_t * math.sin(noise_level * math.pi / 2)
    x0_hat = x - sigma_t * v
    eps_hat = x + (1 - sigma_t) * v
    # clamp: sigma_next^2 - s^2 = sigma_next^2 cos^2(a pi/2) >= 0 mathematically, but may round below 0.
    eps_coef = torch.sqrt((sigma_next_t**2 - std_dev_t**2).clamp_min(0))
    prev_sample_mean = (1 - sigma_next_t) * x0_hat + eps_coef * eps_hat

    prev_sample, target = _draw_or_take(prev_sample, prev_sample_mean, std_dev_t, generator, sample.dtype)
    log_prob = -((target - prev_sample_mean) ** 2)
    log_prob = _reduce_non_batch(log_prob, logprob_reduction)
    return prev_sample, log_prob, prev_sample_mean, std_dev_t.expand(x.shape[0], *std_dev_t.shape[1:])


TRANSITIONS = {"sde": sde_step_with_logprob, "cps": cps_step_with_logprob,
               "sde-constant": constant_noise_sde_step_with_logprob, "sde-wan": wan_sde_step_with_logprob}
"""The stochastic transitions an algorithm may sample with (same signature and returns)."""


def transition_function(name: str):
    """:func:`sde_step_with_logprob` for ``"sde"``, :func:`cps_step_with_logprob` for ``"cps"``,
    :func:`constant_noise_sde_step_with_logprob` for ``"sde-constant"``, :func:`wan_sde_step_with_logprob`
    for ``"sde-wan"``."""
    try:
        return TRANSITIONS[name]
    except KeyError:
        raise ValueError(f"transition must be one of {sorted(TRANSITIONS)}, not {name!r}") from None
