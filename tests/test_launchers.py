"""The cluster launchers on one machine: submitit's local executor (Slurm's job code path: pickled job,
signal handlers, requeue) and a local Ray instance. A 4-run grid through each gives records identical to the
local runner's; a job stopped by SIGTERM mid-run (a Slurm preemption) resumes exactly when submitted again;
``--no-wait`` returns at once and ``opgrpo-bench status`` follows the runs after the command has exited.

Needs the extras ``slurm`` and ``ray`` (each test skips without its own); ``multi_process``: the jobs are
separate processes, so each test takes tens of seconds on 2 cores.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opgrpo_bench.launchers import LaunchOptions
from opgrpo_bench.results import read_records
from opgrpo_bench.suite import run_grid

sys.path.insert(0, str(Path(__file__).parent / "training"))
from small import FAST, comparable  # noqa: E402

pytestmark = pytest.mark.multi_process

COMBOS = [("digits-v1", a, s) for a in ("flow-grpo", "op-grpo") for s in (0, 1)]
DROP = ("wall_s", "start_time", "wall_s_to_target")
SLURM = dict(launcher="slurm", slurm_cluster="local", poll_s=0.5)


def runs_of(out: Path) -> dict[str, list[dict]]:
    return {d.name: comparable(read_records(d / "metrics.jsonl"), DROP) for d in sorted(out.iterdir())
            if (d / "metrics.jsonl").exists()}


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    ends = run_grid(COMBOS, out, steps=2, sets=FAST, jobs=1)
    return out, ends


def same_as_local(out: Path, ends: list[dict], local_runs) -> None:
    local_out, local_ends = local_runs
    want = runs_of(local_out)
    assert len(want) == 4 and runs_of(out) == want
    assert [comparable([e], DROP) for e in ends] == [comparable([e], DROP) for e in local_ends]


def test_slurm_local_executor_grid_equals_local(tmp_path, local_runs):
    pytest.importorskip("submitit")
    ends = run_grid(COMBOS, tmp_path, steps=2, sets=FAST, launch=LaunchOptions(**SLURM))
    same_as_local(tmp_path, ends, local_runs)
    notes = [json.loads((tmp_path / d / "launch.json").read_text()) for d in runs_of(tmp_path)]
    assert {n["launcher"] for n in notes} == {"slurm"} and len({n["job_id"] for n in notes}) == 4
    # again: every run is finished, nothing is submitted and the same records come back
    before = {d.name: (d / "launch.json").read_text() for d in tmp_path.iterdir() if d.name != ".launch"}
    assert run_grid(COMBOS, tmp_path, steps=2, sets=FAST, launch=LaunchOptions(**SLURM)) == ends
    assert {d.name: (d / "launch.json").read_text() for d in tmp_path.iterdir() if d.name != ".launch"} == before


def test_ray_grid_equals_local(tmp_path, local_runs):
    pytest.importorskip("ray")
    ends = run_grid(COMBOS, tmp_path, steps=2, sets=FAST, launch=LaunchOptions(launcher="ray", poll_s=0.5))
    same_as_local(tmp_path, ends, local_runs)


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "opgrpo_bench.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def status_of(out: Path) -> dict[str, dict]:
    res = cli("status", str(out), "--json")
    assert res.returncode == 0, res.stderr
    return {d["run_id"]: d for d in map(json.loads, res.stdout.splitlines())}


def wait_for(predicate, timeout=240.0, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def test_killed_slurm_job_resumes_exactly_and_status_follows_after_the_command_exits(tmp_path):
    """SIGTERM (what Slurm sends on preemption) stops the job mid-run; status says so from the run directory;
    the same command submits it again and the records equal an uninterrupted run's."""
    pytest.importorskip("submitit")
    from opgrpo_bench.runner import resolve, run_one

    steps, sets = 12, FAST
    args = ["run", "-t", "digits-v1", "-a", "op-grpo", "-s", "0", "--steps", str(steps), "--out", str(tmp_path),
            *[x for s in sets for x in ("--set", s)], "--launcher", "slurm", "--slurm-cluster", "local"]
    res = cli(*args, "--no-wait")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("submitted 1 run to Slurm (local executor).")
    run_id = resolve("digits-v1", "op-grpo", 0, steps, sets).run_id  # the settings' own run directory
    run_dir = tmp_path / run_id

    def lock_pid():
        text = (run_dir / ".lock").read_text().strip() if (run_dir / ".lock").exists() else ""
        return int(text) if text else None

    def records():
        path = run_dir / "metrics.jsonl"
        return read_records(path) if path.exists() else []

    pid = wait_for(lock_pid)  # the job's process holds the run's lock
    os.kill(pid, signal.SIGSTOP)
    # the same command while the job runs: it is followed, not submitted twice
    again = cli(*args, "--no-wait")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("submitted 0 runs to Slurm (local executor); 1 already running or queued.")
    assert len(list((tmp_path / ".launch" / "slurm").glob("[0-9]*"))) == 1
    os.kill(pid, signal.SIGCONT)
    # let the job run in short slices, stopped in between, so that SIGTERM surely lands mid-run
    while True:
        os.kill(pid, signal.SIGSTOP)
        got = records()
        if any(r.get("type") == "step" and r["step"] >= 2 for r in got):
            break
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.1)
    assert not any(r.get("type") == "run_end" for r in got)
    os.kill(pid, signal.SIGTERM)  # what Slurm sends a preempted job
    os.kill(pid, signal.SIGCONT)
    wait_for(lambda: (run_dir / "error.json").exists(), every=0.2)
    doc = wait_for(lambda: status_of(tmp_path)[run_id]["state"] == "interrupted"
                   and status_of(tmp_path)[run_id], every=1.0)
    stopped_at = json.loads((run_dir / "error.json").read_text())["step"]
    assert 2 <= stopped_at < steps and doc["step"] == stopped_at
    assert doc["detail"].startswith(f"interrupted at step {stopped_at} (slurm job ")
    # the same command, waiting this time: a new job resumes the run and finishes it
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert "digits-v1 op-grpo seed 0: target" in res.stdout
    assert not (run_dir / "error.json").exists()
    run_one("digits-v1", "op-grpo", 0, out=tmp_path / "whole", steps=steps, sets=sets)
    assert runs_of(tmp_path)[run_id] == runs_of(tmp_path / "whole")[run_id]
    assert status_of(tmp_path)[run_id]["state"] == "finished"


def test_ray_no_wait_then_status_then_the_same_command_reports(tmp_path, local_runs, request):
    pytest.importorskip("ray")
    args = ["run", "-t", "digits-v1", "-a", "flow-grpo", "-a", "op-grpo", "-s", "0", "-s", "1", "--steps", "2",
            "--out", str(tmp_path), *[x for s in FAST for x in ("--set", s)], "--launcher", "ray"]
    res = cli(*args, "--no-wait")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("submitted 4 runs to Ray.")
    driver = json.loads(next(tmp_path.glob("*/launch.json")).read_text())["driver_pid"]

    def stop_driver():  # a failed test leaves no driver behind
        try:
            os.kill(driver, signal.SIGTERM)
        except ProcessLookupError:
            pass

    request.addfinalizer(stop_driver)
    first = status_of(tmp_path)  # the submitting command has exited; its background driver works
    assert len(first) == 4 and {d["state"] for d in first.values()} <= {"queued", "running", "finished"}
    wait_for(lambda: all(d["state"] == "finished" for d in status_of(tmp_path).values()), every=2.0)
    res = cli(*args)  # nothing left to run: reports
    assert res.returncode == 0, res.stderr
    assert len([line for line in res.stdout.splitlines() if ": target " in line]) == 4
    same_as_local(tmp_path, [], (local_runs[0], []))


def test_a_run_that_fails_in_its_job_says_why(tmp_path, monkeypatch):
    """Missing weights are found when the job loads the model (planning does not load it): the job notes
    why, the grid names the run and the reason, and status says the same after the command."""
    pytest.importorskip("submitit")
    from opgrpo_bench.errors import UserError

    monkeypatch.setenv("OPGRPO_SD35M_PATH", str(tmp_path / "no-weights"))  # the local jobs inherit it
    with pytest.raises(UserError, match=r"^1 of 1 runs failed: ocr-sd35m-smoke-v1__flow-grpo__seed0: "
                                        r"(MissingWeightsError|UserError): .*SD3\.5"):
        run_grid([("ocr-sd35m-smoke-v1", "flow-grpo", 0)], tmp_path, steps=1, launch=LaunchOptions(**SLURM))
    doc = status_of(tmp_path)["ocr-sd35m-smoke-v1__flow-grpo__seed0"]
    assert doc["state"] == "failed" and "SD3.5" in doc["detail"]
