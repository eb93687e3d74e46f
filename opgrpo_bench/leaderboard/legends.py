"""The report's legends: how to read the tables, in a sentence or two each. The definitions are written
once, in docs/STATISTICS.md; the legends name its sections (:func:`see`) rather than repeat them."""

from __future__ import annotations

from opgrpo_bench.leaderboard.outcomes import Comparison

DEFINITIONS = "docs/STATISTICS.md"


def see(*sections: str) -> str:
    """A pointer to sections of the statistics' definitions: ``docs/STATISTICS.md, “Per run”, ...``."""
    return ", ".join([DEFINITIONS, *(f"“{s}”" for s in sections)])


def legend(cmp: Comparison) -> str:
    """The legend above the result tables: how to read a ratio, the markers, the brackets."""
    return (
        f"A ratio is the algorithm's steps (samples, NFE, wall-clock) to target divided by {cmp.reference}'s "
        "on the same task version: lower is better (0.34× = 34% of the steps). Brackets hold 95% bootstrap "
        "intervals, or the IQR (25th–75th percentile over seeds) beside a median. “≥”: the median involves "
        "runs that never reached the target (a lower bound). “*”: censored runs enter the ratio. “†”: no "
        "shared seeds, ratio of medians. “—”: no value. Unfinished runs (no run_end) are excluded and listed "
        "below. Every column is defined in "
        + see("Words", "Which runs count", "Per run", "Per row (task version × algorithm)",
              "Steps ratio against the reference",
              "Gold metric") + "."
    )


def robust_legend(cmp: Comparison) -> str:
    """The legend of rliable's statistics (P(fewer steps), AUC, IQM)."""
    return (
        f"P(fewer steps than {cmp.reference}) and the AUC's IQM follow rliable (Agarwal et al. 2021): "
        + see("Probability of improvement", "Normalised AUC", "IQM", "What follows rliable, and what differs")
        + "."
    )


def aggregate_legend(cmp: Comparison) -> str:
    """The legend of the table pooled over task versions."""
    return (f"Pooled over the task versions each algorithm shares with {cmp.reference} (at least two), "
            f"with a bootstrap stratified by task version: {see('Across task versions')}.")


LOGRATIO_LEGEND = (
    "Per-step log-ratio profile (the paper's Fig. 2): per denoising step k of the replayed prefix, the mean "
    "of op/logratio_by_step[k] over step records and seeds; steps after every replayed prefix are not "
    f"shown. {see('Per-step log-ratio profile')}."
)

EFFICIENCY_LEGEND = (
    "rliable's figures, one pair per task version: sample efficiency (the IQM over seeds of the normalised "
    "eval score at each eval step, with its 95% interval) and performance profiles (the fraction of runs "
    f"whose normalised final, left, or best, right, eval score exceeds tau). {see('Figures')}."
)
