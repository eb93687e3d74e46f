"""``leaderboard.json``: the whole leaderboard as one JSON-ready document (rows, per-task power,
aggregates, curves, analyses' entries, incomplete and excluded runs, warnings)."""

from __future__ import annotations

from typing import Any, Sequence

from opgrpo_bench import SCHEMA
from opgrpo_bench.leaderboard.aggregate import compute_aggregate
from opgrpo_bench.leaderboard.analyses import Analysis, default_analyses, insert_after
from opgrpo_bench.leaderboard.diagnostics import logratio_profiles
from opgrpo_bench.leaderboard.legends import DEFINITIONS, see
from opgrpo_bench.leaderboard.load import Run
from opgrpo_bench.leaderboard.normalised import sample_efficiency
from opgrpo_bench.leaderboard.outcomes import Comparison, exclusion_reason, resolve, task_label, usable
from opgrpo_bench.leaderboard.power import compute_tasks
from opgrpo_bench.leaderboard.robust import POWER_ALPHA, POWER_TARGET
from opgrpo_bench.leaderboard.rows import compute_rows, eval_curves
from opgrpo_bench.leaderboard.speedup import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from opgrpo_bench.schema import first_reaching

LEADERBOARD_SCHEMA = "opgrpo-bench/leaderboard/v1"


def incomplete_entries(runs: list[Run]) -> list[dict[str, Any]]:
    """What is known of each unfinished run: its progress and whether it reached the target so far."""
    out = []
    for run in runs:
        if run.finished:
            continue
        scored = [e for e in run.evals if e.get("score") is not None]
        out.append({"file": run.path, "run_id": run.run_id, "task": run.task,
                    "task_version": run.task_version, "algorithm": run.algorithm, "seed": run.seed,
                    "last_step": run.last_step, "budget_steps": run.budget_steps,
                    "reached_so_far": first_reaching(scored, run.target, run.higher_is_better) is not None})
    return out


def excluded_entries(runs: list[Run]) -> list[dict[str, Any]]:
    """Finished runs left out of the statistics because their eval scores cannot be used, with why."""
    return [{"file": run.path, "run_id": run.run_id, "task": run.task, "task_version": run.task_version,
             "algorithm": run.algorithm, "seed": run.seed, "reason": exclusion_reason(run)}
            for run in runs if run.finished and not usable(run)]


def excluded_text(doc: dict[str, Any]) -> str:
    n = len(doc.get("excluded_runs", []))
    return f", {n} run(s) without a valid eval score excluded" if n else ""


def build_document(runs_dir: str, files: list[str], runs: list[Run], warnings: list[str],
                   skipped: list[str], cmp: Comparison | None = None,
                   analyses: Sequence[Analysis] | None = None) -> dict[str, Any]:
    """The leaderboard as one JSON-ready dict (the content of ``leaderboard.json``): the rows against
    ``cmp``'s reference, then each analysis's entries where it places them (:class:`~.analyses.Analysis`)."""
    cmp = resolve(cmp)
    analyses = default_analyses() if analyses is None else analyses
    rows = compute_rows(runs, cmp, analyses)
    doc = {
        "schema": LEADERBOARD_SCHEMA,
        "source_schema": SCHEMA,
        "runs_dir": runs_dir,
        "files_read": len(files),
        "runs_used": sum(usable(r) for r in runs),
        "statistics": {
            "reference_algorithm": cmp.reference,
            "definitions": DEFINITIONS,
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
            "bootstrap_seed": BOOTSTRAP_SEED,
            "power_alpha": POWER_ALPHA,
            "power_target": POWER_TARGET,
            "conventions": "rliable (Agarwal et al. 2021), see docs/STATISTICS.md",
            "runs": see("Which runs count"),
            "rows": see("Per run", "Per row (task version × algorithm)"),
            "speedup": see("Steps ratio against the reference"),
            "prob_improvement": see("Probability of improvement"),
            "auc": see("Normalised AUC", "IQM"),
            "gold": see("Gold metric"),
            "power": see("Power analysis"),
            "aggregate": see("Across task versions"),
            "sample_efficiency": see("Figures"),
            "logratio_profiles": see("Per-step log-ratio profile"),
        },
        "rows": rows,
        "tasks": compute_tasks(runs, cmp),
        "aggregate": compute_aggregate(runs, cmp),
        "incomplete_runs": incomplete_entries(runs),
        "excluded_runs": excluded_entries(runs),
        "skipped_files": skipped,
        "warnings": warnings,
        "curves": eval_curves(runs, cmp),
        "sample_efficiency": sample_efficiency(runs, cmp=cmp),
        "logratio_profiles": logratio_profiles(runs, cmp),
    }
    for analysis in analyses:
        doc["statistics"] = insert_after(doc["statistics"], analysis.statistics_after, analysis.statistics(cmp))
        doc = insert_after(doc, analysis.document_after, analysis.document(cmp, runs, rows))
    return doc


def power_by_label(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The power analysis of each task label."""
    return {t["label"]: t["power"] for t in doc.get("tasks", [])}


def profile_data(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float | None]]]]:
    """Per task label, per algorithm: the per-seed normalised final and best scores the profiles plot."""
    out: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    for row in rows:
        if row["seeds"]:
            out.setdefault(task_label(row["task"], row["task_version"]), {})[row["algorithm"]] = {
                "final": row["normalised_final_per_seed"], "best": row["normalised_best_per_seed"]}
    return out
