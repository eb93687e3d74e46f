"""What runs inside a scheduler's job (a Slurm job, a Ray task): one run, through the same
:func:`opgrpo_bench.runner.run_one` as the local runner, and a JSON note in the run directory when it does
not finish.

- SIGTERM (what Slurm sends a preempted or cancelled job) interrupts the run like Ctrl-C: the trainer keeps
  what it wrote and the requeued job resumes exactly from the last checkpoint.
- A run that fails writes ``error.json`` (``kind`` ``failed``: the error's type and one-line message); an
  interrupted one writes it with ``kind`` ``interrupted`` and the last step written. A job that starts the
  run again removes it first. It is JSON, never a pickle: the report (:mod:`opgrpo_bench.status`) reads it.
- A run that uses several GPUs (``gpus`` > 1) is trained by ``accelerate launch`` over that many processes
  inside the job, as ``--num-processes`` does on one machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

ERROR_FILE = "error.json"
LAUNCH_FILE = "launch.json"
LOCK_RETRIES = 5
"""A run whose lock is taken is tried again this many times, a second apart: ``opgrpo-bench status`` probes
the lock for an instant, which a starting job must not take for a second writer."""


def _sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the run winds down, then the job exits
    raise KeyboardInterrupt


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def _note(run_dir: Path, kind: str, error: str, message: str, step: int | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / ERROR_FILE, {
        "kind": kind, "error": error, "message": " ".join(message.split()), "step": step,
        "host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")})


def _lock_taken(err: BaseException) -> bool:
    return "is being written by another process" in str(err)


def accelerate_command(request: dict[str, Any]) -> list[str]:
    """``accelerate launch`` of this one run over ``request['gpus']`` processes (the CLI, local launcher)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           str(request["gpus"]), "-m", "opgrpo_bench.cli", "run", "--task", request["task"], "--algorithm",
           request["algorithm"], "--seed", str(request["seed"]), "--out", request["out"], "-j", "1"]
    if request.get("steps") is not None:
        cmd += ["--steps", str(request["steps"])]
    for item in request.get("sets") or []:
        cmd += ["--set", item]
    for mirror in request.get("log") or []:
        cmd += ["--log", mirror]
    if not request.get("resume", True):
        cmd += ["--fresh"]
    return cmd


def _run_launched(request: dict[str, Any], resume: bool) -> None:
    """Several GPUs: the run's processes in a child; SIGTERM is passed on, its ``error:`` line kept."""
    import subprocess

    cmd = accelerate_command({**request, "resume": resume})
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    previous = signal.signal(signal.SIGTERM, lambda s, f: proc.send_signal(signal.SIGTERM))
    try:
        tail: list[str] = []
        for line in proc.stderr:  # type: ignore[union-attr]
            sys.stderr.write(line)
            tail = (tail + [line.rstrip()])[-20:]
        code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code == 130:
        raise KeyboardInterrupt
    if code:
        from opgrpo_bench.errors import UserError

        said = [line[len("error: "):] for line in tail if line.startswith("error: ")]
        raise UserError(said[-1] if said else f"accelerate launch exited with code {code}: {' '.join(tail[-3:])}")


def run_job(request: dict[str, Any]) -> str:
    """Train the run of ``request`` (:func:`opgrpo_bench.launchers.job_request`); returns its state
    (``finished`` or ``interrupted``). A failure is noted in ``error.json``, then raised, so that the
    scheduler records the job as failed too."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from opgrpo_bench.errors import RunInterrupted
    from opgrpo_bench.runner import run_one

    run_dir = Path(request["out"]) / request["run_id"]
    resume = bool(request.get("resume", True))
    # a --fresh job that Slurm requeues must continue, not retrain again
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        resume = True
    if threading_main():
        signal.signal(signal.SIGTERM, _sigterm)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    try:
        for attempt in range(LOCK_RETRIES + 1):
            try:
                if int(request.get("gpus") or 0) > 1:
                    _run_launched(request, resume)
                else:
                    run_one(request["task"], request["algorithm"], int(request["seed"]), out=request["out"],
                            steps=request.get("steps"), sets=list(request.get("sets") or []), resume=resume,
                            log=list(request.get("log") or []) or None)
                return "finished"
            except Exception as err:
                if not _lock_taken(err) or attempt == LOCK_RETRIES:
                    raise
                time.sleep(1.0)
    except RunInterrupted as err:
        _note(run_dir, "interrupted", "RunInterrupted", f"interrupted at step {err.step}", err.step)
        return "interrupted"
    except KeyboardInterrupt:
        _note(run_dir, "interrupted", "KeyboardInterrupt", "interrupted before training started")
        return "interrupted"
    except Exception as err:
        if not _lock_taken(err):  # the other writer's run is fine: its directory gets no note from this job
            _note(run_dir, "failed", type(err).__name__, str(err) or type(err).__name__)
        raise
    finally:
        if threading_main():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return "finished"


def threading_main() -> bool:
    """Signal handlers can be set only in the main thread (a Ray task may run elsewhere)."""
    import threading

    return threading.current_thread() is threading.main_thread()
