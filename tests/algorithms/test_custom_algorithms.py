"""Two algorithms that the project does not ship, written against the algorithm interface alone, train
through the unchanged trainer: a pairwise Diffusion-DPO-style loss and an x0-space forward-process loss
that reads x_t, t and x_0 back and needs the reference model's velocity.

Each is a plan (Flow-GRPO's: fresh groups, advantages), a list of network calls per optimizer step
(:class:`opgrpo_bench.algorithms.base.Call`) and a loss from the returned velocities; nothing else.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pytest
import torch
import torch.nn.functional as F

from opgrpo_bench.algorithms.base import Call, PairLoss, TrainBatch, Velocities
from opgrpo_bench.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig
from opgrpo_bench.results import read_records
from opgrpo_bench.runner import resolve
from opgrpo_bench.trainer import Trainer

pytestmark = pytest.mark.train

FAST = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4"]


def _noised(x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, eps) at one random point of the noising path of each row of ``x0`` [n, *shape]."""
    t = 0.1 + 0.8 * torch.rand(len(x0), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    s = t.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * eps, t, eps


class PairwiseDPO(FlowGRPO):
    """Diffusion-DPO on each group's best (winner) and worst (loser) final sample, at a shared noising point:
    ``-log sigmoid(-b * ((e_w - e_w_ref) - (e_l - e_l_ref)))`` with ``e = |v - (eps - x_0)|^2``."""

    name = "toy-dpo"
    dpo_beta = 50.0

    def calls(self, batch: TrainBatch, blocks: Sequence[torch.Tensor], first_block: int) -> list[Call]:
        ro = batch.rollout
        share = torch.cat(list(blocks)) if blocks else torch.zeros(0, dtype=torch.long)
        winners, losers = [], []
        for g in torch.unique(ro.group_ids).tolist():
            rows = (ro.group_ids == g).nonzero().flatten()
            r = ro.rewards[rows]
            w, l = rows[r.argmax()], rows[r.argmin()]
            if r.max() > r.min() and bool((share == w).any()):  # a pair belongs to the share of its winner
                winners.append(int(w))
                losers.append(int(l))
        if not winners:
            return []
        rows = torch.tensor(winners + losers)
        gen = torch.Generator().manual_seed(ro.seed * 7 + ro.iteration * 31 + first_block)
        x0 = ro.latents_at(rows, ro.num_steps).float()
        n = len(winners)
        _, t, eps = _noised(x0[:n], gen)
        t, eps = torch.cat([t, t]), torch.cat([eps, eps])  # winner and loser share the noising point
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
        return [Call.forward(first_block, rows, x_t, t, 1.0, n, ("reference",), target=eps - x0)]

    def loss(self, batch: TrainBatch, call: Call, velocities: Velocities) -> PairLoss:
        n = call.pairs
        target = call.context["target"]
        err = ((velocities.policy.float() - target) ** 2).flatten(1).mean(1)
        err_ref = ((velocities.reference.float() - target) ** 2).flatten(1).mean(1)
        margin = (err[:n] - err_ref[:n]) - (err[n:] - err_ref[n:])
        loss = -F.logsigmoid(-self.dpo_beta * margin)
        return PairLoss(loss, call.rows[:n], {"dpo": loss.detach()})

    def summarize(self, parts: list[PairLoss], batch: TrainBatch) -> dict[str, Any]:
        return {"loss/total": torch.cat([p.stats["dpo"] for p in parts]).mean().item()}


class X0Regression(FlowGRPO):
    """Advantage-weighted regression in x0 space on the noising path of the final samples, each sample's
    error normalised by the reference model's error at the same point (an adaptive weight)."""

    name = "toy-x0"

    def calls(self, batch: TrainBatch, blocks: Sequence[torch.Tensor], first_block: int) -> list[Call]:
        ro = batch.rollout
        calls = []
        for j, block in enumerate(blocks):
            gen = torch.Generator().manual_seed(ro.seed + 1000 * ro.iteration + first_block + j)
            x0 = ro.latents_at(block, ro.num_steps).float()
            x_t, t, _ = _noised(x0, gen)
            calls.append(Call.forward(first_block + j, block, x_t, t, 1.0, len(block), ("reference",), x0=x0))
        return calls

    def loss(self, batch: TrainBatch, call: Call, velocities: Velocities) -> PairLoss:
        x0, s = call.context["x0"], velocities.sigma.view(-1, 1, 1, 1)
        x0_hat = velocities.x - s * velocities.policy.float()
        x0_ref = velocities.x - s * velocities.reference.float()
        weight = 1.0 / (((x0_ref - x0) ** 2).flatten(1).mean(1) + 1e-3)
        adv = batch.advantages[call.rows].to(x0.device).float()
        loss = torch.sigmoid(adv) * weight * ((x0_hat - x0) ** 2).flatten(1).mean(1)
        drift = ((velocities.policy.detach().float() - velocities.reference.float()) ** 2).flatten(1).mean(1)
        return PairLoss(loss, call.rows, {"x0": loss.detach(), "drift": drift})

    def summarize(self, parts: list[PairLoss], batch: TrainBatch) -> dict[str, Any]:
        cat = {k: torch.cat([p.stats[k] for p in parts]) for k in parts[0].stats}
        return {"loss/total": cat["x0"].mean().item(), "x0/drift": cat["drift"].mean().item()}


def _train(tmp_path, algorithm, steps: int = 2) -> list[dict[str, Any]]:
    r = resolve("digits-v1", "flow-grpo", 0, steps, FAST)
    trainer = Trainer(r.task, algorithm, r.train_config, tmp_path / algorithm.name, algorithm_name=algorithm.name)
    before = [p.detach().clone() for p in trainer.params]
    end = trainer.run(algorithm.name)
    assert end["type"] == "run_end" and end["steps"] == steps
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params))  # it trained
    return [rec for rec in read_records(tmp_path / algorithm.name / "metrics.jsonl") if rec["type"] == "step"]


def test_a_pairwise_dpo_loss_trains_without_trainer_changes(tmp_path):
    steps = _train(tmp_path, PairwiseDPO(FlowGRPOConfig()))
    trained = [s for s in steps if s["train/trained_pairs"]]
    assert trained and all(s["grad_norm"] > 0 for s in trained)
    # the policy starts as the reference (LoRA starts at the identity): the first loss is exactly log 2
    assert math.isclose(trained[0]["loss/total"], math.log(2), rel_tol=1e-6)
    # the reference forward is counted: 2 rows per pair, 2 evaluations per row, on top of the rollout's
    rollout_nfe = 8 * 10
    assert steps[0]["nfe"] == rollout_nfe + 2 * 2 * steps[0]["train/trained_pairs"]


def test_an_x0_space_forward_process_loss_with_a_reference_trains_without_trainer_changes(tmp_path):
    steps = _train(tmp_path, X0Regression(FlowGRPOConfig()))
    assert steps[0]["x0/drift"] == 0.0  # policy == reference before the first update
    assert steps[1]["x0/drift"] > 0.0 and all(s["grad_norm"] > 0 for s in steps)
    assert all(s["train/trained_pairs"] == 4 for s in steps)  # every sample of a share, one point each
