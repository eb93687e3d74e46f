"""The probability of improvement of a row over the reference (rliable's P(X < Y) on steps to target,
Gehan's rule for censored runs). Definition: docs/STATISTICS.md ("Probability of improvement")."""

from __future__ import annotations

from typing import Any

import numpy as np

from opgrpo_bench.leaderboard.outcomes import Comparison, Outcome, steps_with_censoring
from opgrpo_bench.leaderboard.robust import prob_improvement
from opgrpo_bench.leaderboard.speedup import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED


def pooled_prob_improvement(strata: list[tuple[list[Outcome], list[Outcome]]]) -> tuple[float | None, ...]:
    """P(fewer steps) of ``(row, reference)`` outcome pairs, one per task version, with its interval."""
    return prob_improvement([(steps_with_censoring(o), steps_with_censoring(r)) for o, r in strata],
                            BOOTSTRAP_RESAMPLES, np.random.default_rng(BOOTSTRAP_SEED))


def row_prob_improvement(algorithm: str, outs: list[Outcome], ref: list[Outcome],
                         cmp: Comparison = Comparison()) -> dict[str, Any]:
    """``prob_improvement`` fields of a row: P(a random seed of it reaches the target in fewer steps than
    a random reference seed), with its bootstrap interval (robust.prob_improvement)."""
    fields: dict[str, Any] = {"prob_improvement": None, "prob_improvement_ci_low": None,
                              "prob_improvement_ci_high": None, "prob_improvement_pairs": 0}
    if not outs or not ref:
        return fields
    if algorithm == cmp.reference:
        return {**fields, "prob_improvement": 0.5, "prob_improvement_ci_low": 0.5,
                "prob_improvement_ci_high": 0.5, "prob_improvement_pairs": len(outs) * len(ref)}
    p, low, high = pooled_prob_improvement([(outs, ref)])
    return {"prob_improvement": p, "prob_improvement_ci_low": low, "prob_improvement_ci_high": high,
            "prob_improvement_pairs": len(outs) * len(ref)}
