"""What needs no scheduler: the status report read from run directories (every state, the reason of a failed
run, the command), the job's notes (error.json on failure or interruption, none for a lock held by another
writer), the missing-extra message and the launcher keys of run files. The launchers themselves:
tests/test_launchers.py (multi_process)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from opgrpo_bench.errors import RunInterrupted, UserError
from opgrpo_bench.launchers import LaunchOptions, check_launcher, job_request, launch_keys
from opgrpo_bench.launchers import job as job_mod
from opgrpo_bench.launchers.grid import _Tail
from opgrpo_bench.results import RunLock
from opgrpo_bench.status import grid_status, lock_held, report_lines, run_status, summary


def records(run_dir, last_step, end=False, budget=4):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [{"type": "run_start", "budget_steps": budget}, {"type": "eval", "step": 0, "score": 0.1}]
    lines += [{"type": "step", "step": s} for s in range(1, last_step + 1)]
    if end:
        lines.append({"type": "run_end", "censored": False, "steps_to_target": last_step, "best_score": 0.9})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def note(run_dir, name, doc):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / name).write_text(json.dumps(doc))


@pytest.fixture
def grid(tmp_path):
    """One run directory in each state."""
    host = socket.gethostname()
    records(tmp_path / "a-finished", 4, end=True)
    records(tmp_path / "b-running", 2)
    records(tmp_path / "c-failed", 1)
    note(tmp_path / "c-failed", "launch.json", {"launcher": "slurm", "cluster": "slurm", "job_id": "77_1"})
    note(tmp_path / "c-failed", "error.json", {"kind": "failed", "error": "MissingWeightsError",
                                               "message": "weights of sd3.5 are missing", "step": None})
    records(tmp_path / "d-interrupted", 3)
    note(tmp_path / "d-interrupted", "error.json", {"kind": "interrupted", "error": "RunInterrupted",
                                                    "message": "interrupted at step 3", "step": 3})
    note(tmp_path / "e-queued", "launch.json", {"launcher": "ray", "job_id": "task-1", "driver_pid": os.getpid(),
                                                "host": host})
    records(tmp_path / "f-lost", 2)
    note(tmp_path / "f-lost", "launch.json", {"launcher": "slurm", "cluster": "local", "job_id": str(dead_pid()),
                                              "host": host, "stderr": "/logs/9_0_log.err"})
    records(tmp_path / "g-stopped", 2)
    (tmp_path / ".launch").mkdir()  # the schedulers' folder is no run
    (tmp_path / "not-a-run").mkdir()
    lock = RunLock(tmp_path / "b-running")
    lock.acquire()
    yield tmp_path
    lock.release()


def test_status_of_every_state_from_run_directories(grid):
    got = {s.run_id: s for s in grid_status(grid)}
    assert {k: (s.state, s.step, s.budget) for k, s in got.items()} == {
        "a-finished": ("finished", 4, 4), "b-running": ("running", 2, 4), "c-failed": ("failed", 1, 4),
        "d-interrupted": ("interrupted", 3, 4), "e-queued": ("queued", None, None), "f-lost": ("failed", 2, 4),
        "g-stopped": ("stopped", 2, 4)}
    assert got["a-finished"].detail == "target reached at step 4, best 0.9000"
    assert got["c-failed"].detail == "MissingWeightsError: weights of sd3.5 are missing (slurm job 77_1)"
    assert got["d-interrupted"].detail.startswith("interrupted at step 3; resumes from its last checkpoint")
    assert got["e-queued"].detail == f"ray job task-1: driver pid {os.getpid()}"
    assert got["f-lost"].detail.startswith("slurm job ") and "without finishing the run (stopped at step 2)" in \
        got["f-lost"].detail and got["f-lost"].detail.endswith("its log: /logs/9_0_log.err")
    assert summary(list(got.values())) == ("7 runs: 1 finished, 1 running, 1 queued, 1 interrupted, 1 stopped, "
                                           "2 failed")
    assert report_lines([got["b-running"]]) == ["b-running: running step 2/4", "1 run: 1 running"]


def test_lock_probe_sees_a_holder_and_leaves_the_lock_free(tmp_path):
    assert not lock_held(tmp_path)
    with RunLock(tmp_path):
        assert lock_held(tmp_path)
    assert not lock_held(tmp_path)
    with RunLock(tmp_path):  # the probe took nothing
        pass


def test_status_command(grid):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "opgrpo_bench.cli", *args], capture_output=True, text=True,
                              timeout=120)

    res = cli("status", str(grid))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "a-finished: finished step 4/4; target reached at step 4, best 0.9000"
    assert "c-failed: failed step 1/4; MissingWeightsError: weights of sd3.5 are missing (slurm job 77_1)" in lines
    assert lines[-1].startswith("7 runs: 1 finished, 1 running")
    res = cli("status", str(grid), "--json")
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [d["state"] for d in docs] == ["finished", "running", "failed", "interrupted", "queued", "failed",
                                          "stopped"]
    res = cli("status", str(grid / "nowhere"))
    assert res.returncode == 2 and res.stderr.strip() == f"error: '{grid / 'nowhere'}' is not a directory"


def test_missing_extra_is_one_line(monkeypatch):
    import opgrpo_bench.launchers as launchers

    monkeypatch.setattr(launchers, "installed", lambda module: False)
    with pytest.raises(UserError) as info:
        check_launcher("slurm")
    assert str(info.value) == "--launcher slurm needs the optional extra 'slurm': pip install 'opgrpo-bench[slurm]'"
    with pytest.raises(UserError, match=r"^--launcher ray needs the optional extra 'ray': pip install "
                                        r"'opgrpo-bench\[ray\]'$"):
        LaunchOptions(launcher="ray").check()
    check_launcher("local")  # needs nothing


def test_missing_extra_on_the_command_line(tmp_path):
    # submitit hidden from the import system: what a machine without the extra sees
    code = ("import sys; sys.modules['submitit'] = None; sys.argv = ['opgrpo-bench'] + sys.argv[1:]; "
            "from opgrpo_bench.cli import main; main()")
    res = subprocess.run([sys.executable, "-c", code, "run", "--steps", "2", "--out", str(tmp_path), "--launcher",
                          "slurm"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == ("error: --launcher slurm needs the optional extra 'slurm': pip install "
                                  "'opgrpo-bench[slurm]'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options, message", [
    (dict(launcher="slrum"), "unknown launcher 'slrum'. Did you mean: slurm (launchers: local, slurm, ray)"),
    (dict(partition="gpu"), "--partition: only with a cluster launcher; add --launcher slurm or --launcher ray"),
    (dict(wait=False), "--no-wait: only with a cluster launcher; add --launcher slurm or --launcher ray"),
    (dict(launcher="slurm", slurm_cluster="lokal"), "--slurm-cluster must be one of slurm, local, debug, not 'lokal'"),
    (dict(launcher="slurm", gpus_per_run=-1), "--gpus-per-run must be >= 0, got -1"),
])
def test_bad_launch_options(options, message, monkeypatch):
    import opgrpo_bench.launchers as launchers

    monkeypatch.setattr(launchers, "installed", lambda module: True)
    with pytest.raises(UserError) as info:
        LaunchOptions(**options).check()
    assert str(info.value) == message


def test_run_file_launch_keys(tmp_path):
    from opgrpo_bench.specs import load_spec

    path = tmp_path / "run.toml"
    path.write_text('task = "digits-v1"\nlauncher = "slurm"\n[launch]\npartition = "gpu"\ntime_limit = 90\n'
                    'gpus_per_run = 1\nwait = false\n')
    spec = load_spec(path)
    assert spec.launcher == "slurm"
    assert spec.launch == {"partition": "gpu", "time_limit": 90, "gpus_per_run": 1, "wait": False}
    for doc, message in ((dict(launch={"partiton": "gpu"}, launcher="slurm"), "unknown key 'launch.partiton'. "
                          "Did you mean: partition"),
                         (dict(launch={"time_limit": "1h"}, launcher="slurm"), "launch.time_limit must be an integer"),
                         (dict(launch={"partition": "gpu"}), "a [launch] table needs launcher"),
                         (dict(launcher=3), "launcher must be a non-empty string")):
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace(".", r"\.")):
            launch_keys(doc, "f.toml")


def test_job_notes_a_failure_and_raises_it(tmp_path):
    request = job_request("digits-v9", "flow-grpo", 0, str(tmp_path), 2, [], True, None, "r")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "error.json").write_text("{}")  # an earlier attempt's note goes
    with pytest.raises(Exception, match="unknown task 'digits-v9'"):
        job_mod.run_job(request)
    doc = json.loads((tmp_path / "r" / "error.json").read_text())
    assert doc["kind"] == "failed" and doc["error"] == "UnknownNameError"
    assert doc["message"].startswith("unknown task 'digits-v9'")


def test_job_notes_an_interruption_and_returns(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise RunInterrupted(3)

    monkeypatch.setattr("opgrpo_bench.runner.run_one", interrupted)
    request = job_request("digits-v1", "flow-grpo", 0, str(tmp_path), 2, [], True, None, "r")
    assert job_mod.run_job(request) == "interrupted"
    doc = json.loads((tmp_path / "r" / "error.json").read_text())
    assert (doc["kind"], doc["step"], doc["message"]) == ("interrupted", 3, "interrupted at step 3")
    import signal

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_job_leaves_no_note_when_another_writer_holds_the_run(tmp_path, monkeypatch):
    from opgrpo_bench.runner import resolve

    monkeypatch.setattr(job_mod, "LOCK_RETRIES", 1)
    monkeypatch.setattr(job_mod.time, "sleep", lambda s: None)
    run_id = resolve("digits-v1", "flow-grpo", 0, 2).run_id
    request = job_request("digits-v1", "flow-grpo", 0, str(tmp_path), 2, [], True, None, run_id)
    with RunLock(tmp_path / run_id):
        with pytest.raises(UserError, match="is being written by another process"):
            job_mod.run_job(request)
    assert not (tmp_path / run_id / "error.json").exists()


def test_sigterm_interrupts_like_ctrl_c():
    import signal

    previous = signal.signal(signal.SIGTERM, job_mod._sigterm)
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs between bytecodes
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_several_gpus_run_through_accelerate_launch():
    request = job_request("digits-v1", "op-grpo", 2, "/runs", 80, ["lr=0.001"], False, ["wandb"], "r", gpus=4)
    cmd = job_mod.accelerate_command(request)
    assert cmd[1:7] == ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4", "-m"]
    assert cmd[7:] == ["opgrpo_bench.cli", "run", "--task", "digits-v1", "--algorithm", "op-grpo", "--seed", "2",
                       "--out", "/runs", "-j", "1", "--steps", "80", "--set", "lr=0.001", "--log", "wandb", "--fresh"]


def test_tail_reads_whole_new_lines_and_starts_over_on_a_rewrite(tmp_path):
    tail = _Tail(tmp_path)
    assert tail.read() == []
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2')
    assert tail.read() == [{"step": 1}]
    with path.open("a") as f:
        f.write('}\n')
    assert tail.read() == [{"step": 2}]
    tmp = tmp_path / "x"
    tmp.write_text('{"step": 1}\n')
    tmp.replace(path)  # a resume rewrites the file (atomically: a new inode)
    assert tail.read() == [{"step": 1}]


@pytest.mark.parametrize("name", ["reference-slurm.toml", "reference-ray.toml"])
def test_example_files_name_the_reference_suite_and_valid_launch_options(name, monkeypatch):
    from pathlib import Path

    import opgrpo_bench.launchers as launchers
    from opgrpo_bench.specs import load_spec

    monkeypatch.setattr(launchers, "installed", lambda module: True)
    spec = load_spec(Path(__file__).parent.parent / "examples" / name)
    assert spec.suite == "reference" and spec.launcher == name.split("-")[1].split(".")[0]
    LaunchOptions(launcher=spec.launcher, **spec.launch).check()
