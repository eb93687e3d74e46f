"""OP-GRPO (arXiv 2604.04142): Flow-GRPO plus a high-reward replay buffer, truncation of the replayed
trajectory at ``t_off`` and a sequence-level importance weight (ALGORITHMS.md section 3).

How one iteration differs from Flow-GRPO:

1. ``replay_entries``: ``round(replay_proportion * groups)`` groups take their prompt from the buffer.
   Each such group has G-1 fresh samples and one *mixed* sample that follows the stored prefix
   ``x_0..x_{t_off}`` and is continued from ``x_{t_off}`` under the current weights (the trainer's sampler
   does both in the same batched pass, which also yields ``logp_old`` on the prefix without grad).
2. ``adjust``: the mixed sample's whole clipped objective is multiplied by
   ``w = exp(sum_{k < t_off} (logp_old[k] - logp_off[k]))`` (``correction="sequence"``), or the ratio on
   the prefix divides by ``logp_off`` (``"naive"``), or neither (``"none"``).
3. ``observe``: scores decay, then each group's best sample is offered to the buffer, unless it is the
   replayed (mixed) one: a stored prefix keeps its birth iteration and its decayed score while it is replayed.

Every **[decision]** of ALGORITHMS.md is a field below; the ablations are presets (registered in
:mod:`opgrpo_bench.algorithms`) that change exactly one field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from opgrpo_bench.algorithms.base import Diagnostic, ForcedRow, Rollout, RolloutPlan, TrainBatch
from opgrpo_bench.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig
from opgrpo_bench.core.losses import sequence_log_weight
from opgrpo_bench.core.replay import ReplayBuffer, ReplayEntry
from opgrpo_bench.validation import setting


@dataclass
class OPGRPOConfig(FlowGRPOConfig):
    """OP-GRPO's additions; defaults are ALGORITHMS.md's decisions."""

    replay_proportion: float = setting(0.125, ge=0, lt=1)
    """[decision] fraction of the batch's groups whose prompt comes from the buffer (paper: 5%, 25%)."""
    buffer_capacity: int = setting(128, ge=1)
    """[decision] maximum number of stored trajectories (one per prompt)."""
    buffer_decay: float = setting(0.05, ge=0)
    """[decision] per-iteration score decay, in units of the running reward std."""
    reward_std_momentum: float = setting(0.9, ge=0, le=1)
    """Momentum of the running reward std used as the decay's unit."""
    t_off: int = setting(6, ge=1)
    """[decision] replayed prefix length in transitions (6 of 10); t_off >= T replays whole trajectories."""
    suffix: Literal["sde", "ode"] = setting("sde")
    """How the mixed sample continues after t_off: SDE under theta_old (trained) or ODE (not trained)."""
    correction: Literal["sequence", "naive", "none"] = setting("sequence")
    """Off-policy correction: sequence-level weight, naive per-step p_theta/p_off on the prefix, or none."""
    logw_clamp: float | None = setting(None, gt=0)
    """Optional clamp of |log w| (experiments only; off by default)."""


class OPGRPO(FlowGRPO):
    """Off-policy GRPO with high-reward replay, truncation and sequence-level correction."""

    name = "op-grpo"
    config_cls = OPGRPOConfig
    diagnostics = FlowGRPO.diagnostics + (
        Diagnostic("op/logw_max", "log w range (max − min)", "mean",
                   "spread of the sequence-level log importance weights of the replayed samples",
                   field="logw_range", minus="op/logw_min"),
        Diagnostic("op/replay_revived_frac", "replay groups revived", "mean",
                   "fraction of replay groups whose fresh rewards were all equal, given spread by the replayed sample",
                   percent=True),
        Diagnostic("op/replay_adv_mass_share", "replay share of |A|", "mean",
                   "the replayed samples' share of the batch's |advantage| mass", percent=True),
        Diagnostic("op/abs_logw_p90", "|log w| p90", "median", "90th percentile of |log w| over replayed samples"),
        Diagnostic("op/w_ess_frac", "ESS of w", "mean",
                   "effective sample size of the sequence weights over the replayed samples, as a fraction"),
    )
    config: OPGRPOConfig

    def __init__(self, config: OPGRPOConfig | None = None):
        super().__init__(config)
        cfg = self.config
        if cfg.correction not in ("sequence", "naive", "none"):
            raise ValueError(f"correction must be 'sequence', 'naive' or 'none', not {cfg.correction!r}")
        if cfg.suffix not in ("sde", "ode"):
            raise ValueError(f"suffix must be 'sde' or 'ode', not {cfg.suffix!r}")
        if not 0.0 <= cfg.replay_proportion < 1.0:
            raise ValueError(f"replay_proportion must be in [0, 1), not {cfg.replay_proportion}")
        self.buffer = ReplayBuffer(cfg.buffer_capacity, cfg.buffer_decay)
        self.reward_std: float | None = None

    def replay_groups(self, num_groups: int, generator: torch.Generator) -> int:
        """Number of replay groups this iteration: ``replay_proportion * num_groups`` in expectation.

        The fractional part is a Bernoulli draw, so small batches still honour 5% or 12.5%; no random
        number is drawn when the product is an integer (``replay_proportion = 0`` replays nothing and
        consumes no randomness, which keeps ``op-grpo-no-replay`` identical to ``flow-grpo``).
        """
        expected = self.config.replay_proportion * num_groups
        n = math.floor(expected)
        if expected > n:
            n += int(torch.rand((), generator=generator).item() < expected - n)
        return min(n, len(self.buffer), max(num_groups - 1, 0))

    def replay_entries(self, num_groups: int, iteration: int, generator: torch.Generator) -> list[ReplayEntry]:
        """The stored entries replayed this iteration, one per replay group."""
        n = self.replay_groups(num_groups, generator)
        return self.buffer.sample(n, generator) if n else []

    def plan(self, num_groups: int, group_size: int, num_steps: int, iteration: int,
             generator: torch.Generator, draw_prompts: Callable[[int], list[int]]) -> RolloutPlan:
        """Fresh groups first, then the replay groups: their prompt is the entry's, their last member follows
        the stored prefix and continues by ``suffix``; a whole stored trajectory keeps its stored reward."""
        replay = self.replay_entries(num_groups, iteration, generator)
        fresh = draw_prompts(num_groups - len(replay))
        forced = {}
        for g, entry in enumerate(replay):
            whole = len(entry.log_probs) >= num_steps
            forced[(len(fresh) + g) * group_size + group_size - 1] = ForcedRow(
                entry.latents, entry.log_probs, then=self.config.suffix, reward=entry.reward if whole else None)
        return RolloutPlan(fresh + [e.prompt_id for e in replay], forced)

    def prefix_len(self, num_steps: int) -> int:
        return min(self.config.t_off, num_steps)

    def adjust(self, batch: TrainBatch) -> None:
        rollout, cfg = batch.rollout, self.config
        replayed = rollout.replayed
        if not bool(replayed.any()):
            return
        steps = torch.arange(rollout.num_steps)
        prefix = (steps[None, :] < rollout.forced_len[:, None]) & replayed[:, None]  # [N, T]
        if cfg.suffix == "ode":  # ODE suffix steps carry no log-prob: never trained
            batch.train_mask &= prefix | ~replayed[:, None]
        log_w = sequence_log_weight(rollout.log_probs, rollout.behaviour_log_probs, mask=prefix)
        if cfg.logw_clamp is not None:
            log_w = log_w.clamp(-cfg.logw_clamp, cfg.logw_clamp)
        if cfg.correction == "sequence":
            batch.weights = torch.where(replayed, torch.exp(log_w), batch.weights)
        elif cfg.correction == "naive":
            batch.old_log_probs = torch.where(prefix, rollout.behaviour_log_probs, batch.old_log_probs)
        lw = log_w[replayed]
        diff = (rollout.log_probs - rollout.behaviour_log_probs).masked_fill(~prefix, float("nan"))
        by_step = torch.nanmean(diff[replayed], dim=0)
        batch.metrics.update({
            "op/replayed_samples": int(replayed.sum()),
            "op/logw_min": lw.min().item(), "op/logw_median": lw.median().item(), "op/logw_max": lw.max().item(),
            "op/logratio_by_step": [None if math.isnan(v) else v for v in by_step.tolist()],
        })
        batch.metrics.update(self.mechanism(batch, lw))

    def mechanism(self, batch: TrainBatch, log_w: torch.Tensor) -> dict[str, Any]:
        """What replay did this iteration, over its replay groups (a group holding a replayed sample):
        the replayed prefix's stored reward, the mixed sample's new reward and advantage, the best fresh
        reward of its group, the fraction of replay groups the mixed sample *revived* (no spread among the
        fresh rewards, spread with it: without replay the group would carry no signal), the replayed
        samples' share of the batch's |advantage| mass (how much of the update is replay's), and the
        spread of the sequence weights (|log w| median, p90, max; effective sample size of ``w`` over the
        replayed samples, as a fraction of their number)."""
        ro = batch.rollout
        rewards, adv = ro.rewards.float().cpu(), batch.advantages.float().cpu()
        replayed, groups = ro.replayed.cpu(), ro.group_ids.cpu()
        stored, new, advantage, best_fresh, revived = [], [], [], [], []
        for i in torch.nonzero(replayed).flatten().tolist():
            entry = self.buffer.get(int(ro.prompt_ids[i]))
            if entry is not None:
                stored.append(float(entry.reward))
            fresh = rewards[(groups == groups[i]) & ~replayed]
            fresh = fresh[torch.isfinite(fresh)]
            new.append(float(rewards[i]))
            advantage.append(float(adv[i]))
            if len(fresh):
                best_fresh.append(float(fresh.max()))
                dead = bool((fresh == fresh[0]).all())
                revived.append(float(dead and math.isfinite(float(rewards[i])) and float(rewards[i]) != float(fresh[0])))
        mass = adv.abs()
        w = torch.exp(log_w.double())
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        return {
            "op/replay_stored_reward": mean(stored), "op/replay_new_reward": mean(new),
            "op/replay_advantage": mean(advantage), "op/replay_best_fresh_reward": mean(best_fresh),
            "op/replay_revived_frac": mean(revived),
            "op/replay_adv_mass_share": float(mass[replayed].sum() / mass.sum()) if float(mass.sum()) > 0 else None,
            "op/abs_logw_median": log_w.abs().median().item(),
            "op/abs_logw_p90": torch.quantile(log_w.abs().double(), 0.9).item(),
            "op/abs_logw_max": log_w.abs().max().item(),
            "op/w_ess_frac": float(w.sum() ** 2 / (w ** 2).sum() / len(w)),
        }

    def replay_ages(self, rollout: Rollout) -> list[int]:
        """Ages ``rollout.iteration - birth`` (in iterations) of the stored prefixes this rollout replays.

        Read from the buffer, which holds exactly the replayed entries between :meth:`replay_entries` and
        :meth:`observe` (at most one entry per prompt, and only ``observe`` changes the buffer).
        """
        ages = []
        for i in torch.nonzero(rollout.replayed.cpu()).flatten().tolist():
            entry = self.buffer.get(int(rollout.prompt_ids[i]))
            if entry is not None:
                ages.append(rollout.iteration - entry.birth)
        return ages

    def observe(self, rollout: Rollout) -> dict[str, Any]:
        """Decay every score, then offer each group's best sample unless it is replayed (ALGORITHMS.md 3.1).

        Only finite rewards count (a NaN reward is "not applicable"): the running reward std is updated from
        the finite rewards' population std, and kept as is when fewer than two are finite; NaN-reward samples
        are never offered. A group won by its replayed (mixed) sample offers nothing, so a stored prefix keeps
        its birth and its decayed score however often it is replayed.
        """
        cfg = self.config
        rewards = rollout.rewards.float()
        finite_rewards = rewards[torch.isfinite(rewards)]
        ages = self.replay_ages(rollout)  # before any entry is replaced
        if len(finite_rewards) > 1:
            batch_std = finite_rewards.std(unbiased=False).item()
            self.reward_std = batch_std if self.reward_std is None else \
                cfg.reward_std_momentum * self.reward_std + (1 - cfg.reward_std_momentum) * batch_std
        self.buffer.decay_scores(self.reward_std if self.reward_std is not None else 0.0)
        k = self.prefix_len(rollout.num_steps)

        def make_entry(i: int) -> ReplayEntry:  # only for fresh samples: their prefix is born now
            return ReplayEntry(
                prompt_id=int(rollout.prompt_ids[i]), prompt=rollout.prompts[i],
                latents=rollout.latents[i, : k + 1].clone(), log_probs=rollout.behaviour_log_probs[i, :k].clone(),
                reward=float(rewards[i]), score=float(rewards[i]), birth=rollout.iteration,
            )

        self.buffer.add_group_bests(rewards, rollout.group_ids, make_entry, replayed=rollout.replayed)
        return {
            "op/buffer_size": len(self.buffer),
            "op/buffer_mean_age": self.buffer.mean_age(rollout.iteration),
            "op/buffer_mean_score": self.buffer.mean_score(),
            "op/replay_age_mean": sum(ages) / len(ages) if ages else None,
            "op/replay_age_max": max(ages) if ages else None,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "reward_std": self.reward_std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.reward_std = state["reward_std"]
