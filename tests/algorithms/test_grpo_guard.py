"""grpo-guard: the regulated log-ratio by hand and as an identity of the Gaussian step; a run starts at ratio 1."""

import math

import pytest
import torch

from opgrpo_bench.algorithms.base import SamplerSettings
from opgrpo_bench.core.losses import guard_log_ratio
from opgrpo_bench.core.sde import sde_step_with_logprob
from opgrpo_bench.registry import ALGORITHMS
from opgrpo_bench.results import read_records
from opgrpo_bench.runner import run_one

FAST = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4"]


def test_guard_log_ratio_by_hand():
    x, mu_old, mu_new, sigma = 0.7, 0.55, 0.6, 0.2
    logp = lambda mu: -((x - mu) ** 2) / (2 * sigma**2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)  # noqa: E731
    want = (logp(mu_new) - logp(mu_old)) * sigma + (mu_new - mu_old) ** 2 / (2 * sigma)
    assert math.isclose(want, (x - mu_old) * (mu_new - mu_old) / sigma)  # 0.0375: the bias-free form
    got = guard_log_ratio(torch.tensor([logp(mu_new)]), torch.tensor([logp(mu_old)]), torch.tensor([[mu_new]]),
                          torch.tensor([[mu_old]]), torch.tensor([sigma]))
    assert math.isclose(float(got), 0.0375, rel_tol=1e-5)


def test_guard_log_ratio_is_the_bias_free_inner_product_for_the_sde_step():
    g = torch.Generator().manual_seed(0)
    x, v_old, v_new = (torch.randn((3, 2, 4, 4), generator=g) for _ in range(3))
    sigma, sigma_next = torch.full((3,), 0.6), torch.full((3,), 0.45)
    x_next, logp_old, mu_old, s = sde_step_with_logprob(v_old, sigma, sigma_next, x, 0.7, generator=g)
    _, logp_new, mu_new, _ = sde_step_with_logprob(v_new, sigma, sigma_next, x, 0.7, prev_sample=x_next)
    step_std = s.flatten(1)[:, 0] * torch.sqrt(sigma - sigma_next)
    got = guard_log_ratio(logp_new, logp_old, mu_new, mu_old, step_std)
    want = ((x_next - mu_old) * (mu_new - mu_old)).flatten(1).mean(1) / step_std
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.train
def test_a_guard_run_keeps_the_samplers_means_and_starts_at_ratio_one(tmp_path):
    assert ALGORITHMS.get("grpo-guard").build().sampler_settings(SamplerSettings()).keep_means
    run_one("digits-v1", "grpo-guard", 0, out=tmp_path, steps=2, sets=FAST)
    steps = [r for r in read_records(next(tmp_path.glob("*/metrics.jsonl"))) if r["type"] == "step"]
    assert steps[0]["ratio/min"] == 1.0 and steps[0]["ratio/max"] == 1.0
    assert steps[1]["ratio/min"] != 1.0  # the second step's weights moved
