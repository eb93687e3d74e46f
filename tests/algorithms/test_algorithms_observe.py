"""OP-GRPO's buffer bookkeeping through ``observe``, and NaN ("not applicable") rewards through ``prepare``."""

import io
import math

import pytest
import torch

from opgrpo_bench.algorithms import PRESETS
from opgrpo_bench.algorithms.flow_grpo import Rollout

T = 10
G = 4
NAN = float("nan")


def make_rollout(rewards, prompt_ids=(7, 5), iteration=0, replay=None, seed=0):
    """len(prompt_ids) groups of G samples; with ``replay`` (a ReplayEntry), the last sample of the last group
    follows its stored prefix (as the trainer builds it)."""
    g = torch.Generator().manual_seed(seed + 100 * iteration)
    n = G * len(prompt_ids)
    latents = torch.randn(n, T + 1, 1, 2, 2, generator=g)
    log_probs = torch.randn(n, T, generator=g) * 0.01
    behaviour = log_probs.clone()
    forced_len = torch.zeros(n, dtype=torch.long)
    if replay is not None:
        k = len(replay.log_probs)
        latents[n - 1, : k + 1] = replay.latents
        behaviour[n - 1, :k] = replay.log_probs
        forced_len[n - 1] = k
    return Rollout(
        prompt_ids=torch.tensor(prompt_ids).repeat_interleave(G), group_ids=torch.arange(len(prompt_ids)).repeat_interleave(G),
        prompts=[f"p{p}" for p in prompt_ids for _ in range(G)], metas=[{}] * n, latents=latents,
        sigmas=torch.linspace(1, 0, T + 1), log_probs=log_probs, behaviour_log_probs=behaviour,
        forced_len=forced_len, rewards=torch.tensor(rewards, dtype=torch.float32), iteration=iteration)


def step(alg, rollout):
    """One iteration in the trainer's order: prepare, then observe (before the optimizer steps)."""
    batch = alg.prepare(rollout)
    return batch, alg.observe(rollout)


def test_replayed_prefix_that_keeps_winning_ages_and_keeps_decaying():
    alg = PRESETS["op-grpo"].build(replay_proportion=0.5)  # 2 groups: exactly one replay group, no RNG
    gen = torch.Generator().manual_seed(0)
    # iteration 0: prompt 5's best (0.9, index 7) enters the buffer, born at 0; prompt 7's group is all equal
    ro = make_rollout([0.5] * 4 + [0.1, 0.2, 0.3, 0.9])
    _, obs = step(alg, ro)
    entry = alg.buffer.get(5)
    assert len(alg.buffer) == 1 and entry.birth == 0 and entry.score == pytest.approx(0.9)
    assert torch.equal(entry.latents, ro.latents[7, :7])
    assert obs["op/replay_age_mean"] is None and obs["op/replay_age_max"] is None  # nothing replayed
    score = entry.score
    for it in range(1, 6):
        (replayed,) = alg.replay_entries(2, it, gen)
        assert replayed is entry
        # the mixed sample (index 7, same prefix) wins its group again, far above the stored score
        ro = make_rollout([0.5] * 4 + [0.1, 0.2, 0.3, 1.0], iteration=it, replay=replayed)
        assert ro.replayed.tolist() == [False] * 7 + [True]
        _, obs = step(alg, ro)
        score -= alg.config.buffer_decay * alg.reward_std
        assert alg.buffer.get(5) is entry and len(alg.buffer) == 1
        assert entry.birth == 0  # the prefix's age is not reset ...
        assert entry.score == pytest.approx(score, rel=1e-6) and entry.score < 0.9  # ... nor its decay undone
        assert entry.reward == pytest.approx(0.9)
        assert obs["op/replay_age_mean"] == it and obs["op/replay_age_max"] == it
        assert obs["op/buffer_mean_age"] == it
    # a fresh sample (index 6) that beats the decayed score replaces the entry with a newborn prefix
    ro = make_rollout([0.5] * 4 + [0.1, 0.2, 0.89, 0.3], iteration=6, replay=alg.replay_entries(2, 6, gen)[0])
    _, obs = step(alg, ro)
    new = alg.buffer.get(5)
    assert new is not entry and new.birth == 6 and new.score == pytest.approx(0.89)
    assert torch.equal(new.latents, ro.latents[6, :7])
    assert obs["op/replay_age_mean"] == 6 and obs["op/buffer_mean_age"] == 0  # replayed at age 6, then replaced


def test_buffer_state_with_births_survives_torch_save():
    alg = PRESETS["op-grpo"].build(replay_proportion=0.5)
    step(alg, make_rollout([0.5] * 4 + [0.1, 0.2, 0.3, 0.9], iteration=3))
    stream = io.BytesIO()
    torch.save(alg.state_dict(), stream)
    stream.seek(0)
    restored = PRESETS["op-grpo"].build(replay_proportion=0.5)
    restored.load_state_dict(torch.load(stream, weights_only=True))
    assert restored.buffer.get(5).birth == 3 and restored.reward_std == alg.reward_std


def test_nan_rewards_are_masked_out_of_the_flow_grpo_batch():
    # group 0: {0.1, NaN, 0.3, 0.9}; group 1: {NaN, NaN, NaN, 0.5} (one finite reward: no signal)
    rewards = [0.1, NAN, 0.3, 0.9, NAN, NAN, NAN, 0.5]
    ro = make_rollout(rewards)
    batch = PRESETS["flow-grpo"].build().prepare(ro)
    finite = torch.tensor([0.1, 0.3, 0.9, 0.5])
    std = finite.double().std(correction=0).item()
    mean0 = (0.1 + 0.3 + 0.9) / 3
    expected = [(0.1 - mean0) / (std + 1e-4), 0.0, (0.3 - mean0) / (std + 1e-4), (0.9 - mean0) / (std + 1e-4),
                0.0, 0.0, 0.0, 0.0]
    assert batch.advantages.tolist() == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(batch.advantages).all()
    assert batch.train_mask.any(dim=1).tolist() == [True, False, True, True, False, False, False, False]
    assert batch.metrics["train/nan_reward_frac"] == 0.5
    assert batch.metrics["train/zero_std_group_frac"] == 0.5
    # without the zero-std filter, NaN samples and the one-finite group are still not trained
    unfiltered = PRESETS["flow-grpo"].build(filter_zero_std=False).prepare(ro)
    assert unfiltered.train_mask.any(dim=1).tolist() == [True, False, True, True, False, False, False, False]
    # op-grpo-no-replay builds the same batch
    same = PRESETS["op-grpo-no-replay"].build().prepare(ro)
    assert torch.equal(same.advantages, batch.advantages) and torch.equal(same.train_mask, batch.train_mask)
    assert same.metrics == batch.metrics


def test_nan_rewards_stay_out_of_the_buffer_and_the_decay():
    alg = PRESETS["op-grpo"].build()
    # group 0 (prompt 7): its NaN sample would be "best" if NaN counted; group 1 (prompt 5): best 0.9
    ro = make_rollout([0.2, NAN, 0.4, 0.3, 0.1, 0.9, NAN, 0.3])
    _, obs = step(alg, ro)
    finite = torch.tensor([0.2, 0.4, 0.3, 0.1, 0.9, 0.3])
    assert alg.reward_std == pytest.approx(finite.std(unbiased=False).item())
    assert math.isfinite(alg.reward_std)
    assert alg.buffer.get(7).reward == pytest.approx(0.4) and alg.buffer.get(5).reward == pytest.approx(0.9)
    assert torch.equal(alg.buffer.get(7).latents, ro.latents[2, :7])
    assert obs["op/buffer_size"] == 2


def test_all_nan_rollout_yields_no_signal_and_does_not_crash():
    alg = PRESETS["op-grpo"].build(replay_proportion=0.5)
    step(alg, make_rollout([0.5] * 4 + [0.1, 0.2, 0.3, 0.9]))
    std, score = alg.reward_std, alg.buffer.get(5).score
    (entry,) = alg.replay_entries(2, 1, torch.Generator().manual_seed(0))
    ro = make_rollout([NAN] * 8, iteration=1, replay=entry)
    batch, obs = step(alg, ro)
    assert not batch.train_mask.any() and torch.equal(batch.advantages, torch.zeros(8))
    assert batch.metrics["train/nan_reward_frac"] == 1.0 and batch.metrics["train/zero_std_group_frac"] == 1.0
    assert alg.reward_std == std  # no finite rewards: the running std is kept
    assert alg.buffer.get(5) is entry and entry.score == pytest.approx(score - 0.05 * std)  # the decay still runs
    assert obs["op/buffer_size"] == 1 and obs["op/replay_age_max"] == 1
    # a fresh algorithm with nothing stored and no running std yet
    fresh = PRESETS["op-grpo"].build()
    _, obs = step(fresh, make_rollout([NAN] * 8))
    assert fresh.reward_std is None and len(fresh.buffer) == 0 and obs["op/replay_age_mean"] is None


def test_op_grpo_mechanism_diagnostics_by_hand():
    """Group 0's fresh rewards are all 0 and its replayed sample scores 1: revived. Group 1's fresh rewards
    already differ: not revived. The replayed samples' |advantage| share and the weights' ESS by hand."""
    import math

    import torch

    from opgrpo_bench.algorithms.base import Rollout, TrainBatch
    from opgrpo_bench.registry import ALGORITHMS

    algo = ALGORITHMS.get("op-grpo").build()
    n, T = 8, 2
    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    forced_len = torch.tensor([0, 0, 0, 1, 0, 0, 0, 1])  # rows 3 and 7 replay a stored prefix
    ro = Rollout(torch.tensor([5, 5, 5, 5, 6, 6, 6, 6]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), ["p"] * n,
                 [{}] * n, torch.zeros(n, T + 1, 1), torch.tensor([1.0, 0.5, 0.0]), torch.zeros(n, T),
                 torch.zeros(n, T), forced_len, rewards)
    adv = torch.tensor([-1.0, -1.0, -1.0, 3.0, -0.5, 0.5, -0.5, 0.5])
    batch = TrainBatch(ro, adv, torch.zeros(n, T), torch.ones(n), torch.ones(n, T, dtype=torch.bool))
    log_w = torch.tensor([0.1, -0.3])
    got = algo.mechanism(batch, log_w)
    assert got["op/replay_revived_frac"] == 0.5
    assert got["op/replay_new_reward"] == 1.0 and got["op/replay_advantage"] == 1.75
    assert got["op/replay_best_fresh_reward"] == 0.5  # mean of group 0's 0 and group 1's 1
    assert got["op/replay_adv_mass_share"] == (3.0 + 0.5) / 8.0
    w = [math.exp(0.1), math.exp(-0.3)]
    assert math.isclose(got["op/w_ess_frac"], sum(w) ** 2 / sum(x * x for x in w) / 2, rel_tol=1e-6)
    assert math.isclose(got["op/abs_logw_max"], 0.3, rel_tol=1e-6) and got["op/replay_stored_reward"] is None
