"""Run a grid of (task, algorithm, seed) runs, in parallel worker processes, with rich progress.

The default suite (``opgrpo-bench run`` with no arguments) and ``--quick`` are defined here; both are
resumable: finished runs are skipped and an interrupted run continues from its last checkpoint.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_ALGORITHMS = (
    "flow-grpo", "op-grpo", "op-grpo-no-correction", "op-grpo-naive-is", "op-grpo-no-truncation",
    "op-grpo-rho25",
)
ABLATIONS = ("op-grpo-no-replay", "op-grpo-no-correction", "op-grpo-naive-is", "op-grpo-no-truncation",
             "op-grpo-rho5", "op-grpo-rho25")


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
    "quick": Suite("quick", ((("digits-v1",), ("flow-grpo", "op-grpo"), (0, 1)),), steps=60),
    # the committed leaderboard/: the headline comparison with 5 seeds on a dense and a sparse task, and
    # every ablation with 3 seeds on the sparse task, each task at its full budget
    "reference": Suite("reference", (
        (("digits-v1", "digits-sparse-v1"), ("flow-grpo", "op-grpo"), (0, 1, 2, 3, 4)),
        (("digits-sparse-v1",), ABLATIONS, (0, 1, 2)),
    )),
}


def _worker(task: str, algorithm: str, seed: int, out: str, steps: int | None, sets: list[str],
            resume: bool, updates: Any) -> dict[str, Any]:
    """Runs in a worker process; streams step/eval records to the parent through ``updates``."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from opgrpo_bench.runner import run_one

    key = (task, algorithm, seed)

    def progress(record: dict[str, Any]) -> None:
        if record.get("type") in ("step", "eval"):
            updates.put((key, record))

    return run_one(task, algorithm, seed, out=out, steps=steps, sets=sets, resume=resume, progress=progress)


def run_grid(combos: list[tuple[str, str, int]], out: str | Path, steps: int | None = None,
             sets: list[str] | None = None, jobs: int = 1, resume: bool = True,
             console: Any = None) -> list[dict[str, Any]]:
    """Train every (task, algorithm, seed) in ``combos`` with ``jobs`` worker processes.

    Returns the ``run_end`` records in ``combos`` order. All runs are validated (names, settings) before
    any starts, so a typo fails at once and nothing already written is touched.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from opgrpo_bench.runner import resolve

    console = console or Console(stderr=True)
    budgets = {c: resolve(c[0], c[1], c[2], steps, list(sets or [])).train_config.steps for c in combos}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    results: dict[tuple[str, str, int], dict[str, Any]] = {}
    with Progress(*columns, console=console, transient=False) as progress:
        board = _Board(progress, budgets, len(combos))
        if jobs <= 1:  # in-process: no worker start-up cost
            from opgrpo_bench.runner import run_one

            for combo in combos:
                results[combo] = run_one(*combo, out=out, steps=steps, sets=list(sets or []), resume=resume,
                                         progress=lambda rec, c=combo: board.update(c, rec))
                board.finish(combo, results[combo])
            return [results[c] for c in combos]
        ctx = mp.get_context("spawn")
        manager = ctx.Manager()
        updates = manager.Queue()
        try:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                futures: dict[Future, tuple[str, str, int]] = {
                    pool.submit(_worker, *c, str(out), steps, list(sets or []), resume, updates): c for c in combos}
                pending = set(futures)
                while pending:
                    try:
                        board.update(*updates.get(timeout=0.2))
                    except queue_mod.Empty:
                        pass
                    for fut in [f for f in pending if f.done()]:
                        pending.discard(fut)
                        results[futures[fut]] = fut.result()  # re-raises a worker's error
                        board.finish(futures[fut], results[futures[fut]])
        finally:
            manager.shutdown()
    return [results[c] for c in combos]


class _Board:
    """Rich progress: one overall bar plus one bar per running run (step, train reward, last eval)."""

    def __init__(self, progress: Any, budgets: dict[tuple[str, str, int], int], total: int):
        self.progress, self.budgets = progress, budgets
        self.overall = progress.add_task("[bold]all runs", total=total, info="")
        self.bars: dict[tuple[str, str, int], Any] = {}
        self.last_eval: dict[tuple[str, str, int], float] = {}

    def update(self, key: tuple[str, str, int], record: dict[str, Any]) -> None:
        if record.get("type") not in ("step", "eval"):
            return
        key = tuple(key)  # type: ignore[assignment]
        if key not in self.bars:
            self.bars[key] = self.progress.add_task(f"{key[0]} {key[1]} s{key[2]}", total=self.budgets[key],
                                                    info="")
        if record["type"] == "eval":
            self.last_eval[key] = record["score"]
        reward = record.get("train/reward_mean")
        info = (f"reward {reward:.3f} " if reward is not None else "") + \
               (f"eval {self.last_eval[key]:.3f}" if key in self.last_eval else "")
        self.progress.update(self.bars[key], completed=record["step"], info=info)

    def finish(self, key: tuple[str, str, int], end: dict[str, Any]) -> None:
        if key in self.bars:
            self.progress.remove_task(self.bars.pop(key))
        status = f"reached at step {end['steps_to_target']}" if not end.get("censored") else "censored"
        best = end.get("best_score")
        self.progress.console.print(f"{key[0]} {key[1]} seed {key[2]}: {status}"
                                    + (f", best {best:.3f}" if best is not None else ""))
        self.progress.advance(self.overall)


def run_suite(name: str, out: str | Path, leaderboard_out: str | Path | None, jobs: int = 2,
              console: Any = None, resume: bool = True) -> dict[str, Any]:
    """Run a named suite, then write the leaderboard of ``out``; returns timing and the report dict."""
    suite = SUITES[name]
    t0 = time.perf_counter()
    ends = run_grid(suite.combos(), out, suite.steps, list(suite.sets), jobs=jobs, console=console, resume=resume)
    doc = None
    if leaderboard_out is not None:
        from opgrpo_bench.leaderboard import build_leaderboard

        doc = build_leaderboard(out, leaderboard_out)
    return {"suite": name, "runs": len(ends), "wall_s": time.perf_counter() - t0, "leaderboard": doc}
