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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from opgrpo_bench.algorithms.base import Call, PairLoss, SamplerSettings, TrainBatch, Velocities
from opgrpo_bench.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig


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
        calls = []
        for j, block in enumerate(blocks):
            gen = torch.Generator().manual_seed(ro.seed * 1_000_003 + ro.iteration * 7919 + first_block + j)
            x0 = ro.latents_at(block, ro.num_steps).float()
            kept = keep[block].to(x0.device)
            for _ in range(self.config.forward_points):
                t = self.forward_time(len(block), gen).to(x0.device)
                eps = torch.randn(x0.shape, generator=gen).to(x0.device)
                s = t.view(-1, *([1] * (x0.ndim - 1)))
                calls.append(Call.forward(first_block + j, block, (1 - s) * x0 + s * eps, t, 1.0, int(kept.sum()),
                                          ("sampling",), target=eps - x0, kept=kept))
        return calls

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
