"""Flow-GRPO-Fast and MixGRPO: where the SDE window lies, and that only it is sampled stochastically and trained."""

import pytest
import torch

from opgrpo_bench.registry import ALGORITHMS
from opgrpo_bench.results import read_records
from opgrpo_bench.runner import run_one

FAST = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4"]


def test_flow_grpo_fast_draws_a_two_step_window_in_the_first_half():
    algo = ALGORITHMS.get("flow-grpo-fast").build()
    assert algo.window_limit(10) == 4  # floor(0.5 * 10) = 5 transitions, a 2-step window starts at 0..3
    gen = torch.Generator().manual_seed(0)
    starts = set()
    for it in range(200):
        mask = algo.window(10, it, gen)
        idx = mask.nonzero().flatten().tolist()
        assert len(idx) == 2 and idx[1] == idx[0] + 1
        starts.add(idx[0])
    assert starts == {0, 1, 2, 3}


def test_mixgrpo_slides_every_shift_interval_iterations_and_stops_at_the_end_of_its_range():
    algo = ALGORITHMS.get("mixgrpo").build()
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    starts = [int(algo.window(10, it, gen).nonzero()[0]) for it in (0, 9, 10, 19, 20, 30, 39, 40, 1000)]
    assert starts == [0, 0, 1, 1, 2, 3, 3, 3, 3]
    assert torch.equal(gen.get_state(), state)  # deterministic: it draws nothing
    whole = ALGORITHMS.get("mixgrpo").build(window_range=1.0, stride=2)
    assert [int(whole.window(10, it, gen).nonzero()[0]) for it in (0, 10, 30, 40, 90)] == [0, 2, 6, 8, 8]


@pytest.mark.train
def test_only_the_window_is_sde_and_trained(tmp_path):
    run_one("digits-v1", "mixgrpo", 0, out=tmp_path, steps=2, sets=FAST)
    steps = [r for r in read_records(next(tmp_path.glob("*/metrics.jsonl"))) if r["type"] == "step"]
    # 2 groups x 4 rows; a share of 4 rows; 2 trained transitions each (groups with equal rewards excepted)
    assert all(r["train/sde_window_start"] == 0 for r in steps)
    assert all(r["train/trained_pairs"] in (0, 4, 8) for r in steps) and any(r["train/trained_pairs"] for r in steps)
    algo = ALGORITHMS.get("flow-grpo-fast").build()
    plan = algo.plan(2, 4, 10, 0, torch.Generator().manual_seed(1), lambda n: list(range(n)))
    assert plan.sde_steps is not None and int(plan.sde_steps.sum()) == 2
