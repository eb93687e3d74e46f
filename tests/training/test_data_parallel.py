"""Data parallelism: a run over 2 gloo processes computes what the 1-process run computes.

Both runs use the same micro_batch (2 rows per block, so each optimizer step has 2 blocks and both ranks
train). Sampling, rewards, advantages and the buffer are identical by design; the gradient is summed in
another order (rank 0's blocks, then rank 1's), so step metrics agree to rounding (1e-5 relative), and the
step-0 evaluation, before any update, is identical.
"""

import math
import os
import signal
import subprocess
import sys
import time

import pytest

from opgrpo_bench.results import read_records
from opgrpo_bench.runner import find_run_dir, resolve

pytestmark = pytest.mark.train  # every test runs `opgrpo-bench run` (one or two processes)

SETS = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4", "micro_batch=2",
        "replay_proportion=0.5"]


def _run(out, processes: int, steps: int, timeout: float = 300, algorithm: str = "op-grpo", sets=None):
    argv = [sys.executable, "-m", "opgrpo_bench.cli", "run", "-t", "digits-v1", "-a", algorithm, "-s", "0",
            "--steps", str(steps), "--out", str(out), "--num-processes", str(processes)]
    for item in SETS if sets is None else sets:
        argv += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return read_records(find_run_dir(out, "digits-v1", algorithm, 0) / "metrics.jsonl")


def _close(a, b, rel=1e-5):
    if a is None or b is None:
        return a == b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def _compare(one, two, keys=("loss/total", "grad_norm", "train/reward_mean", "samples", "nfe", "op/buffer_size")):
    worst = 0.0
    steps1 = [r for r in one if r["type"] == "step"]
    steps2 = [r for r in two if r["type"] == "step"]
    assert [r["step"] for r in steps1] == [r["step"] for r in steps2]
    for a, b in zip(steps1, steps2):
        for key in keys:
            assert _close(a.get(key), b.get(key)), (a["step"], key, a.get(key), b.get(key))
    evals1 = [r for r in one if r["type"] == "eval"]
    evals2 = [r for r in two if r["type"] == "eval"]
    assert [r["step"] for r in evals1] == [r["step"] for r in evals2]
    assert evals1[0]["score"] == evals2[0]["score"] and evals1[0]["gold"] == evals2[0]["gold"]
    for a, b in zip(evals1, evals2):
        worst = max(worst, abs(a["score"] - b["score"]))
    return worst


def test_two_gloo_processes_match_one(tmp_path):
    one = _run(tmp_path / "one", 1, steps=4)
    two = _run(tmp_path / "two", 2, steps=4)
    assert one[0]["world_size"] == 1 and two[0]["world_size"] == 2
    assert two[0]["config_hash"] == one[0]["config_hash"]  # the process count is not a setting
    worst = _compare(one, two)
    assert worst < 1e-4  # far below the score changes training makes


@pytest.mark.multi_process
def test_twenty_steps_and_the_largest_eval_difference(tmp_path, capsys):
    one = _run(tmp_path / "one", 1, steps=20, timeout=900)
    two = _run(tmp_path / "two", 2, steps=20, timeout=900)
    worst = _compare(one, two)
    with capsys.disabled():
        print(f"\n20 steps, 1 vs 2 processes: largest eval-score difference {worst:.3g}")
    assert worst < 1e-3


@pytest.mark.multi_process
def test_killing_one_rank_ends_the_run_with_an_error(tmp_path):
    argv = [sys.executable, "-m", "opgrpo_bench.cli", "run", "-t", "digits-v1", "-a", "op-grpo", "-s", "0",
            "--steps", "200", "--out", str(tmp_path), "--num-processes", "2"]
    for item in SETS:
        argv += ["--set", item]
    err_file = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err_file,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    metrics = tmp_path / resolve("digits-v1", "op-grpo", 0, 200, SETS).run_id / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"type": "step"' in metrics.read_text()):
        time.sleep(0.5)
    assert metrics.exists(), "the run did not start"
    # the CLI starts torchrun, whose children are the training ranks (each in a session of its own)
    def children(pid: int) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        return [int(p) for p in out]

    workers = [w for agent in children(proc.pid) for w in children(agent)]
    assert len(workers) == 2, workers
    victim = workers[-1]
    os.kill(victim, signal.SIGKILL)
    def alive() -> list[int]:
        return [w for w in workers if subprocess.run(["kill", "-0", str(w)], capture_output=True).returncode == 0]

    try:
        code = proc.wait(timeout=120)  # a run that went on would run 200 steps; TimeoutExpired fails the test
        # the other rank must go too: wait for it (a generous deadline that only ends a failing test), since
        # how long it takes to notice its peer's death depends on the machine's load
        deadline = time.monotonic() + 60
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = alive()
    finally:
        for pid in workers:  # whatever is left of the launch
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert code != 0
    assert not survivors, f"ranks {survivors} outlived the run"
    err_file.close()
    lines = [line for line in (tmp_path / "stderr.txt").read_text().splitlines() if line.strip()]
    # one line naming what stopped and how to resume, not the launcher's report
    assert len(lines) == 1 and lines[0].startswith("error: training process ") and "SIGKILL" in lines[0], lines
    assert "Traceback" not in "\n".join(lines)


@pytest.mark.multi_process
def test_a_two_process_run_resumes_like_one(tmp_path):
    """4 steps over 2 processes, then the same run continued to 6 (from its kept final checkpoint):
    the records of a 6-step 1-process run."""
    _run(tmp_path / "two", 2, steps=4)
    two = _run(tmp_path / "two", 2, steps=6)
    one = _run(tmp_path / "one", 1, steps=6)
    assert [r["step"] for r in two if r["type"] == "step"] == list(range(1, 7))
    _compare(one, two)


@pytest.mark.multi_process
def test_a_forward_process_objective_over_two_processes(tmp_path):
    """DiffusionNFT's training points are seeded per block, so they do not depend on the process count."""
    sets = [x for x in SETS if not x.startswith("replay_proportion")]
    one = _run(tmp_path / "one", 1, steps=4, algorithm="diffusion-nft", sets=sets)
    two = _run(tmp_path / "two", 2, steps=4, algorithm="diffusion-nft", sets=sets)
    _compare(one, two, keys=("loss/total", "grad_norm", "train/reward_mean", "nfe", "nft/velocity_drift"))
