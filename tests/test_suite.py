"""Suites: every named suite resolves, and a grid runs in worker processes and resumes."""

import json

from opgrpo_bench.runner import resolve
from opgrpo_bench.suite import SUITES, run_grid

SMALL = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4"]


def test_every_suite_resolves():
    for suite in SUITES.values():
        combos = suite.combos()
        assert combos and len(set(combos)) == len(combos)
        for task, algorithm, seed in combos:
            resolve(task, algorithm, seed, suite.steps, list(suite.sets))


def test_grid_in_two_worker_processes_then_skips_finished_runs(tmp_path):
    combos = [("digits-v1", "flow-grpo", 0), ("digits-v1", "op-grpo", 0)]
    ends = run_grid(combos, tmp_path, steps=2, sets=SMALL, jobs=2)
    assert [e["type"] for e in ends] == ["run_end", "run_end"]
    paths = [tmp_path / f"digits-v1__{a}__seed0" / "metrics.jsonl" for _, a, _ in combos]
    before = [p.read_text() for p in paths]
    assert all(json.loads(t.splitlines()[0])["type"] == "run_start" for t in before)
    again = run_grid(combos, tmp_path, steps=2, sets=SMALL, jobs=1)
    assert again == ends and [p.read_text() for p in paths] == before
