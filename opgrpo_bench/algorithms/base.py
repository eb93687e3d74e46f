"""The algorithm interface: what the one trainer asks of every RL algorithm.

Once per run the trainer asks :meth:`Algorithm.sampler_settings` how the rollouts are sampled (transition,
noise level, log-prob reduction, CFG scale, whether the transitions' means are kept). Once per iteration
it calls, in this order:

1. :meth:`Algorithm.plan`: what to sample. The prompt of each group (fresh ones come from the task
   through ``draw_prompts``), which rows follow a stored trajectory and how they continue after it, which
   rows keep a stored reward instead of being scored, which denoising steps use the SDE (the others use
   the ODE; windowed samplers such as MixGRPO need that) and whether a group shares its initial noise.
2. The trainer samples and scores the plan (block by block, :mod:`opgrpo_bench.training.rollout`) into a
   :class:`Rollout`, which carries the :class:`SamplerSettings` it was drawn with.
3. :meth:`Algorithm.prepare`: the scored rollout becomes a :class:`TrainBatch` (advantages, the
   log-probs each ratio divides by, per-sample weights, which (sample, step) pairs train).
4. :meth:`Algorithm.observe`: the algorithm's own bookkeeping (e.g. a replay buffer); it must not depend on
   the weights, because it runs before the updates.
5. Per optimizer step, over the blocks of rows the trainer dealt it: :meth:`Algorithm.calls` lists the
   network calls the step needs (:class:`Call`: rows, network input, noise level, CFG scale, which extra
   no-grad velocities, whatever the loss reads back); the trainer runs them (data parallel, FSDP lockstep,
   the reference and sampling policies) and hands each call's velocities to :meth:`Algorithm.loss`, sums
   the per-pair losses into one gradient, and after the optimizer step :meth:`Algorithm.summarize` turns
   the calls' statistics into the step record's metrics.

A call made with :meth:`Call.sampler` is the sampler's own call (same rows in the same order, same latent,
noise level and CFG scale), so the log-probs a ratio-based algorithm recomputes from it with
:meth:`SamplerSettings.transition_log_prob` equal the sampler's bit for bit before the first update: the
first ratio is exactly 1 by construction, whatever a BLAS library does with batch sizes. A call made with
:meth:`Call.forward` evaluates the network anywhere (e.g. DiffusionNFT's points on the noising path).

:meth:`Algorithm.state_dict` / :meth:`Algorithm.load_state_dict` hold everything that changes during a
run (nested dicts/lists of numbers, strings and tensors: checkpoints store them without pickling).
The trainer knows nothing else of an algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch

from opgrpo_bench.core.sde import transition_function

__all__ = ["Algorithm", "Call", "Diagnostic", "ForcedRow", "PairLoss", "Rollout", "RolloutPlan", "SamplerSettings",
           "TrainBatch", "Velocities", "sampler_calls"]

VelocityKind = Literal["reference", "sampling"]
"""Extra no-grad velocities a call may ask for: ``"reference"`` (the frozen base model, adapters off) and
``"sampling"`` (the weights the iteration's rollout was sampled with)."""


@dataclass(frozen=True)
class SamplerSettings:
    """How a run's rollouts are sampled: the one place the sampler's per-run settings come from.

    The trainer builds the defaults from its config (:meth:`from_config`); the algorithm may change them
    (:meth:`Algorithm.sampler_settings`). A rollout carries the settings it was sampled with, and a
    ratio-based loss recomputes log-probs with the same settings (:meth:`transition_log_prob`).

    Attributes:
        transition: the stochastic step, a name of :func:`opgrpo_bench.core.sde.transition_function`
            (``"sde"`` Flow-GRPO's, ``"cps"`` coefficient-preserving, ``"sde-constant"`` DanceGRPO's).
        noise_level: the step's noise parameter (Flow-GRPO's ``a``; DanceGRPO's ``eta``).
        logprob_reduction: ``"mean"`` or ``"sum"`` of the per-element log-density.
        guidance: CFG scale of the rollout's (and so of a sampler call's) network calls.
        keep_means: keep every transition's mean in the rollout (``Rollout.means``).
    """

    transition: str = "sde"
    noise_level: float = 0.7
    logprob_reduction: str = "mean"
    guidance: float = 1.0
    keep_means: bool = False

    @classmethod
    def from_config(cls, config: Any) -> "SamplerSettings":
        """The trainer's defaults: ``transition``, ``noise_level``, ``logprob_reduction`` and ``guidance`` of
        a :class:`opgrpo_bench.config.TrainConfig`."""
        return cls(transition=getattr(config, "transition", "sde"), noise_level=config.noise_level,
                   logprob_reduction=config.logprob_reduction, guidance=config.guidance)

    def transition_log_prob(self, v: torch.Tensor, sigmas: torch.Tensor, step: int, x: torch.Tensor,
                            x_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_prob [n], mean [n, *shape], std)`` of the stored transition ``x -> x_next`` at denoising
        step ``step`` of the schedule ``sigmas`` [T+1], given the velocity ``v`` [n, *shape] at ``x``: the
        sampler's own formula and settings."""
        n = len(x)
        _, logp, mean, std = transition_function(self.transition)(
            v, sigmas[step].expand(n), sigmas[step + 1].expand(n), x, self.noise_level, prev_sample=x_next,
            sigma_max=sigmas[1], logprob_reduction=self.logprob_reduction)
        return logp, mean, std


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
        means: [N, T, *shape] the sampler's transition means (when ``sampler.keep_means``; else None).
        sampler: the settings the rollout was sampled with.
        seed: the run's seed (for an algorithm that draws its own randomness reproducibly).
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
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    seed: int = 0

    def latents_at(self, rows: torch.Tensor, step: int, device: torch.device | str | None = None) -> torch.Tensor:
        """``latents[rows, step]`` [n, *shape] on ``device`` (default: the schedule's device, where the
        network runs; the trajectories themselves may be kept on the CPU)."""
        device = self.sigmas.device if device is None else torch.device(device)
        if self.latents.device == device:
            return self.latents[rows.to(device), step]
        return self.latents[rows.to(self.latents.device), step].to(device)

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


@dataclass
class Call:
    """One network call of an optimizer step, as an algorithm asks for it (build it with :meth:`sampler` or
    :meth:`forward`).

    Attributes:
        block: global index of the row block in the iteration (block ``b`` runs on rank ``b % world_size``,
            so all calls of one block run where the block was sampled).
        rows: [n] rollout rows; their prompt conditioning is the network's.
        pairs: the loss terms this call adds to the optimizer step's mean (its :class:`PairLoss` has this
            many entries); 0 for a call whose loss is empty.
        step: for a sampler call, the denoising step ``k`` it repeats; else None.
        x / sigma / guidance: for a forward call, the network input [n, *shape], noise level [n] and CFG
            scale; None for a sampler call (the trainer takes the sampler's).
        extra: the no-grad velocities the loss needs besides the policy's (:data:`VelocityKind`).
        context: whatever the loss reads back (tensors, numbers), untouched by the trainer.
    """

    block: int
    rows: torch.Tensor
    pairs: int
    step: int | None = None
    x: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    guidance: float | None = None
    extra: tuple[VelocityKind, ...] = ()
    context: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def sampler(cls, block: int, rows: torch.Tensor, step: int, pairs: int,
                extra: Sequence[VelocityKind] = (), **context: Any) -> "Call":
        """The sampler's own call for ``rows`` (a whole block, in its order) at denoising step ``step``."""
        return cls(block, rows, pairs, step=step, extra=tuple(extra), context=context)

    @classmethod
    def forward(cls, block: int, rows: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, guidance: float,
                pairs: int, extra: Sequence[VelocityKind] = (), **context: Any) -> "Call":
        """A call at any network input ``x`` [n, *shape] and noise level ``sigma`` [n]."""
        if x.shape[0] != len(rows) or sigma.shape != (len(rows),):
            raise ValueError(f"a call of {len(rows)} rows needs x [{len(rows)}, ...] and sigma [{len(rows)}]")
        return cls(block, rows, pairs, x=x, sigma=sigma, guidance=guidance, extra=tuple(extra), context=context)


@dataclass
class Velocities:
    """What the trainer hands :meth:`Algorithm.loss` for one :class:`Call` (all on the compute device).

    Attributes:
        policy: [n, *shape] the current weights' velocity, with gradient.
        x: [n, *shape] the network input; sigma: [n] its noise level.
        x_next: [n, *shape] for a sampler call, the stored next latent of the transition; else None.
        reference / sampling: [n, *shape] the no-grad velocities asked for in ``Call.extra``, else None.
    """

    policy: torch.Tensor
    x: torch.Tensor
    sigma: torch.Tensor
    x_next: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    sampling: torch.Tensor | None = None


def sampler_calls(batch: "TrainBatch", blocks: Sequence[torch.Tensor], first_block: int,
                  extra: Sequence[VelocityKind] = ()) -> list[Call]:
    """The sampler's calls that hold trained pairs: for each block and denoising step with at least one
    ``batch.train_mask`` pair, in block-major order (the GRPO family's update)."""
    mask = batch.train_mask
    calls = []
    for j, block in enumerate(blocks):
        for k in range(batch.rollout.num_steps):
            pairs = int(mask[block, k].sum())
            if pairs:
                calls.append(Call.sampler(first_block + j, block, k, pairs, extra))
    return calls


class Algorithm:
    """Base class of the algorithms; subclasses set ``name`` and ``config_cls`` and override the hooks."""

    name = "algorithm"
    config_cls: type = object
    diagnostics: tuple[Diagnostic, ...] = ()
    """The step-record keys the leaderboard summarises per row (:class:`Diagnostic`)."""
    def __init__(self, config: Any | None = None):
        self.config = config or self.config_cls()

    def sampler_settings(self, defaults: SamplerSettings) -> SamplerSettings:
        """How this algorithm's rollouts are sampled: the trainer's ``defaults`` unless the algorithm has
        its own transition, noise parameter or needs the transitions' means."""
        return defaults

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

    def calls(self, batch: TrainBatch, blocks: Sequence[torch.Tensor], first_block: int) -> list[Call]:
        """The network calls of one optimizer step over ``blocks`` (each [<= micro_batch] rollout rows, the
        sampler's blocks; ``first_block`` is the global index of ``blocks[0]`` in the iteration)."""
        raise NotImplementedError

    def loss(self, batch: TrainBatch, call: Call, velocities: Velocities) -> PairLoss:
        """Per-pair losses of one call (``call.pairs`` of them; summed, then divided by the step's pairs)."""
        raise NotImplementedError

    def summarize(self, parts: list[PairLoss], batch: TrainBatch) -> dict[str, Any]:
        """Metrics of one optimizer step from its calls' :class:`PairLoss` values."""
        return {}

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
