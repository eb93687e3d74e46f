"""A grid on a cluster launcher: submit the runs that need a job, then (unless ``--no-wait``) follow them
through their run directories with the same progress board as local runs, and return their ``run_end``
records. Called by :func:`opgrpo_bench.suite.run_grid` once every run is resolved and planned.

What happens to each run:

- finished (same configuration and budget): returned as is, nothing submitted;
- running (its lock is held) or already submitted and still queued: followed, not submitted again;
- anything else: one new job, whose submission is noted in the run's ``launch.json``.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from opgrpo_bench.errors import RunInterrupted, UserError
from opgrpo_bench.launchers import LaunchOptions, job_request, make_launcher
from opgrpo_bench.launchers.job import ERROR_FILE, LAUNCH_FILE, write_json
from opgrpo_bench.results import read_records, results_file

Combo = tuple[str, str, int]


class GridSubmitted(Exception):
    """``--no-wait``: the runs were handed to the scheduler and the command returns (exit code 0); the
    message says what was submitted and how to follow it."""


class GridDetached(RunInterrupted):
    """Ctrl-C while waiting for a cluster's jobs: the command stops waiting; what happens to the jobs is in
    the message (Slurm jobs go on; a Ray instance of this command ends, and its runs resume later)."""

    def __init__(self, message: str):
        Exception.__init__(self, message)
        self.step = None

    def __reduce__(self):
        return (type(self), (str(self),))


class _Tail:
    """New records of one run's results file since the last look (a resume rewrites the file: start over)."""

    def __init__(self, run_dir: Path):
        self.path, self.offset, self.inode = run_dir / "metrics.jsonl", 0, None

    def read(self) -> list[dict[str, Any]]:
        import json

        try:
            st = self.path.stat()
        except OSError:
            return []
        if st.st_ino != self.inode or st.st_size < self.offset:
            self.inode, self.offset = st.st_ino, 0
        if st.st_size == self.offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # only whole lines: the writer may be half-way through one
        self.offset += end
        out = []
        for line in data[:end].splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def _end_of(run_dir: Path) -> dict[str, Any] | None:
    path = results_file(run_dir)
    if path is None:
        return None
    return next((r for r in read_records(path) if r.get("type") == "run_end"), None)


def run_on_cluster(combos: list[Combo], resolved: dict[Combo, Any], out: str | Path, steps: int | None,
                   sets: list[str], resume: bool, log: list[str] | None, launch: LaunchOptions, console: Any,
                   budgets: dict[Combo, int]) -> dict[Combo, dict[str, Any]]:
    """Run ``combos`` (resolved and planned by the caller) through ``launch``'s scheduler; returns each
    run's ``run_end``. Raises :class:`GridSubmitted` with ``--no-wait``, a :class:`UserError` naming the
    failed runs and why, or :class:`~opgrpo_bench.suite.GridInterrupted` for runs that were interrupted."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from opgrpo_bench.runner import plan_run
    from opgrpo_bench.status import launched_state, lock_held, read_json
    from opgrpo_bench.suite import GridInterrupted, _Board

    launch.check()
    out = Path(out)
    dirs = {c: out / resolved[c].run_id for c in combos}
    results: dict[Combo, dict[str, Any]] = {}
    follow: dict[Combo, dict[str, Any]] = {}  # runs already running or queued: their launch note
    todo: list[Combo] = []
    for c in combos:
        action, end = plan_run(resolved[c], dirs[c], resume)
        if action == "done":
            results[c] = end
            continue
        launched = read_json(dirs[c] / LAUNCH_FILE) or {}
        if lock_held(dirs[c]):
            follow[c] = launched if launched.get("launcher") == launch.launcher else {}
            continue
        # (a note naming this very process: the background driver that --no-wait started for these runs)
        if launched.get("launcher") == launch.launcher and resume and launched.get("driver_pid") != os.getpid():
            polled = launched_state(launched)
            if polled is not None and not polled.done and not (dirs[c] / ERROR_FILE).exists():
                follow[c] = launched
                continue
        todo.append(c)

    # an absolute --out: a job on another node (or a Ray worker) starts in another directory
    requests = [job_request(*c, str(out.absolute()), steps, sets, resume, log, resolved[c].run_id,
                            launch.gpus_per_run) for c in todo]
    if not launch.wait and launch.launcher == "ray" and todo:
        return _ray_in_background(todo, follow, results, dirs, out, steps, sets, resume, log, launch)

    launcher = make_launcher(launch, out) if todo else None
    try:
        if todo:
            for c in todo:
                dirs[c].mkdir(parents=True, exist_ok=True)
                (dirs[c] / ERROR_FILE).unlink(missing_ok=True)  # this new attempt supersedes the last one's note
            for c, info in zip(todo, launcher.submit(requests)):
                note = {"launcher": launch.launcher, "run_id": resolved[c].run_id, "host": socket.gethostname(),
                        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
                write_json(dirs[c] / LAUNCH_FILE, note)
                follow[c] = note
        if not launch.wait:
            raise GridSubmitted(_submitted_message(len(todo), len(follow) - len(todo), len(results), launch, out))
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            board = _Board(progress, budgets, len(combos))
            for c in combos:
                if c in results:
                    board.finish(c, results[c])
            failed, stopped = _follow(follow, dirs, launcher, board, results, launch)
    except KeyboardInterrupt:
        if launch.launcher == "ray":
            raise GridDetached(f"interrupted: {len(results)} of {len(combos)} runs finished and are kept; the "
                               "Ray tasks of this command stop with it, and resume from their last checkpoint when "
                               "the same command runs again") from None
        if launch.slurm_cluster != "slurm":  # the local executor's jobs share the terminal: Ctrl-C reached them
            raise GridDetached(f"interrupted: {len(results)} of {len(combos)} runs finished and are kept; the "
                               "local executor's jobs were interrupted too and resume from their last checkpoint "
                               "when the same command runs again") from None
        raise GridDetached(f"stopped waiting: {len(results)} of {len(combos)} runs finished; the submitted jobs "
                           f"go on: 'opgrpo-bench status {out}' reports them, and the same command again waits "
                           "for them") from None
    finally:
        if launcher is not None:
            launcher.close()
    if failed:
        first = failed[0]
        raise UserError(f"{len(failed)} of {len(combos)} runs failed: {first[0]}: {first[1]}"
                        + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
                        + f"; 'opgrpo-bench status {out}' says why for each; the same command again retries them")
    if stopped:
        raise GridInterrupted(len(results), len(combos), stopped)
    return results


def _follow(follow: dict[Combo, dict[str, Any]], dirs: dict[Combo, Path], launcher: Any, board: Any,
            results: dict[Combo, dict[str, Any]], launch: LaunchOptions
            ) -> tuple[list[tuple[str, str]], dict[Combo, int | None]]:
    """Poll the run directories (and the scheduler) until every followed run has ended; returns the failed
    runs (run id, why) and the interrupted ones (their last step)."""
    from opgrpo_bench.status import launched_state, lock_held, read_json

    tails = {c: _Tail(dirs[c]) for c in follow}
    failed: list[tuple[str, str]] = []
    stopped: dict[Combo, int | None] = {}
    pending = dict(follow)
    while pending:
        for c in list(pending):
            end = None
            for record in tails[c].read():
                if record.get("type") in ("step", "eval"):
                    board.update(c, record)
                elif record.get("type") == "run_end":
                    end = record
            if end is not None or (tails[c].offset == 0 and _end_of(dirs[c]) is not None):  # (a packed run)
                _finished(c, dirs[c], results, board)
                del pending[c]
                continue
            if lock_held(dirs[c]):
                continue
            launched = pending[c]
            polled = None
            if launched:
                polled = launcher.poll(launched) if launcher is not None else None
                if polled is None:  # not submitted by this process: ask as any later process would
                    polled = launched_state(launched)
                if polled is None or not polled.done:
                    continue  # queued, requeued, or not to be asked from here: the lock or the records tell
            if _finished(c, dirs[c], results, board):  # written just before its job ended
                del pending[c]
                continue
            error = read_json(dirs[c] / ERROR_FILE) or {}
            if error.get("kind") == "interrupted" or (not error and not launched):
                step = error.get("step") if error else _last_step(dirs[c])
                stopped[c] = step
                board.interrupted(c, step)
            else:
                why = (f"{error.get('error')}: {error.get('message')}" if error else
                       f"its job ended ({polled.detail if polled else '?'}) without finishing the run"
                       + (f"; its log: {launched['stderr']}" if launched.get("stderr") else ""))
                failed.append((dirs[c].name, why))
                board.progress.console.print(f"{dirs[c].name}: failed: {why}", highlight=False)
            del pending[c]
        board.tick()
        if pending:
            time.sleep(launch.poll_s)
    return failed, stopped


def _finished(c: Combo, run_dir: Path, results: dict[Combo, Any], board: Any) -> bool:
    end = _end_of(run_dir)
    if end is None:
        return False
    results[c] = end
    board.finish(c, end)
    return True


def _last_step(run_dir: Path) -> int | None:
    path = results_file(run_dir)
    steps = [r["step"] for r in read_records(path) if r.get("type") in ("step", "eval")] if path else []
    return max(steps) if steps else None


def _submitted_message(new: int, followed: int, finished: int, launch: LaunchOptions, out: Path) -> str:
    where = "Slurm" + (f" ({launch.slurm_cluster} executor)" if launch.slurm_cluster != "slurm" else "") \
        if launch.launcher == "slurm" else "Ray"
    return (f"submitted {new} run{'s' if new != 1 else ''} to {where}"
            + (f"; {followed} already running or queued" if followed else "")
            + (f"; {finished} already finished" if finished else "")
            + f". 'opgrpo-bench status {out}' reports them; the same command again waits for them and reports")


def _ray_in_background(todo: list[Combo], follow: dict[Combo, dict[str, Any]], results: dict[Combo, Any],
                       dirs: dict[Combo, Path], out: Path, steps: int | None, sets: list[str], resume: bool,
                       log: list[str] | None, launch: LaunchOptions) -> dict[Combo, Any]:
    """``--launcher ray --no-wait``: a background driver submits and waits (Ray tasks die with their
    driver); each run notes that driver in ``launch.json`` now, so that ``status`` sees them at once."""
    from dataclasses import asdict

    from opgrpo_bench.launchers.ray import start_driver

    options = {k: v for k, v in asdict(launch).items() if k != "wait"}
    pid, log_file = start_driver(out, {"combos": [list(c) for c in todo], "out": str(out), "steps": steps,
                                       "sets": sets, "resume": resume, "log": log, "launch": options})
    for c in todo:
        dirs[c].mkdir(parents=True, exist_ok=True)
        (dirs[c] / ERROR_FILE).unlink(missing_ok=True)
        write_json(dirs[c] / LAUNCH_FILE, {"launcher": "ray", "job_id": f"driver-{pid}", "driver_pid": pid,
                                           "host": socket.gethostname(), "stderr": str(log_file),
                                           "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    raise GridSubmitted(_submitted_message(len(todo), len(follow), len(results), launch, out)
                        + f" (driver pid {pid}, log {log_file})")
