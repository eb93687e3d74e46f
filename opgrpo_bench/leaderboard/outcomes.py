"""Runs reduced to what the statistics need: which runs count, each run's outcome, medians and IQRs, and
the order of the rows. Definitions: docs/STATISTICS.md ("Which runs count", "Per run", "Row order")."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from opgrpo_bench.leaderboard.load import Run
from opgrpo_bench.schema import finite_or_none as _finite
from opgrpo_bench.schema import run_outcome

DEFAULT_REFERENCE = "flow-grpo"
METRICS = ("steps", "samples", "nfe", "wall_s")  # the "to target" quantities
_OUTCOME_KEYS = {"samples": "samples_to_target", "nfe": "nfe_to_target", "wall_s": "wall_s_to_target"}


@dataclass(frozen=True)
class Comparison:
    """What every row is compared with, and the order rows are listed in.

    ``reference``: the algorithm the ratios, probabilities of improvement and paper protocol are taken
    against (``opgrpo-bench leaderboard --reference``). ``featured``: algorithms listed right after it, in
    this order (the ones the analyses compare, :mod:`.analyses`); the rest follow alphabetically.
    """

    reference: str = DEFAULT_REFERENCE
    featured: tuple[str, ...] = ()

    def algorithm_key(self, name: str) -> tuple[int, str]:
        """The reference first, then the featured algorithms, then alphabetical."""
        order = (self.reference, *(f for f in self.featured if f != self.reference))
        return (order.index(name) if name in order else len(order), name)

    def group_key(self, run: Run) -> tuple[Any, ...]:
        """Sort key of a row: task, version, algorithm."""
        return (run.task, version_sort_key(run.task_version), self.algorithm_key(run.algorithm))


def resolve(cmp: Comparison | None) -> Comparison:
    """``cmp``, or the default comparison: the default reference and the default analyses' featured
    algorithms (:func:`opgrpo_bench.leaderboard.analyses.default_comparison`)."""
    if cmp is not None:
        return cmp
    from opgrpo_bench.leaderboard.analyses import default_comparison

    return default_comparison()


@dataclass(frozen=True)
class Outcome:
    """One finished run reduced to what the leaderboard needs."""

    run: Run
    reached: bool
    to_target: dict[str, float | None]  # steps / samples / nfe / wall_s (budget or spent if censored)
    best_score: float | None
    final_score: float | None

    @property
    def censored(self) -> bool:
        return not self.reached


def exclusion_reason(run: Run) -> str | None:
    """Why a finished run cannot be scored (it is then left out of every statistic), or None."""
    if not run.evals:
        return "no eval record"
    bad = [e["step"] for e in run.evals if _finite(e.get("score")) is None]
    if bad:
        return (f"eval score missing or not a finite number (null/NaN) at {len(bad)} of {len(run.evals)} "
                f"evals (first at step {bad[0]})")
    return None


def usable(run: Run) -> bool:
    """A run that counts: finished, with a finite score at every eval."""
    return run.finished and exclusion_reason(run) is None


def _last_value(run: Run, key: str) -> float | None:
    """The value of ``key`` at the run's last step or eval record that has one (what the run spent)."""
    latest: tuple[int, int, float] | None = None
    for order, rec in enumerate((*run.steps, *run.evals)):
        value = rec.get(key)
        if value is None:
            continue
        # sort by step; at equal steps prefer the larger count (an eval may be logged after the step)
        candidate = (rec["step"], value, order)
        if latest is None or candidate[:2] > latest[:2]:
            latest = candidate
    return None if latest is None else float(latest[1])


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def outcome(run: Run, target: float | None = None) -> Outcome:
    """Steps, samples, NFE and wall-clock to ``target`` (default: the run's own target) of one run, from
    its scored eval records (:func:`opgrpo_bench.schema.run_outcome`, the computation ``run_end`` records;
    a censored run counts at its budget, or at what it spent)."""
    scored = [e for e in run.evals if e.get("score") is not None]
    result = run_outcome(scored, run.target if target is None else target, run.higher_is_better)
    reached = not result["censored"]
    if reached:
        to_target = {"steps": float(result["steps_to_target"])}
        to_target.update({key: _float(result[field]) for key, field in _OUTCOME_KEYS.items()})
    else:
        to_target = {"steps": float(run.budget_steps)}
        to_target.update({key: _last_value(run, key) for key in _OUTCOME_KEYS})
    return Outcome(run=run, reached=reached, to_target=to_target, best_score=_float(result["best_score"]),
                   final_score=_float(result["final_score"]))  # run.evals is sorted by step


def summarize(values: Iterable[tuple[float, bool]]) -> dict[str, Any]:
    """Median, quartiles and censoring flag of ``(value, censored)`` pairs (None values excluded)."""
    pairs = sorted((v, c) for v, c in values if v is not None)  # at equal values reached sorts first
    if not pairs:
        return {"median": None, "q25": None, "q75": None, "median_censored": False, "n": 0}
    arr = np.array([v for v, _ in pairs], dtype=float)
    q25, median, q75 = (float(x) for x in np.percentile(arr, [25, 50, 75]))
    middle = pairs[: len(pairs) // 2 + 1]
    return {"median": median, "q25": q25, "q75": q75,
            "median_censored": any(c for _, c in middle), "n": len(pairs)}


def median_or_none(values: Iterable[float | None]) -> float | None:
    """The median of the non-null values, None when there is none."""
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def version_sort_key(version: str) -> tuple[int, float, str]:
    """Numeric versions numerically ("2" before "10"), then the rest as strings."""
    digits = version.lstrip("v")
    return (0, float(digits), version) if digits.isdigit() else (1, 0.0, version)


def task_label(task: str, version: str) -> str:
    """How a task version is named in the report: the id alone when it already ends with the version; a
    setup (trainer settings changed from the task's defaults, ``task [k=v,...]``) stays at the end."""
    if task.endswith("]") and " [" in task:
        base, setup = task.split(" [", 1)
        return f"{task_label(base, version)} [{setup}"
    v = version.lstrip("v")
    if task.endswith(f"-v{v}") or task.endswith(f"@{version}"):
        return task
    return f"{task} (version {version})"


def usable_runs(runs: list[Run], cmp: Comparison) -> list[Run]:
    """The usable runs in row order, seeds in order."""
    return sorted((r for r in runs if usable(r)), key=lambda r: (cmp.group_key(r), r.seed))


def usable_groups(runs: list[Run], cmp: Comparison) -> dict[tuple[str, str, str], list[Outcome]]:
    """Outcomes of the usable runs by (task, task version, algorithm), seeds in order."""
    groups: dict[tuple[str, str, str], list[Outcome]] = defaultdict(list)
    for run in usable_runs(runs, cmp):
        groups[(run.task, run.task_version, run.algorithm)].append(outcome(run))
    return groups


def runs_by_label(runs: list[Run], cmp: Comparison) -> dict[str, dict[str, list[Run]]]:
    """The usable runs by task label, then by algorithm, in row order."""
    grouped: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in usable_runs(runs, cmp):
        grouped[task_label(run.task, run.task_version)][run.algorithm].append(run)
    return grouped


def per_seed(outs: list[Outcome], metric: str) -> dict[int, tuple[float | None, bool]]:
    """``{seed: (to-target value, censored)}`` of a row's outcomes."""
    return {o.run.seed: (o.to_target[metric], o.censored) for o in outs}


def steps_with_censoring(outs: list[Outcome]) -> list[tuple[float, bool]]:
    """``(steps to target, censored)`` per run."""
    return [(float(o.to_target["steps"]), o.censored) for o in outs]
