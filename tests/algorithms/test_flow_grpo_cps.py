"""flow-grpo-cps: the coefficient-preserving step in the rollouts and in the ratios, reachable from the CLI."""

import pytest
import torch

from opgrpo_bench.algorithms.base import SamplerSettings
from opgrpo_bench.core.sde import cps_step_with_logprob
from opgrpo_bench.errors import UserError
from opgrpo_bench.registry import ALGORITHMS, TASKS
from opgrpo_bench.results import read_records
from opgrpo_bench.runner import run_one
from opgrpo_bench.sampling import sample_sde

FAST = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4"]


def test_the_preset_uses_cps_with_its_own_clip_range():
    algo = ALGORITHMS.get("flow-grpo-cps").build()
    defaults = SamplerSettings()
    assert algo.sampler_settings(defaults).transition == "cps" and algo.config.clip_range == 1e-5
    assert ALGORITHMS.get("flow-grpo").build().sampler_settings(defaults).transition == "sde"


def test_the_sampler_takes_cps_steps():
    backbone = TASKS.get("digits-v1").build_backbone()
    cond = backbone.encode(["a photo of the digit 3"] * 2)
    noise = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    sigmas = backbone.sigmas(4)
    traj = sample_sde(backbone, cond, noise, sigmas, 0.7, generator=torch.Generator().manual_seed(1),
                      transition="cps")
    gen = torch.Generator().manual_seed(1)
    x = noise
    for k in range(4):  # the same steps by hand, from the core function
        v = backbone.velocity(x, sigmas[k].expand(2), cond)
        x, logp, _, _ = cps_step_with_logprob(v, sigmas[k].expand(2), sigmas[k + 1].expand(2), x, 0.7, generator=gen)
        assert torch.equal(traj.latents[:, k + 1], x) and torch.equal(traj.log_probs[:, k], logp)


@pytest.mark.train
def test_a_cps_run_starts_with_ratio_one(tmp_path):
    run_one("digits-v1", "flow-grpo-cps", 0, out=tmp_path, steps=2, sets=FAST)
    steps = [r for r in read_records(next(tmp_path.glob("*/metrics.jsonl"))) if r["type"] == "step"]
    assert steps[0]["ratio/min"] == 1.0 and steps[0]["ratio/max"] == 1.0  # same calls, same weights


def test_the_preset_has_no_kl_term_and_a_kl_term_is_refused_in_one_line(tmp_path):
    assert ALGORITHMS.get("flow-grpo-cps").build().config.beta == 0.0
    with pytest.raises(UserError, match="beta=0.04.*vanishes"):
        run_one("digits-v1", "flow-grpo-cps", 0, out=tmp_path, steps=2, sets=FAST + ["beta=0.04"])
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.train
def test_without_the_kl_term_the_policy_moves(tmp_path):
    # with beta = 0.04 the last trained step's KL gradient swamped the policy gradient and no seed learned
    run_one("digits-v1", "flow-grpo-cps", 0, out=tmp_path, steps=4, sets=FAST)
    steps = [r for r in read_records(next(tmp_path.glob("*/metrics.jsonl"))) if r["type"] == "step"]
    assert all(r["loss/kl"] == 0.0 for r in steps)
    trained = [r for r in steps if r["train/trained_pairs"]]
    assert trained and all(r["grad_norm"] > 0 for r in trained)
