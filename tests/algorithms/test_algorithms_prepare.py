"""Algorithms on synthetic rollouts: what each preset puts in the TrainBatch."""

import math

import pytest
import torch

from opgrpo_bench.algorithms import PRESETS
from opgrpo_bench.algorithms.flow_grpo import Rollout

T = 10


def synthetic_rollout(forced=(0, 0, 0, 6, 0, 0, 0, 0), seed=0):
    """2 groups of 4; sample 3 (group 0) follows a stored 6-step prefix."""
    g = torch.Generator().manual_seed(seed)
    n = len(forced)
    forced_len = torch.tensor(forced)
    log_probs = torch.randn(n, T, generator=g) * 0.01
    behaviour = log_probs.clone()
    prefix = torch.arange(T)[None, :] < forced_len[:, None]
    behaviour[prefix] = (log_probs - torch.rand(n, T, generator=g) * 0.02)[prefix]
    return Rollout(
        prompt_ids=torch.tensor([5, 5, 5, 5, 7, 7, 7, 7]), group_ids=torch.arange(2).repeat_interleave(4),
        prompts=["p"] * n, metas=[{}] * n, latents=torch.randn(n, T + 1, 1, 2, 2, generator=g),
        sigmas=torch.linspace(1, 0, T + 1), log_probs=log_probs, behaviour_log_probs=behaviour,
        forced_len=forced_len, rewards=torch.tensor([0.1, 0.2, 0.3, 0.9, 0.5, 0.5, 0.5, 0.5]))


def test_flow_grpo_batch_is_on_policy_and_drops_zero_std_groups():
    ro = synthetic_rollout(forced=(0,) * 8)
    batch = PRESETS["flow-grpo"].build().prepare(ro)
    assert torch.equal(batch.old_log_probs, ro.log_probs)
    assert torch.all(batch.weights == 1)
    assert batch.train_mask[:4, :9].all() and not batch.train_mask[:, 9].any()  # last step never trained
    assert not batch.train_mask[4:].any()  # group 1's rewards are all equal
    assert batch.metrics["train/zero_std_group_frac"] == 0.5
    # global-std advantages (population std over all 8 rewards), group 0's mean 0.375
    std = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.5, 0.5, 0.5, 0.5]).std(unbiased=False)
    assert batch.advantages[3].item() == pytest.approx((0.9 - 0.375) / (std.item() + 1e-4), rel=1e-5)


def test_op_grpo_sequence_weight_is_the_prefix_sum_of_log_ratios():
    ro = synthetic_rollout()
    batch = PRESETS["op-grpo"].build().prepare(ro)
    logw = sum(ro.log_probs[3, k].item() - ro.behaviour_log_probs[3, k].item() for k in range(6))
    assert batch.weights[3].item() == pytest.approx(math.exp(logw), rel=1e-6)
    assert torch.all(batch.weights[torch.arange(8) != 3] == 1.0)  # fresh samples: w = 1
    assert torch.equal(batch.old_log_probs, ro.log_probs)  # the ratio inside the clip stays p/p_old
    assert batch.metrics["op/logw_min"] == pytest.approx(logw, rel=1e-5)
    by_step = batch.metrics["op/logratio_by_step"]
    assert by_step[6:] == [None] * 4
    assert by_step[2] == pytest.approx(ro.log_probs[3, 2].item() - ro.behaviour_log_probs[3, 2].item(), rel=1e-5)
    assert batch.train_mask[3, :9].all()  # prefix and SDE suffix are trained


def test_naive_is_divides_by_the_behaviour_log_probs_on_the_prefix_only():
    ro = synthetic_rollout()
    batch = PRESETS["op-grpo-naive-is"].build().prepare(ro)
    assert torch.all(batch.weights == 1)
    assert torch.equal(batch.old_log_probs[3, :6], ro.behaviour_log_probs[3, :6])  # p_theta / p_off
    assert torch.equal(batch.old_log_probs[3, 6:], ro.log_probs[3, 6:])
    assert torch.equal(batch.old_log_probs[:3], ro.log_probs[:3])


def test_no_correction_treats_replayed_samples_as_on_policy():
    ro = synthetic_rollout()
    batch = PRESETS["op-grpo-no-correction"].build().prepare(ro)
    assert torch.all(batch.weights == 1) and torch.equal(batch.old_log_probs, ro.log_probs)


def test_ode_suffix_steps_are_not_trained():
    ro = synthetic_rollout()
    batch = PRESETS["op-grpo"].build(suffix="ode").prepare(ro)
    assert batch.train_mask[3, :6].all() and not batch.train_mask[3, 6:].any()
    assert batch.train_mask[0, :9].all()


def test_logw_clamp_bounds_the_weight():
    ro = synthetic_rollout()
    ro.behaviour_log_probs[3, :6] -= 1.0  # a stale prefix: log w = +6
    batch = PRESETS["op-grpo"].build(logw_clamp=2.0).prepare(ro)
    assert batch.weights[3].item() == pytest.approx(math.exp(2.0))


def test_replay_groups_follow_the_proportion_in_expectation():
    alg = PRESETS["op-grpo-rho5"].build()
    for i in range(10):
        alg.buffer.offer(_entry(i))
    gen = torch.Generator().manual_seed(0)
    counts = [alg.replay_groups(8, gen) for _ in range(4000)]
    assert set(counts) == {0, 1}
    assert sum(counts) / len(counts) == pytest.approx(0.05 * 8, abs=0.03)
    assert PRESETS["op-grpo"].build().replay_groups(8, gen) == 0  # empty buffer: nothing to replay


def test_no_replay_draws_no_random_numbers():
    alg = PRESETS["op-grpo-no-replay"].build()
    for i in range(10):
        alg.buffer.offer(_entry(i))
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert alg.replay_entries(8, 0, gen) == [] and torch.equal(gen.get_state(), state)


def _entry(i):
    from opgrpo_bench.core.replay import ReplayEntry

    return ReplayEntry(prompt_id=i, prompt=f"p{i}", latents=torch.zeros(7, 1, 2, 2), log_probs=torch.zeros(6),
                       reward=float(i), score=float(i), birth=0)
