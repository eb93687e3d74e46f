"""GRPO-Guard (arXiv 2510.22319): Flow-GRPO with a regulated ratio against implicit over-optimisation.

Flow-GRPO's per-step ratio ``exp(logp_new - logp_old)`` of a Gaussian SDE transition contains the term
``-|mean_new - mean_old|^2 / (2 sigma^2)``, negative whatever the sample: the ratio distribution is
shifted below 1, more so at the low-noise steps where ``sigma`` is small, so the clip bounds one side
far more often than the other and the steps contribute very unequally. GRPO-Guard replaces the
log-ratio by :func:`opgrpo_bench.core.losses.guard_log_ratio`,
``(logp_new - logp_old) * sigma + mse(mean_new, mean_old) / (2 sigma)``, which removes that term and
normalises each step by its noise scale; the clipped surrogate, advantages and KL are Flow-GRPO's. This
follows the formula as implemented in the public Flow-Factory trainer (``grpo-guard``), read for this
project. It needs the sampler's transition means (``SamplerSettings.keep_means``).

:class:`GRPOGuardRef` (preset ``grpo-guard-ref``) adds the paper's per-step loss rescaling by
``1 / |dt|`` (``inv_dt_weight``, as verl-omni's ``grpo_guard`` loss implements it) and clips at 2e-6,
verl-omni's value for this ratio, whose log is the step's sigma times Flow-GRPO's (docs/ALGORITHMS.md,
"Reference recipes").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from opgrpo_bench.algorithms.base import SamplerSettings, TrainBatch
from opgrpo_bench.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig
from opgrpo_bench.core.losses import guard_log_ratio
from opgrpo_bench.validation import setting


class GRPOGuard(FlowGRPO):
    """Flow-GRPO's update on GRPO-Guard's regulated ratio."""

    name = "grpo-guard"
    config_cls = FlowGRPOConfig

    def sampler_settings(self, defaults: SamplerSettings) -> SamplerSettings:
        return replace(defaults, keep_means=True)

    def ratio_terms(self, batch: TrainBatch, rows: torch.Tensor, step: int, log_prob: torch.Tensor,
                    mean: torch.Tensor, std: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the regulated log-ratio, 0): see :func:`opgrpo_bench.core.losses.guard_log_ratio`."""
        ro = batch.rollout
        assert ro.means is not None, "GRPO-Guard needs the rollout's transition means"
        step_std = std.reshape(std.shape[0], -1)[:, 0] * torch.sqrt(-dt.float().reshape(-1))
        log_ratio = guard_log_ratio(log_prob, batch.old_log_probs[rows, step], mean, ro.means[rows, step], step_std)
        return log_ratio, torch.zeros_like(log_ratio)


@dataclass
class GRPOGuardRefConfig(FlowGRPOConfig):
    """GRPO-Guard's reference recipe (a separate class, so that earlier ``grpo-guard`` results keep their
    recorded configuration)."""

    clip_range: float = 2e-6
    """The clip on the regulated log-ratio, whose scale is the step's sigma times Flow-GRPO's."""
    inv_dt_weight: bool = setting(True)
    """Multiply each pair's policy loss by ``1 / |dt|`` of its step (the KL term is not reweighted)."""


class GRPOGuardRef(GRPOGuard):
    """GRPO-Guard with the per-step ``1 / |dt|`` gradient reweighting and its own clip range."""

    name = "grpo-guard-ref"
    config_cls = GRPOGuardRefConfig
    config: GRPOGuardRefConfig

    def policy_loss(self, batch: TrainBatch, rows: torch.Tensor, step: int, log_prob: torch.Tensor,
                    mean: torch.Tensor, std: torch.Tensor, dt: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """GRPO-Guard's clipped surrogate, times ``1 / |dt|`` when ``inv_dt_weight``: the regulated ratio's
        gradient with respect to the velocity carries the step's ``|dt|`` (the mean moves by ``v dt``), and
        the weight gives every step the same scale."""
        pg, ratio, clipped, extra = super().policy_loss(batch, rows, step, log_prob, mean, std, dt)
        if self.config.inv_dt_weight:
            pg = pg / (-dt.float().reshape(-1))
        return pg, ratio, clipped, extra
