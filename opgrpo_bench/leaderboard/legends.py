"""The report's legends: what the tables show and how to read them, in a sentence or two each (the
definitions are in docs/STATISTICS.md)."""

from __future__ import annotations

from opgrpo_bench.leaderboard.outcomes import Comparison
from opgrpo_bench.leaderboard.speedup import BOOTSTRAP_RESAMPLES


def legend(cmp: Comparison) -> str:
    """The legend above the result tables: how to read a ratio, the markers, NFE, IQR, the scores."""
    return (
        f"Ratios are steps (samples, NFE, wall-clock) to target of the algorithm divided by those of "
        f"{cmp.reference} on the same task version: lower is better (0.34× = 34% of the steps). "
        f"Median over seeds of per-seed ratios when seeds are shared, 95% percentile-bootstrap interval over "
        f"seeds ({BOOTSTRAP_RESAMPLES:,} resamples, fixed RNG seed). "
        "“≥”: the median involves runs that never reached the target, counted at their budget (a lower "
        "bound). “*”: censored runs enter the ratio. “†”: no shared seeds, ratio of medians. "
        "NFE: network evaluations per sample of the rollouts and of the updates, as run (a classifier-free "
        "guided call counts 2, the reference model's and the sampling weights' calls count too, evaluation "
        "excluded), so "
        "algorithms that train fewer steps or sample fewer of them spend fewer. "
        "IQR = 25th–75th percentile over seeds. Best/final score: median over seeds of each run's best/last "
        "eval score. Final gold score: median over seeds of the held-out gold score at each run's last eval "
        "(the same images scored by a reader of another architecture that training never sees; “—” when the "
        "runs do not record one). Score − gold: median over seeds of each run's final score minus its final "
        "gold score, in brackets the median change of that gap since the run's first eval (a gap that grows "
        "during training is reward hacking). Unfinished runs (no run_end) are excluded and listed below."
    )


LOGRATIO_LEGEND = (
    "Per-step log-ratio profile (the paper's Fig. 2): per denoising step k of the replayed prefix, the mean "
    "over step records and seeds of op/logratio_by_step[k], the iteration's mean over replayed samples of "
    "log p_old − log p_behaviour (signed). Steps after every replayed prefix have no value and are not "
    "shown."
)


def robust_legend(cmp: Comparison) -> str:
    """The legend of rliable's statistics (P(fewer steps), AUC, IQM, intervals)."""
    return (
        "Conventions of rliable (Agarwal et al. 2021; definitions in docs/STATISTICS.md). "
        f"P(fewer steps than {cmp.reference}): probability that a random seed of the algorithm reaches the "
        f"target in fewer optimizer steps than a random {cmp.reference} seed, over all pairs of runs, ties "
        "half; a run that never reached the target only counts as slower than one that reached it by its budget "
        "(otherwise half). AUC: area under the eval-score curve over [0, budget] divided by the budget, each "
        "score normalised to 0 at the run's step-0 score and 1 at the target and clipped to [0, 1]; IQM = "
        "interquartile mean over seeds (a quarter of the seeds, rounded down, cut from each end: "
        "scipy.stats.trim_mean(x, 0.25)). Intervals: 95% "
        f"percentile bootstrap over seeds, stratified by task version ({BOOTSTRAP_RESAMPLES:,} resamples, fixed "
        "RNG seed)."
    )


def aggregate_legend(cmp: Comparison) -> str:
    """The legend of the table pooled over task versions."""
    return (
        f"Pooled over the task versions each algorithm shares with {cmp.reference} (at least two): steps ratio = "
        "median of all per-seed paired ratios; P(fewer steps) = mean over task versions; AUC = IQM over all "
        "runs. The bootstrap resamples seeds within each task version, so every resample keeps each task's "
        "number of seeds."
    )


EFFICIENCY_LEGEND = (
    "rliable's figures, one pair per task version. Sample efficiency: interquartile mean over seeds of the "
    "normalised eval score (0 = the run's step-0 score, 1 = the target, clipped to [0, 1]) at each eval "
    "step, band = 95% percentile-bootstrap interval over seeds. Performance profiles: fraction of runs "
    "whose normalised final (left) or best (right) eval score exceeds tau."
)
