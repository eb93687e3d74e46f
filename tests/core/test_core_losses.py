"""Clipped surrogate, KL penalty, sequence weight and diagnostics, against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from opgrpo_bench.core.losses import approx_kl, clipped_surrogate, kl_to_reference, sequence_log_weight

# ratios 1, 1.5, 0.5, 1.5, 0.5 against advantages 2, 1, -1, -1, 1, clip range 0.2
RATIOS = torch.tensor([1.0, 1.5, 0.5, 1.5, 0.5])
ADV = torch.tensor([2.0, 1.0, -1.0, -1.0, 1.0])


def test_clipped_surrogate_hand_computed() -> None:
    log_prob = torch.log(RATIOS)
    old = torch.zeros(5)
    loss, ratio, clipped = clipped_surrogate(log_prob, old, ADV, clip_range=0.2)
    torch.testing.assert_close(ratio, RATIOS)
    # 0: max(-2, -2) = -2; 1: max(-1.5, -1.2) = -1.2 (clipped branch); 2: max(0.5, 0.8) = 0.8 (clipped branch);
    # 3: max(1.5, 1.2) = 1.5 (unclipped branch); 4: max(-0.5, -0.8) = -0.5 (unclipped branch)
    torch.testing.assert_close(loss, torch.tensor([-2.0, -1.2, 0.8, 1.5, -0.5]))
    # clip-fraction metric: the ratio left [1 - eps, 1 + eps], whatever the branch
    assert clipped.tolist() == [False, True, True, True, True]


def test_clipped_surrogate_gradient_only_through_unclipped_branch() -> None:
    log_prob = torch.log(RATIOS).requires_grad_()
    loss, _, _ = clipped_surrogate(log_prob, torch.zeros(5), ADV, clip_range=0.2)
    loss.sum().backward()
    # d(-A * exp(lp))/d lp = -A * ratio on the unclipped branch, 0 on the clipped one
    torch.testing.assert_close(log_prob.grad, torch.tensor([-2.0, 0.0, 0.0, 1.5, -0.5]))


def test_clipped_surrogate_default_range_and_offsets() -> None:
    # Flow-GRPO's 1e-4: a log-ratio of 5e-5 stays inside, 2e-4 is clipped
    old = torch.tensor([3.0, 3.0])
    log_prob = old + torch.tensor([5e-5, 2e-4])
    loss, ratio, clipped = clipped_surrogate(log_prob, old, torch.tensor([1.0, 1.0]))
    assert clipped.tolist() == [False, True]
    torch.testing.assert_close(loss, torch.tensor([-math.exp(5e-5), -(1 + 1e-4)]))


def test_weight_scales_each_sample_and_is_constant() -> None:
    log_prob = torch.log(RATIOS).requires_grad_()
    weight = torch.tensor([1.0, 2.0, 0.5, 0.0, 3.0], requires_grad=True)
    loss, _, _ = clipped_surrogate(log_prob, torch.zeros(5), ADV, clip_range=0.2, weight=weight)
    torch.testing.assert_close(loss, torch.tensor([-2.0, -2.4, 0.4, 0.0, -1.5]))
    loss.sum().backward()
    assert weight.grad is None  # detached: a constant of the update
    torch.testing.assert_close(log_prob.grad, torch.tensor([-2.0, 0.0, 0.0, 0.0, -1.5]))
    unweighted, _, _ = clipped_surrogate(torch.log(RATIOS), torch.zeros(5), ADV, clip_range=0.2, weight=None)
    scalar, _, _ = clipped_surrogate(torch.log(RATIOS), torch.zeros(5), ADV, clip_range=0.2, weight=2.0)
    torch.testing.assert_close(scalar, 2 * unweighted)


def test_old_log_prob_and_advantages_are_detached() -> None:
    old = torch.zeros(5, requires_grad=True)
    adv = ADV.clone().requires_grad_()
    loss, _, _ = clipped_surrogate(torch.log(RATIOS), old, adv, clip_range=0.2)
    assert not loss.requires_grad


def test_kl_to_reference_hand_computed() -> None:
    mean = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    ref = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    std = torch.tensor([1.0, 0.5]).view(2, 1)  # as returned by the SDE step: [N, 1, ...]
    # mean squared differences 2.5 and 1; / (2 s^2) -> 1.25 and 2
    torch.testing.assert_close(kl_to_reference(mean, ref, std), torch.tensor([1.25, 2.0]))
    torch.testing.assert_close(kl_to_reference(mean, ref, torch.tensor([1.0, 0.5])), torch.tensor([1.25, 2.0]))
    # with dt the variance is s^2 (-dt): 1.25 / 0.1 and 2 / 0.5
    dt = torch.tensor([-0.1, -0.5])
    torch.testing.assert_close(kl_to_reference(mean, ref, std, dt=dt), torch.tensor([12.5, 4.0]))


def test_kl_with_dt_is_the_exact_gaussian_kl() -> None:
    g = torch.Generator().manual_seed(0)
    mean, ref = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    std = torch.tensor([0.3, 1.2, 2.0]).view(3, 1, 1, 1)
    dt = torch.tensor([-0.05, -0.1, -0.2])
    scale = std * torch.sqrt(-dt).view(3, 1, 1, 1)
    exact = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, scale), torch.distributions.Normal(ref, scale)
    ).mean((1, 2, 3))
    torch.testing.assert_close(kl_to_reference(mean, ref, std, dt=dt), exact)


def test_kl_gradient_reaches_mean_only() -> None:
    mean = torch.tensor([[1.0, 2.0]], requires_grad=True)
    ref = torch.tensor([[0.0, 0.0]], requires_grad=True)
    kl_to_reference(mean, ref, torch.tensor([1.0])).sum().backward()
    torch.testing.assert_close(mean.grad, torch.tensor([[0.5, 1.0]]))  # d/dm mean(m^2)/2 = m / 2
    assert ref.grad is None


def test_sequence_log_weight_hand_computed() -> None:
    logp_old = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    logp_off = torch.tensor([[0.5, 2.5, 2.0], [0.0, 1.0, -1.0]])
    # differences [0.5, -0.5, 1.0] and [0.5, -0.5, 1.5]
    out = sequence_log_weight(logp_old, logp_off)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([1.0, 1.5]))
    mask = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(sequence_log_weight(logp_old, logp_off, mask), torch.tensor([0.0, 0.5]))


def test_sequence_log_weight_ignores_masked_out_non_finite_steps() -> None:
    logp_old = torch.tensor([[1.0, float("-inf")]])
    logp_off = torch.tensor([[0.25, 0.0]])
    mask = torch.tensor([[True, False]])
    torch.testing.assert_close(sequence_log_weight(logp_old, logp_off, mask), torch.tensor([0.75]))


def test_sequence_log_weight_accumulates_in_high_precision() -> None:
    # "sum"-scale log-probs are large; their float32 differences are exact, so the weight must be too
    logp_off = torch.full((1, 8), 12345.5)
    logp_old = logp_off + torch.tensor([[0.25, -0.125, 0.5, 0.0, -0.25, 0.125, 0.0, 0.5]])
    torch.testing.assert_close(sequence_log_weight(logp_old, logp_off), torch.tensor([1.0]), rtol=0, atol=0)


def test_sequence_log_weight_shape_checks() -> None:
    with pytest.raises(ValueError):
        sequence_log_weight(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        sequence_log_weight(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(2, 3))


def test_approx_kl() -> None:
    out = approx_kl(torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(out, torch.tensor(1.25))  # 0.5 * mean([1, 4])
    assert not out.requires_grad


def test_kl_to_reference_refuses_a_vanishing_variance() -> None:
    mean, ref = torch.ones(2, 3), torch.zeros(2, 3)
    for std, dt in ((torch.tensor([1.0, 0.0]), None), (torch.tensor([1.0, 1.0]), torch.tensor([-0.1, 0.0])),
                    (torch.tensor([1.0, float("nan")]), None)):
        with pytest.raises(ValueError, match="positive, finite transition variance"):
            kl_to_reference(mean, ref, std, dt)
    assert torch.allclose(kl_to_reference(mean, ref, torch.tensor([1.0, 2.0])), torch.tensor([0.5, 0.125]))
