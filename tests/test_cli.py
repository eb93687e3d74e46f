"""The command line: listing, one-line errors with exit code 2, a real (tiny) run."""

import json
import subprocess
import sys

import pytest
from opgrpo_bench.runner import find_run_dir


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


@pytest.mark.train
def test_run_writes_schema_records_and_skips_finished_runs(tmp_path):
    args = ["run", "--task", "digits-v1", "--algorithm", "op-grpo", "--seed", "0", "--steps", "2",
            "--out", str(tmp_path), "--set", "prompts_per_iter=2", "--set", "group_size=4",
            "--set", "eval_every=2", "--set", "eval_num_steps=4", "-j", "1"]
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    path = find_run_dir(tmp_path, "digits-v1", "op-grpo", 0) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["type"] for r in records] == ["run_start", "eval", "step", "step", "eval", "run_end"]
    assert records[0]["config"]["train"]["group_size"] == 4
    assert "digits-v1 op-grpo seed 0" in res.stdout
    before = path.read_text()
    res = cli(*args)  # finished: skipped, file untouched
    assert res.returncode == 0 and path.read_text() == before


# -- in-process through cli.main (the exit-code mapping), with the training replaced ---------------------

def main_(argv, monkeypatch, capsys):
    from opgrpo_bench import cli as cli_mod

    monkeypatch.setattr(sys, "argv", ["opgrpo-bench", *argv])
    code = 0
    try:
        cli_mod.main()
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _raising(exc):
    def run_grid(*args, **kwargs):
        raise exc
    return run_grid


@pytest.mark.parametrize("exc, line", [
    ("run", "interrupted at step 7; run the same command again to resume"),
    ("grid", "interrupted: 2 of 5 runs finished and are kept; run the same command again to resume the others "
             "from their last checkpoint"),
    ("ctrl-c", "interrupted; finished runs are kept and unfinished ones resume from their last checkpoint"),
])
def test_ctrl_c_is_one_line_and_exit_code_130(exc, line, tmp_path, monkeypatch, capsys):
    from opgrpo_bench.errors import RunInterrupted
    from opgrpo_bench.suite import GridInterrupted

    error = {"run": RunInterrupted(7), "grid": GridInterrupted(2, 5), "ctrl-c": KeyboardInterrupt()}[exc]
    monkeypatch.setattr("opgrpo_bench.suite.run_grid", _raising(error))
    code, out, err = main_(["run", "--seed", "0", "--out", str(tmp_path)], monkeypatch, capsys)
    assert code == 130
    assert [l for l in (out + err).splitlines() if l.strip()] == [line]


def test_repeated_names_and_seeds_collapse(tmp_path, monkeypatch, capsys):
    seen = {}

    def run_grid(combos, out, steps, sets, jobs, resume, console, log=None):
        seen.update(combos=combos, jobs=jobs)
        return [{"steps_to_target": 3, "censored": False, "best_score": None, "final_score": 0.5, "wall_s": 1.0}
                for _ in combos]

    monkeypatch.setattr("opgrpo_bench.suite.run_grid", run_grid)
    code, out, err = main_(["run", "-t", "digits", "-t", "digits-v1", "-a", "op-grpo", "-a", "OP_GRPO",
                            "-s", "1", "-s", "1", "-s", "0", "--out", str(tmp_path)], monkeypatch, capsys)
    assert code == 0, err
    assert seen == {"combos": [("digits-v1", "op-grpo", 1), ("digits-v1", "op-grpo", 0)], "jobs": 2}
    assert "best n/a, final 0.5000" in out  # a run without a best score is printed, not a crash


def test_leaderboard_default_output_is_not_the_committed_leaderboard(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs" / "r"
    runs.mkdir(parents=True)
    (runs / "metrics.jsonl").write_text("".join(json.dumps({"schema": "opgrpo-bench/v1", **r}) + "\n" for r in [
        {"type": "run_start", "task": "toy-v1", "task_version": "v1", "algorithm": "flow-grpo", "seed": 0,
         "target": 0.5, "higher_is_better": True, "budget_steps": 10},
        {"type": "eval", "step": 0, "score": 0.6}, {"type": "run_end", "status": "completed"}]))
    (tmp_path / "leaderboard").mkdir()
    (tmp_path / "leaderboard" / "LEADERBOARD.md").write_text("committed\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = main_(["leaderboard", "runs"], monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "leaderboard" / "LEADERBOARD.md").read_text() == "committed\n"
    assert (tmp_path / "leaderboard-out" / "index.html").is_file()


def test_version_prints_the_installed_version(monkeypatch, capsys):
    from importlib.metadata import version

    code, out, err = main_(["--version"], monkeypatch, capsys)
    assert code in (0, None) and out.strip() == f"opgrpo-bench {version('opgrpo-bench')}" and not err.strip()


def test_help_and_list_import_no_torch():
    """`--help` and `list` answer at once: the CLI imports no torch, scipy or matplotlib until a command needs
    them (checked by module, not by time)."""
    code = ("import sys; from opgrpo_bench import cli; from opgrpo_bench.registry import ALGORITHMS, TASKS, REWARDS;"
            "import opgrpo_bench.algorithms, opgrpo_bench.tasks, opgrpo_bench.rewards, opgrpo_bench.backbones;"
            "heavy = [m for m in ('torch', 'scipy', 'matplotlib', 'diffusers') if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_bad_run_file_with_several_processes_is_one_line(tmp_path):
    """With --num-processes every run is checked before any process starts: one line, not one per rank and
    the launcher's report."""
    (tmp_path / "bad.toml").write_text('task = "digit-v1"\nalgorithm = ["flow-grpo"]\nseed = 0\nout = "runs"\n')
    done = subprocess.run([sys.executable, "-m", "opgrpo_bench.cli", "run", str(tmp_path / "bad.toml"),
                           "--num-processes", "2"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: unknown task 'digit-v1'")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("env, needle", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but no launcher started this process"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
])
def test_a_leftover_world_size_is_one_line(tmp_path, env, needle):
    """A WORLD_SIZE left in the environment by another job: one line, no process group, no traceback."""
    import os

    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, "-m", "opgrpo_bench.cli", "run", "-t", "digits-v1", "--steps", "1",
                           "--out", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120,
                          env={**clean, **env})
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and needle in lines[0], done.stderr
