"""Run and suite files: a TOML file means exactly what the equivalent flags mean."""

import json

import pytest

from opgrpo_bench import cli
from opgrpo_bench.specs import load_spec
from opgrpo_bench.runner import find_run_dir

SMALL = '[set]\nprompts_per_iter = 2\ngroup_size = 4\neval_every = 2\neval_num_steps = 4\n'


def _main(argv, monkeypatch):
    monkeypatch.setattr("sys.argv", ["opgrpo-bench", *argv])
    try:
        cli.main()
    except SystemExit as exit_:
        return exit_.code
    return 0


@pytest.mark.train
def test_a_run_file_is_its_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text('task = "digits-v1"\nalgorithm = ["flow-grpo"]\nseed = 0\nsteps = 2\n'
                                       'out = "runs"\njobs = 1\n' + SMALL)
    assert _main(["run", "run.toml"], monkeypatch) in (0, None)
    metrics = find_run_dir(tmp_path / "runs", "digits-v1", "flow-grpo", 0) / "metrics.jsonl"
    before = metrics.read_bytes()
    first = capsys.readouterr().out.strip().splitlines()[-1]
    # the same run through the flags has the same configuration hash: returned as it is, not retrained
    flags = ["run", "-t", "digits-v1", "-a", "flow-grpo", "-s", "0", "--steps", "2", "--out", "runs", "-j", "1",
             "--set", "prompts_per_iter=2", "--set", "group_size=4", "--set", "eval_every=2",
             "--set", "eval_num_steps=4"]
    assert _main(flags, monkeypatch) in (0, None)
    assert capsys.readouterr().out.strip().splitlines()[-1] == first and metrics.read_bytes() == before
    start = json.loads(before.splitlines()[0])
    assert start["config"]["train"]["prompts_per_iter"] == 2 and start["budget_steps"] == 2


@pytest.mark.train
def test_a_suite_file_runs_its_grids_then_the_leaderboard(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suite.toml").write_text(
        'suite = "mine"\nsteps = 2\nout = "runs"\nleaderboard_out = "report"\njobs = 1\n' + SMALL
        + '[[grid]]\ntasks = ["digits-v1"]\nalgorithms = ["flow-grpo", "op-grpo"]\nseeds = [0]\n')
    spec = load_spec(tmp_path / "suite.toml")
    assert spec.grids == [(("digits-v1",), ("flow-grpo", "op-grpo"), (0,))] and "group_size=4" in spec.sets
    assert _main(["run", "suite.toml"], monkeypatch) in (0, None)
    rows = json.loads((tmp_path / "report" / "leaderboard.json").read_text())
    # the suite's --set trainer settings are its setup, shown with the task
    assert {(r["task"].split(" [")[0], r["algorithm"]) for r in rows["rows"]} == {("digits-v1", "flow-grpo"),
                                                                                 ("digits-v1", "op-grpo")}
    assert len(list((tmp_path / "runs").iterdir())) == 2
    assert find_run_dir(tmp_path / "runs", "digits-v1", "flow-grpo", 0) and find_run_dir(tmp_path / "runs",
                                                                                           "digits-v1", "op-grpo", 0)


def test_toml_values_become_the_text_of_set():
    from opgrpo_bench.specs import _setting

    assert [_setting(v) for v in (3e-3, True, 8, "sde", [0.9, 0.999])] == ["0.003", "true", "8", "sde",
                                                                            "[0.9,0.999]"]
