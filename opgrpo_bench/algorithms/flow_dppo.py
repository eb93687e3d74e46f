"""Flow-DPPO (arXiv 2606.11025): Flow-GRPO with a divergence trust region in place of the ratio clip.

Flow-GRPO's clip decides from one sample's ratio whether a (sample, step) pair has left the trust
region, a noisy estimate of how far the policy moved. Each SDE transition is a Gaussian whose variance
does not depend on the weights, so the divergence between the sampling and the current transition is
exact and cheap: ``D = mean((mean_theta - mean_old)^2) / (2 sigma^2)`` with ``sigma = s sqrt(-dt)``
(:func:`opgrpo_bench.core.losses.kl_to_reference` with the sampler's means as the reference). The loss
is the unclipped ``-A * ratio``, removed only for the pairs with ``D >= eps_D`` whose update still
pushes them further out (:func:`opgrpo_bench.core.losses.divergence_masked_surrogate`); advantages and
the KL to the reference model are Flow-GRPO's. This follows the paper's abstract and the public
verl-omni ``flow_dppo`` loss, read for this project (its default ``eps_D = 1e-5``). It needs the
sampler's transition means (``SamplerSettings.keep_means``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from opgrpo_bench.algorithms.base import PairLoss, SamplerSettings, TrainBatch
from opgrpo_bench.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig
from opgrpo_bench.core.losses import divergence_masked_surrogate, kl_to_reference


@dataclass
class FlowDPPOConfig(FlowGRPOConfig):
    """Flow-GRPO's settings plus the trust region's radius (``clip_range`` is unused)."""

    divergence_threshold: float = 1e-5
    """``eps_D``: a pair whose transition KL to the sampling policy reaches it may only move back."""


class FlowDPPO(FlowGRPO):
    """Flow-GRPO's rollouts and advantages; Flow-DPPO's divergence-masked policy loss."""

    name = "flow-dppo"
    config_cls = FlowDPPOConfig
    config: FlowDPPOConfig

    def sampler_settings(self, defaults: SamplerSettings) -> SamplerSettings:
        return replace(defaults, keep_means=True)

    def policy_loss(self, batch: TrainBatch, rows: torch.Tensor, step: int, log_prob: torch.Tensor,
                    mean: torch.Tensor, std: torch.Tensor, dt: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``weights * mask * (-A * rho)`` per pair, ``mask`` from the exact transition KL (reported as
        ``clipped``; the KL itself as the extra stat ``divergence``)."""
        means = batch.rollout.means
        assert means is not None, "Flow-DPPO needs the rollout's transition means"
        divergence = kl_to_reference(mean.detach(), means[rows, step].to(mean.device), std, dt)
        pg, ratio, masked = divergence_masked_surrogate(log_prob, batch.old_log_probs[rows, step],
                                                        batch.advantages[rows], divergence,
                                                        self.config.divergence_threshold, weight=batch.weights[rows])
        return pg, ratio, masked, {"divergence": divergence}

    def summarize(self, parts: list[PairLoss], batch: TrainBatch) -> dict[str, Any]:
        """Flow-GRPO's metrics (``clipfrac/*`` = the fraction masked) and the transition KL's mean and max."""
        out = super().summarize(parts, batch)
        divergence = torch.cat([p.stats["divergence"] for p in parts])
        out["dppo/divergence_mean"] = divergence.mean().item()
        out["dppo/divergence_max"] = divergence.max().item()
        return out
