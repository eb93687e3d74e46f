"""What the runs under a results directory are doing, read from their run directories alone
(``opgrpo-bench status DIR``; the cluster launchers' progress uses the same reading).

A run directory says everything needed, whichever launcher placed it and whether or not the command that
submitted it is still there:

- **finished**: its results file has a ``run_end`` record;
- **running**: its lock (``.lock``, :class:`~opgrpo_bench.results.RunLock`) is held by a live process;
- **failed**: the job left ``error.json`` of kind ``failed`` (the error's type and message: why);
- **interrupted**: the job left ``error.json`` of kind ``interrupted`` (SIGTERM, a preemption, Ctrl-C) and
  the step it stopped at; it resumes from its last checkpoint when requeued or run again;
- **queued**: submitted (``launch.json``) and its job is still waiting, as far as the scheduler tells;
- **submitted**: submitted, not running now, and no scheduler to ask (the job may wait, or may have died
  without a note: its log is named);
- **stopped**: records without a ``run_end``, nothing running (a killed local run): it resumes when run again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opgrpo_bench.launchers.job import ERROR_FILE, LAUNCH_FILE
from opgrpo_bench.results import LOCK_FILE, read_records, results_file

STATES = ("finished", "running", "queued", "submitted", "interrupted", "stopped", "failed")


@dataclass
class RunStatus:
    """One run directory's state (:data:`STATES`), its progress and the reason behind it."""

    run_id: str
    state: str
    step: int | None = None
    budget: int | None = None
    detail: str = ""
    launcher: str | None = None
    job_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _proc_locks_hold(path: Path) -> bool | None:
    """Whether ``/proc/locks`` lists a lock on ``path``'s inode (a holder on this machine), None without it."""
    try:
        st = path.stat()
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    # a line: "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF" (device major:minor in hex, then inode)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any(dev in line.split() for line in text.splitlines())


def lock_held(run_dir: Path) -> bool:
    """Whether a process holds the run's lock (on this machine or, on a shared filesystem, on another).

    A holder on this machine is found in ``/proc/locks`` without touching the lock. Otherwise a shared lock is
    tried and released at once: the kernel (or the filesystem's lock server) answers for holders elsewhere. A
    job that starts in that instant finds the lock taken and tries again (``job.LOCK_RETRIES``)."""
    import fcntl

    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return False
    if _proc_locks_hold(path):
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the probe's lock
    return False


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON note (``launch.json``, ``error.json``); None when absent or unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def launched_state(launched: dict[str, Any]) -> Any:
    """What the scheduler says of a submitted run's job (a :class:`~opgrpo_bench.launchers.Polled`), asked
    from any process; None when it cannot be asked from here."""
    if launched.get("launcher") == "slurm":
        if launched.get("cluster") == "slurm":
            from opgrpo_bench.launchers.slurm import job_state

            return job_state(launched)
        from opgrpo_bench.launchers.ray import job_state as pid_state  # the local executor: a process here

        job_id = launched.get("job_id")
        if isinstance(job_id, str) and job_id.isdigit():
            return pid_state({**launched, "driver_pid": int(job_id)})
        return None
    if launched.get("launcher") == "ray":
        from opgrpo_bench.launchers.ray import job_state

        return job_state(launched)
    return None


def _progress(records: list[dict[str, Any]]) -> tuple[int | None, int | None]:
    start = next((r for r in records if r.get("type") == "run_start"), {})
    steps = [r["step"] for r in records if r.get("type") in ("step", "eval") and isinstance(r.get("step"), int)]
    return (max(steps) if steps else None), start.get("budget_steps")


def run_status(run_dir: str | os.PathLike[str], poll: Any = launched_state) -> RunStatus:
    """The state of one run directory (see the module docstring). ``poll`` asks a scheduler about a
    submitted job (:func:`launched_state`; None: ask none)."""
    run_dir = Path(run_dir)
    metrics = results_file(run_dir)
    records = read_records(metrics) if metrics is not None else []
    step, budget = _progress(records)
    end = next((r for r in records if r.get("type") == "run_end"), None)
    launched = read_json(run_dir / LAUNCH_FILE) or {}
    status = RunStatus(run_dir.name, "stopped", step, budget, launcher=launched.get("launcher"),
                       job_id=launched.get("job_id"))
    job = f"{launched['launcher']} job {launched.get('job_id')}" if launched.get("launcher") else ""
    if end is not None:
        status.state = "finished"
        status.detail = ("censored (target not reached)" if end.get("censored") else
                         f"target reached at step {end.get('steps_to_target')}")
        if end.get("best_score") is not None:
            status.detail += f", best {end['best_score']:.4f}"
        return status
    if lock_held(run_dir):
        status.state, status.detail = "running", job
        return status
    error = read_json(run_dir / ERROR_FILE)
    polled = poll(launched) if (launched and poll is not None) else None
    if error is not None:
        where = f" ({job})" if job else ""
        if error.get("kind") == "interrupted":
            if polled is not None and not polled.done:
                status.state, status.detail = "queued", f"interrupted at step {error.get('step')}, requeued{where}"
            else:
                status.state = "interrupted"
                status.detail = f"{error.get('message', 'interrupted')}{where}; resumes from its last checkpoint " \
                                "when requeued or run again"
            return status
        status.state = "failed"
        status.detail = f"{error.get('error', 'error')}: {error.get('message', '')}{where}"
        return status
    if launched:
        log = f"; its log: {launched['stderr']}" if launched.get("stderr") else ""
        if polled is not None and not polled.done:
            status.state, status.detail = "queued", f"{job}: {polled.detail}"
        elif polled is not None:
            status.state = "failed"
            status.detail = f"{job} ended ({polled.detail}) without finishing the run" + \
                            (f" (stopped at step {step})" if step is not None else "") + log
        else:
            status.state = "submitted"
            status.detail = f"{job}: not running now" + (f", stopped at step {step}" if step is not None else "") + log
        return status
    status.detail = (f"at step {step}; " if step is not None else "") + "resumes when the same command runs again"
    return status


def run_dirs(out: str | os.PathLike[str]) -> list[Path]:
    """The run directories directly under ``out`` (those holding results or a launcher's note), sorted."""
    root = Path(out)
    found = []
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if child.is_dir() and not child.name.startswith(".") and (
                results_file(child) is not None or (child / LAUNCH_FILE).exists() or (child / ERROR_FILE).exists()):
            found.append(child)
    return found


def grid_status(out: str | os.PathLike[str], poll: Any = launched_state) -> list[RunStatus]:
    """:func:`run_status` of every run directory under ``out``."""
    return [run_status(d, poll) for d in run_dirs(out)]


def summary(statuses: list[RunStatus]) -> str:
    """``4 runs: 2 finished, 1 running, 1 failed`` (states in :data:`STATES` order)."""
    counts = {s: sum(1 for r in statuses if r.state == s) for s in STATES}
    parts = [f"{n} {s}" for s, n in counts.items() if n]
    return f"{len(statuses)} run{'s' if len(statuses) != 1 else ''}" + (": " + ", ".join(parts) if parts else "")


def report_lines(statuses: list[RunStatus]) -> list[str]:
    """One line per run, then the summary."""
    lines = []
    for r in statuses:
        where = f" step {r.step if r.step is not None else '-'}/{r.budget if r.budget is not None else '?'}"
        lines.append(f"{r.run_id}: {r.state}{where}" + (f"; {r.detail}" if r.detail else ""))
    return lines + [summary(statuses)]
