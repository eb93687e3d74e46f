"""The high-reward replay buffer (ALGORITHMS.md section 3.1), rule by rule."""

from __future__ import annotations

import io
import math

import pytest
import torch

from opgrpo_bench.core.replay import ReplayBuffer, ReplayEntry


def entry(prompt_id: int, score: float, birth: int = 0, reward: float | None = None) -> ReplayEntry:
    return ReplayEntry(
        prompt_id=prompt_id,
        prompt=f"prompt {prompt_id}",
        latents=torch.full((4, 2, 3), float(prompt_id)),
        log_probs=torch.full((3,), -float(prompt_id)),
        reward=score if reward is None else reward,
        score=score,
        birth=birth,
    )


def ids(buffer: ReplayBuffer) -> list[int]:
    return [e.prompt_id for e in buffer]


def test_insert_while_room() -> None:
    buffer = ReplayBuffer(capacity=3)
    assert buffer.offer(entry(1, 0.5))
    assert buffer.offer(entry(2, -10.0))  # any score is accepted while there is room
    assert len(buffer) == 2 and ids(buffer) == [1, 2]
    assert 1 in buffer and 3 not in buffer
    assert buffer.get(2).score == -10.0 and buffer.get(3) is None


def test_same_prompt_replaced_only_if_better() -> None:
    buffer = ReplayBuffer(capacity=3)
    buffer.offer(entry(1, 0.5))
    buffer.offer(entry(2, 0.7))
    assert not buffer.offer(entry(1, 0.4))
    assert not buffer.offer(entry(1, 0.5))  # ties keep the incumbent
    assert buffer.get(1).score == 0.5
    better = entry(1, 0.9)
    assert buffer.offer(better)
    assert buffer.get(1) is better
    assert ids(buffer) == [1, 2] and len(buffer) == 2  # replaced in place, never duplicated


def test_same_prompt_never_evicts_another_prompt() -> None:
    # a full buffer: a worse candidate for a stored prompt is refused even if it beats the lowest entry
    buffer = ReplayBuffer(capacity=2)
    buffer.offer(entry(1, 0.1))
    buffer.offer(entry(2, 0.8))
    assert not buffer.offer(entry(2, 0.5))
    assert ids(buffer) == [1, 2] and buffer.get(2).score == 0.8


def test_full_buffer_evicts_lowest_only_if_better() -> None:
    buffer = ReplayBuffer(capacity=3)
    for pid, score in [(1, 0.5), (2, 0.2), (3, 0.9)]:
        buffer.offer(entry(pid, score))
    assert not buffer.offer(entry(4, 0.1))
    assert not buffer.offer(entry(4, 0.2))  # equal to the lowest: not better
    assert ids(buffer) == [1, 2, 3]
    assert buffer.offer(entry(4, 0.3))
    assert ids(buffer) == [1, 4, 3]  # took the evicted entry's slot
    assert 2 not in buffer
    # prompt 2 may come back later, competing like any new prompt
    assert buffer.offer(entry(2, 0.4))
    assert ids(buffer) == [1, 2, 3] and buffer.get(2).score == 0.4  # evicted 4 (0.3), the lowest


def test_eviction_tie_takes_first_slot() -> None:
    buffer = ReplayBuffer(capacity=3)
    for pid, score in [(1, 0.5), (2, 0.2), (3, 0.2)]:
        buffer.offer(entry(pid, score))
    buffer.offer(entry(4, 0.3))
    assert ids(buffer) == [1, 4, 3]


def test_decay_scores_makes_old_entries_replaceable() -> None:
    buffer = ReplayBuffer(capacity=1, decay=0.05)
    buffer.offer(entry(1, score=1.0, reward=1.0))
    assert not buffer.offer(entry(2, 0.95))
    buffer.decay_scores(reward_std=2.0)  # 1.0 - 0.05 * 2 = 0.9
    assert buffer.get(1).score == pytest.approx(0.9)
    assert buffer.get(1).reward == 1.0  # the reward itself is untouched
    assert buffer.offer(entry(2, 0.95))
    assert ids(buffer) == [2]
    with pytest.raises(ValueError):
        buffer.decay_scores(float("nan"))


def test_add_group_bests() -> None:
    buffer = ReplayBuffer(capacity=10)
    # group 5: indices 0, 3, 6 (tie at 0.9: the first index, 3); group 1: indices 1, 4, 8 (tie at 0.7: 1);
    # group 8: all equal (skipped); group 2: single sample (all equal: skipped)
    rewards = torch.tensor([0.1, 0.7, 0.3, 0.9, 0.7, 0.3, 0.9, 0.4, 0.2])
    group_ids = torch.tensor([5, 1, 8, 5, 1, 8, 5, 2, 1])
    built: list[int] = []

    def make_entry(i: int) -> ReplayEntry:
        built.append(i)
        return entry(prompt_id=100 + int(group_ids[i]), score=float(rewards[i]), birth=3)

    stored = buffer.add_group_bests(rewards, group_ids, make_entry)
    assert stored == 2
    assert built == [1, 3]  # lazily, only the candidates, in increasing group id
    assert ids(buffer) == [101, 105]
    assert buffer.get(105).score == pytest.approx(0.9)
    # the same groups again with lower rewards: nothing replaces the stored bests
    assert buffer.add_group_bests(rewards - 0.5, group_ids, make_entry) == 0


def test_add_group_bests_never_offers_nan_rewards() -> None:
    # NaN = "not applicable": never a candidate and not counted in its group
    buffer = ReplayBuffer(capacity=10)
    rewards = torch.tensor([0.1, float("nan"), 0.3, 0.2, float("nan"), float("nan"), 0.5])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 2, 2])  # group 0 best 0.3 (index 2); groups 1 and 2: one finite
    built: list[int] = []

    def make_entry(i: int) -> ReplayEntry:
        built.append(i)
        return entry(prompt_id=int(group_ids[i]), score=float(rewards[i]))

    assert buffer.add_group_bests(rewards, group_ids, make_entry) == 1
    assert built == [2] and ids(buffer) == [0]
    assert buffer.add_group_bests(torch.full((4,), float("nan")), torch.tensor([0, 0, 1, 1]), make_entry) == 0


def test_replayed_winner_keeps_birth_and_decayed_score() -> None:
    # prompt 3's prefix was born at iteration 0; it is replayed (the mixed sample, index 3) and wins its group
    # at iterations 1..4: the entry keeps its birth, its score keeps decaying, and its age grows
    buffer = ReplayBuffer(capacity=4, decay=0.1)
    stored = entry(3, score=1.0, birth=0)
    buffer.offer(stored)
    group_ids = torch.zeros(4, dtype=torch.long)
    replayed = torch.tensor([False, False, False, True])
    for it in range(1, 5):
        buffer.decay_scores(reward_std=1.0)
        rewards = torch.tensor([0.2, 0.3, 0.1, 1.5])  # the mixed sample wins, far above the decayed score
        made: list[int] = []
        assert buffer.add_group_bests(rewards, group_ids, lambda i: made.append(i) or entry(3, 1.5, birth=it),
                                      replayed=replayed) == 0
        assert made == []  # nothing is even built
        assert buffer.get(3) is stored and stored.birth == 0
        assert stored.score == pytest.approx(1.0 - 0.1 * it)
        assert buffer.mean_age(it) == it
    # a fresh sample that beats the decayed score (0.6) replaces it and is born now
    rewards = torch.tensor([0.2, 0.7, 0.1, 0.65])
    assert buffer.add_group_bests(rewards, group_ids, lambda i: entry(3, float(rewards[i]), birth=5),
                                  replayed=replayed) == 1
    assert buffer.get(3).birth == 5 and buffer.get(3).score == pytest.approx(0.7) and buffer.mean_age(5) == 0
    # ties between a fresh and a replayed sample go to the fresh one, whatever the batch order
    tie = torch.tensor([0.9, 0.1, 0.1, 0.9])
    made = []
    buffer.add_group_bests(tie, group_ids, lambda i: made.append(i) or entry(3, 0.9, birth=6),
                           replayed=torch.tensor([True, False, False, False]))
    assert made == [3]


def test_sampling_without_and_with_replacement_is_deterministic() -> None:
    buffer = ReplayBuffer(capacity=8)
    for pid in range(6):
        buffer.offer(entry(pid, float(pid)))
    first = [e.prompt_id for e in buffer.sample(4, torch.Generator().manual_seed(0))]
    again = [e.prompt_id for e in buffer.sample(4, torch.Generator().manual_seed(0))]
    assert first == again
    assert len(set(first)) == 4  # without replacement
    everything = [e.prompt_id for e in buffer.sample(6, torch.Generator().manual_seed(1))]
    assert sorted(everything) == list(range(6))
    many = [e.prompt_id for e in buffer.sample(20, torch.Generator().manual_seed(2))]
    assert len(many) == 20 and set(many) <= set(range(6))
    assert len(set(many)) < 20  # with replacement
    assert many == [e.prompt_id for e in buffer.sample(20, torch.Generator().manual_seed(2))]
    assert buffer.sample(0) == []
    with pytest.raises(ValueError):
        ReplayBuffer().sample(1)


def test_sampling_is_uniform() -> None:
    buffer = ReplayBuffer(capacity=4)
    for pid in range(4):
        buffer.offer(entry(pid, float(pid) * 10))  # scores must not bias sampling
    g = torch.Generator().manual_seed(3)
    counts = torch.zeros(4)
    for _ in range(2000):
        for e in buffer.sample(1, g):
            counts[e.prompt_id] += 1
    # binomial(2000, 1/4): sd ~ 19.4; allow 5 sd
    assert ((counts - 500).abs() < 97).all(), counts


def test_mean_age_and_score() -> None:
    buffer = ReplayBuffer(capacity=4)
    assert math.isnan(buffer.mean_age(5)) and math.isnan(buffer.mean_score())
    buffer.offer(entry(1, 0.5, birth=2))
    buffer.offer(entry(2, 1.5, birth=6))
    assert buffer.mean_age(10) == pytest.approx(6.0)  # (8 + 4) / 2
    assert buffer.mean_score() == pytest.approx(1.0)


def test_state_dict_round_trip_through_torch_save() -> None:
    buffer = ReplayBuffer(capacity=3, decay=0.1)
    for pid, score in [(4, 0.5), (9, 0.2), (2, 0.9)]:
        e = entry(pid, score, birth=pid)
        e.extra["prompt_embeds"] = torch.randn(2, 5)
        buffer.offer(e)
    buffer.offer(entry(7, 0.3, birth=11))  # evicts 9: slot order [4, 7, 2]
    buffer.decay_scores(1.0)

    stream = io.BytesIO()
    torch.save(buffer.state_dict(), stream)
    stream.seek(0)
    restored = ReplayBuffer(capacity=1)
    restored.load_state_dict(torch.load(stream, weights_only=True))

    assert restored.capacity == 3 and restored.decay == 0.1
    assert ids(restored) == ids(buffer) == [4, 7, 2]
    for a, b in zip(buffer, restored):
        assert (a.prompt_id, a.prompt, a.reward, a.score, a.birth) == (b.prompt_id, b.prompt, b.reward, b.score, b.birth)
        assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)
        assert a.extra.keys() == b.extra.keys()
        assert all(torch.equal(a.extra[k], b.extra[k]) for k in a.extra)
    # the restored buffer behaves identically
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert [e.prompt_id for e in buffer.sample(2, g1)] == [e.prompt_id for e in restored.sample(2, g2)]
    assert restored.offer(entry(4, 5.0)) and ids(restored) == [4, 7, 2]


def test_older_states_with_step_load_as_birth() -> None:
    state = entry(1, 0.5, birth=7).to_state()
    assert state["birth"] == 7
    state["step"] = state.pop("birth")  # checkpoints written before the field was renamed
    assert ReplayEntry.from_state(state).birth == 7


def test_constructor_and_state_checks() -> None:
    with pytest.raises(ValueError):
        ReplayBuffer(capacity=0)
    with pytest.raises(ValueError):
        ReplayBuffer(decay=-1.0)
    with pytest.raises(ValueError):
        ReplayBuffer().offer(entry(1, float("inf")))
    too_many = {"capacity": 1, "decay": 0.05, "entries": [entry(1, 0.0).to_state(), entry(2, 0.0).to_state()]}
    with pytest.raises(ValueError):
        ReplayBuffer().load_state_dict(too_many)
