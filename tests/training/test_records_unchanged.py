"""Same seed, same records: short runs against records saved before the algorithm-interface refactor.

``records/*.jsonl`` were written by the trainer before :mod:`opgrpo_bench.algorithms.base` existed
(7 steps, evaluation every 3, 2 groups of 4, OP-GRPO replaying one group per iteration). A change that
is meant to leave the numbers alone must keep them; a change that is meant to alter them regenerates the
files and says so in its commit.

The files were written on one machine; another CPU's BLAS kernels round matmuls differently (measured: a
step-0 eval score 1.2e-7 apart, losses up to 1.3e-5 apart after 7 steps, per-step log-ratios up to 3e-6).
So integers, strings and booleans must be equal, and floats equal within ``abs 2e-5 + rel 1e-4``: far
below what a changed number would move (the clip range on a log-ratio is 1e-4, a learning step moves a
loss by 1e-3 or more). Bit-for-bit equality on one machine is what ``test_resume_exact.py`` checks.
"""

import json
import math
from pathlib import Path
from typing import Any

import pytest

from opgrpo_bench.results import read_records
from opgrpo_bench.runner import run_one

from small import FAST

pytestmark = pytest.mark.train  # every case trains 7 steps

RECORDS = Path(__file__).parent / "records"
DROP = ("wall_s", "start_time", "wall_s_to_target", "run_id", "device", "git_sha", "versions", "config_hash",
        "config", "fsdp", "setup", "variant")  # fsdp, setup, variant: run_start fields that came after the records


MECHANISM = ("op/replay_stored_reward", "op/replay_new_reward", "op/replay_advantage", "op/replay_best_fresh_reward",
             "op/replay_revived_frac", "op/replay_adv_mass_share", "op/abs_logw_median", "op/abs_logw_p90",
             "op/abs_logw_max", "op/w_ess_frac")
"""OP-GRPO's mechanism diagnostics, step-record keys added after the records were saved (nothing else moved)."""


def is_gold(key: str) -> bool:
    return key == "gold" or key.startswith("gold/") or key.startswith("gold_reward")


REL_TOL, ABS_TOL = 1e-4, 2e-5


def assert_close(got: Any, want: Any, path: str = "") -> None:
    """``got == want`` with floats compared within (REL_TOL, ABS_TOL) and everything else exactly."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{path}: keys {set(got) ^ set(want)}"
        for key in want:
            assert_close(got[key], want[key], f"{path}/{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        assert math.isclose(got, want, rel_tol=REL_TOL, abs_tol=ABS_TOL), f"{path}: {got!r} != {want!r}"
    else:
        assert got == want and type(got) is type(want), f"{path}: {got!r} != {want!r}"


def test_the_comparison_catches_a_changed_number():
    assert_close({"a": [1, 0.5, "x"]}, {"a": [1, 0.5 + 1e-6, "x"]})
    for bad in ({"a": [1, 0.51, "x"]}, {"a": [2, 0.5, "x"]}, {"a": [1, 0.5, "y"]}, {"a": [1, 0.5]}, {"b": []}):
        with pytest.raises(AssertionError):
            assert_close(bad, {"a": [1, 0.5, "x"]})


CASES = {
    "flow-grpo": ("flow-grpo", FAST + ["eval_every=3"]),
    "op-grpo": ("op-grpo", FAST + ["replay_proportion=0.5", "eval_every=3"]),
    "op-grpo-ode-suffix": ("op-grpo", FAST + ["replay_proportion=0.5", "suffix=ode", "eval_every=3"]),
    "op-grpo-naive-is": ("op-grpo-naive-is", FAST + ["replay_proportion=0.5", "eval_every=3"]),
    "op-grpo-no-truncation": ("op-grpo-no-truncation", FAST + ["replay_proportion=0.5", "eval_every=3"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_records_equal_the_saved_ones(tmp_path, name):
    algorithm, sets = CASES[name]
    run_one("digits-v1", algorithm, 0, out=tmp_path, steps=7, sets=sets)
    records = read_records(next(tmp_path.glob("*/metrics.jsonl")))
    # the gold metric came later and only reads the eval images: every eval record has it, nothing else moved
    evals = [r for r in records if r["type"] == "eval"]
    assert evals and all(0.0 <= r["gold"] <= 1.0 for r in evals)
    got = [{k: v for k, v in r.items() if k not in DROP and k not in MECHANISM and not is_gold(k)} for r in records]
    got = [json.loads(json.dumps(r, sort_keys=True)) for r in got]
    want = [json.loads(line) for line in (RECORDS / f"{name}.jsonl").read_text().splitlines()]
    assert_close(got, want)
