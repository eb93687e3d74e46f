"""Training diagnostics, as the algorithms declare them: per-row summaries of step-record keys
(:class:`opgrpo_bench.algorithms.base.Diagnostic`, read from the algorithm registry), the per-step
series the report plots and the per-step log-ratio profile. Definitions: docs/STATISTICS.md
("Other per-row fields", "Per-step log-ratio profile")."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable

import numpy as np

from opgrpo_bench.leaderboard.load import Run
from opgrpo_bench.leaderboard.outcomes import Comparison, Outcome, median_or_none, resolve, runs_by_label
from opgrpo_bench.schema import finite_or_none as _finite

DIAG_CLIP_ON, DIAG_CLIP_OFF = "clipfrac/on_policy", "clipfrac/off_policy"
DIAG_LOGW = ("op/logw_min", "op/logw_median", "op/logw_max")
DIAG_LOGRATIO = "op/logratio_by_step"


def declared(algorithm: str) -> tuple[Any, ...]:
    """The :class:`~opgrpo_bench.algorithms.base.Diagnostic` declarations of a registered algorithm (its
    preset's class); none for a name the registry does not know or whose class cannot be loaded."""
    from opgrpo_bench.leaderboard.load import base_algorithm
    from opgrpo_bench.registry import ALGORITHMS

    algorithm = base_algorithm(algorithm)  # a variant's row declares what its algorithm declares
    if algorithm not in ALGORITHMS:
        return ()
    try:
        preset = ALGORITHMS.get(algorithm)
        cls = preset.algorithm_class() if hasattr(preset, "algorithm_class") else preset
    except (ImportError, AttributeError, ValueError):
        return ()
    return tuple(getattr(cls, "diagnostics", ()))


def declared_columns(algorithms: Iterable[str], cmp: Comparison | None = None) -> list[Any]:
    """The diagnostics the ranked ``algorithms`` declare, one per row field, in row order of the
    algorithms then declaration order (the first declaration of a field wins)."""
    seen: dict[str, Any] = {}
    for algorithm in sorted(set(algorithms), key=resolve(cmp).algorithm_key):
        for diag in declared(algorithm):
            seen.setdefault(diag.name, diag)
    return list(seen.values())


def _record_value(rec: dict[str, Any], diag: Any) -> float | None:
    value = _finite(rec.get(diag.key))
    if diag.minus is None or value is None:
        return value
    low = _finite(rec.get(diag.minus))
    return None if low is None else value - low


def _late(run: Run) -> Callable[[dict[str, Any]], bool]:
    return lambda rec: rec["step"] > run.last_step / 2


SUMMARIES: dict[str, Callable[[list[float]], float]] = {  # over a run's finite values (at least one)
    "mean": lambda v: float(np.mean(v)),
    "median": lambda v: float(np.median(v)),
    "late_median": lambda v: float(np.median(v)),
    "max": lambda v: float(max(v)),
}


def run_summary(run: Run, diag: Any) -> float | None:
    """One run's summary of a declared diagnostic over its step records (None when it logs none)."""
    keep = _late(run) if diag.summary == "late_median" else (lambda rec: True)
    values = [v for v in (_record_value(rec, diag) for rec in run.steps if keep(rec)) if v is not None]
    return SUMMARIES[diag.summary](values) if values else None


def diagnostics_summary(outcomes: list[Outcome], columns: list[Any]) -> dict[str, float | None]:
    """A row's diagnostics: per declared column, the median over seeds of the per-run summaries."""
    return {diag.name: median_or_none(run_summary(o.run, diag) for o in outcomes) for diag in columns}


def series_stats(by_step: dict[int, list[float]]) -> dict[str, list[float]]:
    """Mean, min, max and count per step (plain Python: thousands of tiny lists, numpy's per-call
    overhead would dominate)."""
    steps = sorted(by_step)
    return {
        "step": steps,
        "mean": [sum(by_step[s]) / len(by_step[s]) for s in steps],
        "min": [min(by_step[s]) for s in steps],
        "max": [max(by_step[s]) for s in steps],
        "n": [len(by_step[s]) for s in steps],
    }


def _per_step_mean(runs: list[Run], key: str) -> dict[str, list[float]] | None:
    """Mean over seeds of a step-record diagnostic, by optimizer step; None when no run logs it."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for rec in run.steps:
            value = _finite(rec.get(key))
            if value is not None:
                by_step[rec["step"]].append(value)
    if not by_step:
        return None
    stats = series_stats(by_step)
    return {"step": stats["step"], "mean": stats["mean"]}


def logratio_profile(runs: list[Run]) -> dict[str, list[Any]] | None:
    """The per-step log-ratio profile (the paper's Fig. 2) of a group of runs, or None when none logs it.

    ``mean[k]``: mean of ``op/logratio_by_step[k]`` (the mean over the iteration's replayed samples of
    ``log p_old - log p_behaviour`` at denoising step k, signed) over every step record of every run that
    has a finite value there; ``n[k]`` how many values entered (null mean and 0 where none: steps after
    the replayed prefix carry null).
    """
    sums: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for rec in run.steps:
            values = rec.get(DIAG_LOGRATIO)
            if not isinstance(values, list):
                continue
            for k, v in enumerate(values):
                if _finite(v) is not None:
                    sums[k].append(float(v))
    if not sums:
        return None
    indexes = range(max(sums) + 1)
    return {"mean": [sum(sums[k]) / len(sums[k]) if k in sums else None for k in indexes],
            "n": [len(sums.get(k, ())) for k in indexes]}


def logratio_profiles(runs: list[Run], cmp: Comparison | None = None) -> dict[str, dict[str, dict[str, list[Any]]]]:
    """Per task label, per algorithm that logs ``op/logratio_by_step``: its :func:`logratio_profile` over
    the usable runs (seeds pooled). This small table goes into ``leaderboard.json``; the per-step
    diagnostics series do not."""
    out: dict[str, dict[str, dict[str, list[Any]]]] = {}
    for label, algos in runs_by_label(runs, resolve(cmp)).items():
        for algorithm, group in algos.items():
            profile = logratio_profile(group)
            if profile is not None:
                out.setdefault(label, {})[algorithm] = profile
    return out


def diagnostics(runs: list[Run], cmp: Comparison | None = None) -> dict[str, dict[str, Any]]:
    """Per task label, per algorithm that logs replay diagnostics (``op/*`` keys): the series the report
    plots."""
    out: dict[str, dict[str, Any]] = {}
    for label, algos in runs_by_label(runs, resolve(cmp)).items():
        for algorithm, group in algos.items():
            profile = logratio_profile(group)
            entry = {
                "logratio_by_step": None if profile is None else profile["mean"],
                "clipfrac_on_policy": _per_step_mean(group, DIAG_CLIP_ON),
                "clipfrac_off_policy": _per_step_mean(group, DIAG_CLIP_OFF),
                "logw": {k.split("_")[-1]: _per_step_mean(group, k) for k in DIAG_LOGW},
            }
            has_op = (entry["logratio_by_step"] is not None or entry["clipfrac_off_policy"] is not None
                      or any(v is not None for v in entry["logw"].values()))
            if has_op:  # an algorithm without replay logs no op/* keys: it has nothing to show here
                out.setdefault(label, {})[algorithm] = entry
    return out
