"""Bad input through the real entry point (``opgrpo_bench.cli.main``, which maps user errors to exit 2).

Every case must give exit code 2, exactly one non-empty output line starting with ``error:``, no
traceback, nothing new on disk and every file already there byte-for-byte unchanged. No model may load
(the trainer is replaced by one that fails the test) and no worker process may start.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from opgrpo_bench import cli

RUN = ["run", "--task", "digits-v1", "--algorithm", "op-grpo", "--out", "runs", "-j", "1"]
FLOW = ["run", "--task", "digits-v1", "--algorithm", "flow-grpo", "--out", "runs", "-j", "1"]


def sets(*items: str) -> list[str]:
    return [*RUN, *(a for item in items for a in ("--set", item))]


CASES: list[tuple[str, list[str], str]] = [
    # unknown names, with suggestions
    ("unknown-task", ["run", "--task", "digit-v1", "--out", "runs"], "unknown task 'digit-v1'. Did you mean: digits-v1"),
    ("unknown-algorithm", ["run", "--algorithm", "op-grpoo", "--out", "runs"],
     "unknown algorithm 'op-grpoo'. Did you mean: op-grpo"),
    ("unknown-suite", ["run", "--suite", "quik", "--out", "runs"], "unknown suite 'quik'. Did you mean: quick"),
    ("unknown-reward", ["score", "--reward", "digit-clasifier", "--prompt", "a 3", "img.png"],
     "unknown reward 'digit-clasifier'. Did you mean: digit-classifier"),
    ("unknown-list-kind", ["list", "taskz"], "unknown list kind 'taskz'. Did you mean: tasks"),
    ("unknown-setting", sets("t_of=3"), "unknown setting 't_of' for algorithm 'op-grpo'. Did you mean: t_off"),
    ("other-algorithms-setting", [*FLOW, "--set", "t_off=3"], "setting 't_off' does not apply to algorithm 'flow-grpo'"),
    # invalid settings (ranges)
    ("group-size-1", sets("group_size=1"), "invalid setting group_size=1: must be in [2, 1024]"),
    ("group-size-0", sets("group_size=0"), "invalid setting group_size=0: must be in [2, 1024]"),
    ("prompts-per-iter-0", sets("prompts_per_iter=0"), "invalid setting prompts_per_iter=0: must be in [1, 4096]"),
    ("eval-every-0", sets("eval_every=0"), "invalid setting eval_every=0: must be >= 1"),
    ("set-steps-0", sets("steps=0"), "invalid setting steps=0: must be >= 1"),
    ("num-steps-0", sets("num_steps=0"), "invalid setting num_steps=0: must be in [1, 1000]"),
    ("eval-num-steps-0", sets("eval_num_steps=0"), "invalid setting eval_num_steps=0: must be in [1, 1000]"),
    ("lr-0", sets("lr=0"), "invalid setting lr=0: must be > 0"),
    ("lr-negative", sets("lr=-1e-3"), "invalid setting lr=-0.001: must be > 0"),
    ("lr-nan", sets("lr=nan"), "invalid setting lr=nan: must be a number, not NaN"),
    ("lr-inf", sets("lr=inf"), "invalid setting lr=inf: must be finite"),
    ("noise-level-0", sets("noise_level=0"), "invalid setting noise_level=0: must be > 0"),
    ("noise-level-inf", sets("noise_level=inf"), "invalid setting noise_level=inf: must be finite"),
    ("clip-range-0", sets("clip_range=0"), "invalid setting clip_range=0: must be > 0"),
    ("beta-negative", sets("beta=-0.1"), "invalid setting beta=-0.1: must be >= 0"),
    ("t-off-0", sets("t_off=0"), "invalid setting t_off=0: must be >= 1"),
    ("replay-proportion-1", sets("replay_proportion=1"), "invalid setting replay_proportion=1: must be in [0, 1)"),
    ("replay-proportion-negative", sets("replay_proportion=-0.1"),
     "invalid setting replay_proportion=-0.1: must be in [0, 1)"),
    ("buffer-capacity-0", sets("buffer_capacity=0"), "invalid setting buffer_capacity=0: must be >= 1"),
    ("buffer-decay-negative", sets("buffer_decay=-1"), "invalid setting buffer_decay=-1: must be >= 0"),
    ("logprob-reduction", sets("logprob_reduction=avg"),
     "invalid setting logprob_reduction=avg: must be one of 'mean', 'sum'"),
    ("correction", sets("correction=full"),
     "invalid value 'full' for setting 'correction' (expected one of 'sequence', 'naive', 'none')"),
    ("suffix", sets("suffix=euler"), "invalid value 'euler' for setting 'suffix' (expected one of 'sde', 'ode')"),
    ("ema-decay-1", sets("ema_decay=1"), "invalid setting ema_decay=1: must be in [0, 1)"),
    ("adam-betas-one", sets("adam_betas=0.9"), "invalid setting adam_betas=0.9: must be 2 numbers in [0, 1)"),
    ("adam-betas-range", sets("adam_betas=0.9,1.5"), "invalid setting adam_betas=0.9,1.5: must be 2 numbers in [0, 1)"),
    ("optimizer-steps-0", sets("optimizer_steps_per_iter=0"), "invalid setting optimizer_steps_per_iter=0: must be in [1, 1024]"),
    ("optimizer-steps-too-many", sets("optimizer_steps_per_iter=100", "prompts_per_iter=2", "group_size=4"),
     "invalid setting optimizer_steps_per_iter=100: must be <= prompts_per_iter * group_size = 8"),
    ("train-fraction-0", sets("train_fraction=0"), "invalid setting train_fraction=0: must be in (0, 1]"),
    ("train-fraction-trains-nothing", sets("train_fraction=0.05"),
     "invalid setting train_fraction=0.05: with num_steps=10 it trains no denoising step"),
    ("lora-rank-0", sets("lora_rank=0"), "invalid setting lora_rank=0: must be in [1, 1024]"),
    ("grad-clip-0", sets("grad_clip=0"), "invalid setting grad_clip=0: must be > 0"),
    # the reference recipes' own settings
    ("sde-noise-level-0", [*FLOW[:4], "flow-grpo-fast-ref", *FLOW[5:], "--set", "sde_noise_level=0"],
     "invalid setting sde_noise_level=0: must be > 0"),
    ("kl-beta-negative", [*FLOW[:4], "diffusion-nft-ref", *FLOW[5:], "--set", "kl_beta=-1"],
     "invalid setting kl_beta=-1: must be >= 0"),
    ("shared-noise-not-bool", [*FLOW[:4], "mixgrpo-ref", *FLOW[5:], "--set", "shared_noise=maybe"],
     "invalid value 'maybe' for setting 'shared_noise' (expected true or false)"),
    ("recipe-setting-on-common-preset", [*FLOW[:4], "mixgrpo", *FLOW[5:], "--set", "shared_noise=true"],
     "setting 'shared_noise' does not apply to algorithm 'mixgrpo' (it is a setting of mixgrpo-ref)"),
    # settings the lead is adding to TrainConfig (the message names the setting either way)
    ("micro-batch-0", sets("micro_batch=0"), "micro_batch"),
    ("ema-update-interval-0", sets("ema_update_interval=0"), "ema_update_interval"),
    ("cfg-detach-uncond-not-bool", sets("cfg_detach_uncond=maybe"), "cfg_detach_uncond"),
    # bad types
    ("int-given-float", sets("group_size=2.5"), "invalid value '2.5' for setting 'group_size' (expected an integer)"),
    ("int-given-bool", sets("group_size=true"), "invalid value 'true' for setting 'group_size' (expected an integer)"),
    ("int-given-none", sets("t_off=none"), "invalid value 'none' for setting 't_off' (expected an integer)"),
    ("float-given-word", sets("lr=fast"), "invalid value 'fast' for setting 'lr' (expected a number)"),
    ("bool-given-word", sets("global_std=maybe"), "invalid value 'maybe' for setting 'global_std' (expected true or false)"),
    ("tuple-given-word", sets("adam_betas=high"), "invalid value 'high' for setting 'adam_betas'"),
    # malformed --set
    ("set-without-equals", sets("noequals"), "--set expects key=value, got 'noequals'"),
    ("set-without-key", sets("=3"), "--set expects key=value, got '=3'"),
    ("set-seed", sets("seed=3"), "choose seeds with --seed (repeatable), not --set seed=..."),
    # command-line options
    ("steps-0", [*RUN, "--steps", "0"], "--steps must be positive, got 0"),
    ("steps-negative", [*RUN, "--steps", "-1"], "--steps must be positive, got -1"),
    ("steps-not-a-number", [*RUN, "--steps", "abc"], "'--steps'"),
    ("jobs-0", ["run", "-j", "0", "--out", "runs"], "-j/--jobs must be >= 1, got 0"),
    ("jobs-negative", [*RUN, "--jobs", "-3"], "-j/--jobs must be >= 1, got -3"),
    ("jobs-not-a-number", [*RUN, "--jobs", "x"], "'--jobs'"),
    ("seed-negative", [*RUN, "--seed", "-1"], f"invalid --seed -1: must be in [0, {2**32 - 1}]"),
    ("seed-past-2-32", [*RUN, "--seed", str(2**32)], f"invalid --seed {2**32}: must be in [0, {2**32 - 1}]"),
    ("lora-rank-huge", sets("lora_rank=10000000"), "lora_rank"),
    ("micro-batch-huge", sets("micro_batch=100000000"), "micro_batch"),
    ("group-size-huge", sets("group_size=1000000"), "group_size"),
    ("eval-steps-huge", sets("eval_num_steps=5000000"), "eval_num_steps"),
    ("seed-not-a-number", [*RUN, "--seed", "one"], "'--seed'"),
    ("unknown-option", [*RUN, "--stpes", "3"], "No such option: --stpes"),
    ("missing-option-value", ["run", "--task"], "'--task' requires an argument"),
    ("suite-with-grid-options", ["run", "--suite", "quick", "--task", "digits-v1", "--out", "runs"],
     "--suite runs a fixed grid; it cannot be combined with --task"),
    ("quick-with-steps", ["run", "--quick", "--steps", "5", "--out", "runs"],
     "--quick runs a fixed grid; it cannot be combined with --steps"),
    ("quick-and-other-suite", ["run", "--quick", "--suite", "default", "--out", "runs"],
     "--quick is the suite 'quick'; it cannot be combined with --suite default"),
    # output directories
    ("out-is-a-file", [*RUN, "--out", "notes.txt"], "--out 'notes.txt' exists and is not a directory"),
    ("out-under-a-file", [*RUN, "--out", "notes.txt/runs"],
     "--out 'notes.txt/runs' cannot be created: 'notes.txt' is a file, not a directory"),
    ("suite-out-is-a-file", ["run", "--suite", "quick", "--out", "notes.txt"],
     "--out 'notes.txt' exists and is not a directory"),
    ("suite-leaderboard-out-is-a-file", ["run", "--quick", "--out", "runs", "--leaderboard-out", "notes.txt"],
     "--leaderboard-out 'notes.txt' exists and is not a directory"),
    ("out-unwritable-filesystem", [*RUN, "--out", "/proc/opgrpo-bench-test/runs"], "is not writable"),
    ("out-read-only", [*RUN, "--out", "readonly/runs"], "--out 'readonly/runs' (its parent 'readonly') is not writable"),
    # leaderboard
    ("leaderboard-missing-dir", ["leaderboard", "missing", "--out", "report"], "runs directory 'missing' does not exist"),
    ("leaderboard-no-results", ["leaderboard", "empty", "--out", "report"],
     "no results files (metrics.jsonl) found under 'empty'"),
    ("leaderboard-runs-is-a-file", ["leaderboard", "notes.txt", "--out", "report"],
     "runs directory 'notes.txt' is not a directory"),
    ("leaderboard-out-is-a-file", ["leaderboard", "runs", "--out", "notes.txt"],
     "--out 'notes.txt' exists and is not a directory"),
    # score
    ("score-missing-image", ["score", "--reward", "digit-classifier", "--prompt", "a 3", "missing.png"],
     "image 'missing.png' does not exist"),
    ("score-bad-metadata", ["score", "--reward", "digit-classifier", "--prompt", "a 3", "--metadata", "[1]",
                            "img.png"], "--metadata must be a JSON object"),
    ("latent-dtype-bad", sets("latent_dtype=float64"), "invalid setting latent_dtype=float64: must be one of 'float32', 'bfloat16', 'float16'"),
    # data parallelism: checked before any process starts
    ("num-processes-0", [*RUN, "--num-processes", "0"], "--num-processes must be >= 1"),
    ("num-processes-suite", ["run", "--quick", "--out", "runs", "--num-processes", "2"],
     "--num-processes trains given runs (--task/--algorithm/--seed or a run file), not a suite"),
    ("num-processes-bad-setting", [*sets("lr=0"), "--num-processes", "2"], "invalid setting lr=0: must be > 0"),
    ("fsdp-one-process", [*RUN, "--fsdp"],
     "--fsdp shards the weights over several processes: add --num-processes N (N >= 2)"),
    ("log-unknown", [*RUN, "--log", "tensorbord"], "unknown --log 'tensorbord'. Did you mean: tensorboard"),
    # eval
    ("eval-not-a-run", ["eval", "empty"], "empty is not a run directory (no metrics.jsonl or metrics.jsonl.gz)"),
    ("eval-no-adapter", ["eval", "runs/digits-v1__op-grpo__seed0"], "has no ema adapter (lora_ema/"),
    ("eval-images-not-png", ["eval", "runs/digits-v1__op-grpo__seed0", "--save-images", "grid.jpg"],
     "does not end in .png"),
    ("eval-final-no-adapter", ["eval", "runs/digits-v1__op-grpo__seed0", "--adapter", "final"],
     "has no final adapter (lora/pytorch_lora_weights.safetensors is missing: the run did not finish)"),
    ("eval-bad-adapter", ["eval", "runs/digits-v1__op-grpo__seed0", "--adapter", "best"],
     "--adapter must be one of final, ema, not 'best'"),
    ("eval-unknown-task", ["eval", "runs/digits-v1__op-grpo__seed0", "--task", "digit-v1"],
     "unknown task 'digit-v1'. Did you mean: digits-v1"),
    # run and suite files (TOML)
    ("spec-missing", ["run", "missing.toml"], "spec file 'missing.toml' does not exist"),
    ("spec-not-toml", ["run", "notes.txt"], "notes.txt is not valid TOML"),
    ("spec-unknown-key", ["run", "spec-typo.toml"], "spec-typo.toml: unknown key 'tasks'. Did you mean: task"),
    ("spec-bad-type", ["run", "spec-type.toml"], "spec-type.toml: steps must be an integer, not '5'"),
    ("spec-bad-setting", ["run", "spec-lr.toml"], "invalid setting lr=0: must be > 0"),
    ("spec-unknown-algorithm", ["run", "spec-algo.toml"], "unknown algorithm 'op-grpoo'. Did you mean: op-grpo"),
    ("spec-grid-missing-key", ["run", "spec-grid.toml"], "spec-grid.toml: grid 1 needs exactly the keys tasks, "
                                                         "algorithms, seeds (missing: seeds)"),
    ("spec-and-flags", ["run", "spec-lr.toml", "--seed", "1"],
     "a spec file cannot be combined with --seed; put them in spec-lr.toml"),
    ("score-missing-reward-option", ["score", "--prompt", "a 3", "img.png"], "Missing option '--reward'"),
]


def _records(*records: dict) -> str:
    return "".join(json.dumps({"schema": "opgrpo-bench/v1", **r}) + "\n" for r in records)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding a finished run, a report, a plain file and an empty directory."""
    run = tmp_path / "runs" / "digits-v1__op-grpo__seed0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(_records(
        {"type": "run_start", "run_id": run.name, "task": "digits-v1", "task_version": "v1",
         "algorithm": "op-grpo", "seed": 0, "target": 0.9, "higher_is_better": True, "budget_steps": 10},
        {"type": "eval", "step": 0, "samples": 0, "nfe": 0, "wall_s": 0.0, "score": 0.5},
        {"type": "eval", "step": 10, "samples": 640, "nfe": 6400, "wall_s": 3.0, "score": 0.95},
        {"type": "run_end", "status": "completed", "steps_to_target": 10, "censored": False}))
    (run / "checkpoint.safetensors").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "leaderboard-out").mkdir()
    (tmp_path / "leaderboard-out" / "LEADERBOARD.md").write_text("# an earlier report\n")
    (tmp_path / "notes.txt").write_text("not a directory\n")
    specs = {"spec-typo.toml": 'tasks = "digits-v1"\n', "spec-type.toml": 'task = "digits-v1"\nsteps = "5"\n',
             "spec-lr.toml": 'task = "digits-v1"\nout = "runs"\n[set]\nlr = 0\n',
             "spec-algo.toml": 'algorithm = "op-grpoo"\nout = "runs"\n',
             "spec-grid.toml": '[[grid]]\ntasks = ["digits-v1"]\nalgorithms = ["flow-grpo"]\n'}
    for name, text in specs.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "empty").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    (tmp_path / "readonly").mkdir()
    monkeypatch.chdir(tmp_path)

    def no_model(*args, **kwargs):
        raise AssertionError("a model would load: the input should have been refused before")

    monkeypatch.setattr("opgrpo_bench.trainer.Trainer.__init__", no_model)
    monkeypatch.setattr("opgrpo_bench.suite.ProcessPoolExecutor", no_model)
    return tmp_path


def snapshot(root: Path) -> dict[str, str | None]:
    """Every path under ``root``: a file's SHA-256, None for a directory."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def invoke(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``opgrpo-bench ARGV`` through ``cli.main``; returns (exit code, stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", ["opgrpo-bench", *argv])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _unwritable_probe_succeeds(path: Path) -> bool:
    try:
        (path / ".probe").write_text("x")
    except OSError:
        return False
    (path / ".probe").unlink()
    return True


@pytest.mark.parametrize("argv, needle", [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(argv: list[str], needle: str, workspace: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    if "readonly/runs" in argv:
        os.chmod(workspace / "readonly", 0o555)
        if _unwritable_probe_succeeds(workspace / "readonly"):  # root ignores permissions
            os.chmod(workspace / "readonly", 0o755)
            pytest.skip("permissions do not stop this user (root); see out-unwritable-filesystem")
    if any(a.startswith("/proc/") for a in argv) and not Path("/proc").is_dir():
        pytest.skip("no /proc on this system")
    before = snapshot(workspace)
    try:
        code, output = invoke(argv, monkeypatch, capsys)
    finally:
        os.chmod(workspace / "readonly", 0o755)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, output
    assert "Traceback" not in output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert needle in lines[0], lines[0]
    assert snapshot(workspace) == before  # nothing written, nothing changed, nothing removed


@pytest.fixture
def bad_task(monkeypatch: pytest.MonkeyPatch):
    """Register task 'bad-defaults-v1' (digits-v1 with the given train_defaults) for one test."""
    import dataclasses

    from opgrpo_bench.registry import TASKS, Entry
    from opgrpo_bench.tasks.digits import DIGITS_V1

    def make(**defaults):
        spec = dataclasses.replace(DIGITS_V1, id="bad-defaults-v1",
                                   train_defaults={**DIGITS_V1.train_defaults, **defaults})
        TASKS.names()  # built-ins first, so that the temporary entry does not hide them
        monkeypatch.setitem(TASKS._entries, "bad-defaults-v1", Entry("bad-defaults-v1", spec))
        return spec
    return make


@pytest.mark.parametrize("defaults, needle", [
    pytest.param({"grop_size": 4}, "task 'bad-defaults-v1' has an unknown setting 'grop_size' in its train_defaults "
                 "(neither a trainer setting nor any algorithm's). Did you mean: group_size, window_size?", id="unknown-key"),
    pytest.param({"group_size": 1}, "invalid setting group_size=1 (from the defaults of task 'bad-defaults-v1'): "
                 "must be in [2, 1024]", id="out-of-range"),
    pytest.param({"group_size": True}, "invalid setting group_size=true (from the defaults of task 'bad-defaults-v1'): "
                 "must be an integer", id="bool-for-int"),
    pytest.param({"num_steps": 10.0}, "invalid setting num_steps=10 (from the defaults of task 'bad-defaults-v1'): "
                 "must be an integer", id="float-for-int"),
    pytest.param({"adam_betas": (0.9,)}, "invalid setting adam_betas=0.9 (from the defaults of task "
                 "'bad-defaults-v1'): must be 2 numbers in [0, 1)", id="short-tuple"),
    pytest.param({"lr": float("nan")}, "invalid setting lr=nan (from the defaults of task 'bad-defaults-v1'): "
                 "must be a number, not NaN", id="nan"),
])
def test_bad_task_defaults_are_refused(defaults, needle, bad_task, workspace, monkeypatch, capsys) -> None:
    bad_task(**defaults)
    before = snapshot(workspace)
    code, output = invoke(["run", "--task", "bad-defaults-v1", "--out", "runs", "-j", "1"], monkeypatch, capsys)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in output and lines == [f"error: {needle}"], output
    assert snapshot(workspace) == before


def test_a_task_naming_an_unknown_backbone_is_refused(workspace, monkeypatch, capsys) -> None:
    import dataclasses

    from opgrpo_bench.registry import TASKS, Entry
    from opgrpo_bench.tasks.digits import DIGITS_V1

    spec = dataclasses.replace(DIGITS_V1, id="bad-backbone-v1", backbone="digits-v1-bsae")
    TASKS.names()  # built-ins first, so that the temporary entry does not hide them
    monkeypatch.setitem(TASKS._entries, "bad-backbone-v1", Entry("bad-backbone-v1", spec))
    before = snapshot(workspace)
    code, output = invoke(["run", "--task", "bad-backbone-v1", "--out", "runs", "-j", "1"], monkeypatch, capsys)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in output and len(lines) == 1, output
    assert lines[0].startswith("error: task 'bad-backbone-v1' names an unknown backbone 'digits-v1-bsae'. "
                               "Did you mean: digits-v1-base"), lines[0]
    assert snapshot(workspace) == before


def test_another_algorithms_setting_in_task_defaults_is_fine(bad_task) -> None:
    from opgrpo_bench.runner import find_run_dir, resolve

    bad_task(t_off=3, replay_proportion=0.25)
    assert resolve("bad-defaults-v1", "flow-grpo", 0).train_config.group_size == 8  # ignored by flow-grpo
    op = resolve("bad-defaults-v1", "op-grpo", 0).algorithm.config
    assert (op.t_off, op.replay_proportion) == (3, 0.25)
    # the preset's override wins over the task's default (resolution order: task, preset, --set)
    assert resolve("bad-defaults-v1", "op-grpo-rho5", 0).algorithm.config.replay_proportion == 0.05
    assert resolve("bad-defaults-v1", "op-grpo-rho5", 0, sets=["replay_proportion=0.5"]) \
        .algorithm.config.replay_proportion == 0.5
