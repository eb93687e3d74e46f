"""Where the runs of a grid train: ``local`` worker processes (:mod:`opgrpo_bench.suite`), a Slurm cluster
through submitit (:mod:`.slurm`), or a Ray cluster (:mod:`.ray`).

A launcher only places runs; every run still goes through :func:`opgrpo_bench.runner.run_one` inside its
job (:mod:`.job`), so finished runs are skipped, a changed configuration is refused, the run directory's
lock keeps two jobs from writing one run and an interrupted run resumes exactly from its checkpoint,
whatever the launcher. Progress and the final report come from the run directories alone
(:mod:`opgrpo_bench.status`), so they are the same for every launcher and work after the submitting command
has exited.

The interface a cluster launcher implements (:class:`Launcher`) is two calls: ``submit`` (one job per run;
returns a job id per run) and ``poll`` (a job's state, as the scheduler sees it).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Protocol

from opgrpo_bench.errors import UserError

LAUNCHERS = ("local", "slurm", "ray")
EXTRAS = {"slurm": ("submitit", "slurm"), "ray": ("ray", "ray")}
"""launcher -> (the module it imports, the optional extra that installs it)."""
SLURM_CLUSTERS = ("slurm", "local", "debug")
"""submitit's executors: ``slurm`` (sbatch), ``local`` (jobs as local processes through the same job code,
signals and requeue included; for trying a setup without a cluster) and ``debug`` (in the calling process)."""
LAUNCH_DIR = ".launch"
"""``<out>/.launch/``: the schedulers' own files (submitit's job folders and logs, Ray drivers' logs)."""


@dataclass
class LaunchOptions:
    """How a grid is placed (flags ``--launcher``, ``--partition``, ... or a run file's ``launcher`` key and
    ``[launch]`` table). ``None`` means the launcher's default."""

    launcher: str = "local"
    partition: str | None = None
    account: str | None = None
    gpus_per_run: int = 0
    cpus_per_run: int = 1
    time_limit: int | None = None
    """minutes per job (Slurm's --time); a run cut by it resumes from its checkpoint when requeued"""
    wait: bool = True
    """False: submit and return at once; ``opgrpo-bench status DIR`` or the same command again reports"""
    slurm_cluster: str = "slurm"
    ray_address: str | None = None
    max_parallel: int | None = None
    """runs at a time (``-j`` when given): Slurm's array parallelism, Ray's tasks in flight"""
    poll_s: float = 2.0
    """seconds between two looks at the run directories while waiting"""

    def check(self) -> None:
        """Validate the values (one :class:`UserError` line) and that the launcher's extra is installed."""
        check_launcher(self.launcher)
        if self.slurm_cluster not in SLURM_CLUSTERS:
            raise UserError(f"--slurm-cluster must be one of {', '.join(SLURM_CLUSTERS)}, not '{self.slurm_cluster}'")
        for name, value, low in (("--gpus-per-run", self.gpus_per_run, 0), ("--cpus-per-run", self.cpus_per_run, 1),
                                 ("--time-limit", self.time_limit, 1), ("-j/--jobs", self.max_parallel, 1)):
            if value is not None and value < low and not (self.launcher == "local" and name == "-j/--jobs"):
                raise UserError(f"{name} must be >= {low}, got {value}")
        if self.launcher == "local":
            given = [name for name, value in (("--partition", self.partition), ("--account", self.account),
                                              ("--time-limit", self.time_limit), ("--ray-address", self.ray_address),
                                              ("--gpus-per-run", self.gpus_per_run or None),
                                              ("--no-wait", None if self.wait else True)) if value is not None]
            if given:
                raise UserError(f"{', '.join(given)}: only with a cluster launcher; add --launcher slurm or "
                                "--launcher ray")


def check_launcher(name: str) -> None:
    """An unknown launcher, or one whose optional extra is not installed, is one :class:`UserError` line."""
    if name not in LAUNCHERS:
        import difflib

        close = difflib.get_close_matches(name, LAUNCHERS, n=1)
        raise UserError(f"unknown launcher '{name}'" + (f". Did you mean: {close[0]}" if close else "")
                        + f" (launchers: {', '.join(LAUNCHERS)})")
    if name in EXTRAS:
        module, extra = EXTRAS[name]
        if not installed(module):
            raise UserError(f"--launcher {name} needs the optional extra '{extra}': pip install "
                            f"'opgrpo-bench[{extra}]'")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (looked up, not imported: ray takes seconds to import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class JobState(Protocol):
    """What :meth:`Launcher.poll` says of one job."""

    done: bool
    """the scheduler will not run it (again): finished, failed, cancelled (a requeued job is not done)"""
    detail: str
    """the scheduler's word for it (e.g. Slurm's ``PENDING`` or ``OUT_OF_MEMORY``), for the report"""


@dataclass
class Polled:
    """A plain :class:`JobState`."""

    done: bool
    detail: str = ""


class Launcher(Protocol):
    """A scheduler that runs one job per run (:func:`opgrpo_bench.launchers.job.run_job` inside each)."""

    name: str

    def submit(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Submit one job per request (:func:`job_request`); returns per request what ``launch.json`` records
        (at least ``job_id``), from which :meth:`poll` finds the job again, in this process or a later one."""

    def poll(self, launched: dict[str, Any]) -> JobState | None:
        """The state of a job this object submitted; None for any other job (then
        :func:`opgrpo_bench.status.launched_state` asks, as any later process would)."""

    def close(self) -> None:
        """Let go of the scheduler (jobs that are submitted keep running)."""


def job_request(task: str, algorithm: str, seed: int, out: str, steps: int | None, sets: list[str],
                resume: bool, log: list[str] | None, run_id: str, gpus: int = 0) -> dict[str, Any]:
    """The arguments of one job, plain JSON values only (a job gets nothing else from the submitter)."""
    return {"task": task, "algorithm": algorithm, "seed": seed, "out": out, "steps": steps, "sets": list(sets),
            "resume": resume, "log": list(log or []), "run_id": run_id, "gpus": gpus}


def make_launcher(options: LaunchOptions, out: Any) -> Launcher:
    """The launcher named in ``options`` (not ``local``: that one is the grid's own worker pool)."""
    from pathlib import Path

    folder = Path(out) / LAUNCH_DIR
    if options.launcher == "slurm":
        from opgrpo_bench.launchers.slurm import SlurmLauncher

        return SlurmLauncher(options, folder)
    if options.launcher == "ray":
        from opgrpo_bench.launchers.ray import RayLauncher

        return RayLauncher(options, folder)
    raise ValueError(f"no cluster launcher named '{options.launcher}'")


def launch_keys(doc: dict[str, Any], where: str) -> tuple[str | None, dict[str, Any]]:
    """A run file's ``launcher`` key and ``[launch]`` table, checked: ``(launcher, options)``, where options
    holds :class:`LaunchOptions` field values (``[launch]`` keys: partition, account, gpus_per_run,
    cpus_per_run, time_limit, wait, slurm_cluster, ray_address)."""
    launcher = doc.get("launcher")
    if launcher is not None and (not isinstance(launcher, str) or not launcher):
        raise UserError(f"{where}: launcher must be a non-empty string, not {launcher!r}")
    table = doc.get("launch", {})
    if not isinstance(table, dict):
        raise UserError(f"{where}: launch must be a table ([launch] with key = value lines)")
    kinds = {"partition": str, "account": str, "slurm_cluster": str, "ray_address": str, "gpus_per_run": int,
             "cpus_per_run": int, "time_limit": int, "wait": bool}
    options: dict[str, Any] = {}
    for key, value in table.items():
        if key not in kinds:
            import difflib

            close = difflib.get_close_matches(key, list(kinds), n=1)
            raise UserError(f"{where}: unknown key 'launch.{key}'" + (f". Did you mean: {close[0]}" if close else "")
                            + f" (keys: {', '.join(sorted(kinds))})")
        kind = kinds[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserError(f"{where}: launch.{key} must be {'an integer' if kind is int else kind.__name__}, "
                            f"not {value!r}")
        options[key] = value
    if options and launcher is None:
        raise UserError(f"{where}: a [launch] table needs launcher = \"slurm\" or \"ray\"")
    return launcher, options
