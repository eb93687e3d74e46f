"""The algorithm interface: what the one trainer asks of every RL algorithm.

Once per iteration the trainer calls, in this order:

1. :meth:`Algorithm.plan`: what to sample. The prompt of each group (fresh ones come from the task
   through ``draw_prompts``), which rows follow a stored trajectory and how they continue after it, which
   rows keep a stored reward instead of being scored, and which denoising steps use the SDE (the others
   use the ODE; windowed samplers such as MixGRPO need that).
2. The trainer samples and scores the plan (block by block, see ``trainer.py``) into a :class:`Rollout`.
3. :meth:`Algorithm.prepare`: the scored rollout becomes a :class:`TrainBatch` (advantages, the
   log-probs each ratio divides by, per-sample weights, which (sample, step) pairs train).
4. :meth:`Algorithm.observe`: the algorithm's own bookkeeping (e.g. a replay buffer); it must not depend on
   the weights, because it runs before the updates.
5. For every trained (block, step) call: :meth:`Algorithm.loss` turns the new log-probs, means and the
   reference means into per-pair losses; after each optimizer step :meth:`Algorithm.summarize` turns
   them into the step record's metrics.

:meth:`Algorithm.state_dict` / :meth:`Algorithm.load_state_dict` hold everything that changes during a
run (nested dicts/lists of numbers, strings and tensors: checkpoints store them without pickling).
The trainer knows nothing else of an algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

__all__ = ["Algorithm", "Diagnostic", "ForcedRow", "PairLoss", "Rollout", "RolloutPlan", "TrainBatch"]


@dataclass(frozen=True)
class Diagnostic:
    """A key an algorithm writes into its step records, and how the leaderboard summarises it.

    The leaderboard knows no algorithm: it reads the ``diagnostics`` of the algorithms it ranks and, per
    run, reduces the values of ``key`` over the run's step records by ``summary`` (nulls and non-finite
    values skipped), then takes the median over the runs of a row. Every row gets a column for each
    diagnostic any ranked algorithm declares (one column per ``field``; empty where a run logs nothing).

    Attributes:
        key: the step-record key, e.g. ``"clipfrac/off_policy"``.
        label: the column title in the report's diagnostics table.
        summary: ``"mean"`` or ``"median"`` over the whole run, ``"late_median"`` over its second half
            (step records past half its last step: quantities that need a warm-up, e.g. a replay buffer's
            age), ``"max"``.
        doc: one sentence for the report's definitions.
        field: the row field (``leaderboard.json``) that holds the summary; default ``key`` with ``/``
            replaced by ``_``.
        minus: when set, the per-record value is ``key``'s minus this key's (both finite), e.g. the
            spread ``op/logw_max - op/logw_min``.
        percent: shown as a percentage (a fraction) rather than a plain number.
    """

    key: str
    label: str
    summary: Literal["mean", "median", "late_median", "max"] = "mean"
    doc: str = ""
    field: str = ""
    minus: str | None = None
    percent: bool = False

    @property
    def name(self) -> str:
        """The row field of this diagnostic (``field``, or ``key`` with ``/`` as ``_``)."""
        return self.field or self.key.replace("/", "_")


@dataclass
class ForcedRow:
    """A row of the rollout that follows a stored trajectory for its first ``K`` transitions.

    Attributes:
        latents: [K+1, *latent_shape] the stored ``x_0 .. x_K``.
        log_probs: [K] the log-probs of those transitions under the policy that generated them (the
            rollout's ``behaviour_log_probs`` on the prefix).
        then: how the row continues from ``x_K``: ``"sde"`` (sampled and scored like a fresh row) or
            ``"ode"`` (deterministic; its log-probs are meaningless and must not be trained).
        reward: keep this stored reward instead of scoring the row (for a row that follows a whole stored
            trajectory); None = score it.
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    then: Literal["sde", "ode"] = "sde"
    reward: float | None = None


@dataclass
class RolloutPlan:
    """What to sample this iteration (rows are group-major: row ``g * G + j`` is member ``j`` of group ``g``).

    Attributes:
        prompt_ids: [P] the prompt (index into the task's training prompts) of each group.
        forced: row index -> :class:`ForcedRow` for rows that follow a stored trajectory.
        sde_steps: [T] bool, which transitions use the SDE (the rest the ODE, the same for every row);
            None = all of them.
        shared_noise: the group shares one initial noise (see the field).
    """

    prompt_ids: list[int]
    forced: dict[int, ForcedRow] = field(default_factory=dict)
    sde_steps: torch.Tensor | None = None
    shared_noise: bool = False
    """Every member of a group starts from the same initial noise (DanceGRPO), that of its first row."""


@dataclass
class Rollout:
    """One iteration's scored samples (N = groups x group size), in group order.

    Attributes:
        prompt_ids: [N] index into the task's training prompts.
        group_ids: [N] explicit group membership.
        prompts / metas: per-sample prompt text and reward metadata.
        latents: [N, T+1, *shape] trajectories; ``sigmas`` [T+1] their schedule.
        log_probs: [N, T] log-probs of every transition under the sampling weights (theta_old).
        behaviour_log_probs: [N, T] log-probs under the policy that generated each transition
            (equal to ``log_probs`` except on forced prefixes, where they are the stored ones).
        forced_len: [N] transitions taken from a stored trajectory (0 = a fresh sample).
        rewards: [N] scores (float32; NaN = "not applicable").
        iteration: the iteration that produced it.
        cond / cond_index: prompt conditioning, one row per group, and each sample's row [N].
        sde_steps: [T] bool, the plan's SDE transitions.
        means: [N, T, *shape] the sampler's transition means (only for an algorithm with
            ``needs_behaviour_means``; else None).
    """

    prompt_ids: torch.Tensor
    group_ids: torch.Tensor
    prompts: list[str]
    metas: list[dict[str, Any]]
    latents: torch.Tensor
    sigmas: torch.Tensor
    log_probs: torch.Tensor
    behaviour_log_probs: torch.Tensor
    forced_len: torch.Tensor
    rewards: torch.Tensor
    iteration: int = 0
    cond: dict[str, torch.Tensor] = field(default_factory=dict)
    cond_index: torch.Tensor | None = None
    sde_steps: torch.Tensor | None = None
    means: torch.Tensor | None = None

    @property
    def replayed(self) -> torch.Tensor:
        """[N] bool: the sample continues a stored (off-policy) prefix."""
        return self.forced_len > 0

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]


@dataclass
class TrainBatch:
    """What the trainer optimises: for each sample i and step k with ``train_mask[i, k]``, the algorithm's
    :meth:`Algorithm.loss` of that pair (Flow-GRPO: ``weights[i] * clipped(exp(logp_theta -
    old_log_probs[i, k]), advantages[i])`` + beta * KL)."""

    rollout: Rollout
    advantages: torch.Tensor  # [N]
    old_log_probs: torch.Tensor  # [N, T]
    weights: torch.Tensor  # [N] float32, constant
    train_mask: torch.Tensor  # [N, T] bool
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class PairLoss:
    """Per-pair losses of one (block, step) call, and named per-pair statistics for :meth:`summarize`.

    ``loss`` [n] is summed (the trainer divides by the optimizer step's pair count); ``stats`` values are
    detached [n] tensors; ``rows`` [n] the rollout rows of the pairs.
    """

    loss: torch.Tensor
    rows: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Algorithm:
    """Base class of the algorithms; subclasses set ``name`` and ``config_cls`` and override the hooks."""

    name = "algorithm"
    config_cls: type = object
    diagnostics: tuple[Diagnostic, ...] = ()
    """The step-record keys the leaderboard summarises per row (:class:`Diagnostic`)."""
    objective = "ratio"
    """``"ratio"``: per (sample, denoising step) losses from new log-probs (:meth:`loss`; the GRPO family).
    ``"forward"``: losses at points of the forward (noising) process of the final samples
    (``forward_points``, ``forward_time``, ``forward_loss``; DiffusionNFT), no log-probability at all."""
    needs_sampling_weights = False
    """Whether the trainer keeps a copy of the weights the rollout was sampled with (for
    ``forward_loss``'s ``v_old``)."""
    needs_behaviour_means = False
    """Whether the rollout must keep the sampler's transition means (``Rollout.means``; GRPO-Guard)."""

    def noise_level(self, trainer_noise_level: float) -> float:
        """The noise level of the stochastic step: the trainer's ``noise_level`` setting by default (an
        algorithm whose step has its own parameter, e.g. DanceGRPO's constant eta, returns that)."""
        return trainer_noise_level

    transition = "sde"
    """The stochastic step the rollouts use and the ratios are computed with: ``"sde"`` (Flow-GRPO) or
    ``"cps"`` (coefficient-preserving); :func:`opgrpo_bench.core.sde.transition_function`."""

    def __init__(self, config: Any | None = None):
        self.config = config or self.config_cls()

    # -- the hooks, in the order the trainer calls them ------------------------------------------
    def plan(self, num_groups: int, group_size: int, num_steps: int, iteration: int,
             generator: torch.Generator, draw_prompts: Callable[[int], list[int]]) -> RolloutPlan:
        """What to sample: by default ``num_groups`` fresh prompts, every row fresh, every step SDE."""
        return RolloutPlan(draw_prompts(num_groups))

    def prepare(self, rollout: Rollout) -> TrainBatch:
        raise NotImplementedError

    def observe(self, rollout: Rollout) -> dict[str, Any]:
        """Bookkeeping after :meth:`prepare`, before the updates; returns diagnostics for step records."""
        return {}

    @property
    def needs_reference(self) -> bool:
        """Whether :meth:`loss` needs the reference model's means (an extra forward per call)."""
        return False

    def loss(self, batch: TrainBatch, rows: torch.Tensor, step: int, log_prob: torch.Tensor,
             mean: torch.Tensor, std: torch.Tensor, ref_mean: torch.Tensor | None,
             dt: torch.Tensor) -> PairLoss:
        """Per-pair losses at denoising step ``step`` for the trained ``rows`` [n].

        Args:
            log_prob: [n] log-prob of the stored transition under the current weights (with grad).
            mean: [n, *shape] the current weights' SDE mean (with grad); ``std`` [n, ...] its scale.
            ref_mean: [n, *shape] the reference model's mean (no grad), when :attr:`needs_reference`.
            dt: [n] ``sigma_next - sigma`` (negative).
        """
        raise NotImplementedError

    def summarize(self, parts: list[PairLoss], batch: TrainBatch) -> dict[str, Any]:
        """Metrics of one optimizer step from its calls' :class:`PairLoss` values."""
        return {}

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
