"""Normalised eval curves (0 at a run's step-0 score, 1 at the target): a row's AUC with its IQM and
bootstrap interval, the per-seed values the performance profiles plot, and the sample-efficiency curves.
Definitions: docs/STATISTICS.md ("Normalised AUC", "IQM", "Figures")."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from opgrpo_bench.leaderboard.load import Run
from opgrpo_bench.leaderboard.outcomes import Comparison, Outcome, resolve, runs_by_label
from opgrpo_bench.schema import finite_or_none as _finite
from opgrpo_bench.leaderboard.robust import auc, iqm, normalised_scores, percentile_interval, stratified_bootstrap
from opgrpo_bench.leaderboard.speedup import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED


@dataclass(frozen=True)
class NormalisedRun:
    """A run's eval curve normalised to 0 at its base score (first eval, step 0) and 1 at the target."""

    steps: list[int]
    scores: list[float]  # normalised, not clipped
    auc: float | None
    final: float
    best: float


def normalised_run(run: Run) -> NormalisedRun | None:
    """The normalised eval curve of a run (evals up to its budget), or None when it has no eval or its
    base score already meets the target."""
    evals = [e for e in run.evals if _finite(e.get("score")) is not None and e["step"] <= run.budget_steps]
    if not evals:
        return None
    steps = [int(e["step"]) for e in evals]
    raw = [float(e["score"]) for e in evals]
    norm = normalised_scores(raw, raw[0], run.target, run.higher_is_better)
    if norm is None:
        return None
    area = auc(steps, raw, raw[0], run.target, run.budget_steps, run.higher_is_better)
    values = [float(v) for v in norm]
    return NormalisedRun(steps, values, area, values[-1], max(values))


def run_auc(o: Outcome) -> float | None:
    """The normalised AUC of an outcome's run (None where the normalisation is undefined)."""
    nr = normalised_run(o.run)
    return None if nr is None else nr.auc


def iqm_interval(strata: list[list[float]], rng_seed: int = BOOTSTRAP_SEED,
                 resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float | None, float | None, float | None]:
    """IQM of the pooled values of all strata and its stratified-bootstrap 95% interval."""
    strata = [list(s) for s in strata if s]
    if not strata:
        return None, None, None
    point = iqm([v for s in strata for v in s])
    boot = stratified_bootstrap([np.array(s) for s in strata], lambda a: iqm(a, axis=1), resamples,
                                np.random.default_rng(rng_seed))
    low, high = percentile_interval(boot)
    return point, low, high


def row_auc(outs: list[Outcome]) -> dict[str, Any]:
    """``auc`` fields of a row: IQM over seeds of the normalised AUC, with its bootstrap interval, and the
    per-seed normalised values (in ``seed_list`` order; null where the normalisation is undefined)."""
    norms = [normalised_run(o.run) for o in outs]
    per_seed = [None if nr is None else nr.auc for nr in norms]
    point, low, high = iqm_interval([[a for a in per_seed if a is not None]])
    return {"auc": point, "auc_ci_low": low, "auc_ci_high": high,
            "auc_n": sum(a is not None for a in per_seed), "auc_per_seed": per_seed,
            "normalised_final_per_seed": [None if nr is None else nr.final for nr in norms],
            "normalised_best_per_seed": [None if nr is None else nr.best for nr in norms]}


def _interval_series(by_step: dict[int, list[float]], resamples: int) -> dict[str, Any]:
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    steps = sorted(by_step)
    centre, lows, highs = [], [], []
    for step in steps:
        values = np.array(by_step[step], dtype=float)
        centre.append(iqm(values))
        boot = iqm(values[rng.integers(0, values.size, size=(resamples, values.size))], axis=1)
        low, high = percentile_interval(boot)
        lows.append(low)
        highs.append(high)
    return {"step": steps, "iqm": centre, "ci_low": lows, "ci_high": highs, "n": [len(by_step[s]) for s in steps]}


def sample_efficiency(runs: list[Run], resamples: int = BOOTSTRAP_RESAMPLES,
                      cmp: Comparison | None = None) -> dict[str, dict[str, Any]]:
    """Per task label, per algorithm: IQM over seeds of the clipped normalised eval score at each eval
    step, with a 95% percentile-bootstrap interval over the seeds that evaluated at that step."""
    out: dict[str, dict[str, Any]] = {}
    for label, algos in runs_by_label(runs, resolve(cmp)).items():
        series: dict[str, Any] = {}
        for algorithm, group in algos.items():
            by_step: dict[int, list[float]] = defaultdict(list)
            normalised = [nr for nr in map(normalised_run, group) if nr is not None]
            for nr in normalised:
                for step, value in zip(nr.steps, nr.scores):
                    by_step[step].append(min(1.0, max(0.0, value)))
            if normalised:
                series[algorithm] = _interval_series(by_step, resamples)
        out[label] = {"algorithms": series}
    return out
