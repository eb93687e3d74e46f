"""The command line: listing, one-line errors with exit code 2, a real (tiny) run."""

import json
import subprocess
import sys

import pytest


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "opgrpo_bench.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, needle", [
    (["run", "--task", "digit-v1", "--algorithm", "flow-grpo"], "unknown task 'digit-v1'. Did you mean: digits-v1"),
    (["run", "--task", "digits-v1", "--algorithm", "op-grpoo"], "unknown algorithm 'op-grpoo'. Did you mean: op-grpo"),
    (["run", "--algorithm", "op-grpo", "--set", "t_of=3"], "unknown setting 't_of' for algorithm 'op-grpo'. Did you mean: t_off"),
    (["run", "--algorithm", "op-grpo", "--set", "t_off=abc"], "invalid value 'abc' for setting 't_off'"),
    (["run", "--set", "noequals"], "--set expects key=value"),
    (["run", "--steps", "0", "--seed", "0"], "--steps must be positive"),
    (["list", "taskz"], "unknown list kind 'taskz'"),
])
def test_user_errors_give_one_line_and_exit_code_2(args, needle, tmp_path):
    res = cli(*args, "--out", str(tmp_path)) if args[0] == "run" else cli(*args)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_list_shows_every_registry():
    res = cli("list")
    assert res.returncode == 0
    for name in ("flow-grpo", "op-grpo-naive-is", "digits-v1", "digit-classifier", "ocr", "sd3"):
        assert name in res.stdout


def test_run_writes_schema_records_and_skips_finished_runs(tmp_path):
    args = ["run", "--task", "digits-v1", "--algorithm", "op-grpo", "--seed", "0", "--steps", "2",
            "--out", str(tmp_path), "--set", "prompts_per_iter=2", "--set", "group_size=4",
            "--set", "eval_every=2", "--set", "eval_num_steps=4", "-j", "1"]
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    path = tmp_path / "digits-v1__op-grpo__seed0" / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["type"] for r in records] == ["run_start", "eval", "step", "step", "eval", "run_end"]
    assert records[0]["config"]["train"]["group_size"] == 4
    assert "digits-v1 op-grpo seed 0" in res.stdout
    before = path.read_text()
    res = cli(*args)  # finished: skipped, file untouched
    assert res.returncode == 0 and path.read_text() == before
