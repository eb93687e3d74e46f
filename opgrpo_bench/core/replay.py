"""OP-GRPO's high-reward replay buffer, ALGORITHMS.md section 3.1.

The buffer keeps, for at most ``capacity`` prompts, the best trajectory seen so far together with its
behaviour log-probs ``logp_off`` (needed later for the sequence-level importance weight). Entries compete
on a *score* that starts at the reward and decays every iteration, so that an old entry is eventually
replaced by a newer, slightly worse one: the stored trajectories stay close to the current policy.

An entry's age is the age of its *prefix*: ``birth`` is the iteration at which the stored prefix was sampled.
Replaying a prefix never renews it: when the mixed trajectory built on a stored prefix wins its group again,
nothing is offered (:meth:`ReplayBuffer.add_group_bests` with ``replayed``), so the entry keeps its birth
and its decayed score; only a trajectory with a new (fresh) prefix replaces it.

The buffer is pure bookkeeping: it never moves or copies tensors (store them detached and, for large
latents, on the CPU), and it holds no model state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from opgrpo_bench.core.advantages import group_index

__all__ = ["ReplayEntry", "ReplayBuffer"]


@dataclass
class ReplayEntry:
    """One stored trajectory (or trajectory prefix).

    Attributes:
        prompt_id: dataset key of the prompt; the buffer holds at most one entry per prompt id.
        prompt: the prompt text (for logging and re-encoding; never used as a key).
        latents: [K+1, *latent_shape] stored trajectory ``x_0 .. x_K``.
        log_probs: [K] behaviour log-probs ``logp_off`` of the K stored transitions.
        reward: reward of the trajectory's final sample.
        score: replacement score; starts at ``reward`` and decays every iteration.
        birth: iteration at which the stored prefix was sampled (its age is ``iteration - birth``). Replaying
            the prefix does not change it.
        extra: further named tensors, e.g. cached prompt conditioning.
    """

    prompt_id: int
    prompt: str
    latents: torch.Tensor
    log_probs: torch.Tensor
    reward: float
    score: float
    birth: int
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        """Plain-container form, loadable with ``torch.load(weights_only=True)``; tensors go to the CPU."""
        return {
            "prompt_id": int(self.prompt_id),
            "prompt": str(self.prompt),
            "latents": self.latents.detach().cpu(),
            "log_probs": self.log_probs.detach().cpu(),
            "reward": float(self.reward),
            "score": float(self.score),
            "birth": int(self.birth),
            "extra": {str(k): v.detach().cpu() for k, v in self.extra.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ReplayEntry":
        """Inverse of :meth:`to_state`; also reads older states, which named ``birth`` ``"step"``."""
        return cls(
            prompt_id=int(state["prompt_id"]),
            prompt=str(state["prompt"]),
            latents=state["latents"],
            log_probs=state["log_probs"],
            reward=float(state["reward"]),
            score=float(state["score"]),
            birth=int(state["birth"] if "birth" in state else state["step"]),
            extra=dict(state.get("extra", {})),
        )


class ReplayBuffer:
    """Bounded buffer of high-reward trajectories, one per prompt, with decaying replacement scores.

    Entries live in slots; a replacement reuses the slot of the entry it replaces, so iteration order
    (and hence :meth:`sample` under a seeded generator) is a deterministic function of the history of
    :meth:`offer` calls.

    Args:
        capacity: maximum number of entries (ALGORITHMS.md decision: 128).
        decay: ``lambda`` of the stepwise decay ``score <- score - lambda * std_R`` (decision: 0.05).
    """

    def __init__(self, capacity: int = 128, decay: float = 0.05) -> None:
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity}")
        if not (math.isfinite(decay) and decay >= 0):
            raise ValueError(f"decay must be a finite number >= 0, got {decay}")
        self.capacity = int(capacity)
        self.decay = float(decay)
        self._entries: list[ReplayEntry] = []
        self._slot_of: dict[int, int] = {}  # prompt_id -> index into _entries

    # -- container protocol -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ReplayEntry]:
        return iter(list(self._entries))

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self._slot_of

    def get(self, prompt_id: int) -> ReplayEntry | None:
        """The entry stored for ``prompt_id``, or None."""
        slot = self._slot_of.get(prompt_id)
        return None if slot is None else self._entries[slot]

    # -- insertion ----------------------------------------------------------------------------------

    def offer(self, entry: ReplayEntry) -> bool:
        """Offer a candidate; returns whether it was stored.

        Rule (ALGORITHMS.md 3.1): if an entry for the same prompt is stored, the candidate replaces it
        iff its score is strictly higher (it never competes with other prompts' entries); otherwise it
        is inserted while there is room; otherwise it replaces the lowest-score entry (the first such
        slot on ties) iff its score is strictly higher.
        """
        if not math.isfinite(entry.score):
            raise ValueError(f"replay entry for prompt {entry.prompt_id} has a non-finite score {entry.score}")
        prompt_id = entry.prompt_id
        slot = self._slot_of.get(prompt_id)
        if slot is not None:
            if entry.score > self._entries[slot].score:
                self._entries[slot] = entry
                return True
            return False
        if len(self._entries) < self.capacity:
            self._slot_of[prompt_id] = len(self._entries)
            self._entries.append(entry)
            return True
        lowest = min(range(len(self._entries)), key=lambda i: self._entries[i].score)
        if entry.score > self._entries[lowest].score:
            del self._slot_of[self._entries[lowest].prompt_id]
            self._entries[lowest] = entry
            self._slot_of[prompt_id] = lowest
            return True
        return False

    def add_group_bests(
        self,
        rewards: torch.Tensor,
        group_ids: torch.Tensor,
        make_entry: Callable[[int], ReplayEntry],
        replayed: torch.Tensor | None = None,
    ) -> int:
        """Offer each group's best sample; returns how many were stored.

        Only finite rewards take part: a NaN ("not applicable") reward is never offered and does not count
        towards its group. Per group, the candidate is the sample of highest finite reward; on ties a fresh
        sample wins over a replayed one, then the lowest batch index. Groups whose finite rewards are all
        equal (including groups with fewer than two finite rewards) are skipped. When the candidate is a
        replayed sample (it continues a stored prefix), nothing is offered for its group: the stored entry
        keeps its ``birth`` and its decayed score, since it is the same prefix and not a new trajectory.
        Groups are visited in increasing group id, which fixes the outcome when candidates compete for the
        last free slots.

        Args:
            rewards: [N] rewards; NaN (any non-finite value) means "not applicable".
            group_ids: [N] integer group ids.
            make_entry: builds the candidate for batch index i; called only for offered candidates, so the
                caller can defer slicing latents and log-probs until they are needed.
            replayed: [N] bool, True for samples that continue a stored prefix (None: all fresh).
        """
        if rewards.ndim != 1 or rewards.shape != group_ids.shape:
            raise ValueError(
                f"rewards and group_ids must both be [N]; got {tuple(rewards.shape)} and {tuple(group_ids.shape)}"
            )
        if replayed is not None and replayed.shape != rewards.shape:
            raise ValueError(f"replayed must be [N] like rewards; got {tuple(replayed.shape)}")
        r = rewards.detach().to("cpu", torch.float64)
        off = torch.zeros(r.shape, dtype=torch.bool) if replayed is None else replayed.detach().cpu().bool()
        index, num_groups = group_index(group_ids.detach().cpu())
        finite = torch.isfinite(r)
        stored = 0
        for g in range(num_groups):
            members = torch.nonzero((index == g) & finite).flatten()  # ascending batch indices
            if len(members) < 2:
                continue
            group_rewards = r[members]
            best_value = group_rewards.max()
            if bool(group_rewards.min() == best_value):
                continue
            tied = members[group_rewards == best_value]
            fresh_tied = tied[~off[tied]]
            if len(fresh_tied) == 0:  # a replayed prefix won: the entry keeps its birth and decayed score
                continue
            stored += int(self.offer(make_entry(int(fresh_tied[0]))))
        return stored

    # -- ageing and sampling ------------------------------------------------------------------------

    def decay_scores(self, reward_std: float) -> None:
        """Stepwise decay, once per iteration: ``score <- score - decay * reward_std`` for every entry.

        Args:
            reward_std: the running reward standard deviation (the decay's unit), finite and >= 0.
        """
        reward_std = float(reward_std)
        if not (math.isfinite(reward_std) and reward_std >= 0):
            raise ValueError(f"reward_std must be finite and >= 0, got {reward_std}")
        for entry in self._entries:
            entry.score -= self.decay * reward_std

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[ReplayEntry]:
        """Draw ``n`` entries uniformly at random.

        Without replacement when ``n <= len(self)`` (distinct prompts), with replacement otherwise. The
        result is a deterministic function of the buffer's slot order and the generator's state.

        Args:
            n: number of entries, >= 0.
            generator: a CPU ``torch.Generator`` (None: the global RNG).

        Returns:
            list of ``n`` stored entries (the objects themselves, not copies).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n == 0:
            return []
        size = len(self._entries)
        if size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        if n <= size:
            picks = torch.randperm(size, generator=generator)[:n]
        else:
            picks = torch.randint(size, (n,), generator=generator)
        return [self._entries[i] for i in picks.tolist()]

    # -- diagnostics --------------------------------------------------------------------------------

    def mean_age(self, iteration: int) -> float:
        """Mean prefix age ``iteration - entry.birth`` over entries, in iterations (NaN if empty)."""
        if not self._entries:
            return float("nan")
        return sum(iteration - e.birth for e in self._entries) / len(self._entries)

    def mean_score(self) -> float:
        """Mean replacement score (NaN if empty)."""
        if not self._entries:
            return float("nan")
        return sum(e.score for e in self._entries) / len(self._entries)

    # -- checkpointing ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain containers and CPU tensors only, so ``torch.load(..., weights_only=True)`` reads it."""
        return {
            "capacity": self.capacity,
            "decay": self.decay,
            "entries": [e.to_state() for e in self._entries],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore capacity, decay and entries (in slot order) from :meth:`state_dict`."""
        capacity = int(state["capacity"])
        entries = [ReplayEntry.from_state(s) for s in state["entries"]]
        if len(entries) > capacity:
            raise ValueError(f"state holds {len(entries)} entries for a capacity of {capacity}")
        slot_of = {e.prompt_id: i for i, e in enumerate(entries)}
        if len(slot_of) != len(entries):
            raise ValueError("state holds two entries for the same prompt_id")
        self.capacity = capacity
        self.decay = float(state["decay"])
        self._entries = entries
        self._slot_of = slot_of
