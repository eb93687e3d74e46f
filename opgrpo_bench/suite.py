"""Run a grid of (task, algorithm, seed) runs, in parallel worker processes, with rich progress.

The default suite (``opgrpo-bench run`` with no arguments) and ``--quick`` are defined here; both are
resumable: finished runs are skipped and an interrupted run continues from its last checkpoint.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from opgrpo_bench.errors import RunInterrupted, UserError
from opgrpo_bench.registry import UnknownNameError
from opgrpo_bench.schema import is_progress

DEFAULT_ALGORITHMS = ("flow-grpo", "op-grpo", "op-grpo-rho25")
"""The default suite's algorithms: the baseline, OP-GRPO, and its closest-to-a-speed-up ablation (the
reference suite's 25% replay proportion); three, so that 3 seeds of each fit in 10 minutes on 2 cores."""
ABLATIONS = ("op-grpo-no-replay", "op-grpo-no-correction", "op-grpo-naive-is", "op-grpo-no-truncation",
             "op-grpo-rho5", "op-grpo-rho25")
FIELD_ALGORITHMS = ("flow-grpo-fast", "mixgrpo", "flow-grpo-cps", "grpo-guard", "dance-grpo", "diffusion-nft",
                    "flow-dppo")
"""The field's other algorithms (ALGORITHMS.md section 4), compared with Flow-GRPO on the same seeds."""
HEADLINE_SEEDS = tuple(range(10))
"""Seeds of the flow-grpo / op-grpo headline on digits-v1, digits-sparse-v1 and digits-video-v1."""
REGIME_SEEDS = tuple(range(10))
"""Seeds of flow-grpo / op-grpo at every pool size of the regime map."""


POOL_TASKS = ("digits-number-v1", "digits-number-pool20-v1", "digits-number-pool100-v1")
"""The paper-regime task at training pools of 800, 20 and 100 numbers (nested; one eval set): the regime map.
The full pool comes first: a suite stopped early has the paper's regime."""

Grid = tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]
"""(tasks, algorithms, seeds): every combination is a run."""


@dataclass(frozen=True)
class Suite:
    """A named set of grids with a step budget (None = each task's own budget)."""

    name: str
    grids: tuple[Grid, ...]
    steps: int | None = None
    sets: tuple[str, ...] = field(default_factory=tuple)

    def combos(self) -> list[tuple[str, str, int]]:
        out: list[tuple[str, str, int]] = []
        for tasks, algorithms, seeds in self.grids:
            out += [(t, a, s) for t in tasks for a in algorithms for s in seeds if (t, a, s) not in out]
        return out

    def describe(self) -> str:
        return "; ".join(f"{', '.join(t)} x {len(a)} algorithms x seeds {list(s)}" for t, a, s in self.grids)


SUITES = {
    # `opgrpo-bench run`: fits in 10 minutes on 2 cores (measured: README)
    "default": Suite("default", ((("digits-v1",), DEFAULT_ALGORITHMS, (0, 1, 2)),), steps=80),
    # `opgrpo-bench run --quick`: about 2 minutes
    "quick": Suite("quick", ((("digits-v1",), ("flow-grpo", "op-grpo"), (0, 1)),), steps=40),
    # the committed leaderboard/: the headline comparison on a dense and a sparse task, the field's other
    # algorithms with 5 seeds on digits-v1, every ablation with 5 seeds on the sparse task and on the
    # paper-regime task (digits-number-v1), the regime map (below) and the video task, each task at its
    # full budget; exactly the runs committed under leaderboard/runs/ (a test)
    "reference": Suite("reference", (
        (("digits-v1", "digits-sparse-v1"), ("flow-grpo", "op-grpo"), HEADLINE_SEEDS),
        (("digits-v1",), FIELD_ALGORITHMS, (0, 1, 2, 3, 4)),
        (("digits-sparse-v1", "digits-number-v1"), ABLATIONS, (0, 1, 2, 3, 4)),
        (POOL_TASKS, ("flow-grpo", "op-grpo"), REGIME_SEEDS),
        (("digits-video-v1",), ("flow-grpo", "op-grpo"), HEADLINE_SEEDS),
    )),
    # when does replay pay off: Flow-GRPO against OP-GRPO at three training-pool sizes of digits-number
    "regime": Suite("regime", ((POOL_TASKS, ("flow-grpo", "op-grpo"), REGIME_SEEDS),)),
}


class GridInterrupted(RunInterrupted):
    """Ctrl-C during a grid of several runs: finished runs are kept, the others resume when the same
    command is run again. ``finished`` of ``total`` runs were complete; ``stopped`` maps each run stopped
    mid-way to its last written step (None when unknown)."""

    def __init__(self, finished: int, total: int, stopped: dict[tuple[str, str, int], int | None] | None = None,
                 forced: bool = False):
        self.finished, self.total, self.stopped, self.forced = finished, total, dict(stopped or {}), forced
        self.step = None
        how = "; workers stopped hard at a second Ctrl-C" if forced else ""
        Exception.__init__(self, f"interrupted: {finished} of {total} runs finished and are kept{how}; run the "
                                 "same command again to resume the others from their last checkpoint")


_INTERRUPTED = "interrupted"  # a worker's return value for a run stopped by Ctrl-C: {"type": ..., "step": ...}
_SKIPPED = "skipped"  # ... for a run not started because the grid was stopping


def _interrupt_once(signum: int, frame: Any) -> None:
    """A worker's SIGINT handler: the first Ctrl-C interrupts the run, later ones are ignored (the parent
    forwards Ctrl-C to its workers, and a terminal sends it to all of them too)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


_STOP: Any = None
"""In a worker: the grid's stop Event (set by the parent on Ctrl-C or on a failed run)."""


def _init_worker(stop: Any) -> None:
    """Idle workers ignore Ctrl-C (no traceback from the pool's loop); the parent decides what stops."""
    global _STOP
    _STOP = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def interruptible(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn`` in a worker so that Ctrl-C stops it cleanly and nothing but a result crosses back.

    Returns ``fn()``'s record, ``{"type": "interrupted", "step": N}`` when Ctrl-C stopped it (N = last step
    written, from :class:`RunInterrupted`), or ``{"type": "skipped"}`` when the grid was already stopping.
    User errors come back as a plain :class:`UserError` (always picklable).
    """
    # the handler first, then the stop check: the parent sets the event before it signals, so a run is
    # either skipped or sees the signal
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        if _STOP is not None and _STOP.is_set():
            return {"type": _SKIPPED}
        return fn()
    except RunInterrupted as err:
        return {"type": _INTERRUPTED, "step": err.step}
    except KeyboardInterrupt:
        return {"type": _INTERRUPTED, "step": None}
    except (UserError, UnknownNameError) as err:
        raise UserError(str(err)) from None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker(task: str, algorithm: str, seed: int, out: str, steps: int | None, sets: list[str],
            resume: bool, updates: Any, log: list[str] | None = None) -> dict[str, Any]:
    """Runs in a worker process; streams step/eval records to the parent through ``updates``."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from opgrpo_bench.runner import run_one

    key = (task, algorithm, seed)

    def progress(record: dict[str, Any]) -> None:
        if is_progress(record):
            updates.put((key, record))

    return interruptible(lambda: run_one(task, algorithm, seed, out=out, steps=steps, sets=sets, resume=resume,
                                         progress=progress, log=log))


class _CtrlC:
    """The parent's SIGINT handling while a pool runs: the first Ctrl-C sets ``hit`` (the loop then stops the
    grid cleanly), a second one raises KeyboardInterrupt (stop hard). Only in the main thread."""

    def __init__(self) -> None:
        self.hit = False
        self.active = threading.current_thread() is threading.main_thread()
        self.previous: Any = signal.getsignal(signal.SIGINT) if self.active else None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def ignore(self) -> None:
        """Ignore Ctrl-C (while worker processes start: they inherit it, so none dies in its start-up)."""
        if self.active:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch(self) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self._handle)

    def restore(self) -> None:
        if self.active and self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _signal_workers(pool: ProcessPoolExecutor) -> None:
    """Forward Ctrl-C to the pool's live workers (a running run stops at once and keeps what it wrote)."""
    import os

    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGINT)
        except (OSError, ValueError):
            pass


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            proc.terminate()
        except (OSError, ValueError):
            pass
    pool.shutdown(wait=False, cancel_futures=True)


def run_grid(combos: list[tuple[str, str, int]], out: str | Path, steps: int | None = None,
             sets: list[str] | None = None, jobs: int = 1, resume: bool = True,
             console: Any = None, log: list[str] | None = None, launch: Any = None) -> list[dict[str, Any]]:
    """Train every (task, algorithm, seed) in ``combos`` with ``jobs`` worker processes, or, with ``launch``
    (:class:`opgrpo_bench.launchers.LaunchOptions`) naming ``slurm`` or ``ray``, as that scheduler's jobs
    (:func:`opgrpo_bench.launchers.grid.run_on_cluster`).

    Returns the ``run_end`` records in ``combos`` order. All runs are validated (names, settings) before
    any starts, so a typo fails at once and nothing already written is touched.

    Ctrl-C stops every running run at once (each keeps what it wrote and resumes from its last checkpoint
    when the same grid runs again) and starts no new one; then :class:`GridInterrupted` is raised (or, for a
    single run, :class:`RunInterrupted`). A second Ctrl-C while the workers wind down stops them hard.
    A run that fails stops the grid the same way, then its error is raised.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from opgrpo_bench.runner import resolve

    if jobs < 1:
        raise UserError(f"-j/--jobs must be >= 1, got {jobs}")
    console = console or Console(stderr=True)
    resolved = {c: resolve(c[0], c[1], c[2], steps, list(sets or [])) for c in combos}
    # one run per run id: a repeated combination, or a task or algorithm named by an alias, runs once
    by_id = {r.run_id: c for c, r in reversed(list(resolved.items()))}
    first = {c: by_id[r.run_id] for c, r in resolved.items()}
    asked, combos = combos, list(dict.fromkeys(first.values()))
    from opgrpo_bench.runner import plan_run

    for c in combos:  # a run of another configuration is refused before any run starts
        plan_run(resolved[c], Path(out) / resolved[c].run_id, resume)
    budgets = {c: resolved[c].train_config.steps for c in combos}
    if launch is not None and launch.launcher != "local":
        from opgrpo_bench.launchers.grid import run_on_cluster

        ends = run_on_cluster(combos, resolved, out, steps, list(sets or []), resume, log, launch, console, budgets)
        return [ends[first[c]] for c in asked]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    results: dict[tuple[str, str, int], dict[str, Any]] = {}
    with Progress(*columns, console=console, transient=False) as progress:
        board = _Board(progress, budgets, len(combos))
        if jobs <= 1:  # in-process: no worker start-up cost
            from opgrpo_bench.runner import run_one

            for combo in combos:
                try:
                    results[combo] = run_one(*combo, out=out, steps=steps, sets=list(sets or []), resume=resume,
                                             progress=lambda rec, c=combo: board.update(c, rec), log=log)
                except (RunInterrupted, KeyboardInterrupt) as err:
                    step = getattr(err, "step", None)
                    board.interrupted(combo, step)
                    if len(combos) == 1 and isinstance(err, RunInterrupted):
                        raise
                    raise GridInterrupted(len(results), len(combos), {combo: step}) from None
                board.finish(combo, results[combo])
            return [results[first[c]] for c in asked]
        stopped: dict[tuple[str, str, int], int | None] = {}
        error: BaseException | None = None
        ctrl_c = _CtrlC()
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        ctrl_c.ignore()
        try:
            manager = ctx.Manager()
            try:
                with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                         initargs=(stop,)) as pool:
                    updates = manager.Queue()
                    futures: dict[Future, tuple[str, str, int]] = {
                        pool.submit(_worker, *c, str(out), steps, list(sets or []), resume, updates, log): c
                        for c in combos}
                    ctrl_c.watch()
                    pending = set(futures)
                    stopping = False
                    try:
                        while pending:
                            if (ctrl_c.hit or error is not None) and not stopping:
                                stopping = True
                                stop.set()
                                for fut in pending:
                                    fut.cancel()
                                _signal_workers(pool)
                            try:
                                board.update(*updates.get(timeout=0.2))
                            except queue_mod.Empty:
                                board.tick()
                            for fut in [f for f in pending if f.done()]:
                                pending.discard(fut)
                                combo = futures[fut]
                                if fut.cancelled():
                                    continue
                                failure = fut.exception()
                                if isinstance(failure, KeyboardInterrupt):  # Ctrl-C as the run returned
                                    stopped[combo] = None
                                    board.interrupted(combo, None)
                                    continue
                                if failure is not None:  # a failed run: stop the others, then re-raise
                                    error = error or failure
                                    continue
                                end = fut.result()
                                if end.get("type") == _INTERRUPTED:
                                    stopped[combo] = end.get("step")
                                    board.interrupted(combo, end.get("step"))
                                elif end.get("type") != _SKIPPED:
                                    results[combo] = end
                                    board.finish(combo, end)
                    except KeyboardInterrupt:  # a second Ctrl-C: stop hard
                        _kill_workers(pool)
                        raise GridInterrupted(len(results), len(combos), stopped, forced=True) from None
            finally:
                ctrl_c.ignore()
                manager.shutdown()
        finally:
            ctrl_c.restore()
    if error is not None:
        raise error
    if len(results) < len(combos):
        raise GridInterrupted(len(results), len(combos), stopped)
    return [results[first[c]] for c in asked]


HEARTBEAT_S = 30.0
"""Seconds between plain progress lines when the console is not a terminal (CI logs, ``| tee``)."""


class _Board:
    """Rich progress: one overall bar plus one bar per running run (step, train reward, last eval).

    When the console is not a terminal, rich draws no live bars, so the board prints one plain line every
    ``heartbeat_s`` seconds instead (runs done, and each running run's step, budget and last eval): a log
    never goes silent for long, and a stuck run is visible.
    """

    def __init__(self, progress: Any, budgets: dict[tuple[str, str, int], int], total: int,
                 heartbeat_s: float | None = None):
        self.progress, self.budgets, self.total = progress, budgets, total
        self.overall = progress.add_task("[bold]all runs", total=total, info="")
        self.bars: dict[tuple[str, str, int], Any] = {}
        self.last_eval: dict[tuple[str, str, int], float] = {}
        self.steps: dict[tuple[str, str, int], int] = {}
        self.done = 0
        self.plain = not progress.console.is_terminal
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.t0 = time.monotonic()
        self.next_beat = self.t0 + self.heartbeat_s

    def update(self, key: tuple[str, str, int], record: dict[str, Any]) -> None:
        if not is_progress(record):
            return
        key = tuple(key)  # type: ignore[assignment]
        if key not in self.bars:
            self.bars[key] = self.progress.add_task(f"{key[0]} {key[1]} s{key[2]}", total=self.budgets[key],
                                                    info="")
        if record["type"] == "eval":
            self.last_eval[key] = record["score"]
        self.steps[key] = record["step"]
        reward = record.get("train/reward_mean")
        info = (f"reward {reward:.3f} " if reward is not None else "") + \
               (f"eval {self.last_eval[key]:.3f}" if key in self.last_eval else "")
        self.progress.update(self.bars[key], completed=record["step"], info=info)
        self.tick()

    def tick(self) -> None:
        """Print the plain progress line when it is due (non-terminal consoles only)."""
        now = time.monotonic()
        if not self.plain or now < self.next_beat:
            return
        self.next_beat = now + self.heartbeat_s
        running = "; ".join(
            f"{k[0]} {k[1]} s{k[2]} step {self.steps.get(k, 0)}/{self.budgets[k]}"
            + (f" eval {self.last_eval[k]:.3f}" if k in self.last_eval else "") for k in self.bars)
        self.progress.console.print(f"[{now - self.t0:.0f} s] {self.done}/{self.total} runs done"
                                    + (f"; running: {running}" if running else ""), highlight=False)

    def interrupted(self, key: tuple[str, str, int], step: int | None) -> None:
        if key in self.bars:
            self.progress.remove_task(self.bars.pop(key))
        where = f" at step {step}" if step is not None else ""
        self.progress.console.print(f"{key[0]} {key[1]} seed {key[2]}: interrupted{where} (resumes from its "
                                    "last checkpoint)")

    def finish(self, key: tuple[str, str, int], end: dict[str, Any]) -> None:
        if key in self.bars:
            self.progress.remove_task(self.bars.pop(key))
        self.done += 1
        status = f"reached at step {end.get('steps_to_target')}" if not end.get("censored") else "censored"
        best = end.get("best_score")
        self.progress.console.print(f"{key[0]} {key[1]} seed {key[2]}: {status}"
                                    + (f", best {best:.3f}" if best is not None else ""))
        self.progress.advance(self.overall)


def run_suite(name: "str | Suite", out: str | Path, leaderboard_out: str | Path | None, jobs: int = 2,
              console: Any = None, resume: bool = True, launch: Any = None) -> dict[str, Any]:
    """Run a suite (a name in :data:`SUITES`, or a :class:`Suite`, e.g. from a suite file), then write the
    leaderboard of ``out``; returns timing and the report dict. ``launch``: as in :func:`run_grid`."""
    suite = SUITES[name] if isinstance(name, str) else name
    name = suite.name
    t0 = time.perf_counter()
    ends = run_grid(suite.combos(), out, suite.steps, list(suite.sets), jobs=jobs, console=console, resume=resume,
                    **({"launch": launch} if launch is not None else {}))
    doc = None
    if leaderboard_out is not None:
        from opgrpo_bench.leaderboard import build_leaderboard

        doc = build_leaderboard(out, leaderboard_out)
    return {"suite": name, "runs": len(ends), "wall_s": time.perf_counter() - t0, "leaderboard": doc}
