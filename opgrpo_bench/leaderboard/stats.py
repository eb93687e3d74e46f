"""Leaderboard statistics, computed only from results files.

One row per task x task version x algorithm. Definitions (ALGORITHMS.md section 4):

Which runs count
    Only *finished* runs (their file holds a ``run_end`` record). An unfinished run is excluded from
    every statistic, curve and speed-up, with a warning, and listed as incomplete with its progress.
    Why not count it: a still-running (or crashed) run that has not yet reached the target has an unknown
    outcome, and counting only the unfinished runs that already reached it would bias the medians towards
    fast seeds. The row's ``incomplete_excluded`` says how many were left out.
    A finished run is also excluded, and listed with the reason (:func:`exclusion_reason`), when it has no
    eval record or when any of its eval scores is missing (null) or not a finite number (NaN, infinity):
    its steps to target are unknown (the target may have been reached at an unscored eval). The row's
    ``unscored_excluded`` says how many.

Per run
    ``steps/samples/nfe/wall_s to target`` come from the first ``eval`` record whose ``score`` reaches the
    run's ``target`` (:func:`opgrpo_bench.results.first_reaching`; ``run_end`` summaries are not trusted).
    A run that never reached it is *censored*: its steps count as its ``budget_steps``, and its samples,
    NFE and wall-clock as what it had spent at its last record (the budget in those units is not
    recorded). Censored runs are never dropped; they are counted and flagged.
    ``best score`` is the run's best eval score (max, or min when lower is better), ``final score`` the
    score of its last eval.

Per row
    ``seeds`` (number of finished runs), ``reached`` / ``censored`` counts, ``reached_fraction``;
    median and interquartile range (25th and 75th percentiles, numpy's linear interpolation) of steps,
    samples, NFE and wall-clock to target over seeds, censored values included at their budget. A median
    is flagged ``*_median_censored`` (shown "≥", a lower bound) when a censored value lies at or below the
    median position, i.e. among the first ``n // 2 + 1`` sorted values. ``best_score`` and
    ``final_score`` are medians over seeds of the per-run values; ``best_score_max`` is the best over seeds.
    Diagnostics summaries (``clipfrac_on_policy``, ``clipfrac_off_policy``, ``logw_range`` =
    ``op/logw_max - op/logw_min``) are per-run means over step records, then medians over seeds.

Gold metric (held-out reader, :func:`gold_fields`)
    Tasks with a gold reward record ``gold`` in every eval record: the same eval images scored by a
    classifier of another architecture that training never sees. Per run, the final gold score is the
    ``gold`` of its last eval record (the record its final score comes from) and the gap is ``score -
    gold`` at that record. Per row, following the final score: ``final_gold`` = median over seeds of the
    per-run final gold, ``final_gold_gap`` = median over seeds of the per-run gaps (paired, so only seeds
    with a gold value enter), ``gold_gap_change`` = median over seeds of (final gap - gap at the first
    eval), which separates reward hacking (a gap that grows with training) from the two readers'
    disagreement on the base model (the gap at step 0); ``gold_seeds`` counts the seeds with a final
    gold. All four are null / 0 when the row's runs lack ``gold`` (runs made before it was recorded).

Speed-up against ``flow-grpo`` (same task and task version)
    ratio = to_target(X) / to_target(flow-grpo), lower is better (0.342 = "34.2% of the steps"); computed
    for steps (``speedup_vs_flow_grpo``), samples, NFE and wall-clock. When the two algorithms share
    seeds, the ratio is the median over the shared seeds of the per-seed ratios (``paired``); otherwise
    it is the ratio of the two medians (``ratio-of-medians``). The 95% interval is a percentile bootstrap
    over seeds: 10,000 resamples (pairs resampled together; unpaired groups resampled independently),
    from a fixed RNG seed, so the same input always gives the same interval. The paired bootstrap is
    stratified by task version (:func:`stratified_speedup`: seeds resampled within each task version);
    a row holds one task version, so for a row it is the paired bootstrap over its seeds.
    ``speedup_censored`` flags a ratio with a censored run on either side (then the ratio is only
    bounded, not exact). A reference value of 0 (target met at step 0) makes the ratio undefined (null,
    with a note). The ``flow-grpo`` row itself has ratio 1 (method ``reference``).

rliable's statistics (Agarwal et al. 2021; definitions and deviations in docs/STATISTICS.md, the
functions in :mod:`.robust`)
    ``prob_improvement``: P(a random seed of the row reaches the target in fewer steps than a random
    ``flow-grpo`` seed) over all pairs of runs, ties 1/2, censored runs by Gehan's rule (a censored run is
    slower than one that reached by its budget, otherwise 1/2); bootstrap interval with both groups
    resampled independently (``prob_improvement_ci_low`` / ``_high``; ``flow-grpo`` itself: 0.5).
    ``auc``: per run, the area under its eval-score curve over ``[0, budget_steps]`` divided by the
    budget, each score normalised to ``(score - base) / (target - base)`` (base: the run's first eval,
    at step 0) and clipped to [0, 1]; per row the IQM over seeds (``scipy.stats.trim_mean(x, 0.25)``) with
    a bootstrap interval (``auc_ci_low`` / ``_high``), ``auc_per_seed`` and the per-seed normalised final
    and best scores (the performance profiles). ``compute_tasks``: per task version the power analysis
    (pooled sd of the per-seed log steps ratios; seeds per algorithm for a paired test to detect a true
    ratio of 0.7 or 0.342). ``compute_aggregate``: the same statistics pooled over task versions with a
    stratified bootstrap. ``sample_efficiency``: IQM over seeds of the clipped normalised score per eval
    step with its bootstrap interval.

Paper protocol (a second comparison, the one arXiv 2604.04142 reports)
    The paper times OP-GRPO to reach *Flow-GRPO's final score* ("34.2% of the training steps"), not a
    fixed task target. Per task version, ``paper_target`` is the median (numpy, the mean of the two
    middle values for an even count) over the finished ``flow-grpo`` runs of each run's final score (the
    score of its last eval record; runs without a scored eval are left out). Every row is then recomputed
    against ``paper_target`` instead of the task target, with the same rules as above: per run, steps /
    samples / wall-clock to the first eval whose score reaches it (``>=``, or ``<=`` when lower is
    better), censored at the budget (steps) or at what was spent (samples, wall-clock) when never
    reached; per row ``paper_reached``, ``paper_censored``, ``paper_reached_fraction``, median and IQR
    ``paper_{steps,samples,wall_s}_{median,q25,q75}`` with ``*_median_censored`` flags, and the steps
    ratio against ``flow-grpo`` on the same per-seed values, same pairing and bootstrap
    (``paper_speedup``, ``paper_speedup_ci_low`` / ``_ci_high``, ``paper_speedup_method``, ``_n``,
    ``_censored``, ``_note``). The ``flow-grpo`` row is timed to its own median final score too, so its
    seeds below the median are censored unless they passed it earlier. With no finished ``flow-grpo``
    run (or none with a scored eval) the protocol is n/a: ``paper_target`` and every ``paper_*`` value
    are null and ``paper_speedup_note`` says why.

Row order
    Task id, then task version (numeric versions numerically), then algorithm: ``flow-grpo`` first,
    ``op-grpo`` second, the rest alphabetically.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from opgrpo_bench.leaderboard.load import Run
from opgrpo_bench.leaderboard.robust import (
    POWER_ALPHA,
    POWER_RATIOS,
    POWER_TARGET,
    auc,
    iqm,
    normalised_scores,
    percentile_interval,
    pooled_sd,
    prob_improvement,
    seeds_needed,
    stratified_bootstrap,
)
from opgrpo_bench.results import first_reaching

REFERENCE_ALGORITHM = "flow-grpo"
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 2604_04142  # fixed: the interval is part of the output and must be reproducible
METRICS = ("steps", "samples", "nfe", "wall_s")  # the "to target" quantities
DIAG_CLIP_ON, DIAG_CLIP_OFF = "clipfrac/on_policy", "clipfrac/off_policy"
DIAG_LOGW = ("op/logw_min", "op/logw_median", "op/logw_max")
DIAG_LOGRATIO = "op/logratio_by_step"


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


def outcome(run: Run, target: float | None = None) -> Outcome:
    """Steps, samples, NFE and wall-clock to ``target`` (default: the run's own target) of one run,
    recomputed from its eval records."""
    scored = [e for e in run.evals if e.get("score") is not None]
    hit = first_reaching(scored, run.target if target is None else target, run.higher_is_better)
    if hit is not None:
        to_target = {"steps": float(hit["step"])}
        for key in ("samples", "nfe", "wall_s"):
            to_target[key] = None if hit.get(key) is None else float(hit[key])
    else:
        to_target = {"steps": float(run.budget_steps)}
        for key in ("samples", "nfe", "wall_s"):
            to_target[key] = _last_value(run, key)
    scores = [float(e["score"]) for e in scored]
    best = (max(scores) if run.higher_is_better else min(scores)) if scores else None
    final = scores[-1] if scores else None  # run.evals is sorted by step
    return Outcome(run=run, reached=hit is not None, to_target=to_target, best_score=best, final_score=final)


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


def _percentile_ci(samples: np.ndarray) -> tuple[float, float]:
    return percentile_interval(samples)


def _median_rows(values: np.ndarray) -> np.ndarray:
    return np.median(values, axis=1)


def _paired_ratios(x: dict[int, tuple[float | None, bool]], ref: dict[int, tuple[float | None, bool]],
                   shared: list[int]) -> tuple[np.ndarray, np.ndarray, bool]:
    num = np.array([x[s][0] for s in shared], dtype=float)
    den = np.array([ref[s][0] for s in shared], dtype=float)
    return num, den, any(x[s][1] or ref[s][1] for s in shared)


def speedup(
    x: dict[int, tuple[float | None, bool]],
    ref: dict[int, tuple[float | None, bool]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    rng_seed: int = BOOTSTRAP_SEED,
) -> Speedup:
    """Ratio ``x / ref`` of per-seed to-target values ``{seed: (value, censored)}`` with a bootstrap CI.

    One task version, so the stratified bootstrap of :func:`stratified_speedup` has one stratum: the
    paired bootstrap over the shared seeds.
    """
    x = {s: vc for s, vc in x.items() if vc[0] is not None}
    ref = {s: vc for s, vc in ref.items() if vc[0] is not None}
    if not x or not ref:
        return Speedup(None, None, None, "none", 0, False, "no values to compare")
    if set(x) & set(ref):
        return stratified_speedup([(x, ref)], resamples, rng_seed)
    rng = np.random.default_rng(rng_seed)
    num = np.array([v for v, _ in x.values()], dtype=float)
    den = np.array([v for v, _ in ref.values()], dtype=float)
    censored = any(c for _, c in x.values()) or any(c for _, c in ref.values())
    if np.any(den <= 0):
        return Speedup(None, None, None, "ratio-of-medians", min(len(num), len(den)), censored,
                       f"{REFERENCE_ALGORITHM} reached the target at 0; ratio undefined")
    boot_num = np.median(num[rng.integers(0, len(num), size=(resamples, len(num)))], axis=1)
    boot_den = np.median(den[rng.integers(0, len(den), size=(resamples, len(den)))], axis=1)
    low, high = _percentile_ci(boot_num / boot_den)
    return Speedup(float(np.median(num) / np.median(den)), low, high, "ratio-of-medians",
                   min(len(num), len(den)), censored, "no shared seeds with the reference")


def stratified_speedup(
    strata: list[tuple[dict[int, tuple[float | None, bool]], dict[int, tuple[float | None, bool]]]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    rng_seed: int = BOOTSTRAP_SEED,
) -> Speedup:
    """Paired ratio over one or more task versions (strata), each ``(x, ref)`` as in :func:`speedup`.

    The ratio is the median of all per-seed ratios ``x[s] / ref[s]`` over the seeds each stratum shares;
    the 95% interval is a percentile bootstrap that resamples those per-seed ratios *within* each stratum
    (:func:`~opgrpo_bench.leaderboard.robust.stratified_bootstrap`), so every resample keeps each task
    version's number of seeds. A stratum without shared seeds, or whose reference reached the target at
    step 0, is left out (named in ``note``).
    """
    ratios, skipped, censored, n = [], [], False, 0
    for k, (x, ref) in enumerate(strata):
        x = {s: vc for s, vc in x.items() if vc[0] is not None}
        ref = {s: vc for s, vc in ref.items() if vc[0] is not None}
        shared = sorted(set(x) & set(ref))
        if not shared:
            skipped.append(f"stratum {k}: no shared seeds")
            continue
        num, den, cens = _paired_ratios(x, ref, shared)
        if np.any(den <= 0):
            if len(strata) == 1:
                return Speedup(None, None, None, "paired", len(shared), cens,
                               f"{REFERENCE_ALGORITHM} reached the target at 0; ratio undefined")
            skipped.append(f"stratum {k}: {REFERENCE_ALGORITHM} reached the target at 0")
            continue
        ratios.append(num / den)
        censored |= cens
        n += len(shared)
    if not ratios:
        return Speedup(None, None, None, "none", 0, False, "; ".join(skipped) or "no values to compare")
    boot = stratified_bootstrap(ratios, _median_rows, resamples, np.random.default_rng(rng_seed))
    low, high = _percentile_ci(boot)
    note = ("left out: " + "; ".join(skipped)) if skipped else ""
    return Speedup(float(np.median(np.concatenate(ratios))), low, high, "paired", n, censored, note)


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool, not null), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _median_or_none(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def _logw_span(rec: dict[str, Any]) -> float | None:
    low, high = _finite(rec.get("op/logw_min")), _finite(rec.get("op/logw_max"))
    return None if low is None or high is None else high - low


GOLD_KEY = "gold"


def _gold_gap(rec: dict[str, Any]) -> float | None:
    """``score - gold`` of one eval record, or None when either is missing or not finite."""
    score, gold = _finite(rec.get("score")), _finite(rec.get(GOLD_KEY))
    return None if score is None or gold is None else score - gold


def gold_fields(outcomes: list[Outcome]) -> dict[str, Any]:
    """A row's gold-metric fields (stats docstring, "Gold metric"); null where no run records ``gold``."""
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
    return {"final_gold": _median_or_none(finals), "final_gold_gap": _median_or_none(gaps),
            "gold_gap_change": _median_or_none(changes), "gold_seeds": len(finals)}


def diagnostics_summary(outcomes: list[Outcome]) -> dict[str, float | None]:
    """Medians over seeds of per-run mean clip fractions and log-weight range (None when absent)."""
    return {
        "clipfrac_on_policy": _median_or_none(
            _mean(_finite(r.get(DIAG_CLIP_ON)) for r in o.run.steps) for o in outcomes),
        "clipfrac_off_policy": _median_or_none(
            _mean(_finite(r.get(DIAG_CLIP_OFF)) for r in o.run.steps) for o in outcomes),
        "logw_range": _median_or_none(_mean(_logw_span(r) for r in o.run.steps) for o in outcomes),
    }


def algorithm_sort_key(name: str) -> tuple[int, str]:
    """``flow-grpo`` first, ``op-grpo`` second, then alphabetical."""
    return ({REFERENCE_ALGORITHM: 0, "op-grpo": 1}.get(name, 2), name)


def version_sort_key(version: str) -> tuple[int, float, str]:
    """Numeric versions numerically ("2" before "10"), then the rest as strings."""
    digits = version.lstrip("v")
    return (0, float(digits), version) if digits.isdigit() else (1, 0.0, version)


def group_key(run: Run) -> tuple[Any, ...]:
    """Sort key of a row: task, version, algorithm."""
    return (run.task, version_sort_key(run.task_version), algorithm_sort_key(run.algorithm))


def _per_seed(outs: list[Outcome], metric: str) -> dict[int, tuple[float | None, bool]]:
    return {o.run.seed: (o.to_target[metric], o.censored) for o in outs}


def row_speedup(algorithm: str, outs: list[Outcome], ref: list[Outcome], metric: str) -> Speedup:
    """The ratio of one row against the ``flow-grpo`` row of its task version (outcomes of one target)."""
    if not outs:
        return Speedup(None, None, None, "none", 0, False, "no finished runs")
    if algorithm == REFERENCE_ALGORITHM:
        return Speedup(1.0, 1.0, 1.0, "reference", len(outs), False)
    if not ref:
        return Speedup(None, None, None, "none", 0, False,
                       f"no finished {REFERENCE_ALGORITHM} runs on this task version")
    return speedup(_per_seed(outs, metric), _per_seed(ref, metric))


PAPER_METRICS = ("steps", "samples", "wall_s")


def paper_target(ref: list[Outcome]) -> float | None:
    """The paper protocol's target: median over finished ``flow-grpo`` runs of their final eval score."""
    finals = [o.final_score for o in ref if o.final_score is not None]
    return float(np.median(finals)) if finals else None


def paper_fields(algorithm: str, outs: list[Outcome], ref: list[Outcome],
                 target: float | None) -> dict[str, Any]:
    """A row's ``paper_*`` values: ``outs`` and ``ref`` re-timed to ``target`` (None: protocol n/a)."""
    if target is not None:
        outs = [outcome(o.run, target) for o in outs]
        ref = [outcome(o.run, target) for o in ref]
        sp = row_speedup(algorithm, outs, ref, "steps")
    else:
        outs = ref = []
        sp = Speedup(None, None, None, "none", 0, False,
                     f"paper protocol n/a: no finished {REFERENCE_ALGORITHM} run with an eval score")
    n, reached = len(outs), sum(o.reached for o in outs)
    fields: dict[str, Any] = {"paper_target": target, "paper_reached": reached if n else None,
                              "paper_censored": n - reached if n else None,
                              "paper_reached_fraction": reached / n if n else None}
    for metric in PAPER_METRICS:
        s = summarize((o.to_target[metric], o.censored) for o in outs)
        fields.update({f"paper_{metric}_median": s["median"], f"paper_{metric}_q25": s["q25"],
                       f"paper_{metric}_q75": s["q75"], f"paper_{metric}_median_censored": s["median_censored"]})
    fields.update({"paper_speedup": sp.ratio, "paper_speedup_ci_low": sp.low, "paper_speedup_ci_high": sp.high,
                   "paper_speedup_method": sp.method, "paper_speedup_n": sp.n,
                   "paper_speedup_censored": sp.censored, "paper_speedup_note": sp.note})
    return fields


# ----------------------------------------------------------------------------------------------------
# rliable-style statistics (docs/STATISTICS.md): probability of improvement, normalised AUC, power


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


def _run_auc(o: Outcome) -> float | None:
    nr = normalised_run(o.run)
    return None if nr is None else nr.auc


def _steps_with_censoring(outs: list[Outcome]) -> list[tuple[float, bool]]:
    return [(float(o.to_target["steps"]), o.censored) for o in outs]


def row_prob_improvement(algorithm: str, outs: list[Outcome], ref: list[Outcome]) -> dict[str, Any]:
    """``prob_improvement`` fields of a row: P(a random seed of it reaches the target in fewer steps than
    a random ``flow-grpo`` seed), with its bootstrap interval (robust.prob_improvement)."""
    fields: dict[str, Any] = {"prob_improvement": None, "prob_improvement_ci_low": None,
                              "prob_improvement_ci_high": None, "prob_improvement_pairs": 0}
    if not outs or not ref:
        return fields
    if algorithm == REFERENCE_ALGORITHM:
        return {**fields, "prob_improvement": 0.5, "prob_improvement_ci_low": 0.5,
                "prob_improvement_ci_high": 0.5, "prob_improvement_pairs": len(outs) * len(ref)}
    p, low, high = prob_improvement([(_steps_with_censoring(outs), _steps_with_censoring(ref))],
                                    BOOTSTRAP_RESAMPLES, np.random.default_rng(BOOTSTRAP_SEED))
    return {"prob_improvement": p, "prob_improvement_ci_low": low, "prob_improvement_ci_high": high,
            "prob_improvement_pairs": len(outs) * len(ref)}


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


def log_ratios(outs: list[Outcome], ref: list[Outcome]) -> list[float]:
    """Per-seed log steps ratios ``log(steps(X, s) / steps(flow-grpo, s))`` over the shared seeds
    (censored runs at their budget; pairs with a zero on either side left out)."""
    x, r = _per_seed(outs, "steps"), _per_seed(ref, "steps")
    return [math.log(x[s][0] / r[s][0]) for s in sorted(set(x) & set(r))
            if x[s][0] is not None and r[s][0] is not None and x[s][0] > 0 and r[s][0] > 0]


def power_fields(groups: dict[str, list[Outcome]]) -> dict[str, Any]:
    """The power analysis of one task version from its rows' outcomes (``{algorithm: outcomes}``).

    ``sd_log_ratio`` is the pooled within-algorithm standard deviation of the per-seed log steps ratios
    against ``flow-grpo`` over every other algorithm with at least two shared seeds (robust.pooled_sd);
    ``seeds_for_ratio_R`` the seeds per algorithm a two-sided paired test at alpha 0.05 needs to detect a
    true ratio R with 80% power (robust.seeds_needed).

    An algorithm whose every per-seed ratio is exactly 1 (``op-grpo-no-replay``, which reproduces
    ``flow-grpo`` bit for bit) is left out: its zero spread is a property of the code, not of the seeds,
    and pooling it would shrink the sd and the seeds it asks for. ``identical`` names those left out.
    """
    ref = groups.get(REFERENCE_ALGORITHM, [])
    per_algorithm = {a: log_ratios(groups[a], ref) for a in sorted(groups, key=algorithm_sort_key)
                     if a != REFERENCE_ALGORITHM and ref}
    identical = [a for a, v in per_algorithm.items() if len(v) >= 2 and all(x == 0.0 for x in v)]
    used = [a for a, v in per_algorithm.items() if len(v) >= 2 and a not in identical]
    sd, df = pooled_sd([per_algorithm[a] for a in used])
    fields: dict[str, Any] = {"sd_log_ratio": sd, "df": df, "algorithms": used, "identical": identical}
    for ratio in POWER_RATIOS:
        fields[f"seeds_for_ratio_{ratio:g}"] = seeds_needed(sd, ratio)
    fields.update({"alpha": POWER_ALPHA, "power": POWER_TARGET,
                   "test": "two-sided, paired, normal approximation"})
    if sd is None:
        fields["note"] = (f"no algorithm shares two or more seeds with {REFERENCE_ALGORITHM} on this task "
                          "version: the sd is unknown")
    return fields


def _usable_groups(runs: list[Run]) -> dict[tuple[str, str, str], list[Outcome]]:
    """Outcomes of the usable runs by (task, task version, algorithm), seeds in order."""
    groups: dict[tuple[str, str, str], list[Outcome]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: (group_key(r), r.seed)):
        if usable(run):
            groups[(run.task, run.task_version, run.algorithm)].append(outcome(run))
    return groups


def compute_tasks(runs: list[Run]) -> list[dict[str, Any]]:
    """One entry per task version with usable runs, in row order: its label and its power analysis."""
    by_task: dict[tuple[str, str], dict[str, list[Outcome]]] = defaultdict(dict)
    for (task, version, algorithm), outs in _usable_groups(runs).items():
        by_task[(task, version)][algorithm] = outs
    return [{"task": task, "task_version": version, "label": task_label(task, version),
             "power": power_fields(by_task[(task, version)])}
            for task, version in sorted(by_task, key=lambda k: (k[0], version_sort_key(k[1])))]


def compute_aggregate(runs: list[Run]) -> list[dict[str, Any]]:
    """Statistics pooled over task versions, stratified by task version (rliable's aggregates).

    One entry per algorithm that has usable runs on at least two task versions that also have
    ``flow-grpo`` runs (``flow-grpo`` itself: on at least two task versions); only those task versions
    count, so every algorithm is aggregated over tasks it shares with the reference. Steps ratio: median
    of all per-seed paired ratios, stratified bootstrap (:func:`stratified_speedup`); probability of
    improvement: mean over task versions of the per-task value, runs resampled within each task version;
    AUC: IQM over all runs of those task versions, stratified bootstrap.
    """
    groups = _usable_groups(runs)
    by_algorithm: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for task, version, algorithm in groups:
        if (task, version, REFERENCE_ALGORITHM) in groups:
            by_algorithm[algorithm].append((task, version))
    out = []
    for algorithm in sorted(by_algorithm, key=algorithm_sort_key):
        tasks = sorted(by_algorithm[algorithm], key=lambda k: (k[0], version_sort_key(k[1])))
        if len(tasks) < 2:
            continue
        pairs = [(groups[(t, v, algorithm)], groups[(t, v, REFERENCE_ALGORITHM)]) for t, v in tasks]
        entry: dict[str, Any] = {"algorithm": algorithm, "tasks": [task_label(t, v) for t, v in tasks],
                                 "seeds": sum(len(o) for o, _ in pairs)}
        if algorithm == REFERENCE_ALGORITHM:
            sp = Speedup(1.0, 1.0, 1.0, "reference", entry["seeds"], False)
            prob: tuple[float | None, ...] = (0.5, 0.5, 0.5)
        else:
            sp = stratified_speedup([(_per_seed(o, "steps"), _per_seed(r, "steps")) for o, r in pairs])
            prob = prob_improvement([(_steps_with_censoring(o), _steps_with_censoring(r)) for o, r in pairs],
                                    BOOTSTRAP_RESAMPLES, np.random.default_rng(BOOTSTRAP_SEED))
        aucs = [[a for a in (_run_auc(x) for x in o) if a is not None] for o, _ in pairs]
        point, low, high = iqm_interval(aucs)
        entry.update({"speedup_vs_flow_grpo": sp.ratio, "speedup_ci_low": sp.low, "speedup_ci_high": sp.high,
                      "speedup_method": sp.method, "speedup_n": sp.n, "speedup_censored": sp.censored,
                      "speedup_note": sp.note,
                      "prob_improvement": prob[0], "prob_improvement_ci_low": prob[1],
                      "prob_improvement_ci_high": prob[2],
                      "auc": point, "auc_ci_low": low, "auc_ci_high": high})
        out.append(entry)
    return out


def sample_efficiency(runs: list[Run], resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, dict[str, Any]]:
    """Per task label, per algorithm: IQM over seeds of the clipped normalised eval score at each eval
    step, with a 95% percentile-bootstrap interval over the seeds that evaluated at that step."""
    by_label: dict[str, dict[str, dict[int, list[float]]]] = {}
    for run in sorted((r for r in runs if usable(r)), key=lambda r: (group_key(r), r.seed)):
        label = task_label(run.task, run.task_version)
        algos = by_label.setdefault(label, {})
        nr = normalised_run(run)
        if nr is None:
            continue
        by_step = algos.setdefault(run.algorithm, defaultdict(list))
        for step, value in zip(nr.steps, nr.scores):
            by_step[step].append(min(1.0, max(0.0, value)))
    out: dict[str, dict[str, Any]] = {}
    for label, algos in by_label.items():
        series: dict[str, Any] = {}
        for algorithm, by_step in algos.items():
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
            series[algorithm] = {"step": steps, "iqm": centre, "ci_low": lows, "ci_high": highs,
                                 "n": [len(by_step[s]) for s in steps]}
        out[label] = {"algorithms": series}
    return out


def _speedup_fields(prefix: str, sp: Speedup) -> dict[str, Any]:
    return {f"{prefix}vs_flow_grpo": sp.ratio, f"{prefix}ci_low": sp.low, f"{prefix}ci_high": sp.high}


def compute_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Leaderboard rows (dicts, JSON-ready) from finished runs, in the deterministic row order."""
    groups = _usable_groups(runs)
    incomplete: dict[tuple[str, str, str], int] = defaultdict(int)
    unscored: dict[tuple[str, str, str], int] = defaultdict(int)
    for run in runs:
        if not run.finished:
            incomplete[(run.task, run.task_version, run.algorithm)] += 1
        elif not usable(run):
            unscored[(run.task, run.task_version, run.algorithm)] += 1

    order = sorted(set(groups) | set(incomplete) | set(unscored),
                   key=lambda k: (k[0], version_sort_key(k[1]), algorithm_sort_key(k[2])))
    rows = []
    for key in order:
        task, version, algorithm = key
        outs = groups.get(key, [])
        ref = groups.get((task, version, REFERENCE_ALGORITHM), [])
        first = outs[0].run if outs else None
        n = len(outs)
        reached = sum(o.reached for o in outs)
        row: dict[str, Any] = {
            "task": task,
            "task_version": version,
            "algorithm": algorithm,
            "seeds": n,
            "seed_list": [o.run.seed for o in outs],
            "run_ids": [o.run.run_id for o in outs],
            "target": first.target if first else None,
            "higher_is_better": first.higher_is_better if first else None,
            "budget_steps": max(o.run.budget_steps for o in outs) if outs else None,
            "reached": reached,
            "censored": n - reached,
            "reached_fraction": reached / n if n else None,
            "incomplete_excluded": incomplete.get(key, 0),
            "unscored_excluded": unscored.get(key, 0),
        }
        for metric in METRICS:
            s = summarize((o.to_target[metric], o.censored) for o in outs)
            row[f"{metric}_to_target_median"] = s["median"]
            row[f"{metric}_to_target_q25"] = s["q25"]
            row[f"{metric}_to_target_q75"] = s["q75"]
            row[f"{metric}_to_target_median_censored"] = s["median_censored"]
        best = [o.best_score for o in outs if o.best_score is not None]
        row["best_score"] = _median_or_none(best)
        if best and first is not None:
            row["best_score_max"] = max(best) if first.higher_is_better else min(best)
        else:
            row["best_score_max"] = None
        row["final_score"] = _median_or_none(o.final_score for o in outs)
        row.update(gold_fields(outs))
        for metric in METRICS:
            prefix = "speedup_" if metric == "steps" else f"speedup_{metric}_"
            sp = row_speedup(algorithm, outs, ref, metric)
            row.update(_speedup_fields(prefix, sp))
            if metric == "steps":
                row.update({"speedup_method": sp.method, "speedup_n": sp.n,
                            "speedup_censored": sp.censored, "speedup_note": sp.note})
        row.update(row_prob_improvement(algorithm, outs, ref))
        row.update(row_auc(outs))
        row.update(diagnostics_summary(outs))
        row.update(paper_fields(algorithm, outs, ref, paper_target(ref)))
        rows.append(row)
    return rows


def _series_stats(by_step: dict[int, list[float]]) -> dict[str, list[float]]:
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


def eval_curves(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Per task label, per algorithm: eval score against optimizer step, mean and range over seeds;
    under ``gold`` the same for the gold score, for the algorithms whose runs record one (else ``{}``).

    At each step only the seeds that evaluated there contribute (``n`` says how many).
    """
    curves: dict[str, dict[str, Any]] = {}
    for run in sorted((r for r in runs if usable(r)), key=lambda r: (group_key(r), r.seed)):
        label = task_label(run.task, run.task_version)
        task = curves.setdefault(label, {"target": run.target, "higher_is_better": run.higher_is_better,
                                         "algorithms": {}, "gold": {}})
        by_step = task["algorithms"].setdefault(run.algorithm, defaultdict(list))
        for rec in run.evals:
            if rec.get("score") is not None:
                by_step[rec["step"]].append(float(rec["score"]))
            gold = _finite(rec.get(GOLD_KEY))
            if gold is not None:  # created only on a first gold value: runs without gold add no series
                task["gold"].setdefault(run.algorithm, defaultdict(list))[rec["step"]].append(gold)
    for task in curves.values():
        task["algorithms"] = {a: _series_stats(s) for a, s in task["algorithms"].items()}
        task["gold"] = {a: _series_stats(s) for a, s in task["gold"].items()}
    return curves


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
    stats = _series_stats(by_step)
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


def _logratio_profile(runs: list[Run]) -> list[float | None] | None:
    """Only the means of :func:`logratio_profile` (what the diagnostics figure plots)."""
    profile = logratio_profile(runs)
    return None if profile is None else profile["mean"]


def logratio_profiles(runs: list[Run]) -> dict[str, dict[str, dict[str, list[Any]]]]:
    """Per task label, per algorithm that logs ``op/logratio_by_step``: its :func:`logratio_profile` over
    the usable runs (seeds pooled). This small table goes into ``leaderboard.json``; the per-step
    diagnostics series do not."""
    grouped: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in sorted((r for r in runs if usable(r)), key=lambda r: (group_key(r), r.seed)):
        grouped[task_label(run.task, run.task_version)][run.algorithm].append(run)
    out: dict[str, dict[str, dict[str, list[Any]]]] = {}
    for label, algos in grouped.items():
        for algorithm, group in algos.items():
            profile = logratio_profile(group)
            if profile is not None:
                out.setdefault(label, {})[algorithm] = profile
    return out


def diagnostics(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Per task label, per algorithm that logs OP-GRPO diagnostics: the series the report plots."""
    grouped: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in sorted((r for r in runs if usable(r)), key=lambda r: (group_key(r), r.seed)):
        grouped[task_label(run.task, run.task_version)][run.algorithm].append(run)
    out: dict[str, dict[str, Any]] = {}
    for label, algos in grouped.items():
        for algorithm, group in algos.items():
            entry = {
                "logratio_by_step": _logratio_profile(group),
                "clipfrac_on_policy": _per_step_mean(group, DIAG_CLIP_ON),
                "clipfrac_off_policy": _per_step_mean(group, DIAG_CLIP_OFF),
                "logw": {k.split("_")[-1]: _per_step_mean(group, k) for k in DIAG_LOGW},
            }
            has_op = (entry["logratio_by_step"] is not None or entry["clipfrac_off_policy"] is not None
                      or any(v is not None for v in entry["logw"].values()))
            if has_op:  # Flow-GRPO logs no op/* keys: it has nothing to show here
                out.setdefault(label, {})[algorithm] = entry
    return out


def task_label(task: str, version: str) -> str:
    """How a task version is named in the report: the id alone when it already ends with the version."""
    v = version.lstrip("v")
    if task.endswith(f"-v{v}") or task.endswith(f"@{version}"):
        return task
    return f"{task} (version {version})"
