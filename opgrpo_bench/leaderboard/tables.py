"""The report's tables (result tables per task version, power sentence, aggregate, diagnostics, log-ratio
profiles, incomplete and excluded runs), each built once and rendered to Markdown and HTML."""

from __future__ import annotations

from typing import Any, Sequence

from opgrpo_bench.leaderboard.analyses import Analysis
from opgrpo_bench.leaderboard.format import (
    Table,
    fmt,
    fmt_auc,
    fmt_gold_gap,
    fmt_median_iqr,
    fmt_pct,
    fmt_prob,
    fmt_ratio,
    fmt_reached,
    fmt_sci,
    fmt_interval,
    fmt_p,
    ratio_text,
)
from opgrpo_bench.leaderboard.legends import see
from opgrpo_bench.leaderboard.outcomes import Comparison, resolve, task_label
from opgrpo_bench.leaderboard.robust import POWER_ALPHA, POWER_RATIOS, POWER_TARGET


def task_groups(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows grouped by task version, in row order."""
    groups: list[tuple[str, list[dict[str, Any]]]] = []
    for row in rows:
        label = task_label(row["task"], row["task_version"])
        if not groups or groups[-1][0] != label:
            groups.append((label, []))
        groups[-1][1].append(row)
    return groups


def task_heading(label: str, rows: list[dict[str, Any]]) -> str:
    first = next((r for r in rows if r["target"] is not None), None)
    if first is None:
        return label
    op = "≥" if first["higher_is_better"] else "≤"
    return f"{label} — target score {op} {first['target']:g}, budget {fmt(first['budget_steps'])} steps"


def results_table(rows: list[dict[str, Any]], cmp: Comparison = Comparison()) -> Table:
    """A task version's result table: a row per algorithm."""
    columns = ["Algorithm", "Seeds", "Reached target", "Steps to target, median [IQR]",
               "Samples to target", "NFE to target", "Wall-clock to target (s)", "Best score",
               "Final score", "Final gold score", "Score − gold, final (change since step 0)",
               f"Steps vs {cmp.reference} [95% CI]", "Wilcoxon p (steps)", "Samples ratio [95% CI]",
               "NFE ratio [95% CI]", "Wall-clock ratio [95% CI]", f"P(fewer steps than {cmp.reference}) [95% CI]",
               "AUC, IQM [95% CI]"]
    body = [[row["algorithm"], fmt(row["seeds"]), fmt_reached(row), fmt_median_iqr(row, "steps"),
             fmt_median_iqr(row, "samples"), fmt_median_iqr(row, "nfe"), fmt_median_iqr(row, "wall_s"),
             fmt(row["best_score"]), fmt(row["final_score"]), fmt(row["final_gold"]), fmt_gold_gap(row),
             fmt_ratio(row, "speedup_"), fmt_p(row.get("speedup_wilcoxon_p")),
             fmt_ratio(row, "speedup_samples_"), fmt_ratio(row, "speedup_nfe_"), fmt_ratio(row, "speedup_wall_s_"),
             fmt_prob(row, cmp.reference), fmt_auc(row)] for row in rows]
    return Table(columns, body, numeric=set(range(1, len(columns))) - {2})


def power_text(power: dict[str, Any] | None, cmp: Comparison = Comparison()) -> str:
    """One sentence: the task's per-seed log-ratio sd and the seeds a paired test needs (or why n/a)."""
    head = (f"Power analysis (seeds per algorithm for a two-sided paired test, α = {POWER_ALPHA:g}, "
            f"{100 * POWER_TARGET:.0f}% power, paired t-test, exact by the noncentral t)")
    if not power or power.get("sd_log_ratio") is None:
        why = power.get("note", "no data") if power else "no data"
        return f"{head}: n/a ({why})."
    needs = "; ".join(f"true ratio {r:g}: {power[f'seeds_for_ratio_{r:g}']} seeds" for r in POWER_RATIOS)
    left_out = (f"; left out, identical to {cmp.reference} on every seed: {', '.join(power['identical'])}"
                if power.get("identical") else "")
    return (f"{head}: sd of the per-seed log steps ratio vs {cmp.reference} {power['sd_log_ratio']:.3f} "
            f"(pooled over {', '.join(power['algorithms'])}; {power['df']} degrees of freedom{left_out}); "
            f"{needs}.")


def aggregate_table(entries: list[dict[str, Any]], cmp: Comparison = Comparison()) -> Table | None:
    """Statistics pooled over task versions (stratified by task version), or None when nothing pools."""
    if not entries:
        return None
    body = []
    for e in entries:
        ratio = ratio_text(e["speedup_vs_flow_grpo"], e["speedup_ci_low"], e["speedup_ci_high"],
                           e["speedup_method"], e["speedup_censored"])
        prob = fmt_prob(e, cmp.reference)
        body.append([e["algorithm"], ", ".join(e["tasks"]), fmt(e["seeds"]), ratio, prob,
                     fmt_interval(e["auc"], e["auc_ci_low"], e["auc_ci_high"])])
    return Table(["Algorithm", "Task versions", "Seeds", f"Steps vs {cmp.reference} [95% CI]",
                  f"P(fewer steps than {cmp.reference}) [95% CI]", "AUC, IQM [95% CI]"],
                 body, numeric={2, 3, 4, 5})


def diagnostics_table(rows: list[dict[str, Any]], columns: list[Any]) -> Table | None:
    """The declared diagnostics (``columns``, :func:`~.diagnostics.declared_columns`) of the rows that
    have any; None when no row has one."""
    chosen = [r for r in rows if any(r.get(d.name) is not None for d in columns)]
    if not chosen:
        return None
    body = [[task_label(r["task"], r["task_version"]), r["algorithm"],
             *((fmt_pct if d.percent else fmt)(r.get(d.name)) for d in columns)] for r in chosen]
    return Table(["Task", "Algorithm", *(d.label for d in columns)], body,
                 numeric=set(range(2, 2 + len(columns))))


def logratio_table(profiles: dict[str, dict[str, dict[str, list[Any]]]],
                   cmp: Comparison | None = None) -> Table | None:
    """The per-step log-ratio profiles: a row per task and algorithm, a column per denoising step that
    has a value in some row (steps after every replayed prefix are left out)."""
    entries = [(label, algorithm, prof) for label, algos in profiles.items()
               for algorithm, prof in sorted(algos.items(), key=lambda kv: resolve(cmp).algorithm_key(kv[0]))]
    steps = sorted({k for _, _, prof in entries for k, v in enumerate(prof["mean"]) if v is not None})
    if not steps:
        return None
    body = [[label, algorithm, *(fmt_sci(prof["mean"][k] if k < len(prof["mean"]) else None) for k in steps)]
            for label, algorithm, prof in entries]
    return Table(["Task", "Algorithm", *(f"k = {k}" for k in steps)], body,
                 numeric=set(range(2, 2 + len(steps))))


def incomplete_table(runs: list[dict[str, Any]]) -> Table | None:
    if not runs:
        return None
    body = [[r["file"], task_label(r["task"], r["task_version"]), r["algorithm"], str(r["seed"]),
             f"{fmt(r['last_step'])} / {fmt(r['budget_steps'])}", "yes" if r["reached_so_far"] else "no"]
            for r in runs]
    return Table(["File", "Task", "Algorithm", "Seed", "Last step / budget", "Reached target so far"],
                 body, numeric={3, 4})


def excluded_table(runs: list[dict[str, Any]]) -> Table | None:
    if not runs:
        return None
    body = [[r["file"], task_label(r["task"], r["task_version"]), r["algorithm"], str(r["seed"]), r["reason"]]
            for r in runs]
    return Table(["File", "Task", "Algorithm", "Seed", "Why excluded"], body, numeric={3})


EXCLUDED_NOTE = ("Finished runs whose eval scores cannot be used (no eval record, or a null or non-finite "
                 "score at some eval) are left out of every statistic, curve and ratio: "
                 f"{see('Which runs count')}.")


def ratio_notes(rows: list[dict[str, Any]], cmp: Comparison, analyses: Sequence[Analysis]) -> list[str]:
    """Why a ratio is missing or approximate, per row: the main statistic, then each analysis's notes."""
    notes = []
    for r in rows:
        where = f"{r['algorithm']} on {task_label(r['task'], r['task_version'])}"
        if r["speedup_note"]:
            notes.append(f"{where}: {r['speedup_note']}")
        notes += [f"{where}: {note}" for analysis in analyses for note in analysis.row_notes(cmp, r)]
    return notes
