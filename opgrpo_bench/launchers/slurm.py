"""``--launcher slurm``: one Slurm job per run, submitted as one job array through submitit (extra ``slurm``).

Each job calls :func:`opgrpo_bench.launchers.job.run_job` on a node; its results go to the shared ``--out``
directory, its logs to ``<out>/.launch/slurm/``. ``--slurm-cluster local`` uses submitit's local executor
instead of ``sbatch``: the same job code (signal handlers, requeue) in local processes, for trying a setup
without a cluster (the tests use it; it gives every job the GPUs 0..N-1 of this machine).

Preemption and time limits: Slurm's SIGTERM interrupts the run (it keeps what it wrote; ``error.json`` says
where), and the job is submitted with ``--requeue``, so a preempted job that Slurm requeues resumes from its
last checkpoint. The job function is :class:`RunJob`, a submitit ``Checkpointable``: when submitit's own
signal (USR2, before the time limit) arrives it requeues the job with the same request, which resumes the
same way.

submitit pickles the job function and its arguments (the request: plain JSON values) into its folder and
reads them back inside the job: that is submitit's own way of handing a job over on a shared filesystem.
Nothing here reads submitit's pickled results: a run's outcome is read from its run directory.
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from opgrpo_bench.errors import UserError
from opgrpo_bench.launchers import LaunchOptions, Polled

DEFAULT_TIME_LIMIT = 240
"""minutes per job when --time-limit is not given (a run cut by it resumes when requeued)"""
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
               "DEADLINE", "FINISHED", "INTERRUPTED", "NO PROCESS AND NO RESULT"}
"""Slurm's (and submitit's local executor's) states of a job that will not run again."""

try:  # the class must be importable where the job unpickles it, so it is defined only with submitit present
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - the launcher checks for the extra before it gets here
    _Checkpointable = object  # type: ignore[misc,assignment]


class RunJob(_Checkpointable):  # type: ignore[misc,valid-type]
    """The job function: trains one run; requeued by submitit with the same request (which resumes it)."""

    def __call__(self, request: dict[str, Any]) -> str:
        from opgrpo_bench.launchers.job import run_job

        return run_job(request)

    def checkpoint(self, request: dict[str, Any]) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, {**request, "resume": True})  # a requeued --fresh run continues


class SlurmLauncher:
    """Submits runs through submitit's ``AutoExecutor`` (``sbatch``, or its local executor)."""

    name = "slurm"

    def __init__(self, options: LaunchOptions, folder: Path):
        import submitit

        cluster = options.slurm_cluster
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise UserError("--launcher slurm: sbatch is not on this machine's PATH (submit from a Slurm login "
                            "node); --slurm-cluster local runs the jobs as local processes instead")
        self.options, self.cluster = options, cluster
        self.folder = Path(folder) / "slurm"
        self.executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=cluster)
        params: dict[str, Any] = {
            "name": "opgrpo-bench", "timeout_min": options.time_limit or DEFAULT_TIME_LIMIT, "nodes": 1,
            "tasks_per_node": 1, "cpus_per_task": options.cpus_per_run}
        if options.gpus_per_run:
            params["gpus_per_node"] = options.gpus_per_run
        if cluster == "slurm":
            params["slurm_additional_parameters"] = {"requeue": True}
            if options.partition:
                params["slurm_partition"] = options.partition
            if options.account:
                params["slurm_account"] = options.account
            if options.max_parallel:
                params["slurm_array_parallelism"] = options.max_parallel
        self.executor.update_parameters(**params)
        self.jobs: dict[str, Any] = {}

    def submit(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One job per request, as one job array on Slurm."""
        try:
            with _quiet_children(self.cluster != "slurm"), self.executor.batch():
                jobs = [self.executor.submit(RunJob(), request) for request in requests]
        except Exception as err:  # sbatch refused (a partition, account or time limit the cluster rejects)
            raise UserError(f"submitting {len(requests)} job(s) to Slurm failed: "
                            f"{' '.join(str(err).split())[:500]}") from None
        out = []
        for job in jobs:
            self.jobs[job.job_id] = job
            out.append({"job_id": job.job_id, "cluster": self.cluster, "folder": str(self.folder / "%j"),
                        "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)})
        return out

    def poll(self, launched: dict[str, Any]) -> Polled | None:
        """The job's state from submitit (Slurm: ``sacct``, refreshed at most every few seconds)."""
        job = self.jobs.get(launched.get("job_id", ""))
        if job is None:  # submitted by another process
            return None
        state = str(job.state).upper()
        return Polled(done=state in DONE_STATES, detail=state)

    def close(self) -> None:
        self.jobs.clear()


@contextmanager
def _quiet_children(active: bool) -> Iterator[None]:
    """The local executor's job processes inherit the submitter's stdout and stderr (their own output goes to
    their log files): pointed at /dev/null while they start, so that a caller reading the command's output
    through a pipe (``| tee``, a test) sees it end when the command does, not when the jobs do."""
    if not active:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def job_state(launched: dict[str, Any]) -> Polled | None:
    """A Slurm job's state from a later process (``opgrpo-bench status``, the same command again): asks
    ``sacct`` through submitit; None for jobs of the local executor (their processes belong to the
    submitting command) or when submitit or ``sacct`` is absent."""
    if launched.get("cluster") != "slurm" or shutil.which("sacct") is None:
        return None
    try:
        import submitit

        job = submitit.SlurmJob(folder=launched["folder"], job_id=launched["job_id"])
        state = str(job.state).upper()
    except Exception:
        return None
    return Polled(done=state in DONE_STATES, detail=state)
