"""Robust statistics after rliable's conventions (Agarwal et al., 2021, "Deep Reinforcement Learning at
the Edge of the Statistical Precipice"), on numpy and scipy only.

Pure functions on plain numbers; :mod:`.stats` applies them to the leaderboard's rows. The definitions,
the tie and censoring rules and where this module differs from rliable are in ``docs/STATISTICS.md``.

- :func:`iqm`: interquartile mean, ``scipy.stats.trim_mean(x, 0.25)``, exactly rliable's
  ``aggregate_iqm`` (a quarter of the values, rounded down, cut from each end).
- :func:`stratified_bootstrap`: resample with replacement *within* each stratum (a task version), each
  stratum keeping its size; with one stratum it is the ordinary bootstrap over seeds.
- :func:`improvement_score` / :func:`prob_improvement`: P(a random run of X needs fewer steps than a
  random run of Y), ties half, right-censored runs compared by Gehan's rule.
- :func:`normalised_scores` / :func:`auc`: the eval-score curve normalised between the run's base score
  and the target, and the area under it.
- :func:`seeds_needed` / :func:`pooled_sd`: the power analysis.

Every random draw comes from a ``numpy.random.Generator`` the caller makes from a fixed seed, so the
same input always gives the same numbers, bit for bit.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np
from scipy.stats import trim_mean

IQM_CUT = 0.25  # proportion cut from each end (rliable: scipy.stats.trim_mean(scores, 0.25))
CI_PERCENTILES = (2.5, 97.5)  # 95% percentile interval
POWER_ALPHA = 0.05
POWER_TARGET = 0.8
POWER_RATIOS = (0.7, 0.342)  # the ratios the power analysis is asked about (0.342: the paper's headline)


def iqm(values: Sequence[float] | np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean: the mean of the values left after cutting ``floor(n / 4)`` from each end.

    This is ``scipy.stats.trim_mean(values, 0.25)``, rliable's ``aggregate_iqm``: for n = 4 the mean of
    the middle 2, for n = 5 of the middle 3, for n = 10 of the middle 6. With ``axis`` it works along
    that axis of an array (one IQM per bootstrap resample).
    """
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("iqm of no values")
    result = trim_mean(arr, IQM_CUT, axis=axis)
    return float(result) if axis is None else np.asarray(result, dtype=float)


def percentile_interval(samples: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles (numpy's linear interpolation) of bootstrap statistics."""
    low, high = np.percentile(samples, CI_PERCENTILES)
    return float(low), float(high)


def stratified_bootstrap(strata: Sequence[np.ndarray], statistic: Callable[[np.ndarray], np.ndarray],
                         resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples`` bootstrap values of ``statistic`` with resampling inside each stratum.

    Each stratum (a 1-D array: one value per seed of one task version, e.g. the per-seed paired ratios)
    is resampled with replacement to its own size; the resampled strata are put side by side into a
    ``(resamples, sum of sizes)`` array and ``statistic`` reduces it along axis 1. Strata are drawn in
    order, one ``rng.integers(0, n_k, size=(resamples, n_k))`` each, so a single stratum gives exactly
    the plain bootstrap over seeds.
    """
    parts = []
    for stratum in strata:
        values = np.asarray(stratum, dtype=float)
        if values.size == 0:
            continue
        parts.append(values[rng.integers(0, values.size, size=(resamples, values.size))])
    if not parts:
        raise ValueError("stratified bootstrap of no values")
    return np.asarray(statistic(np.concatenate(parts, axis=1)), dtype=float)


# ----------------------------------------------------------------------------------------------------
# Probability of improvement


def improvement_score(x: tuple[float, bool], y: tuple[float, bool]) -> float:
    """1 if run ``x`` surely needed fewer steps to target than run ``y``, 0 if surely more, 0.5 if tied or
    undetermined.

    Each run is ``(steps, censored)``; a censored run (never reached the target) carries its budget, and
    its true steps-to-target is only known to be *greater* than that (Gehan's rule for right-censored
    data). So: both reached: compare the steps, equal is a tie; a reached run beats a censored one when it
    reached at or before the other's budget (reaching at step B beats not reaching by step B), and is
    undetermined (0.5) when it reached later than that budget (budgets differ); two censored runs are
    undetermined (0.5). With one budget for all runs this is "censored runs count as their budget,
    ranked after a run that reached at the budget".
    """
    (xv, xc), (yv, yc) = x, y
    if not xc and not yc:
        return 1.0 if xv < yv else 0.0 if xv > yv else 0.5
    if not xc and yc:
        return 1.0 if xv <= yv else 0.5
    if xc and not yc:
        return 0.0 if yv <= xv else 0.5
    return 0.5


def improvement_matrix(x: Sequence[tuple[float, bool]], y: Sequence[tuple[float, bool]]) -> np.ndarray:
    """``U[i, j] = improvement_score(x[i], y[j])``, shape ``(len(x), len(y))``."""
    return np.array([[improvement_score(a, b) for b in y] for a in x], dtype=float).reshape(len(x), len(y))


def prob_improvement(strata: Sequence[tuple[Sequence[tuple[float, bool]], Sequence[tuple[float, bool]]]],
                     resamples: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """P(X needs fewer steps than Y) and its 95% bootstrap interval.

    ``strata`` holds one ``(x_runs, y_runs)`` pair per task version. Per stratum the statistic is the
    mean of :func:`improvement_matrix` over all ``len(x) * len(y)`` pairs of runs (the Mann-Whitney U
    statistic divided by the number of pairs, as rliable's ``probability_of_improvement``); over strata,
    their mean. The bootstrap resamples the runs of X and of Y independently within each stratum
    (rliable's stratified independent bootstrap; the runs are not paired by seed).
    """
    points, boots = [], []
    for x, y in strata:
        if not x or not y:
            continue
        u = improvement_matrix(x, y)
        points.append(float(u.mean()))
        ix = rng.integers(0, len(x), size=(resamples, len(x)))
        iy = rng.integers(0, len(y), size=(resamples, len(y)))
        boots.append(u[ix[:, :, None], iy[:, None, :]].mean(axis=(1, 2)))
    if not points:
        raise ValueError("probability of improvement of no runs")
    low, high = percentile_interval(np.mean(boots, axis=0))
    return float(np.mean(points)), low, high


# ----------------------------------------------------------------------------------------------------
# Normalised scores and the area under the curve


def normalised_scores(scores: Sequence[float], base: float, target: float,
                      higher_is_better: bool) -> np.ndarray | None:
    """``(score - base) / (target - base)``: 0 at the base score, 1 at the target, larger is better
    whatever the task's direction. None when the base already meets the target (nothing to normalise by).
    """
    if (base >= target) if higher_is_better else (base <= target):
        return None
    return (np.asarray(scores, dtype=float) - base) / (target - base)


def auc(steps: Sequence[float], scores: Sequence[float], base: float, target: float, budget: float,
        higher_is_better: bool) -> float | None:
    """Area under the normalised eval-score curve over ``[0, budget]``, divided by ``budget``: in [0, 1].

    ``steps``/``scores`` are a run's eval records in step order, those after the budget ignored. Each
    score is normalised (:func:`normalised_scores`) and clipped to [0, 1] *before* integrating; the area
    is the trapezoid rule over the eval points. Before the first eval the curve is taken as 0 (the first
    eval is the base, at step 0 in every results file the trainer writes); after the last eval it is held
    at its last value up to the budget. None when the base meets the target or ``budget <= 0``.
    """
    if budget <= 0:
        return None
    points = [(float(s), float(v)) for s, v in zip(steps, scores) if s <= budget]
    if not points:
        return None
    norm = normalised_scores([v for _, v in points], base, target, higher_is_better)
    if norm is None:
        return None
    xs = [s for s, _ in points]
    ys = list(np.clip(norm, 0.0, 1.0))
    if xs[0] > 0:
        xs, ys = [0.0, *xs], [0.0, *ys]
    if xs[-1] < budget:
        xs, ys = [*xs, float(budget)], [*ys, ys[-1]]
    area = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))
    return float(area / budget)


# ----------------------------------------------------------------------------------------------------
# Power analysis


def paired_t_power(n: int, sd: float, ratio: float, alpha: float = POWER_ALPHA) -> float:
    """Power of a two-sided paired t-test of ``n`` per-seed log steps ratios at level ``alpha`` when the true
    ratio is ``ratio`` and the per-seed sd of the log ratio is ``sd``.

    Exact: with ``T = (Z + d) / sqrt(V / (n - 1))``, ``Z`` standard normal, ``V`` chi-square on ``n - 1``
    degrees of freedom and ``d = |log ratio| sqrt(n) / sd``, the power ``P(|T| > c)`` at the critical value
    ``c = t_{1-alpha/2, n-1}`` is ``E_V[P(|Z + d| > c sqrt(V / (n - 1)))]``, integrated numerically (scipy's
    noncentral t returns NaN for some large ``d`` at one degree of freedom; this form does not).
    """
    from scipy import integrate, stats

    df = n - 1
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    d = abs(math.log(ratio)) * math.sqrt(n) / sd

    def rejection(v: float) -> float:
        bound = critical * math.sqrt(v / df)
        return (stats.norm.sf(bound - d) + stats.norm.cdf(-bound - d)) * stats.chi2.pdf(v, df)

    return float(integrate.quad(rejection, 0, math.inf, limit=200)[0])


def seeds_needed(sd: float | None, ratio: float, alpha: float = POWER_ALPHA,
                 power: float = POWER_TARGET, most: int = 10_000) -> int | None:
    """Seeds per algorithm for a two-sided paired t-test at level ``alpha`` to detect a true steps ratio
    ``ratio`` with probability ``power``: the smallest ``n >= 2`` with :func:`paired_t_power` ``>= power``.

    ``sd`` is the standard deviation of the per-seed log steps ratio. The normal approximation
    ``((z_{1-alpha/2} + z_power) sd / |log ratio|)^2`` ignores that the sd is estimated and asks for 1.5 to
    2.5 times too few seeds at these sizes (sd 0.24, ratio 0.7: 4 against 6; at 4 seeds the power is 0.53).
    None when ``sd`` is unknown or 0, or ``ratio`` is not a positive number other than 1; ``most`` when even
    that many seeds would not do.
    """
    if sd is None or not math.isfinite(sd) or sd <= 0 or not (ratio > 0) or ratio == 1:
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    n = max(2, math.ceil((z * sd / abs(math.log(ratio))) ** 2))  # the t-test needs at least this many
    while n < most and paired_t_power(n, sd, ratio, alpha) < power:
        n += 1
    return n


def wilcoxon_p(log_ratios: Sequence[float]) -> float | None:
    """Two-sided exact Wilcoxon signed-rank p-value of per-seed log ratios against 0 (no effect); pairs with
    a log ratio of exactly 0 are dropped (Wilcoxon's convention). 1.0 when every pair is a tie, None for
    fewer than 2 pairs. Exact at every n: at 5 seeds all faster gives 0.0625, which a percentile interval
    of the median would call "excludes 1"."""
    from scipy import stats

    values = [v for v in log_ratios if v != 0.0]
    if len(log_ratios) < 2:
        return None
    if not values:
        return 1.0
    return float(stats.wilcoxon(values, alternative="two-sided", method="exact").pvalue)


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float | None, int]:
    """Pooled within-group standard deviation and its degrees of freedom ``sum(n_k - 1)``.

    Each group (the per-seed log ratios of one algorithm against the reference) contributes its squared
    deviations from its own mean; groups of one value contribute nothing. ``(None, 0)`` when no group has
    two values.
    """
    ss, df = 0.0, 0
    for group in groups:
        values = np.asarray(group, dtype=float)
        if values.size >= 2:
            ss += float(np.sum((values - values.mean()) ** 2))
            df += values.size - 1
    return (math.sqrt(ss / df), df) if df else (None, 0)
