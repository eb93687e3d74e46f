"""Unit tests of the SDE / ODE / CPS steps against the formulas of ALGORITHMS.md section 1."""

from __future__ import annotations

import math

import pytest
import torch

from opgrpo_bench.core.sde import (
    cps_step_with_logprob,
    expand_like,
    ode_step,
    sde_noise_scale,
    sde_step_with_logprob,
)

SHAPE = (4, 3, 5, 6)


def _inputs(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> tuple[torch.Tensor, ...]:
    """Random velocity, latent and per-sample sigmas with sigma_next < sigma < 1."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=g)
    x = torch.randn(shape, generator=g)
    sigma = 0.05 + 0.9 * torch.rand(shape[0], generator=g)
    sigma_next = sigma * torch.rand(shape[0], generator=g)  # anywhere in [0, sigma)
    return v, x, sigma, sigma_next


def _reference_logprob(mean: torch.Tensor, scale: torch.Tensor, value: torch.Tensor, reduction: str) -> torch.Tensor:
    lp = torch.distributions.Normal(mean, scale).log_prob(value)
    dims = tuple(range(1, lp.ndim))
    return lp.mean(dims) if reduction == "mean" else lp.sum(dims)


# -- the SDE step -----------------------------------------------------------------------------------


def test_hand_computed_step() -> None:
    # x = 1, v = 2, sigma = 0.5, sigma' = 0.4, a = 0.7: s = 0.7, dt = -0.1,
    # mean = 1 * (1 - 0.049) + 2 * (1 + 0.245) * (-0.1) = 0.702, step std = 0.7 * sqrt(0.1).
    x = torch.tensor([[1.0]])
    v = torch.tensor([[2.0]])
    x_next = torch.tensor([[0.8]])
    out, logp, mean, std = sde_step_with_logprob(
        v, torch.tensor([0.5]), torch.tensor([0.4]), x, noise_level=0.7, prev_sample=x_next
    )
    assert out is x_next
    torch.testing.assert_close(mean, torch.tensor([[0.702]]))
    torch.testing.assert_close(std, torch.tensor([[0.7]]))
    # -(0.098^2) / (2 * 0.049) - log(0.2213594) - 0.5 * log(2 pi)
    torch.testing.assert_close(logp, torch.tensor([0.4910290]))


def test_hand_computed_step_at_sigma_one() -> None:
    # sigma = 1 with sigma_max = 0.9: s = 0.7 * sqrt(1 / 0.1) = 2.2135944, dt = -0.1,
    # mean = 1 * (1 - 4.9 * 0.1 / 2) + 2 * (1 + 0) * (-0.1) = 0.555, step std = sqrt(4.9 * 0.1) = 0.7.
    x = torch.tensor([[1.0]])
    v = torch.tensor([[2.0]])
    x_next = torch.tensor([[0.5]])
    _, logp, mean, std = sde_step_with_logprob(
        v, torch.tensor([1.0]), torch.tensor([0.9]), x, prev_sample=x_next, sigma_max=0.9
    )
    torch.testing.assert_close(std, torch.tensor([[2.2135944]]))
    torch.testing.assert_close(mean, torch.tensor([[0.555]]))
    expected = -(0.055**2) / (2 * 0.49) - math.log(0.7) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(logp, torch.tensor([expected]))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("given_prev", [False, True])
def test_logprob_equals_torch_normal(reduction: str, given_prev: bool) -> None:
    v, x, sigma, sigma_next = _inputs(1)
    prev = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7)) if given_prev else None
    out, logp, mean, std = sde_step_with_logprob(
        v, sigma, sigma_next, x, noise_level=0.7, prev_sample=prev,
        generator=torch.Generator().manual_seed(3), logprob_reduction=reduction,
    )
    assert logp.shape == (SHAPE[0],) and logp.dtype == torch.float32
    assert std.shape == (SHAPE[0], 1, 1, 1)
    dt = expand_like(sigma_next - sigma, x)
    expected = _reference_logprob(mean, std * torch.sqrt(-dt), out, reduction)
    torch.testing.assert_close(logp, expected, rtol=1e-5, atol=1e-5)
    # and the mean / scale themselves follow the spec, per sample
    s = 0.7 * torch.sqrt(sigma / (1 - sigma))
    torch.testing.assert_close(std.flatten(), s)
    sig, s4 = expand_like(sigma, x), expand_like(s, x)
    expected_mean = x * (1 + s4**2 * dt / (2 * sig)) + v * (1 + s4**2 * (1 - sig) / (2 * sig)) * dt
    torch.testing.assert_close(mean, expected_mean)


def test_logprob_at_sigma_one_with_sigma_max() -> None:
    v, x, _, _ = _inputs(2)
    sigma = torch.tensor([1.0, 1.0, 0.7, 0.3])
    sigma_next = torch.tensor([0.97, 0.8, 0.6, 0.0])
    out, logp, mean, std = sde_step_with_logprob(
        v, sigma, sigma_next, x, sigma_max=0.97, generator=torch.Generator().manual_seed(0)
    )
    expected_s = torch.tensor([0.7 * math.sqrt(1 / 0.03), 0.7 * math.sqrt(1 / 0.03),
                               0.7 * math.sqrt(0.7 / 0.3), 0.7 * math.sqrt(0.3 / 0.7)])
    torch.testing.assert_close(std.flatten(), expected_s)
    expected = _reference_logprob(mean, std * torch.sqrt(expand_like(sigma - sigma_next, x)), out, "mean")
    torch.testing.assert_close(logp, expected, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(logp).all() and torch.isfinite(out).all()


def test_sigma_one_without_sigma_max_raises() -> None:
    v, x, _, _ = _inputs()
    with pytest.raises(ValueError, match="sigma_max"):
        sde_step_with_logprob(v, torch.tensor([1.0, 0.5, 0.5, 0.5]), torch.full((4,), 0.4), x)
    with pytest.raises(ValueError, match="sigma_max"):
        sde_noise_scale(torch.tensor([1.0]), 0.7)


@pytest.mark.parametrize("step", [sde_step_with_logprob, cps_step_with_logprob])
@pytest.mark.parametrize("noise_level", [0.0, -0.1])
def test_nonpositive_noise_level_rejected(step, noise_level: float) -> None:
    v, x, sigma, sigma_next = _inputs()
    with pytest.raises(ValueError, match="ode_step"):
        step(v, sigma, sigma_next, x, noise_level=noise_level)


def test_ode_step_is_euler() -> None:
    v, x, sigma, sigma_next = _inputs(4)
    out = ode_step(v, sigma, sigma_next, x)
    torch.testing.assert_close(out, x + v * (sigma_next - sigma).view(-1, 1, 1, 1))
    # a scalar sigma pair broadcasts over the batch
    torch.testing.assert_close(ode_step(v, 0.5, 0.25, x), x - 0.25 * v)
    assert ode_step(v.half(), sigma, sigma_next, x.half()).dtype == torch.float16


def test_sde_mean_tends_to_euler_as_noise_vanishes() -> None:
    v, x, sigma, sigma_next = _inputs(5)
    euler = ode_step(v, sigma, sigma_next, x)
    gaps = []
    for a in (1e-1, 1e-2, 1e-3):
        _, _, mean, _ = sde_step_with_logprob(v, sigma, sigma_next, x, noise_level=a)
        gaps.append((mean - euler).abs().max().item())
    # the correction drift is proportional to s^2, i.e. to a^2
    assert gaps[0] > 0
    assert gaps[1] < gaps[0] / 50 and gaps[2] < gaps[1] / 50
    assert gaps[2] < 1e-5


def test_given_prev_sample_is_returned_and_scored() -> None:
    v, x, sigma, sigma_next = _inputs(6)
    g = torch.Generator().manual_seed(11)
    drawn, logp_drawn, mean_drawn, _ = sde_step_with_logprob(v, sigma, sigma_next, x, generator=g)
    again, logp_again, mean_again, _ = sde_step_with_logprob(v, sigma, sigma_next, x, prev_sample=drawn)
    assert again is drawn
    assert torch.equal(logp_again, logp_drawn)  # the parity rule: ratio exactly 1
    assert torch.equal(mean_again, mean_drawn)
    # scoring another sample gives a different (lower, here: far from the mean) log-prob
    _, logp_far, _, _ = sde_step_with_logprob(v, sigma, sigma_next, x, prev_sample=drawn + 1.0)
    assert (logp_far < logp_drawn).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("step", [sde_step_with_logprob, cps_step_with_logprob])
def test_low_precision_inputs(dtype: torch.dtype, step) -> None:
    v, x, sigma, sigma_next = _inputs(7)
    v, x = v.to(dtype), x.to(dtype)
    out, logp, mean, std = step(v, sigma, sigma_next, x, generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype
    assert logp.dtype == mean.dtype == std.dtype == torch.float32
    assert torch.isfinite(logp).all()
    # the log-prob is that of the rounded sample actually returned, so recomputation matches exactly
    _, logp_again, _, _ = step(v, sigma, sigma_next, x, prev_sample=out)
    assert torch.equal(logp_again, logp)


def test_given_prev_sample_is_scored_at_its_own_precision() -> None:
    # a float32 stored sample scored with bf16 latents is not rounded before scoring
    v, x, sigma, sigma_next = _inputs(14)
    prev = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    out, logp, mean, std = sde_step_with_logprob(v.bfloat16(), sigma, sigma_next, x.bfloat16(), prev_sample=prev)
    assert out.dtype == torch.bfloat16
    scale = std * torch.sqrt(expand_like(sigma - sigma_next, x))
    torch.testing.assert_close(logp, _reference_logprob(mean, scale, prev, "mean"), rtol=1e-5, atol=1e-5)


def test_generator_determinism_and_per_sample_generators() -> None:
    v, x, sigma, sigma_next = _inputs(8)
    a, *_ = sde_step_with_logprob(v, sigma, sigma_next, x, generator=torch.Generator().manual_seed(5))
    b, *_ = sde_step_with_logprob(v, sigma, sigma_next, x, generator=torch.Generator().manual_seed(5))
    c, *_ = sde_step_with_logprob(v, sigma, sigma_next, x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # one generator per sample: sample i's noise does not depend on the rest of the batch
    full, *_ = sde_step_with_logprob(
        v, sigma, sigma_next, x, generator=[torch.Generator().manual_seed(100 + i) for i in range(4)]
    )
    single, *_ = sde_step_with_logprob(
        v[2:3], sigma[2:3], sigma_next[2:3], x[2:3], generator=[torch.Generator().manual_seed(102)]
    )
    assert torch.equal(full[2:3], single)
    with pytest.raises(ValueError, match="generators"):
        sde_step_with_logprob(v, sigma, sigma_next, x, generator=[torch.Generator()])


def test_gradient_flows_through_mean_not_through_sample() -> None:
    v, x, sigma, sigma_next = _inputs(9)
    v = v.requires_grad_()
    prev = torch.randn(SHAPE).requires_grad_()
    _, logp, _, _ = sde_step_with_logprob(v, sigma, sigma_next, x, prev_sample=prev)
    logp.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert prev.grad is None  # x' enters detached


def test_one_dimensional_latents_are_not_reduced_across_the_batch() -> None:
    # Tensor.mean(dim=()) reduces everything; a [B] latent must keep a per-sample log-prob.
    v, x = torch.tensor([0.3, -1.0]), torch.tensor([0.5, 2.0])
    sigma, sigma_next = torch.tensor([0.6, 0.3]), torch.tensor([0.5, 0.1])
    prev = torch.tensor([0.4, 1.9])
    _, logp, mean, std = sde_step_with_logprob(v, sigma, sigma_next, x, prev_sample=prev)
    assert logp.shape == (2,)
    expected = torch.distributions.Normal(mean, std * torch.sqrt(sigma - sigma_next)).log_prob(prev)
    torch.testing.assert_close(logp, expected)


def test_batch_mismatch_and_bad_reduction_raise() -> None:
    v, x, _, _ = _inputs()
    with pytest.raises(ValueError, match="batch"):
        sde_step_with_logprob(v, torch.full((3,), 0.5), torch.full((3,), 0.4), x)
    with pytest.raises(ValueError, match="logprob_reduction"):
        sde_step_with_logprob(v, torch.full((4,), 0.5), torch.full((4,), 0.4), x, logprob_reduction="max")


# -- the CPS step -----------------------------------------------------------------------------------


def test_cps_hand_computed() -> None:
    # x = 1, v = 2, sigma = 0.5, sigma' = 0.4, a = 0.5: s = 0.4 sin(pi/4) = 0.2828427,
    # x0_hat = 0, eps_hat = 2, mean = sqrt(0.16 - 0.08) * 2 = 0.5656854; logp = -(0.8 - mean)^2.
    x, v, x_next = torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor([[0.8]])
    _, logp, mean, std = cps_step_with_logprob(
        v, torch.tensor([0.5]), torch.tensor([0.4]), x, noise_level=0.5, prev_sample=x_next
    )
    torch.testing.assert_close(std, torch.tensor([[0.2828427]]))
    torch.testing.assert_close(mean, torch.tensor([[0.5656854]]))
    torch.testing.assert_close(logp, torch.tensor([-0.0549033]))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cps_logprob_is_negative_squared_error(reduction: str) -> None:
    v, x, sigma, sigma_next = _inputs(10)
    out, logp, mean, _ = cps_step_with_logprob(
        v, sigma, sigma_next, x, generator=torch.Generator().manual_seed(0), logprob_reduction=reduction
    )
    sq = (out - mean) ** 2
    expected = -(sq.mean((1, 2, 3)) if reduction == "mean" else sq.sum((1, 2, 3)))
    torch.testing.assert_close(logp, expected)


def test_cps_preserves_coefficients_for_exact_predictions() -> None:
    # With the exact x0 and noise behind x, CPS keeps x' = (1 - sigma') x0 + (noise of std sigma').
    g = torch.Generator().manual_seed(12)
    n = 20000
    x0, eps = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    sigma, sigma_next = torch.full((n,), 0.6), torch.full((n,), 0.45)
    x = (1 - 0.6) * x0 + 0.6 * eps
    out, _, mean, std = cps_step_with_logprob(eps - x0, sigma, sigma_next, x, noise_level=0.7, generator=g)
    s = 0.45 * math.sin(0.7 * math.pi / 2)
    torch.testing.assert_close(std[0], torch.tensor([s]))
    torch.testing.assert_close(mean, (1 - 0.45) * x0 + math.sqrt(0.45**2 - s**2) * eps, rtol=1e-5, atol=1e-5)
    residual_var = (out - (1 - 0.45) * x0).var().item()
    assert abs(residual_var / 0.45**2 - 1) < 0.03  # 5 standard errors of a variance from 40000 numbers


def test_cps_with_vanishing_noise_is_euler() -> None:
    v, x, sigma, sigma_next = _inputs(13)
    _, _, mean, _ = cps_step_with_logprob(v, sigma, sigma_next, x, noise_level=1e-6)
    torch.testing.assert_close(mean, ode_step(v, sigma, sigma_next, x), rtol=1e-5, atol=1e-5)


def _flow_grpo_wan_step(v, x, sigmas, i, prev_sample):
    """Flow-GRPO's Wan2.1 transition, written here from the formula of its public pipeline
    (``wan_pipeline_with_logprob.py: sde_step_with_logprob``) for 5-D latents, independently of core/sde.py."""
    sigma, sigma_prev = sigmas[i], sigmas[i + 1]
    sigma_max, sigma_min = sigmas[1].item(), sigmas[-1].item()
    dt = sigma_prev - sigma
    std = sigma_min + (sigma_max - sigma_min) * sigma
    mean = x * (1 + std**2 / (2 * sigma) * dt) + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
    logp = (-((prev_sample - mean) ** 2) / (2 * (std * torch.sqrt(-1 * dt)) ** 2)
            - torch.log(std * torch.sqrt(-1 * dt)) - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    return logp.mean(dim=tuple(range(1, logp.ndim))), mean


def test_the_wan_step_is_flow_grpos_wan_formula():
    from opgrpo_bench.core.sde import wan_sde_step_with_logprob

    g = torch.Generator().manual_seed(3)
    sigmas = torch.tensor([1.0, 0.95, 0.8, 0.55, 0.3, 0.1, 0.0])  # a shifted grid ending at 0, like UniPC's
    x = torch.randn((2, 4, 3, 4, 4), generator=g)
    for i in range(len(sigmas) - 2):  # every step but the last (sigma' = 0 is never scored on its own)
        v = torch.randn(x.shape, generator=g)
        x_next, logp, mean, _ = wan_sde_step_with_logprob(v, sigmas[i].expand(2), sigmas[i + 1].expand(2), x,
                                                          generator=g, sigma_max=sigmas[1])
        want_logp, want_mean = _flow_grpo_wan_step(v, x, sigmas, i, x_next)
        assert torch.allclose(mean, want_mean, atol=1e-6)
        assert torch.allclose(logp, want_logp, atol=1e-5, rtol=0)
        x = x_next
    with pytest.raises(ValueError, match="sigma_max"):
        wan_sde_step_with_logprob(v, sigmas[0].expand(2), sigmas[1].expand(2), x)
