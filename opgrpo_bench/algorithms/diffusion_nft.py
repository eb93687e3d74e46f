"""DiffusionNFT (arXiv 2509.16117): online RL on the forward process, likelihood-free.

DiffusionNFT needs no log-probability and no SDE: it trains on points of the *forward* (noising) path of
the rollout's final samples ``x_0``. For ``x_t = (1 - t) x_0 + t eps`` with flow-matching target
``u = eps - x_0``, the sampling policy's velocity ``v_old`` (the weights the rollout was drawn with) and
the current one ``v_theta``, it defines an implicit positive and negative policy

    v+ = (1 - beta) v_old + beta v_theta,        v- = (1 + beta) v_old - beta v_theta

and minimises, per sample, ``r |v+ - u|^2 + (1 - r) |v- - u|^2`` (means over the latent), where
``r in [0, 1]`` is the sample's optimality probability from its reward. Good samples (r near 1) pull
``v+`` towards their flow-matching target, bad ones push ``v-`` there, i.e. ``v_theta`` away: both are
ordinary regression losses, so any sampler (SDE, ODE, CPS) may produce the rollouts.

[decisions] ``r = (clip(A, -c, c) / c + 1) / 2`` from the group-relative advantage ``A`` (Flow-GRPO's,
``c = reward_clip`` = 2); ``t ~ U(t_min, 1 - t_min)`` with ``forward_points`` points per sample and
optimizer step; ``beta = 1``; no CFG in the training forward (DiffusionNFT is CFG-free); no KL term.
Its optimizer step asks for ``forward_points`` forward calls per block (:meth:`DiffusionNFT.calls`), each
with the sampling policy's velocity; ``t`` and ``eps`` come from a generator seeded by (seed, iteration,
global block index), so they do not depend on the process count.

:class:`DiffusionNFTRef` (preset ``diffusion-nft-ref``) follows the public code's recipe where this
interface allows (docs/ALGORITHMS.md, "Reference recipes"): the x0-space adaptively weighted loss
(:func:`nft_x0_loss`), ``r`` from the advantage clipped at 5, equal-reward groups trained at ``r = 1/2``,
the schedule's own timesteps (``floor(train_fraction * T)`` of them per sample), a KL term to the
reference model (its velocity in every call), the sampling CFG scale in the training forward, and
deterministic (ODE) rollouts. Its old policy is still the sampling weights, not an EMA of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from opgrpo_bench.algorithms.base import Call, PairLoss, RolloutPlan, SamplerSettings, TrainBatch, Velocities
from opgrpo_bench.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig
from opgrpo_bench.validation import setting


def nft_loss(v: torch.Tensor, v_old: torch.Tensor, target: torch.Tensor, r: torch.Tensor,
             beta: float) -> torch.Tensor:
    """DiffusionNFT's per-sample loss [N] from velocities [N, *shape] and optimality probabilities r [N]."""
    v_old = v_old.detach().float()
    v = v.float()
    target = target.float()
    pos = (1 - beta) * v_old + beta * v
    neg = (1 + beta) * v_old - beta * v
    err_pos = ((pos - target) ** 2).flatten(1).mean(1)
    err_neg = ((neg - target) ** 2).flatten(1).mean(1)
    return r * err_pos + (1 - r) * err_neg


def nft_x0_loss(v: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor,
                r: torch.Tensor, beta: float, scale: float = 1.0) -> torch.Tensor:
    """DiffusionNFT's x0-space, adaptively weighted per-sample loss [N] (the public code's form).

    With ``v+ / v-`` as in :func:`nft_loss`, each implicit policy's clean-sample prediction
    ``x0± = x_t - t v±`` is regressed to the sample ``x0``, its squared error divided by its own mean
    absolute error (a constant, no gradient, at least 1e-5): ``L± = mean((x0± - x0)^2) / mean|x0± - x0|``.
    The loss is ``scale * (r L+ + (1 - r) L-) / beta``.

    Args:
        v, v_old: [N, *shape] current (with grad) and old velocities; x_t: [N, *shape] the network input;
        t: [N] its time; x0: [N, *shape] the sample; r: [N] optimality probabilities.
    """
    v_old = v_old.detach().float()
    v, x_t, x0 = v.float(), x_t.float(), x0.float()
    s = t.float().view(-1, *([1] * (x0.ndim - 1)))
    terms = []
    for pred in ((1 - beta) * v_old + beta * v, (1 + beta) * v_old - beta * v):
        err = x_t - s * pred - x0
        weight = err.detach().double().abs().flatten(1).mean(1).clamp(min=1e-5).float()
        terms.append((err ** 2).flatten(1).mean(1) / weight)
    return scale * (r * terms[0] + (1 - r) * terms[1]) / beta


@dataclass
class DiffusionNFTConfig(FlowGRPOConfig):
    """DiffusionNFT's settings (the advantage settings are Flow-GRPO's; clip_range and beta are unused)."""

    nft_beta: float = 1.0
    """beta of the implicit policies v+ / v-."""
    reward_clip: float = 2.0
    """c in r = (clip(A, -c, c) / c + 1) / 2."""
    forward_points: int = 4
    """Points of the forward process per sample and optimizer step."""
    t_min: float = 0.02
    """t ~ U(t_min, 1 - t_min): the ends of the path carry no information about the velocity."""


class DiffusionNFT(FlowGRPO):
    """DiffusionNFT: regression on the forward process, weighted by the reward's optimality probability."""

    name = "diffusion-nft"
    config_cls = DiffusionNFTConfig
    config: DiffusionNFTConfig

    def __init__(self, config: DiffusionNFTConfig | None = None):
        super().__init__(config)
        cfg = self.config
        if cfg.forward_points < 1 or not cfg.reward_clip > 0 or not 0 <= cfg.t_min < 0.5:
            raise ValueError("forward_points must be >= 1, reward_clip > 0 and t_min in [0, 0.5)")

    def forward_time(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n] times on the forward path, uniform in [t_min, 1 - t_min]."""
        lo = self.config.t_min
        return lo + (1 - 2 * lo) * torch.rand(n, generator=generator)

    def optimality(self, batch: TrainBatch, rows: torch.Tensor) -> torch.Tensor:
        """r [n] in [0, 1] from the rows' advantages."""
        c = self.config.reward_clip
        return (batch.advantages[rows].float().clamp(-c, c) / c + 1) / 2

    def calls(self, batch: TrainBatch, blocks: Sequence[torch.Tensor], first_block: int) -> list[Call]:
        """Per block, ``forward_points`` points ``x_t = (1 - t) x_0 + t eps`` on the noising path of the
        block's final samples ``x_0``, each a CFG-free call with the sampling policy's velocity. Samples
        without signal (``train_mask`` all false) are evaluated with their block but not trained."""
        ro = batch.rollout
        keep = batch.train_mask.any(1)
        guidance, extra = self.train_guidance(batch), self.extra_velocities()
        calls = []
        for j, block in enumerate(blocks):
            gen = torch.Generator().manual_seed(ro.seed * 1_000_003 + ro.iteration * 7919 + first_block + j)
            x0 = ro.latents_at(block, ro.num_steps).float()
            kept = keep[block].to(x0.device)
            for t in self.block_times(batch, len(block), gen):
                t = t.to(x0.device)
                eps = torch.randn(x0.shape, generator=gen).to(x0.device)
                s = t.view(-1, *([1] * (x0.ndim - 1)))
                x_t = (1 - s) * x0 + s * eps
                calls.append(Call.forward(first_block + j, block, x_t, t, guidance, int(kept.sum()), extra,
                                          target=eps - x0, x0=x0, kept=kept))
        return calls

    def block_times(self, batch: TrainBatch, n: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """The times of one block's calls, each [n]: ``forward_points`` uniform draws, each drawn just before
        its call's noise (the generator's order is part of the recorded numbers)."""
        for _ in range(self.config.forward_points):
            yield self.forward_time(n, generator)

    def train_guidance(self, batch: TrainBatch) -> float:
        """CFG scale of the training forward: none (DiffusionNFT is CFG-free)."""
        return 1.0

    def extra_velocities(self) -> tuple[str, ...]:
        """The no-grad velocities each call needs: the sampling policy's."""
        return ("sampling",)

    def loss(self, batch: TrainBatch, call: Call, velocities: Velocities) -> PairLoss:
        kept = call.context["kept"]
        rows = call.rows.to(kept.device)[kept]
        assert velocities.sampling is not None
        return self.forward_loss(batch, rows, velocities.policy[kept], velocities.sampling[kept],
                                 call.context["target"][kept])

    def forward_loss(self, batch: TrainBatch, rows: torch.Tensor, v: torch.Tensor, v_old: torch.Tensor,
                     target: torch.Tensor) -> PairLoss:
        """Per-sample :func:`nft_loss` of the kept ``rows`` [n] from the current and sampling velocities."""
        r = self.optimality(batch, rows).to(v.device)
        loss = nft_loss(v, v_old, target, r, self.config.nft_beta)
        drift = ((v.detach().float() - v_old.float()) ** 2).flatten(1).mean(1)
        return PairLoss(loss, rows, {"nft": loss.detach(), "r": r, "drift": drift})

    def summarize(self, parts: list[PairLoss], batch: TrainBatch) -> dict[str, Any]:
        """The loss, the mean optimality probability, and how far the velocity moved from the sampler's."""
        cat = {k: torch.cat([p.stats[k] for p in parts]) for k in parts[0].stats}
        return {"loss/total": cat["nft"].mean().item(), "loss/policy": cat["nft"].mean().item(),
                "nft/r_mean": cat["r"].mean().item(), "nft/velocity_drift": cat["drift"].mean().item()}


@dataclass
class DiffusionNFTRefConfig(DiffusionNFTConfig):
    """DiffusionNFT's public recipe (SD3.5 configurations), as far as the interface allows; a separate class
    so that earlier ``diffusion-nft`` results keep their recorded configuration."""

    reward_clip: float = 5.0
    """The public code clips the advantage at ``adv_clip_max`` = 5 before ``r = (A / 5 + 1) / 2``."""
    filter_zero_std: bool = False
    """Equal-reward groups are trained: advantage 0, so ``r = 1/2``."""
    x0_loss: bool = setting(True)
    """The x0-space adaptively weighted loss (:func:`nft_x0_loss`, scaled by ``reward_clip``); False is
    :func:`nft_loss`."""
    schedule_times: bool = setting(True)
    """Train at the sampling schedule's timesteps: each sample a random ``floor(train_fraction * T)`` of
    ``sigma_0 .. sigma_{T-1}`` in random order, one per call; False draws ``forward_points`` uniform times."""
    kl_beta: float = setting(1e-4, ge=0)
    """Weight of ``mean((v_theta - v_ref)^2)`` to the reference (base) model; 0 skips its forward."""
    train_cfg: bool = setting(True)
    """The training forward uses the rollout's CFG scale (the sampling one) instead of none."""
    ode_rollouts: bool = setting(True)
    """Sample deterministically (every transition the ODE step): the loss needs no exploration noise."""


class DiffusionNFTRef(DiffusionNFT):
    """DiffusionNFT with the public code's loss, timesteps, reference KL, CFG and deterministic rollouts."""

    name = "diffusion-nft-ref"
    config_cls = DiffusionNFTRefConfig
    config: DiffusionNFTRefConfig

    def plan(self, num_groups: int, group_size: int, num_steps: int, iteration: int,
             generator: torch.Generator, draw_prompts: Callable[[int], list[int]]) -> RolloutPlan:
        """Fresh groups; every transition deterministic when ``ode_rollouts``."""
        plan = super().plan(num_groups, group_size, num_steps, iteration, generator, draw_prompts)
        if self.config.ode_rollouts:
            plan.sde_steps = torch.zeros(num_steps, dtype=torch.bool)
        return plan

    def block_times(self, batch: TrainBatch, n: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Per sample a random ``floor(train_fraction * T)`` (at least 1) of the schedule's first ``T``
        sigmas, in random order: call ``j`` takes each sample's ``j``-th."""
        if not self.config.schedule_times:
            yield from super().block_times(batch, n, generator)
            return
        steps = batch.rollout.num_steps
        points = max(1, math.floor(self.config.train_fraction * steps))
        order = torch.stack([torch.randperm(steps, generator=generator)[:points] for _ in range(n)])  # [n, points]
        sigmas = batch.rollout.sigmas.detach().float().cpu()
        for j in range(points):
            yield sigmas[order[:, j]]

    def train_guidance(self, batch: TrainBatch) -> float:
        return batch.rollout.sampler.guidance if self.config.train_cfg else 1.0

    def extra_velocities(self) -> tuple[str, ...]:
        return ("sampling", "reference") if self.config.kl_beta > 0 else ("sampling",)

    def loss(self, batch: TrainBatch, call: Call, velocities: Velocities) -> PairLoss:
        """The public code's per-sample loss, plus ``kl_beta`` times the squared velocity distance to the
        reference model."""
        cfg = self.config
        kept = call.context["kept"]
        rows = call.rows.to(kept.device)[kept]
        assert velocities.sampling is not None
        v, v_old = velocities.policy[kept], velocities.sampling[kept]
        r = self.optimality(batch, rows).to(v.device)
        target = call.context["target"][kept]
        if cfg.x0_loss:
            x_t, t, x0 = velocities.x[kept], velocities.sigma[kept], call.context["x0"][kept]
            policy = nft_x0_loss(v, v_old, x_t, t, x0, r, cfg.nft_beta, scale=cfg.reward_clip)
        else:
            policy = nft_loss(v, v_old, target, r, cfg.nft_beta)
        kl = torch.zeros_like(policy)
        if cfg.kl_beta > 0:
            assert velocities.reference is not None, "the KL term needs the reference model's velocity"
            kl = ((v.float() - velocities.reference[kept].detach().float()) ** 2).flatten(1).mean(1)
        drift = ((v.detach().float() - v_old.float()) ** 2).flatten(1).mean(1)
        return PairLoss(policy + cfg.kl_beta * kl, rows,
                        {"nft": policy.detach(), "kl": kl.detach(), "r": r, "drift": drift})

    def summarize(self, parts: list[PairLoss], batch: TrainBatch) -> dict[str, Any]:
        """:meth:`DiffusionNFT.summarize` with the KL term in ``loss/total`` and ``loss/kl``."""
        out = super().summarize(parts, batch)
        kl = torch.cat([p.stats["kl"] for p in parts]).mean().item()
        out["loss/kl"] = kl
        out["loss/total"] = out["loss/policy"] + self.config.kl_beta * kl
        return out
