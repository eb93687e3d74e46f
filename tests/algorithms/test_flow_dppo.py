"""flow-dppo: the divergence mask by hand, the KL against the Gaussian step, a run that keeps the means."""

import math

import pytest
import torch

from opgrpo_bench.algorithms.base import SamplerSettings
from opgrpo_bench.core.losses import divergence_masked_surrogate, kl_to_reference
from opgrpo_bench.core.sde import sde_step_with_logprob
from opgrpo_bench.registry import ALGORITHMS
from opgrpo_bench.results import read_records
from opgrpo_bench.runner import run_one

FAST = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4"]


def test_the_mask_removes_only_pairs_outside_the_region_that_move_further_out():
    # pairs: (A, log-ratio, D) with eps_D = 0.5
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 2.0])
    log_ratio = torch.tensor([0.1, 0.1, -0.1, -0.1, -0.1, 0.1, 0.0])
    div = torch.tensor([0.4, 0.6, 0.6, 0.4, 0.6, 0.6, 0.6])
    new = log_ratio.clone().requires_grad_(True)
    loss, ratio, masked = divergence_masked_surrogate(new, torch.zeros(7), adv, div, 0.5)
    # out and moving out: A > 0 with rho > 1 (pair 1), A < 0 with rho < 1 (pair 4); rho == 1 never
    assert masked.tolist() == [False, True, False, False, True, False, False]
    want = [-1 * math.exp(0.1), 0.0, -1 * math.exp(-0.1), math.exp(-0.1), 0.0, math.exp(0.1), -2.0]
    assert torch.allclose(loss, torch.tensor(want), atol=1e-6)
    loss.sum().backward()
    assert new.grad[1] == 0 and new.grad[4] == 0  # no gradient through a masked pair
    assert math.isclose(float(new.grad[2]), -math.exp(-0.1), rel_tol=1e-6)  # -A * rho: corrective, kept
    assert torch.equal(ratio, torch.exp(log_ratio))


def test_the_divergence_is_the_exact_kl_of_the_two_gaussian_transitions():
    g = torch.Generator().manual_seed(0)
    x, v_old, v_new = (torch.randn((3, 2, 4, 4), generator=g) for _ in range(3))
    sigma, sigma_next = torch.full((3,), 0.6), torch.full((3,), 0.45)
    _, _, mu_old, s = sde_step_with_logprob(v_old, sigma, sigma_next, x, 0.7, generator=g)
    _, _, mu_new, _ = sde_step_with_logprob(v_new, sigma, sigma_next, x, 0.7, generator=g)
    dt = sigma_next - sigma
    got = kl_to_reference(mu_new, mu_old, s, dt)
    # closed form of KL(N(mu_new, v) || N(mu_old, v)) per element, v = s^2 (-dt), averaged over elements
    var = (s.flatten(1)[:, :1] ** 2) * 0.15
    want = ((mu_new - mu_old).flatten(1) ** 2 / (2 * var)).mean(1)
    assert torch.allclose(got, want, rtol=1e-5)


@pytest.mark.train
def test_a_dppo_run_keeps_the_samplers_means_and_reports_its_divergence(tmp_path):
    assert ALGORITHMS.get("flow-dppo").build().sampler_settings(SamplerSettings()).keep_means
    run_one("digits-v1", "flow-dppo", 0, out=tmp_path, steps=2, sets=FAST)
    steps = [r for r in read_records(next(tmp_path.glob("*/metrics.jsonl"))) if r["type"] == "step"]
    assert steps[0]["dppo/divergence_max"] == 0.0  # the first update starts at the sampling weights
    assert steps[1]["dppo/divergence_max"] > 0.0
    assert steps[0]["ratio/min"] == 1.0 and steps[0]["ratio/max"] == 1.0
