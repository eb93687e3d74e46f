"""Synthetic results files for the leaderboard tests, written with the real ResultsWriter.

The standard suite (task ``toy-v1``, target 0.8, higher is better, budget 100 steps, eval every 10):

| algorithm          | seed | reaches the target at | notes                                  |
|--------------------|------|-----------------------|----------------------------------------|
| flow-grpo          | 0..3 | 40, 60, 50, never     | seed 3 censored (counts as 100 steps)  |
| op-grpo            | 0..3 | 20, 30, 20, 50        | logs the OP-GRPO diagnostics           |
| op-grpo            | 4    | (10, but no run_end)  | unfinished: excluded from statistics   |
| op-grpo-no-replay  | 5, 6 | 40, 60                | no seed shared with flow-grpo          |

Counts at step s: samples = 16 s, NFE = 160 s, wall-clock = 2 s (flow-grpo) or 1.5 s (others).

The standard suite records no gold score and no ``num_train_prompts``, like the runs made before those
existed. ``write_run`` adds them on request: ``gold_offset`` d writes ``gold = score - d - gold_drift *
step`` in every eval record, ``num_train_prompts`` goes into ``run_start``, and ``replay_age(step)`` gives
an OP-GRPO step record's ``op/replay_age_mean`` (None: the key is written as null, as when nothing was
replayed).

The files are written with the real :class:`ResultsWriter`, except that its per-record ``fsync`` is
skipped: durability is not under test here, and a thousand fsyncs per suite make the tests slow on a busy
disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock
from typing import Any, Callable

from opgrpo_bench.results import ResultsWriter

TARGET = 0.8
BUDGET = 100
EVAL_EVERY = 10

SUITE: list[tuple[str, int, int | None]] = [
    ("flow-grpo", 0, 40), ("flow-grpo", 1, 60), ("flow-grpo", 2, 50), ("flow-grpo", 3, None),
    ("op-grpo", 0, 20), ("op-grpo", 1, 30), ("op-grpo", 2, 20), ("op-grpo", 3, 50),
    ("op-grpo-no-replay", 5, 40), ("op-grpo-no-replay", 6, 60),
]


def score_at(step: int, reach: int | None, seed: int) -> float:
    """Eval score: rises linearly to exactly the target at ``reach``, then up to a seed-dependent cap."""
    if reach is None:
        return 0.5 * step / BUDGET  # never reaches 0.8
    cap = 0.85 + 0.01 * seed
    return min(cap, TARGET * step / reach) if step != reach else TARGET


def write_run(
    root: Path,
    algorithm: str,
    seed: int,
    reach: int | None,
    *,
    task: str = "toy-v1",
    task_version: str | int = "1",
    finished: bool = True,
    last_step: int = BUDGET,
    run_id: str | None = None,
    schema: str | None = None,
    gold_offset: float | None = None,
    gold_drift: float = 0.0,
    num_train_prompts: int | None = None,
    replay_age: Callable[[int], float | None] | None = None,
) -> Path:
    """Write one run's results file; returns the metrics.jsonl path."""
    with mock.patch.object(os, "fsync", lambda fd: None):
        return _write_run(root, algorithm, seed, reach, task=task, task_version=task_version,
                          finished=finished, last_step=last_step, run_id=run_id, schema=schema,
                          gold_offset=gold_offset, gold_drift=gold_drift,
                          num_train_prompts=num_train_prompts, replay_age=replay_age)


def _write_run(root: Path, algorithm: str, seed: int, reach: int | None, *, task: str,
               task_version: str | int, finished: bool, last_step: int, run_id: str | None,
               schema: str | None, gold_offset: float | None, gold_drift: float,
               num_train_prompts: int | None, replay_age: Callable[[int], float | None] | None) -> Path:
    run_id = run_id or f"{task}-{algorithm}-s{seed}"
    writer = ResultsWriter(root / run_id)
    wall_per_step = 2.0 if algorithm == "flow-grpo" else 1.5
    start: dict[str, Any] = dict(run_id=run_id, task=task, task_version=task_version, algorithm=algorithm,
                                 config={"lr": 3e-4}, seed=seed, world_size=1, precision="fp32",
                                 versions={}, git_sha="0" * 40, device="cpu", start_time="2026-01-01T00:00:00",
                                 target=TARGET, higher_is_better=True, budget_steps=BUDGET)
    if num_train_prompts is not None:
        start["num_train_prompts"] = num_train_prompts
    writer.write("run_start", **start)
    op = algorithm.startswith("op-grpo") and algorithm != "op-grpo-no-replay"
    for step in range(0, last_step + 1):
        counts = dict(step=step, samples=16 * step, nfe=160 * step, wall_s=wall_per_step * step)
        if step > 0:
            rec: dict[str, Any] = {**counts, "train/reward_mean": 0.1, "train/reward_std": 0.01,
                                   "clipfrac/on_policy": 0.05}
            if op:
                rec.update({"op/buffer_size": min(step, 32), "op/buffer_mean_age": 2.0,
                            "op/logw_min": -1.0, "op/logw_median": 0.0, "op/logw_max": 1.0 + seed,
                            "clipfrac/off_policy": 0.10,
                            "op/logratio_by_step": [0.0, -0.01, -0.02, -0.05, -0.1, -0.3, None, None, None,
                                                    None]})
                if replay_age is not None:
                    rec["op/replay_age_mean"] = replay_age(step)
            writer.write("step", **rec)
        if step % EVAL_EVERY == 0:
            score = score_at(step, reach, seed)
            gold = {} if gold_offset is None else {"gold": score - gold_offset - gold_drift * step}
            writer.write("eval", **counts, score=score, **gold)
    if finished:
        writer.write("run_end", status="completed", steps_to_target=reach, samples_to_target=None,
                     wall_s_to_target=None, censored=reach is None)
    if schema is not None:  # rewrite every record's schema (a results file from another version)
        path = writer.path
        path.write_text(path.read_text().replace('"opgrpo-bench/v1"', f'"{schema}"'))
    return writer.path


def write_suite(root: Path) -> Path:
    for algorithm, seed, reach in SUITE:
        write_run(root, algorithm, seed, reach)
    write_run(root, "op-grpo", 4, 10, finished=False, last_step=30)
    return root
