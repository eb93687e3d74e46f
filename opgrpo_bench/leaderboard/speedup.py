"""Speed-up ratios against the reference algorithm, with percentile-bootstrap intervals over seeds.
Definitions: docs/STATISTICS.md ("Steps ratio")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opgrpo_bench.leaderboard.outcomes import DEFAULT_REFERENCE, Comparison, Outcome, per_seed
from opgrpo_bench.leaderboard.robust import percentile_interval, stratified_bootstrap, wilcoxon_p

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 2604_04142  # fixed: the interval is part of the output and must be reproducible

PerSeed = dict[int, tuple[float | None, bool]]


@dataclass(frozen=True)
class Speedup:
    """A speed-up ratio against the reference, its bootstrap interval and how it was formed."""

    ratio: float | None
    low: float | None
    high: float | None
    method: str  # paired | ratio-of-medians | reference | none
    n: int  # pairs (paired) or the smaller group size (ratio-of-medians)
    censored: bool
    note: str = ""
    p_value: float | None = None  # exact Wilcoxon signed-rank test of the paired log ratios (paired only)

    def fields(self, prefix: str) -> dict[str, float | None]:
        """The ratio and its interval as row fields (``{prefix}vs_flow_grpo``, ``{prefix}ci_low``, ...)."""
        return {f"{prefix}vs_flow_grpo": self.ratio, f"{prefix}ci_low": self.low, f"{prefix}ci_high": self.high}


def _median_rows(values: np.ndarray) -> np.ndarray:
    return np.median(values, axis=1)


def _paired_ratios(x: PerSeed, ref: PerSeed, shared: list[int]) -> tuple[np.ndarray, np.ndarray, bool]:
    num = np.array([x[s][0] for s in shared], dtype=float)
    den = np.array([ref[s][0] for s in shared], dtype=float)
    return num, den, any(x[s][1] or ref[s][1] for s in shared)


def _with_values(values: PerSeed) -> PerSeed:
    return {s: vc for s, vc in values.items() if vc[0] is not None}


def speedup(x: PerSeed, ref: PerSeed, resamples: int = BOOTSTRAP_RESAMPLES, rng_seed: int = BOOTSTRAP_SEED,
            reference: str = DEFAULT_REFERENCE) -> Speedup:
    """Ratio ``x / ref`` of per-seed to-target values ``{seed: (value, censored)}`` with a bootstrap CI.

    One task version, so the stratified bootstrap of :func:`stratified_speedup` has one stratum: the
    paired bootstrap over the shared seeds. ``reference`` names the reference algorithm in notes.
    """
    x, ref = _with_values(x), _with_values(ref)
    if not x or not ref:
        return Speedup(None, None, None, "none", 0, False, "no values to compare")
    if set(x) & set(ref):
        return stratified_speedup([(x, ref)], resamples, rng_seed, reference)
    rng = np.random.default_rng(rng_seed)
    num = np.array([v for v, _ in x.values()], dtype=float)
    den = np.array([v for v, _ in ref.values()], dtype=float)
    censored = any(c for _, c in x.values()) or any(c for _, c in ref.values())
    if np.any(den <= 0):
        return Speedup(None, None, None, "ratio-of-medians", min(len(num), len(den)), censored,
                       f"{reference} reached the target at 0; ratio undefined")
    boot_num = np.median(num[rng.integers(0, len(num), size=(resamples, len(num)))], axis=1)
    boot_den = np.median(den[rng.integers(0, len(den), size=(resamples, len(den)))], axis=1)
    low, high = percentile_interval(boot_num / boot_den)
    if min(len(num), len(den)) < 2:  # a resample of one value is that value: no interval
        low = high = None
    return Speedup(float(np.median(num) / np.median(den)), low, high, "ratio-of-medians",
                   min(len(num), len(den)), censored, "no shared seeds with the reference")


def stratified_speedup(strata: list[tuple[PerSeed, PerSeed]], resamples: int = BOOTSTRAP_RESAMPLES,
                       rng_seed: int = BOOTSTRAP_SEED, reference: str = DEFAULT_REFERENCE) -> Speedup:
    """Paired ratio over one or more task versions (strata), each ``(x, ref)`` as in :func:`speedup`.

    The ratio is the median of all per-seed ratios ``x[s] / ref[s]`` over the seeds each stratum shares;
    the 95% interval is a percentile bootstrap that resamples those per-seed ratios *within* each stratum
    (:func:`~opgrpo_bench.leaderboard.robust.stratified_bootstrap`), so every resample keeps each task
    version's number of seeds. A stratum without shared seeds, or whose reference reached the target at
    step 0, is left out (named in ``note``).
    """
    ratios, skipped, censored, n = [], [], False, 0
    for k, (x, ref) in enumerate(strata):
        x, ref = _with_values(x), _with_values(ref)
        shared = sorted(set(x) & set(ref))
        if not shared:
            skipped.append(f"stratum {k}: no shared seeds")
            continue
        num, den, cens = _paired_ratios(x, ref, shared)
        if np.any(den <= 0):
            if len(strata) == 1:
                return Speedup(None, None, None, "paired", len(shared), cens,
                               f"{reference} reached the target at 0; ratio undefined")
            skipped.append(f"stratum {k}: {reference} reached the target at 0")
            continue
        ratios.append(num / den)
        censored |= cens
        n += len(shared)
    if not ratios:
        return Speedup(None, None, None, "none", 0, False, "; ".join(skipped) or "no values to compare")
    boot = stratified_bootstrap(ratios, _median_rows, resamples, np.random.default_rng(rng_seed))
    low, high = percentile_interval(boot)
    if n < 2:  # a resample of one pair is that pair: no interval
        low = high = None
    note = ("left out: " + "; ".join(skipped)) if skipped else ""
    all_ratios = np.concatenate(ratios)
    return Speedup(float(np.median(all_ratios)), low, high, "paired", n, censored, note,
                   wilcoxon_p([float(v) for v in np.log(all_ratios)]))


def row_speedup(algorithm: str, outs: list[Outcome], ref: list[Outcome], metric: str,
                cmp: Comparison = Comparison()) -> Speedup:
    """The ratio of one row against the reference row of its task version (outcomes of one target)."""
    if not outs:
        return Speedup(None, None, None, "none", 0, False, "no finished runs")
    if algorithm == cmp.reference:
        return Speedup(1.0, 1.0, 1.0, "reference", len(outs), False)
    if not ref:
        return Speedup(None, None, None, "none", 0, False,
                       f"no finished {cmp.reference} runs on this task version")
    return speedup(per_seed(outs, metric), per_seed(ref, metric), reference=cmp.reference)
