"""Flow-GRPO (arXiv 2505.05470): on-policy group-relative policy optimisation over SDE trajectories.

Behind the interface of :mod:`opgrpo_bench.algorithms.base`: fresh groups only, every step SDE; a scored
rollout becomes a training batch (group-relative advantages, ``logp_old`` as the ratio's denominator,
weights 1, which (sample, step) pairs train). An optimizer step repeats the sampler's calls that hold
trained pairs (plus the reference model's velocity when ``beta > 0``), recomputes each transition's
log-prob with the rollout's own sampler settings, and each trained pair's loss is the clipped surrogate
plus beta times the KL to the reference model. The trainer owns the loop, the optimizer and the I/O; the
math is in :mod:`opgrpo_bench.core`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from opgrpo_bench.algorithms.base import (Algorithm, Call, Diagnostic, PairLoss, Rollout, TrainBatch, Velocities,
                                         sampler_calls)
from opgrpo_bench.core.advantages import finite_group_mask, group_advantages, nonzero_std_group_mask
from opgrpo_bench.core.losses import approx_kl, clipped_surrogate, kl_to_reference
from opgrpo_bench.validation import setting

__all__ = ["FlowGRPO", "FlowGRPOConfig", "Rollout", "TrainBatch"]


@dataclass
class FlowGRPOConfig:
    """Flow-GRPO's update (ALGORITHMS.md section 2); defaults are the paper's SD3.5 values."""

    clip_range: float = setting(1e-4, gt=0)
    """PPO clip epsilon on the per-step ratio (on the "mean" log-prob scale)."""
    beta: float = setting(0.04, ge=0)
    """KL weight towards the reference (base) model; 0 skips the reference forward pass."""
    adv_clip: float = setting(5.0, gt=0, finite=False)
    """Advantages are clipped to [-adv_clip, adv_clip]."""
    global_std: bool = setting(True)
    """Normalise advantages by the std over the whole batch (Flow-GRPO's SD3.5 default) or per group."""
    filter_zero_std: bool = setting(True)
    """Drop groups whose rewards are all equal (they carry no signal)."""
    kl_include_dt: bool = setting(False)
    """Use the exact Gaussian KL scale s^2*(-dt) instead of Flow-GRPO's s^2."""
    train_fraction: float = setting(0.99, gt=0, le=1)
    """Train the first floor(train_fraction * T) denoising steps (the last, lowest-noise step never)."""


class FlowGRPO(Algorithm):
    """Flow-GRPO: fresh groups only; every sample is on-policy (``w = 1``)."""

    name = "flow-grpo"
    config_cls = FlowGRPOConfig
    config: FlowGRPOConfig
    diagnostics = (
        Diagnostic("clipfrac/on_policy", "Clip fraction on-policy", "mean",
                   "fraction of fresh (sample, step) pairs whose ratio the trust region clipped or masked",
                   field="clipfrac_on_policy", percent=True),
        Diagnostic("clipfrac/off_policy", "Clip fraction off-policy", "mean",
                   "the same for pairs of samples that continue a replayed prefix",
                   field="clipfrac_off_policy", percent=True),
    )

    def trained_steps(self, num_steps: int) -> torch.Tensor:
        """[T] bool (or [N, T] per sample): which denoising steps are trained."""
        mask = torch.zeros(num_steps, dtype=torch.bool)
        mask[: math.floor(self.config.train_fraction * num_steps)] = True
        return mask

    def prepare(self, rollout: Rollout) -> TrainBatch:
        """Advantages (group-relative), ratio denominators, weights and the trained (sample, step) mask.

        NaN rewards ("not applicable") are masked out: such samples get advantage 0 and are never trained,
        the group means and the batch std use the finite rewards only, and a group with fewer than two finite
        rewards carries no signal (not trained, counted in ``train/zero_std_group_frac``). An all-NaN
        rollout yields a batch with nothing to train. ``train/nan_reward_frac`` is the fraction of
        non-finite rewards.
        """
        cfg = self.config
        rewards = rollout.rewards.float()
        advantages = group_advantages(rewards, rollout.group_ids, global_std=cfg.global_std,
                                      clip=cfg.adv_clip).float()
        informative = nonzero_std_group_mask(rewards, rollout.group_ids)  # finite, group not all equal
        keep = informative if cfg.filter_zero_std else finite_group_mask(rewards, rollout.group_ids)
        train_mask = self.trained_steps(rollout.num_steps).expand(len(rewards), -1) & keep[:, None]
        batch = TrainBatch(rollout, advantages, rollout.log_probs.clone(), torch.ones_like(rewards),
                           train_mask.clone())
        groups = torch.unique(rollout.group_ids)
        kept_groups = torch.unique(rollout.group_ids[informative]) if informative.any() else groups[:0]
        batch.metrics["train/zero_std_group_frac"] = 1.0 - len(kept_groups) / len(groups)
        batch.metrics["train/nan_reward_frac"] = (~torch.isfinite(rewards)).float().mean().item()
        self.adjust(batch)
        return batch

    def adjust(self, batch: TrainBatch) -> None:
        """Off-policy corrections (OP-GRPO overrides); Flow-GRPO trains everything on-policy."""

    def observe(self, rollout: Rollout) -> dict[str, Any]:
        """Called once per iteration with its rollout, right after :meth:`prepare` and before the optimizer
        steps (it never depends on the weights); returns diagnostics for step records."""
        return {}

    # -- the loss ----------------------------------------------------------------------------------
    def calls(self, batch: TrainBatch, blocks: Sequence[torch.Tensor], first_block: int) -> list[Call]:
        """The sampler's calls with trained pairs, with the reference velocity when the KL term is on."""
        return sampler_calls(batch, blocks, first_block, ("reference",) if self.config.beta > 0 else ())

    def loss(self, batch: TrainBatch, call: Call, velocities: Velocities) -> PairLoss:
        """The trained pairs of a sampler call: log-probs of the stored transitions under the current weights
        (and the reference model's means), then :meth:`pair_loss`."""
        ro, k = batch.rollout, call.step
        assert k is not None and velocities.x_next is not None, "the GRPO family trains on the sampler's calls"
        rows = call.rows.to(velocities.x.device)
        trained = batch.train_mask[rows, k]
        logp, mean, std = ro.sampler.transition_log_prob(velocities.policy, ro.sigmas, k, velocities.x,
                                                         velocities.x_next)
        ref_mean = None
        if velocities.reference is not None:
            ref_mean = ro.sampler.transition_log_prob(velocities.reference, ro.sigmas, k, velocities.x,
                                                      velocities.x_next)[1][trained]
        dt = (ro.sigmas[k + 1] - ro.sigmas[k]).expand(len(rows))[trained]
        return self.pair_loss(batch, rows[trained], k, logp[trained], mean[trained], std[trained], ref_mean, dt)

    def ratio_terms(self, batch: TrainBatch, rows: torch.Tensor, step: int, log_prob: torch.Tensor,
                    mean: torch.Tensor, std: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(numerator, denominator) of the ratio's log, ``rho = exp(numerator - denominator)``: Flow-GRPO's
        ``(log p_theta, log p_old)``; GRPO-Guard regulates it."""
        return log_prob, batch.old_log_probs[rows, step]

    def policy_loss(self, batch: TrainBatch, rows: torch.Tensor, step: int, log_prob: torch.Tensor,
                    mean: torch.Tensor, std: torch.Tensor, dt: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, ratio, clipped, extra stats)`` per pair of the policy term: Flow-GRPO's clipped
        surrogate ``weights * max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps))``; Flow-DPPO masks instead."""
        new_term, old_term = self.ratio_terms(batch, rows, step, log_prob, mean, std, dt)
        pg, ratio, clipped = clipped_surrogate(new_term, old_term, batch.advantages[rows], self.config.clip_range,
                                               weight=batch.weights[rows])
        return pg, ratio, clipped, {}

    def pair_loss(self, batch: TrainBatch, rows: torch.Tensor, step: int, log_prob: torch.Tensor,
                  mean: torch.Tensor, std: torch.Tensor, ref_mean: torch.Tensor | None,
                  dt: torch.Tensor) -> PairLoss:
        """:meth:`policy_loss` ``+ beta * KL`` to the reference, per trained pair of ``rows`` [n] at
        denoising step ``step``.

        Args:
            log_prob: [n] log-prob of the stored transition under the current weights (with grad).
            mean: [n, *shape] the current weights' transition mean (with grad); ``std`` its scale.
            ref_mean: [n, *shape] the reference model's mean (no grad), when ``beta > 0``.
            dt: [n] ``sigma_next - sigma`` (negative).
        """
        cfg = self.config
        old = batch.old_log_probs[rows, step]
        pg, ratio, clipped, extra = self.policy_loss(batch, rows, step, log_prob, mean, std, dt)
        kl = torch.zeros_like(pg)
        if cfg.beta > 0:
            assert ref_mean is not None, "the KL term needs the reference model's mean"
            kl = kl_to_reference(mean, ref_mean, std, dt if cfg.kl_include_dt else None)
        stats = {"pg": pg.detach(), "kl": kl.detach(), "ratio": ratio.detach(), "clipped": clipped,
                 "log_prob": log_prob.detach(), "old": old, **extra}
        return PairLoss(pg + cfg.beta * kl, rows, stats)

    def summarize(self, parts: list[PairLoss], batch: TrainBatch) -> dict[str, Any]:
        """Loss terms, ratio range, clip fractions of fresh and of replayed samples, approximate KL."""
        cat = {k: torch.cat([p.stats[k] for p in parts]) for k in parts[0].stats}
        off = batch.rollout.replayed[torch.cat([p.rows for p in parts])]
        clipped, ratio = cat["clipped"], cat["ratio"]
        return {
            "loss/total": (cat["pg"].mean() + self.config.beta * cat["kl"].mean()).item(),
            "loss/policy": cat["pg"].mean().item(), "loss/kl": cat["kl"].mean().item(),
            "ratio/mean": ratio.mean().item(), "ratio/min": ratio.min().item(), "ratio/max": ratio.max().item(),
            "clipfrac/on_policy": clipped[~off].float().mean().item() if (~off).any() else None,
            "clipfrac/off_policy": clipped[off].float().mean().item() if off.any() else None,
            "approx_kl": approx_kl(cat["log_prob"], cat["old"]).item(),
        }
