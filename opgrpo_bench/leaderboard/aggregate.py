"""Statistics pooled over task versions, stratified by task version (rliable's aggregates).
Definition: docs/STATISTICS.md ("Across task versions")."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from opgrpo_bench.leaderboard.improvement import pooled_prob_improvement
from opgrpo_bench.leaderboard.load import Run
from opgrpo_bench.leaderboard.normalised import iqm_interval, run_auc
from opgrpo_bench.leaderboard.outcomes import Comparison, per_seed, resolve, task_label, usable_groups, version_sort_key
from opgrpo_bench.leaderboard.speedup import Speedup, stratified_speedup


def compute_aggregate(runs: list[Run], cmp: Comparison | None = None) -> list[dict[str, Any]]:
    """Statistics pooled over task versions, stratified by task version (rliable's aggregates).

    One entry per algorithm that has usable runs on at least two task versions that also have reference
    runs (the reference itself: on at least two task versions); only those task versions count, so every
    algorithm is aggregated over tasks it shares with the reference. Steps ratio: median of all per-seed
    paired ratios, stratified bootstrap (:func:`~.speedup.stratified_speedup`); probability of
    improvement: mean over task versions of the per-task value, runs resampled within each task version;
    AUC: IQM over all runs of those task versions, stratified bootstrap.
    """
    cmp = resolve(cmp)
    groups = usable_groups(runs, cmp)
    by_algorithm: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for task, version, algorithm in groups:
        if (task, version, cmp.reference) in groups:
            by_algorithm[algorithm].append((task, version))
    out = []
    for algorithm in sorted(by_algorithm, key=cmp.algorithm_key):
        tasks = sorted(by_algorithm[algorithm], key=lambda k: (k[0], version_sort_key(k[1])))
        if len(tasks) < 2:
            continue
        pairs = [(groups[(t, v, algorithm)], groups[(t, v, cmp.reference)]) for t, v in tasks]
        entry: dict[str, Any] = {"algorithm": algorithm, "tasks": [task_label(t, v) for t, v in tasks],
                                 "seeds": sum(len(o) for o, _ in pairs)}
        if algorithm == cmp.reference:
            sp = Speedup(1.0, 1.0, 1.0, "reference", entry["seeds"], False)
            prob: tuple[float | None, ...] = (0.5, 0.5, 0.5)
        else:
            sp = stratified_speedup([(per_seed(o, "steps"), per_seed(r, "steps")) for o, r in pairs],
                                    reference=cmp.reference)
            prob = pooled_prob_improvement(pairs)
        aucs = [[a for a in (run_auc(x) for x in o) if a is not None] for o, _ in pairs]
        point, low, high = iqm_interval(aucs)
        entry.update({**sp.fields("speedup_"), "speedup_method": sp.method, "speedup_n": sp.n,
                      "speedup_censored": sp.censored, "speedup_note": sp.note, "speedup_wilcoxon_p": sp.p_value,
                      "prob_improvement": prob[0], "prob_improvement_ci_low": prob[1],
                      "prob_improvement_ci_high": prob[2],
                      "auc": point, "auc_ci_low": low, "auc_ci_high": high})
        out.append(entry)
    return out
