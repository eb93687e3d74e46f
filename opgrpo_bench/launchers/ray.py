"""``--launcher ray``: every run a Ray task with a resource request (``--cpus-per-run``, ``--gpus-per-run``),
on the cluster at ``--ray-address`` or on a local Ray instance (extra ``ray``).

Each task calls :func:`opgrpo_bench.launchers.job.run_job` on a worker, which writes to the shared ``--out``
directory. A task whose worker dies (a lost node, a preempted machine) is retried by Ray (``max_retries``)
and resumes from its run's last checkpoint. ``ray.cancel`` interrupts a run like Ctrl-C.

Ray tasks belong to the process that submits them (the driver). ``--no-wait`` therefore starts a small
driver of its own in the background (``python -m opgrpo_bench.launchers.ray``), which submits and waits,
and returns at once; its log goes to ``<out>/.launch/ray/``. Ray serializes task arguments and return values
by its own means; what a run produced is read from its run directory only.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from opgrpo_bench.launchers import LaunchOptions, Polled

MAX_RETRIES = 3
"""Ray retries a task whose worker process died this many times (each retry resumes the run)."""


def _ray_job(request: dict[str, Any]) -> str:
    from opgrpo_bench.launchers.job import run_job

    return run_job(request)


class RayLauncher:
    """Submits runs as Ray tasks from this process (the driver)."""

    name = "ray"

    def __init__(self, options: LaunchOptions, folder: Path):
        import ray

        self.options = options
        self.folder = Path(folder) / "ray"
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if options.ray_address:
                kwargs["address"] = options.ray_address
            else:  # a local instance for this command: small object store (runs exchange no big objects)
                kwargs["object_store_memory"] = 100 * 1024 * 1024  # its workers inherit this environment
            ray.init(**kwargs)
        self.remote = ray.remote(_ray_job).options(num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run,
                                                   max_retries=MAX_RETRIES, retry_exceptions=False)
        self.refs: dict[str, Any] = {}
        self.queued: dict[str, dict[str, Any]] = {}
        self.count = 0

    def _pump(self) -> None:
        """Start queued tasks while fewer than ``max_parallel`` are in flight (all of them without a cap)."""
        import ray

        cap = self.options.max_parallel
        while self.queued:
            if cap is not None:
                live = [r for r in self.refs.values()]
                ready, _ = ray.wait(live, num_returns=len(live), timeout=0) if live else ([], [])
                if len(live) - len(ready) >= cap:
                    return
            job_id = next(iter(self.queued))
            self.refs[job_id] = self.remote.remote(self.queued.pop(job_id))

    def submit(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for request in requests:
            self.count += 1
            job_id = f"task-{self.count}"
            self.queued[job_id] = request
            out.append({"job_id": job_id, "host": socket.gethostname(), "driver_pid": os.getpid()})
        self._pump()
        return out

    def poll(self, launched: dict[str, Any]) -> Polled | None:
        import ray

        self._pump()
        job_id = launched.get("job_id", "")
        if job_id in self.queued:
            return Polled(False, "QUEUED")
        ref = self.refs.get(job_id)
        if ref is None:  # submitted by another process
            return None
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            return Polled(False, "SUBMITTED")
        try:
            return Polled(True, str(ray.get(ref)).upper())
        except Exception as err:  # the task failed or its worker died: Ray's own words, first line
            return Polled(True, "FAILED: " + (str(err).strip().splitlines() or [type(err).__name__])[-1][:300])

    def close(self) -> None:
        import ray

        self.refs.clear()
        self.queued.clear()
        if ray.is_initialized():
            ray.shutdown()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_state(launched: dict[str, Any]) -> Polled | None:
    """From a later process: the run's driver still alive (its tasks may run) or gone (they ended with it).
    None when the driver ran on another machine."""
    pid = launched.get("driver_pid")
    if not isinstance(pid, int) or launched.get("host") != socket.gethostname():
        return None
    return Polled(False, f"driver pid {pid}") if _alive(pid) else Polled(True, f"its Ray driver (pid {pid}) exited")


def start_driver(out: Path, grid: dict[str, Any]) -> tuple[int, Path]:
    """``--no-wait``: run the grid from a background driver (a new session, so that the terminal's Ctrl-C
    and hang-up leave it alone); returns its pid and log file. ``grid`` holds run_grid's arguments."""
    import subprocess

    folder = Path(out) / ".launch" / "ray"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"
    spec, log = folder / f"driver-{stamp}.json", folder / f"driver-{stamp}.log"
    grid = {**grid, "out": str(Path(grid["out"]).absolute())}
    spec.write_text(json.dumps(grid, sort_keys=True), encoding="utf-8")
    with open(log, "ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "opgrpo_bench.launchers.ray", str(spec)], stdout=sink,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc.pid, log


def _driver_main(spec_path: str) -> int:
    """The background driver: the grid of ``spec_path`` with ``wait`` on, progress to its log."""
    from rich.console import Console

    from opgrpo_bench.errors import RunInterrupted, UserError
    from opgrpo_bench.suite import run_grid

    grid = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    options = LaunchOptions(**{**grid["launch"], "wait": True})
    try:
        run_grid([tuple(c) for c in grid["combos"]], grid["out"], grid["steps"], grid["sets"],
                 resume=grid["resume"], log=grid["log"] or None, launch=options,
                 console=Console(file=sys.stdout, width=120))
    except (UserError, RunInterrupted) as err:
        print(f"error: {' '.join(str(err).split())}", flush=True)
        return 2
    print("all runs finished", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_driver_main(sys.argv[1]))
