"""The gold metric of a row: the held-out reader's score at each run's last eval and its gap to the
training reward's score. Definition: docs/STATISTICS.md ("Gold metric")."""

from __future__ import annotations

from typing import Any

from opgrpo_bench.leaderboard.outcomes import Outcome, median_or_none
from opgrpo_bench.schema import finite_or_none as _finite

GOLD_KEY = "gold"


def _gold_gap(rec: dict[str, Any]) -> float | None:
    """``score - gold`` of one eval record, or None when either is missing or not finite."""
    score, gold = _finite(rec.get("score")), _finite(rec.get(GOLD_KEY))
    return None if score is None or gold is None else score - gold


def gold_fields(outcomes: list[Outcome]) -> dict[str, Any]:
    """A row's gold-metric fields; null where no run records ``gold``."""
    finals, gaps, changes = [], [], []
    for o in outcomes:
        if not o.run.evals:
            continue
        first, last = o.run.evals[0], o.run.evals[-1]  # evals are sorted by step
        gold = _finite(last.get(GOLD_KEY))
        if gold is None:
            continue
        finals.append(gold)
        gap = _gold_gap(last)
        if gap is not None:
            gaps.append(gap)
            base_gap = _gold_gap(first)
            if base_gap is not None:
                changes.append(gap - base_gap)
    return {"final_gold": median_or_none(finals), "final_gold_gap": median_or_none(gaps),
            "gold_gap_change": median_or_none(changes), "gold_seeds": len(finals)}
