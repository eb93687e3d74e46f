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

Speed-up against ``flow-grpo`` (same task and task version)
    ratio = to_target(X) / to_target(flow-grpo), lower is better (0.342 = "34.2% of the steps"); computed
    for steps (``speedup_vs_flow_grpo``), samples, NFE and wall-clock. When the two algorithms share
    seeds, the ratio is the median over the shared seeds of the per-seed ratios (``paired``); otherwise
    it is the ratio of the two medians (``ratio-of-medians``). The 95% interval is a percentile bootstrap
    over seeds: 10,000 resamples (pairs resampled together; unpaired groups resampled independently),
    from a fixed RNG seed, so the same input always gives the same interval. ``speedup_censored`` flags
    a ratio with a censored run on either side (then the ratio is only bounded, not exact). A reference
    value of 0 (target met at step 0) makes the ratio undefined (null, with a note). The ``flow-grpo`` row
    itself has ratio 1 (method ``reference``).

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
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def speedup(
    x: dict[int, tuple[float | None, bool]],
    ref: dict[int, tuple[float | None, bool]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    rng_seed: int = BOOTSTRAP_SEED,
) -> Speedup:
    """Ratio ``x / ref`` of per-seed to-target values ``{seed: (value, censored)}`` with a bootstrap CI."""
    x = {s: vc for s, vc in x.items() if vc[0] is not None}
    ref = {s: vc for s, vc in ref.items() if vc[0] is not None}
    if not x or not ref:
        return Speedup(None, None, None, "none", 0, False, "no values to compare")
    rng = np.random.default_rng(rng_seed)
    shared = sorted(set(x) & set(ref))
    if shared:
        num = np.array([x[s][0] for s in shared], dtype=float)
        den = np.array([ref[s][0] for s in shared], dtype=float)
        censored = any(x[s][1] or ref[s][1] for s in shared)
        if np.any(den <= 0):
            return Speedup(None, None, None, "paired", len(shared), censored,
                           f"{REFERENCE_ALGORITHM} reached the target at 0; ratio undefined")
        ratios = num / den
        idx = rng.integers(0, len(ratios), size=(resamples, len(ratios)))
        boot = np.median(ratios[idx], axis=1)
        low, high = _percentile_ci(boot)
        return Speedup(float(np.median(ratios)), low, high, "paired", len(shared), censored)
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


def _speedup_fields(prefix: str, sp: Speedup) -> dict[str, Any]:
    return {f"{prefix}vs_flow_grpo": sp.ratio, f"{prefix}ci_low": sp.low, f"{prefix}ci_high": sp.high}


def compute_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Leaderboard rows (dicts, JSON-ready) from finished runs, in the deterministic row order."""
    groups: dict[tuple[str, str, str], list[Outcome]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: (group_key(r), r.seed)):
        if usable(run):
            groups[(run.task, run.task_version, run.algorithm)].append(outcome(run))
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
        for metric in METRICS:
            prefix = "speedup_" if metric == "steps" else f"speedup_{metric}_"
            sp = row_speedup(algorithm, outs, ref, metric)
            row.update(_speedup_fields(prefix, sp))
            if metric == "steps":
                row.update({"speedup_method": sp.method, "speedup_n": sp.n,
                            "speedup_censored": sp.censored, "speedup_note": sp.note})
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
    """Per task label, per algorithm: eval score against optimizer step, mean and range over seeds.

    At each step only the seeds that evaluated there contribute (``n`` says how many).
    """
    curves: dict[str, dict[str, Any]] = {}
    for run in sorted((r for r in runs if usable(r)), key=lambda r: (group_key(r), r.seed)):
        label = task_label(run.task, run.task_version)
        task = curves.setdefault(label, {"target": run.target, "higher_is_better": run.higher_is_better,
                                         "algorithms": {}})
        by_step = task["algorithms"].setdefault(run.algorithm, defaultdict(list))
        for rec in run.evals:
            if rec.get("score") is not None:
                by_step[rec["step"]].append(float(rec["score"]))
    for task in curves.values():
        task["algorithms"] = {a: _series_stats(s) for a, s in task["algorithms"].items()}
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


def _logratio_profile(runs: list[Run]) -> list[float | None] | None:
    """Mean of ``op/logratio_by_step`` per denoising step over all step records and seeds (nulls skipped)."""
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
    return [sum(sums[k]) / len(sums[k]) if k in sums else None for k in range(max(sums) + 1)]


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
