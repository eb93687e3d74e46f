"""The verdict a suite ends with: per task and algorithm, is it faster than the reference (Flow-GRPO), slower,
or undecided?

A row is "faster" when the whole 95% interval of its steps ratio lies below 1 *and* the interval of its
probability of improvement lies above 0.5; "slower" when both lie on the other side; otherwise
"inconclusive". Requiring both keeps one lucky statistic from deciding alone.
"""

from __future__ import annotations

from typing import Any

__all__ = ["verdict", "verdict_rows"]

REFERENCE = "flow-grpo"  # for a document that does not name its reference


def verdict(row: dict[str, Any]) -> str:
    """"faster", "slower" or "inconclusive" for one leaderboard row (see the module docstring)."""
    lo, hi = row.get("speedup_ci_low"), row.get("speedup_ci_high")
    p_lo, p_hi = row.get("prob_improvement_ci_low"), row.get("prob_improvement_ci_high")
    if None in (lo, hi, p_lo, p_hi):
        return "inconclusive"
    if hi < 1 and p_lo > 0.5:
        return "faster"
    if lo > 1 and p_hi < 0.5:
        return "slower"
    return "inconclusive"


def verdict_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per non-reference row of a leaderboard document (``leaderboard.json``; its reference is
    the one its ``statistics`` name)."""
    reference = doc.get("statistics", {}).get("reference_algorithm", REFERENCE)
    out = []
    for row in doc.get("rows", []):
        if row.get("algorithm") == reference or row.get("speedup_vs_flow_grpo") is None:
            continue
        out.append({"task": row["task"], "algorithm": row["algorithm"], "seeds": row.get("seeds"),
                    "ratio": row["speedup_vs_flow_grpo"], "ci": (row.get("speedup_ci_low"), row.get("speedup_ci_high")),
                    "p_improvement": row.get("prob_improvement"),
                    "p_ci": (row.get("prob_improvement_ci_low"), row.get("prob_improvement_ci_high")),
                    "verdict": verdict(row)})
    return out
