"""One optimizer step's network calls: the trainer's single update path, for every algorithm.

An algorithm lists the calls of a step (:meth:`opgrpo_bench.algorithms.base.Algorithm.calls`); a
:class:`CallRunner` runs the calls this rank owns, in phases that every rank walks in the same order:

1. per extra velocity kind (``"reference"``, then ``"sampling"``), all no-grad calls under one switch of
   the weights (toggling adapters walks the whole model, so once per phase), then this rank's idle calls;
2. the policy's calls with gradient, each followed by the backward of its summed loss divided by the
   step's pair count (so the accumulated gradient is that of the mean), then the idle calls with backward.

A sampler call (``Call.sampler``) is evaluated exactly as the sampler evaluated it: the stored latent of
the same rows in the same order, the schedule's noise level and the rollout's CFG scale; so its velocity,
and any log-prob recomputed from it, equals the sampler's before the first update.
"""

from __future__ import annotations

from typing import Sequence

import torch

from opgrpo_bench.algorithms.base import Algorithm, Call, PairLoss, TrainBatch, Velocities
from opgrpo_bench.backbones.base import Backbone, index_cond
from opgrpo_bench.core.ema import holding
from opgrpo_bench.distributed import Distributed
from opgrpo_bench.training.lockstep import idle_calls, spare_calls

EXTRA_KINDS = ("reference", "sampling")
"""The no-grad velocities a call may ask for, in the order their phases run."""


class CallRunner:
    """Runs an optimizer step's calls on this rank and returns every call's :class:`PairLoss`.

    Args:
        backbone: the policy network (adapters on).
        params: the trainable parameters (for the sampling-policy weights).
        dist: the process layout (which rank owns which block, lockstep).
        latent_dtype: the dtype idle calls feed the network; detach_uncond: no gradient through CFG's
            unconditional branch in calls with gradient (the trainer's ``cfg_detach_uncond``).
    """

    def __init__(self, backbone: Backbone, params: Sequence[torch.nn.Parameter], dist: Distributed,
                 latent_dtype: torch.dtype, detach_uncond: bool):
        self.backbone, self.params, self.dist = backbone, list(params), dist
        self.latent_dtype, self.detach_uncond = latent_dtype, detach_uncond
        self._sampling_weights: list[torch.Tensor] | None = None
        self._updated = False

    def begin_iteration(self) -> None:
        """A new rollout was sampled with the current weights: the sampling policy is the current one."""
        self._sampling_weights, self._updated = None, False

    def _sampling_policy(self) -> list[torch.Tensor]:
        # taken lazily at the first step that asks for it: until the iteration's first update the current
        # weights are the ones the rollout was sampled with, and only algorithms that need them pay the copy
        if self._sampling_weights is None:
            if self._updated:
                raise RuntimeError("the sampling policy's velocity was first asked for after an update of the "
                                   "iteration; ask for it in every optimizer step's calls")
            self._sampling_weights = [p.detach().clone() for p in self.params]
        return self._sampling_weights

    def nfe(self, batch: TrainBatch, calls: Sequence[Call]) -> int:
        """Per-sample network evaluations of ``calls`` (every rank's; CFG counts 2, each extra velocity 1)."""
        return sum(len(c.rows) * self.backbone.nfe_per_sample(self._guidance(batch, c)) * (1 + len(c.extra))
                   for c in calls)

    @staticmethod
    def _guidance(batch: TrainBatch, call: Call) -> float:
        return batch.rollout.sampler.guidance if call.step is not None else float(call.guidance)

    def _inputs(self, batch: TrainBatch, call: Call) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(x, sigma, x_next)`` of a call on the compute device; a sampler call's are the sampler's."""
        ro = batch.rollout
        if call.step is not None:
            k, n = call.step, len(call.rows)
            return ro.latents_at(call.rows, k), ro.sigmas[k].expand(n), ro.latents_at(call.rows, k + 1)
        assert call.x is not None and call.sigma is not None
        return call.x.to(ro.sigmas.device), call.sigma.to(ro.sigmas.device), None

    def _velocity(self, batch: TrainBatch, call: Call, x: torch.Tensor, sigma: torch.Tensor,
                  detach_uncond: bool = False) -> torch.Tensor:
        ro = batch.rollout
        cond = index_cond(ro.cond, ro.cond_index[call.rows.to(ro.cond_index.device)])
        return self.backbone.velocity(x, sigma, cond, self._guidance(batch, call), detach_uncond=detach_uncond)

    def run(self, algorithm: Algorithm, batch: TrainBatch, calls: Sequence[Call], total: int) -> list[PairLoss]:
        """Forward and backward of this rank's calls (gradients accumulate in ``params``' ``.grad``); every
        call's per-pair losses and statistics in call order, gathered from all ranks."""
        world, rank = self.dist.world_size, self.dist.rank
        owners = [c.block % world for c in calls]
        mine = [i for i, o in enumerate(owners) if o == rank]
        spare = spare_calls(self.dist, owners)
        ro = batch.rollout
        idle_guidance = self._guidance(batch, calls[0])
        inputs = {i: self._inputs(batch, calls[i]) for i in mine}
        extras: dict[int, dict[str, torch.Tensor]] = {i: {} for i in mine}
        for kind in EXTRA_KINDS:
            wanted = [i for i in mine if kind in calls[i].extra]
            if not any(kind in c.extra for c in calls):
                continue
            context = self.backbone.reference() if kind == "reference" else holding(self.params,
                                                                                      self._sampling_policy())
            with torch.no_grad(), context:
                for i in wanted:
                    extras[i][kind] = self._velocity(batch, calls[i], inputs[i][0], inputs[i][1])
                idle_calls(self.backbone, ro.cond, ro.sigmas[:1], spare, idle_guidance, self.latent_dtype,
                           self.detach_uncond)
        own: dict[int, PairLoss] = {}
        for i in mine:
            x, sigma, x_next = inputs[i]
            v = self._velocity(batch, calls[i], x, sigma, detach_uncond=self.detach_uncond)
            part = algorithm.loss(batch, calls[i], Velocities(v, x, sigma, x_next, **extras[i]))
            if len(part.loss) != calls[i].pairs:
                raise RuntimeError(f"{type(algorithm).__name__}.loss returned {len(part.loss)} pairs for a call "
                                   f"that declared {calls[i].pairs}")
            (part.loss.sum() / total).backward()
            own[i] = part
        idle_calls(self.backbone, ro.cond, ro.sigmas[:1], spare, idle_guidance, self.latent_dtype,
                   self.detach_uncond, backward=True)
        self._updated = True
        if not self.dist.active:
            return [own[i] for i in range(len(calls))]
        fields = {i: {"rows": p.rows, **p.stats} for i, p in own.items()}
        gathered = self.dist.gather_calls(fields, owners, [c.pairs for c in calls])
        return [PairLoss(loss=torch.zeros(0), rows=f.pop("rows").long(), stats=f) for f in gathered]
