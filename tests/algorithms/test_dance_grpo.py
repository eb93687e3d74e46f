"""dance-grpo: the constant-noise SDE step (hand-computed), shared group noise, a random subset of trained steps."""

import math

import pytest
import torch

from opgrpo_bench.core.sde import constant_noise_sde_step_with_logprob
from opgrpo_bench.runner import resolve
from opgrpo_bench.trainer import Trainer

FAST = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4"]


def test_constant_noise_step_hand_computed():
    x, v, sigma, sigma_next, a, x_next = 1.0, 0.5, 0.8, 0.5, 0.3, 0.7
    dt = sigma_next - sigma
    mean = x * (1 + a**2 * dt / (2 * sigma)) + v * (1 + a**2 * (1 - sigma) / (2 * sigma)) * dt
    std = a * math.sqrt(-dt)
    logp = -((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    t = lambda value: torch.tensor([[value]])  # noqa: E731
    _, got_logp, got_mean, got_std = constant_noise_sde_step_with_logprob(
        t(v), torch.tensor([sigma]), torch.tensor([sigma_next]), t(x), a, prev_sample=t(x_next))
    assert math.isclose(float(got_mean), mean, rel_tol=1e-6) and math.isclose(float(got_logp), logp, rel_tol=1e-5)
    assert math.isclose(float(got_std), a, rel_tol=1e-7)  # s = eta whatever sigma


@pytest.mark.train
def test_groups_share_their_initial_noise_and_a_random_subset_of_steps_is_trained(tmp_path):
    r = resolve("digits-v1", "dance-grpo", 0, 4, FAST)
    trainer = Trainer(r.task, r.algorithm, r.train_config, tmp_path, algorithm_name=r.algorithm_name)
    # the algorithm's eta, not the trainer's 0.7, and its constant-noise step
    assert trainer.sampler.noise_level == 0.3 and trainer.sampler.transition == "sde-constant"
    rollout, _ = trainer.rollout()
    x0 = rollout.latents[:, 0]
    for g in range(2):
        rows = x0[g * 4:(g + 1) * 4]
        assert all(torch.equal(rows[0], rows[j]) for j in range(4))
    assert not torch.equal(x0[0], x0[4])  # groups differ
    assert not torch.equal(rollout.latents[0, -1], rollout.latents[1, -1])  # the SDE noise does
    batch = trainer.algorithm.prepare(rollout)
    chosen = trainer.algorithm.trained_steps(10)  # [N, T]: each sample's own subset
    assert chosen.shape == (8, 10) and all(int(row.sum()) == 5 for row in chosen)  # int(0.6 * 9)
    assert not chosen[:, -1].any()  # the last transition (to sigma = 0) is never trained
    assert len({tuple(row.tolist()) for row in chosen}) > 1  # drawn per sample, not per iteration
    assert torch.equal(batch.train_mask, chosen & batch.train_mask.any(1)[:, None])
    trainer.scorer.close()
