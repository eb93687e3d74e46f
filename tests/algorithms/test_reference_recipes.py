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
    mask = torch.ones((n, steps), dtype=torch.bool)
    return TrainBatch(ro, torch.tensor([1.5, -0.5]), logp.clone(), torch.ones(n), mask)


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


# -- diffusion-nft-ref ------------------------------------------------------------------------------------

def test_nft_x0_loss_by_hand():
    from opgrpo_bench.algorithms.diffusion_nft import nft_x0_loss

    v, v_old = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 1.0]])
    x_t, t, x0, r, beta = torch.tensor([[0.2, 0.4]]), torch.tensor([0.5]), torch.tensor([[0.0, 1.0]]), 0.75, 0.5
    # v+ = [0.75, 1.5] -> x0+ = x_t - t v+ = [-0.175, -0.35], error [-0.175, -1.35], mean |error| 0.7625
    # v- = [0.25, 0.5] -> x0- = [0.075, 0.15], error [0.075, -0.85], mean |error| 0.4625
    pos = (0.175 ** 2 + 1.35 ** 2) / 2 / 0.7625
    neg = (0.075 ** 2 + 0.85 ** 2) / 2 / 0.4625
    want = 5.0 * (r * pos + (1 - r) * neg) / beta
    got = nft_x0_loss(v, v_old, x_t, t, x0, torch.tensor([r]), beta, scale=5.0)
    assert torch.allclose(got, torch.tensor([want]), rtol=1e-6)


def test_nft_x0_loss_weight_is_a_constant():
    """The adaptive weight carries no gradient: d loss / d v = -2 t beta err / (D w) per implicit policy."""
    from opgrpo_bench.algorithms.diffusion_nft import nft_x0_loss

    g = torch.Generator().manual_seed(0)
    v_old, x_t, x0 = (torch.randn((2, 3), generator=g) for _ in range(3))
    t, r, beta = torch.tensor([0.3, 0.8]), torch.tensor([1.0, 0.0]), 1.0
    v = (v_old + 0.1 * torch.randn((2, 3), generator=g)).requires_grad_(True)
    nft_x0_loss(v, v_old, x_t, t, x0, r, beta).sum().backward()
    err_pos = x_t - t[:, None] * v.detach() - x0  # beta = 1: v+ = v
    err_neg = x_t - t[:, None] * (2 * v_old - v.detach()) - x0
    w_pos, w_neg = err_pos.abs().mean(1, keepdim=True), err_neg.abs().mean(1, keepdim=True)
    t, r = t[:, None], r[:, None]
    want = r * (-2 * t * err_pos / (3 * w_pos)) + (1 - r) * (2 * t * err_neg / (3 * w_neg))
    assert torch.allclose(v.grad, want, atol=1e-6)


def _nft_batch(rewards: list[float], guidance: float = 4.5) -> TrainBatch:
    g = torch.Generator().manual_seed(0)
    n, steps, shape = len(rewards), 10, (1, 2, 2)
    logp = torch.zeros((n, steps))
    ro = Rollout(prompt_ids=torch.arange(n) // 2, group_ids=torch.arange(n) // 2, prompts=[""] * n,
                 metas=[{}] * n, latents=torch.randn((n, steps + 1, *shape), generator=g),
                 sigmas=torch.linspace(1, 0, steps + 1), log_probs=logp, behaviour_log_probs=logp.clone(),
                 forced_len=torch.zeros(n, dtype=torch.long), rewards=torch.tensor(rewards),
                 sampler=SamplerSettings(guidance=guidance))
    return ALGORITHMS.get("diffusion-nft-ref").build().prepare(ro)


def test_nft_ref_trains_equal_reward_groups_at_one_half():
    ref = ALGORITHMS.get("diffusion-nft-ref").build()
    batch = _nft_batch([1.0, 1.0, 0.0, 1.0])  # group 0 equal, group 1 not
    assert batch.train_mask.any(1).tolist() == [True, True, True, True]
    r = ref.optimality(batch, torch.arange(4))
    assert r[:2].tolist() == [0.5, 0.5] and r[2] < 0.5 < r[3]
    assert (r[3] - 0.5) * 2 * 5 == pytest.approx(float(batch.advantages[3].clamp(-5, 5)))  # clipped at 5, not 2
    common = ALGORITHMS.get("diffusion-nft").build().prepare(batch.rollout)
    assert common.train_mask.any(1).tolist() == [False, False, True, True]  # today's preset drops the group


def test_nft_ref_calls_the_schedules_timesteps_with_sampling_cfg_and_the_reference():
    ref = ALGORITHMS.get("diffusion-nft-ref").build()
    batch = _nft_batch([1.0, 0.0, 0.0, 1.0])
    calls = ref.calls(batch, [torch.arange(4)], 0)
    assert len(calls) == 9  # floor(0.99 * 10) points per sample
    assert all(c.guidance == 4.5 and c.extra == ("sampling", "reference") for c in calls)
    sigmas = batch.rollout.sigmas[:10]
    times = torch.stack([c.sigma for c in calls], 1)  # [4, 9]
    for row in times:  # 9 different schedule sigmas (of sigma_0 .. sigma_9) per sample
        assert all(bool((sigmas == t).any()) for t in row) and len(set(row.tolist())) == 9
    assert len({tuple(row.tolist()) for row in times}) > 1  # drawn per sample
    common = ALGORITHMS.get("diffusion-nft").build().calls(batch, [torch.arange(4)], 0)
    assert len(common) == 4 and all(c.guidance == 1.0 and c.extra == ("sampling",) for c in common)
    assert ALGORITHMS.get("diffusion-nft-ref").build(kl_beta=0.0).calls(batch, [torch.arange(4)], 0)[0].extra == (
        "sampling",)


def test_nft_ref_loss_adds_the_kl_to_the_reference():
    from opgrpo_bench.algorithms.base import Velocities
    from opgrpo_bench.algorithms.diffusion_nft import nft_x0_loss

    ref = ALGORITHMS.get("diffusion-nft-ref").build(kl_beta=0.5)
    batch = _nft_batch([1.0, 0.0, 0.0, 1.0])
    call = ref.calls(batch, [torch.arange(4)], 0)[0]
    g = torch.Generator().manual_seed(2)
    v, v_old, v_ref = (torch.randn(call.x.shape, generator=g) for _ in range(3))
    part = ref.loss(batch, call, Velocities(v, call.x, call.sigma, sampling=v_old, reference=v_ref))
    r = ref.optimality(batch, torch.arange(4))
    policy = nft_x0_loss(v, v_old, call.x, call.sigma, call.context["x0"], r, 1.0, scale=5.0)
    kl = ((v - v_ref) ** 2).flatten(1).mean(1)
    assert torch.allclose(part.loss, policy + 0.5 * kl)


def test_nft_ref_plans_deterministic_rollouts():
    plan = ALGORITHMS.get("diffusion-nft-ref").build().plan(2, 4, 10, 0, torch.Generator(), lambda n: [0] * n)
    assert plan.sde_steps is not None and not plan.sde_steps.any()
    assert ALGORITHMS.get("diffusion-nft-ref").build(ode_rollouts=False).plan(
        2, 4, 10, 0, torch.Generator(), lambda n: [0] * n).sde_steps is None


@pytest.mark.train
def test_a_diffusion_nft_ref_run_samples_deterministically_and_trains_nine_points(tmp_path):
    from opgrpo_bench.results import read_records
    from opgrpo_bench.runner import run_one

    r = resolve("digits-v1", "diffusion-nft-ref", 0, 4, FAST)
    trainer = Trainer(r.task, r.algorithm, r.train_config, tmp_path / "t", algorithm_name=r.algorithm_name)
    rollout, _ = trainer.rollout()
    assert not rollout.sde_steps.any()
    trainer.scorer.close()
    run_one("digits-v1", "diffusion-nft-ref", 0, out=tmp_path / "run", steps=2, sets=FAST)
    steps = [s for s in read_records(next((tmp_path / "run").glob("*/metrics.jsonl"))) if s["type"] == "step"]
    assert all(s["train/trained_pairs"] % 9 == 0 and s["grad_norm"] > 0 for s in steps)
    assert steps[0]["nft/velocity_drift"] == 0.0 and steps[0]["loss/kl"] == 0.0  # sampling = reference at first
    assert steps[1]["loss/kl"] > 0.0
