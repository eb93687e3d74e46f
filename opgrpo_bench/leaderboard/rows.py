"""The leaderboard rows (one per task x task version x algorithm) and the eval-score curves, from the
runs' outcomes. What every field means: docs/STATISTICS.md ("Per row")."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

from opgrpo_bench.leaderboard.analyses import Analysis, default_analyses
from opgrpo_bench.leaderboard.diagnostics import series_stats, declared_columns, diagnostics_summary
from opgrpo_bench.leaderboard.gold import GOLD_KEY, gold_fields
from opgrpo_bench.leaderboard.improvement import row_prob_improvement
from opgrpo_bench.leaderboard.load import Run
from opgrpo_bench.leaderboard.normalised import row_auc
from opgrpo_bench.leaderboard.outcomes import METRICS, Comparison, median_or_none, resolve, summarize
from opgrpo_bench.leaderboard.outcomes import task_label, usable, usable_groups, usable_runs, version_sort_key
from opgrpo_bench.leaderboard.speedup import row_speedup
from opgrpo_bench.schema import finite_or_none as _finite


def compute_rows(runs: list[Run], cmp: Comparison | None = None,
                 analyses: Sequence[Analysis] | None = None) -> list[dict[str, Any]]:
    """Leaderboard rows (dicts, JSON-ready) from finished runs, in the deterministic row order: the
    statistics against ``cmp``'s reference, the algorithms' declared diagnostics, then each analysis's
    row fields (default: :func:`~.analyses.default_analyses`)."""
    cmp = resolve(cmp)
    analyses = default_analyses() if analyses is None else analyses
    groups = usable_groups(runs, cmp)
    incomplete: dict[tuple[str, str, str], int] = defaultdict(int)
    unscored: dict[tuple[str, str, str], int] = defaultdict(int)
    for run in runs:
        if not run.finished:
            incomplete[(run.task, run.task_version, run.algorithm)] += 1
        elif not usable(run):
            unscored[(run.task, run.task_version, run.algorithm)] += 1

    order = sorted(set(groups) | set(incomplete) | set(unscored),
                   key=lambda k: (k[0], version_sort_key(k[1]), cmp.algorithm_key(k[2])))
    columns = declared_columns((k[2] for k in order), cmp)
    rows = []
    for key in order:
        task, version, algorithm = key
        outs = groups.get(key, [])
        ref = groups.get((task, version, cmp.reference), [])
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
        row["best_score"] = median_or_none(best)
        if best and first is not None:
            row["best_score_max"] = max(best) if first.higher_is_better else min(best)
        else:
            row["best_score_max"] = None
        row["final_score"] = median_or_none(o.final_score for o in outs)
        row.update(gold_fields(outs))
        for metric in METRICS:
            prefix = "speedup_" if metric == "steps" else f"speedup_{metric}_"
            sp = row_speedup(algorithm, outs, ref, metric, cmp)
            row.update(sp.fields(prefix))
            if metric == "steps":
                row.update({"speedup_method": sp.method, "speedup_n": sp.n,
                            "speedup_censored": sp.censored, "speedup_note": sp.note,
                            "speedup_wilcoxon_p": sp.p_value})
        row.update(row_prob_improvement(algorithm, outs, ref, cmp))
        row.update(row_auc(outs))
        row.update(diagnostics_summary(outs, columns))
        for analysis in analyses:
            row.update(analysis.row_fields(cmp, algorithm, outs, ref))
        rows.append(row)
    return rows


def eval_curves(runs: list[Run], cmp: Comparison | None = None) -> dict[str, dict[str, Any]]:
    """Per task label, per algorithm: eval score against optimizer step, mean and range over seeds;
    under ``gold`` the same for the gold score, for the algorithms whose runs record one (else ``{}``).

    At each step only the seeds that evaluated there contribute (``n`` says how many).
    """
    curves: dict[str, dict[str, Any]] = {}
    for run in usable_runs(runs, resolve(cmp)):
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
        task["algorithms"] = {a: series_stats(s) for a, s in task["algorithms"].items()}
        task["gold"] = {a: series_stats(s) for a, s in task["gold"].items()}
    return curves
