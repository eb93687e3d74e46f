"""The ``*-ref`` presets (reference recipes): each new option checked for its effect by hand, and the
presets of today's common footing left as they were."""

import dataclasses

import pytest
import torch

from opgrpo_bench.algorithms.base import Rollout, SamplerSettings, TrainBatch
from opgrpo_bench.registry import ALGORITHMS
from opgrpo_bench.runner import resolve
from opgrpo_bench.trainer import Trainer

FAST = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4"]


def config(name: str, **changes) -> dict:
    return dataclasses.asdict(ALGORITHMS.get(name).build(**changes).config)


def test_flow_grpo_ref_is_flow_grpos_sd35_defaults():
    assert config("flow-grpo-ref") == config("flow-grpo")


def test_the_common_footing_presets_keep_their_configuration():
    """The recipes' options live in their own config classes: today's presets record (and hash) the same
    fields as before."""
    assert "shared_noise" not in config("mixgrpo") and "inv_dt_weight" not in config("grpo-guard")
    assert "sde_noise_level" not in config("flow-grpo-fast") and "sde_noise_level" not in config("flow-grpo-cps")


def test_fast_and_cps_recipes_sample_with_their_own_noise_level_clip_and_no_kl():
    defaults = SamplerSettings(noise_level=0.7)
    fast = ALGORITHMS.get("flow-grpo-fast-ref").build()
    assert fast.sampler_settings(defaults) == SamplerSettings(noise_level=0.8)
    assert (fast.config.clip_range, fast.config.beta, fast.config.window_size) == (1e-5, 0.0, 2)
    assert ALGORITHMS.get("flow-grpo-fast-ref").build(sde_noise_level=0.5).sampler_settings(defaults).noise_level == 0.5
    cps = ALGORITHMS.get("flow-grpo-cps-ref").build()
    assert cps.sampler_settings(defaults) == SamplerSettings(transition="cps", noise_level=0.8)
    assert (cps.config.clip_range, cps.config.beta, cps.config.global_std) == (1e-5, 0.0, True)
    with pytest.raises(ValueError, match="beta"):
        ALGORITHMS.get("flow-grpo-cps-ref").build(beta=0.04)


def test_cps_recipe_draws_a_three_step_window_in_the_first_half():
    algo = ALGORITHMS.get("flow-grpo-cps-ref").build()
    gen = torch.Generator().manual_seed(0)
    starts = set()
    for it in range(200):
        idx = algo.window(10, it, gen).nonzero().flatten().tolist()
        assert idx == list(range(idx[0], idx[0] + 3))
        starts.add(idx[0])
    assert starts == {0, 1, 2}  # sde_window_range (0, 10 // 2): the window ends by transition 5


def test_mixgrpo_ref_plans_shared_noise_on_mixgrpos_prompts_and_window():
    base, ref = ALGORITHMS.get("mixgrpo").build(), ALGORITHMS.get("mixgrpo-ref").build()
    assert (ref.config.global_std, ref.config.beta) == (False, 0.0)
    plans = []
    for algo in (base, ref):
        gen = torch.Generator().manual_seed(3)
        draw = lambda n, gen=gen: torch.randint(100, (n,), generator=gen).tolist()  # noqa: E731
        plans.append(algo.plan(2, 4, 10, 25, gen, draw))
    assert plans[0].prompt_ids == plans[1].prompt_ids and torch.equal(plans[0].sde_steps, plans[1].sde_steps)
    assert not plans[0].shared_noise and plans[1].shared_noise
    assert not ALGORITHMS.get("mixgrpo-ref").build(shared_noise=False).plan(
        2, 4, 10, 0, torch.Generator(), lambda n: [0] * n).shared_noise


def _guard_batch(steps: int = 3) -> TrainBatch:
    g = torch.Generator().manual_seed(0)
    n, shape = 2, (1, 2, 2)
    logp = torch.randn((n, steps), generator=g)
    ro = Rollout(prompt_ids=torch.zeros(n, dtype=torch.long), group_ids=torch.zeros(n, dtype=torch.long),
                 prompts=["", ""], metas=[{}, {}], latents=torch.randn((n, steps + 1, *shape), generator=g),
                 sigmas=torch.linspace(1, 0, steps + 1), log_probs=logp, behaviour_log_probs=logp.clone(),
                 forced_len=torch.zeros(n, dtype=torch.long), rewards=torch.tensor([0.0, 1.0]),
                 means=torch.randn((n, steps, *shape), generator=g))
    return TrainBatch(ro, torch.tensor([1.5, -0.5]), logp.clone(), torch.ones(n), torch.ones((n, steps), dtype=torch.bool))


def test_grpo_guard_ref_weights_each_pairs_policy_loss_by_one_over_dt():
    batch = _guard_batch()
    g = torch.Generator().manual_seed(1)
    rows, step = torch.tensor([0, 1]), 1
    log_prob = batch.old_log_probs[rows, step] + 1e-7 * torch.randn(2, generator=g)
    mean = batch.rollout.means[rows, step] + 1e-4 * torch.randn((2, 1, 2, 2), generator=g)
    std, dt = torch.full((2, 1, 2, 2), 0.5), torch.full((2,), -0.25)
    guard = ALGORITHMS.get("grpo-guard").build(clip_range=2e-6)
    ref = ALGORITHMS.get("grpo-guard-ref").build()
    assert ref.config.clip_range == 2e-6 and ref.config.inv_dt_weight
    pg, ratio, clipped, _ = guard.policy_loss(batch, rows, step, log_prob, mean, std, dt)
    pg_ref, ratio_ref, clipped_ref, _ = ref.policy_loss(batch, rows, step, log_prob, mean, std, dt)
    assert torch.equal(ratio, ratio_ref) and torch.equal(clipped, clipped_ref)  # the ratio is GRPO-Guard's
    assert torch.allclose(pg_ref, 4.0 * pg) and pg.abs().min() > 0  # 1 / |dt| = 4
    off = ALGORITHMS.get("grpo-guard-ref").build(inv_dt_weight=False)
    assert torch.equal(off.policy_loss(batch, rows, step, log_prob, mean, std, dt)[0], pg)


@pytest.mark.train
def test_mixgrpo_ref_groups_share_their_initial_noise(tmp_path):
    r = resolve("digits-v1", "mixgrpo-ref", 0, 4, FAST)
    trainer = Trainer(r.task, r.algorithm, r.train_config, tmp_path, algorithm_name=r.algorithm_name)
    rollout, _ = trainer.rollout()
    x0 = rollout.latents[:, 0]
    for g in range(2):
        assert all(torch.equal(x0[4 * g], x0[4 * g + j]) for j in range(4))
    assert not torch.equal(x0[0], x0[4])  # groups differ
    assert not torch.equal(rollout.latents[0, -1], rollout.latents[1, -1])  # the window's SDE noise differs
    trainer.scorer.close()


@pytest.mark.train
def test_cps_ref_samples_cps_in_its_window_at_noise_level_0_8(tmp_path):
    r = resolve("digits-v1", "flow-grpo-cps-ref", 0, 4, FAST)
    trainer = Trainer(r.task, r.algorithm, r.train_config, tmp_path, algorithm_name=r.algorithm_name)
    assert trainer.sampler.transition == "cps" and trainer.sampler.noise_level == 0.8
    rollout, _ = trainer.rollout()
    window = rollout.sde_steps.nonzero().flatten().tolist()
    assert len(window) == 3 and window[-1] < 5
    batch = trainer.algorithm.prepare(rollout)
    assert set(batch.train_mask.any(0).nonzero().flatten().tolist()) <= set(window)
    trainer.scorer.close()
