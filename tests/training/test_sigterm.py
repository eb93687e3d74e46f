"""SIGTERM (Slurm preemption, ``docker stop``, Kubernetes) ends a run like Ctrl-C: one line with the resume
command, exit status 143, the last checkpoint kept; running the same command again resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from opgrpo_bench.runner import find_run_dir, resolve

from small import FAST, comparable, run_records

pytestmark = pytest.mark.train

ARGS = ["run", "-t", "digits-v1", "-a", "flow-grpo", "-s", "0", "--steps", "6"] + [
    a for kv in FAST for a in ("--set", kv)]


def _cli(out: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "opgrpo_bench.cli", *ARGS, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for_a_step(metrics: Path, proc: subprocess.Popen, limit_s: float = 300) -> None:
    """Until the run has written a step record (a condition of the run, not of time; bounded)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and '"type": "step"' in metrics.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"no step record within {limit_s} s (exit {proc.poll()})")


def test_sigterm_prints_the_resume_line_exits_143_and_the_rerun_is_exact(tmp_path):
    out = tmp_path / "runs"
    run_dir = out / resolve("digits-v1", "flow-grpo", 0, 6, FAST).run_id
    proc = _cli(out)
    _wait_for_a_step(run_dir / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    last = [line for line in err.splitlines() if line.strip()][-1]  # after the progress board's lines
    assert last.startswith("terminated (SIGTERM) at step ") and last.endswith(
        "run the same command again to resume"), err
    assert "Traceback" not in err
    assert (run_dir / "checkpoint.safetensors").exists()

    again = _cli(out)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    whole = _cli(tmp_path / "whole")
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    assert comparable(run_records(run_dir / "metrics.jsonl")) == comparable(
        run_records(find_run_dir(tmp_path / "whole", "digits-v1", "flow-grpo", 0) / "metrics.jsonl"))
