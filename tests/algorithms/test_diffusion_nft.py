"""diffusion-nft: the likelihood-free forward-process loss by hand, its gradient, and a run through the trainer."""

import pytest
import torch

from opgrpo_bench.algorithms.diffusion_nft import nft_loss
from opgrpo_bench.registry import ALGORITHMS
from opgrpo_bench.results import read_records
from opgrpo_bench.runner import run_one

FAST = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4"]


def test_nft_loss_by_hand():
    v, v_old, u = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 1.0]]), torch.tensor([[0.0, 1.0]])
    beta, r = 0.5, torch.tensor([0.75])
    pos = (1 - beta) * v_old + beta * v  # [0.75, 1.5]
    neg = (1 + beta) * v_old - beta * v  # [0.25, 0.5]
    want = 0.75 * ((0.75 - 0) ** 2 + (1.5 - 1) ** 2) / 2 + 0.25 * ((0.25 - 0) ** 2 + (0.5 - 1) ** 2) / 2
    assert torch.allclose(nft_loss(v, v_old, u, r, beta), torch.tensor([want]))
    assert torch.equal(pos, torch.tensor([[0.75, 1.5]])) and torch.equal(neg, torch.tensor([[0.25, 0.5]]))


def test_at_the_sampling_policy_the_gradient_is_reward_weighted_flow_matching():
    """With v = v_old, d loss / d v = 2 beta (2r - 1) (v - u) / D: good samples regress to their target,
    bad ones are pushed away, and r = 1/2 gives nothing."""
    g = torch.Generator().manual_seed(0)
    v_old, u = torch.randn((3, 4), generator=g), torch.randn((3, 4), generator=g)
    r = torch.tensor([1.0, 0.0, 0.5])
    v = v_old.clone().requires_grad_(True)
    nft_loss(v, v_old, u, r, beta=1.0).sum().backward()
    want = 2 * (2 * r[:, None] - 1) * (v_old - u) / 4
    assert torch.allclose(v.grad, want, atol=1e-6)


@pytest.mark.train
def test_a_run_trains_on_the_forward_process(tmp_path):
    run_one("digits-v1", "diffusion-nft", 0, out=tmp_path, steps=2, sets=FAST)
    records = read_records(next(tmp_path.glob("*/metrics.jsonl")))
    steps = [r for r in records if r["type"] == "step"]
    assert steps[0]["nft/velocity_drift"] == 0.0  # the first step's weights are the sampling weights
    assert steps[1]["nft/velocity_drift"] > 0.0
    assert all(r["train/trained_pairs"] % 4 == 0 and r["grad_norm"] > 0 for r in steps)  # 4 points per sample
