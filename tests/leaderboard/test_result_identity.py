"""A result's identity includes its configuration: a ``--set`` variant gets its own run directory and its
own leaderboard row, and runs of one row that differ in configuration or budget are split with a warning,
never merged (the case reproduced: a replay_proportion=0.25 run beside a default run of another budget)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from opgrpo_bench.leaderboard.load import load_runs
from opgrpo_bench.leaderboard.report import build_leaderboard
from opgrpo_bench.runner import find_run_dir, resolve, run_one

FAST = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4"]


def test_a_variant_gets_its_own_run_id_and_the_preset_keeps_its_own():
    preset = resolve("digits-v1", "op-grpo", 0, 4, [])
    assert preset.variant == preset.setup == "" and preset.run_id == "digits-v1__op-grpo__seed0"
    variant = resolve("digits-v1", "op-grpo", 0, 4, ["replay_proportion=0.25"])
    assert variant.variant == "replay_proportion=0.25" and variant.setup == ""
    setup = resolve("digits-v1", "op-grpo", 0, 4, ["group_size=4"])
    assert setup.setup == "group_size=4" and setup.variant == "" and setup.run_id != preset.run_id
    assert variant.run_id.startswith("digits-v1__op-grpo+") and variant.run_id.endswith("__seed0")
    # a --set that repeats a default is no variant; the same variant always gets the same id
    assert resolve("digits-v1", "op-grpo", 0, 4, ["replay_proportion=0.125"]).run_id == preset.run_id
    assert resolve("digits-v1", "op-grpo", 1, 9, ["replay_proportion=0.25"]).run_id.split("__")[1] == \
        variant.run_id.split("__")[1]


@pytest.mark.train
def test_a_variant_and_the_preset_never_share_a_row(tmp_path):
    run_one("digits-v1", "op-grpo", 0, out=tmp_path, steps=4, sets=FAST)
    run_one("digits-v1", "op-grpo", 0, out=tmp_path, steps=4, sets=FAST + ["replay_proportion=0.25"])
    run_one("digits-v1", "flow-grpo", 0, out=tmp_path, steps=4, sets=FAST)
    assert len(list(tmp_path.glob("*/metrics.jsonl"))) == 3
    doc = build_leaderboard(tmp_path, tmp_path / "lb")
    rows = {r["algorithm"]: r for r in doc["rows"]}
    # the trainer settings (FAST) are the setup all three share; the algorithm setting makes its own row
    assert sorted(rows) == ["flow-grpo", "op-grpo", "op-grpo[replay_proportion=0.25]"]
    assert all(r["seeds"] == 1 and r["task"].startswith("digits-v1 [") for r in rows.values())
    assert rows["op-grpo"]["speedup_vs_flow_grpo"] is not None  # compared with the reference of its setup


def _copy_run(src: Path, dst: Path, **start_changes) -> None:
    """A copy of a run directory whose run_start is changed (as a hand-made or older result would be)."""
    dst.mkdir(parents=True)
    lines = (src / "metrics.jsonl").read_text().splitlines()
    start = json.loads(lines[0])
    for key, value in start_changes.items():
        if key == "lr":
            start["config"]["train"]["lr"] = value
        else:
            start[key] = value
    (dst / "metrics.jsonl").write_text("\n".join([json.dumps(start), *lines[1:]]) + "\n")


@pytest.mark.train
def test_runs_of_one_row_that_differ_in_configuration_or_budget_are_split_with_a_warning(tmp_path):
    run_one("digits-v1", "flow-grpo", 0, out=tmp_path / "a", steps=2, sets=FAST)
    src = find_run_dir(tmp_path / "a", "digits-v1", "flow-grpo", 0)
    _copy_run(src, tmp_path / "runs" / "r0", seed=0)
    _copy_run(src, tmp_path / "runs" / "r1", seed=1)
    _copy_run(src, tmp_path / "runs" / "r2", seed=2, lr=0.1)  # another configuration, no variant recorded
    _copy_run(src, tmp_path / "runs" / "r3", seed=3, budget_steps=99)  # another budget
    loaded = load_runs(tmp_path / "runs")
    labels = sorted({r.algorithm for r in loaded.runs})
    assert labels[0] == "flow-grpo" and len(labels) == 3
    assert any(label.startswith("flow-grpo[config ") for label in labels)
    assert "flow-grpo[budget 99]" in labels
    assert [i.message for i in loaded.issues if "differ in configuration or budget" in i.message]
    shutil.rmtree(tmp_path / "a")
