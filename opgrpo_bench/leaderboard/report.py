"""The leaderboard report: ``LEADERBOARD.md``, ``leaderboard.json`` and a self-contained ``index.html``.

:func:`build_leaderboard` is the whole pipeline: read the results files (:mod:`.load`), compute the rows
(:mod:`.stats`), render the figures (:mod:`.plots`) and write the three files atomically (temporary file,
then rename; an existing report is replaced only once the new file is complete). The output depends only
on the input files and on the runs directory as it was named (file paths are shown relative to it): no
timestamps or unseeded randomness leak into it, so the same input gives byte-identical files.

The HTML page has no external assets at all (figures are base64 PNGs, CSS is inline, there are no links
off the page). A few lines of inline script check, once the page has loaded, that every figure decoded:
they set ``data-plots-loaded`` on ``<body>`` and log a console error for a broken figure, which is what
the browser test looks at.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from opgrpo_bench import SCHEMA
from opgrpo_bench.leaderboard.load import Issue, LeaderboardError, Run, load_runs
from opgrpo_bench.leaderboard.paper import SOURCE as PAPER_SOURCE
from opgrpo_bench.leaderboard.paper import paper_reference
from opgrpo_bench.leaderboard.plots import Plot, all_plots
from opgrpo_bench.leaderboard.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    REFERENCE_ALGORITHM,
    algorithm_sort_key,
    compute_aggregate,
    compute_rows,
    compute_tasks,
    diagnostics,
    eval_curves,
    exclusion_reason,
    logratio_profiles,
    sample_efficiency,
    task_label,
    usable,
)
from opgrpo_bench.leaderboard.regime import REGIME_ALGORITHM, regime_map
from opgrpo_bench.leaderboard.robust import POWER_ALPHA, POWER_RATIOS, POWER_TARGET
from opgrpo_bench.results import first_reaching
from opgrpo_bench.storage import atomic_write_text

LEADERBOARD_SCHEMA = "opgrpo-bench/leaderboard/v1"
MARKDOWN_FILE, JSON_FILE, HTML_FILE = "LEADERBOARD.md", "leaderboard.json", "index.html"

Warn = Callable[[str], None]


# ----------------------------------------------------------------------------------------------------
# Formatting


def fmt(value: Any) -> str:
    """A number for a table cell: integers with thousands separators, others with 2-3 decimals."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    v = float(value)
    if v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    # trailing zeros carry no information here ("47.5", not "47.50")
    text = f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"
    return text.rstrip("0").rstrip(".")


def fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def fmt_median_iqr(row: dict[str, Any], metric: str, stem: str = "{}_to_target") -> str:
    """``median [q25–q75]``; a median that involves censored runs is a lower bound, shown ``≥``.

    ``stem`` names the keys: ``steps_to_target_median`` ... by default, ``paper_steps_median`` ... with
    ``"paper_{}"``.
    """
    base = stem.format(metric)
    median = row[f"{base}_median"]
    if median is None:
        return "—"
    bound = "≥" if row[f"{base}_median_censored"] else ""
    return f"{bound}{fmt(median)} [{fmt(row[f'{base}_q25'])}–{fmt(row[f'{base}_q75'])}]"


def _ratio_text(ratio: float | None, low: float | None, high: float | None, method: str,
                censored: bool) -> str:
    if ratio is None:
        return "—"
    if method == "reference":
        return "1 (reference)"
    marks = "*" if censored else ""
    marks += "†" if method == "ratio-of-medians" else ""
    return f"{ratio:.2f}×{marks} [{low:.2f}–{high:.2f}]"


def fmt_ratio(row: dict[str, Any], prefix: str) -> str:
    """``0.45× [0.30–0.60]`` plus markers: ``*`` censored runs involved, ``†`` not paired by seed."""
    return _ratio_text(row[f"{prefix}vs_flow_grpo"], row[f"{prefix}ci_low"], row[f"{prefix}ci_high"],
                       row["speedup_method"], row["speedup_censored"])


def fmt_paper_ratio(row: dict[str, Any]) -> str:
    """The paper-protocol steps ratio, formatted like :func:`fmt_ratio`."""
    return _ratio_text(row["paper_speedup"], row["paper_speedup_ci_low"], row["paper_speedup_ci_high"],
                       row["paper_speedup_method"], row["paper_speedup_censored"])


def fmt_interval(value: float | None, low: float | None, high: float | None) -> str:
    """``0.91 [0.63–1.00]``: a point estimate and its 95% interval, two decimals."""
    if value is None:
        return "—"
    if low is None or high is None:
        return f"{value:.2f}"
    return f"{value:.2f} [{low:.2f}–{high:.2f}]"


def fmt_prob(row: dict[str, Any]) -> str:
    """The probability of improvement over ``flow-grpo`` and its interval (the reference row: 0.5); also
    for an ``aggregate`` entry."""
    if row["algorithm"] == REFERENCE_ALGORITHM and row["prob_improvement"] is not None:
        return "0.5 (reference)"
    return fmt_interval(row["prob_improvement"], row["prob_improvement_ci_low"], row["prob_improvement_ci_high"])


def fmt_auc(row: dict[str, Any]) -> str:
    """The IQM of the normalised AUC and its interval."""
    return fmt_interval(row["auc"], row["auc_ci_low"], row["auc_ci_high"])


def fmt_gold_gap(row: dict[str, Any]) -> str:
    """``0.14 (+0.02)``: the median final score − gold gap, and in brackets its median change since the
    first eval (``—`` when the row's runs record no gold score)."""
    gap, change = row.get("final_gold_gap"), row.get("gold_gap_change")
    if gap is None:
        return "—"
    return fmt(gap) if change is None else f"{fmt(gap)} ({'+' if change >= 0 else ''}{fmt(change)})"


def fmt_sci(value: float | None) -> str:
    """Three significant digits in scientific notation (log-ratios are often 1e-4 or smaller)."""
    return "—" if value is None else f"{value:.2e}"


def fmt_reached(row: dict[str, Any]) -> str:
    text = f"{row['reached']}/{row['seeds']}" if row["seeds"] else "—"
    if row["censored"]:
        text += f" ({row['censored']} censored)"
    if row["incomplete_excluded"]:
        text += f" (+{row['incomplete_excluded']} incomplete, excluded)"
    if row.get("unscored_excluded"):
        text += f" (+{row['unscored_excluded']} unscored, excluded)"
    return text


@dataclass
class Table:
    """A table rendered both to Markdown and to HTML from one definition."""

    columns: list[str]
    rows: list[list[str]]
    numeric: set[int]  # column indexes aligned right

    def markdown(self) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        head = "| " + " | ".join(cell(c) for c in self.columns) + " |"
        rule = "|" + "|".join("---:" if i in self.numeric else "---" for i in range(len(self.columns))) + "|"
        body = ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join([head, rule, *body])

    @staticmethod
    def _unbroken(text: str) -> str:
        """A numeric cell may wrap only before its bracketed interval, never inside a number."""
        parts = re.split(r" (?=\[)", text)
        return " ".join(f'<span class="nw">{html.escape(part)}</span>' for part in parts)

    def html(self, css_class: str = "") -> str:
        cls = f' class="{css_class}"' if css_class else ""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for row in self.rows:
            cells = "".join(
                f'<td class="num">{self._unbroken(c)}</td>' if i in self.numeric else f"<td>{html.escape(c)}</td>"
                for i, c in enumerate(row))
            body.append(f"<tr>{cells}</tr>")
        # the wrapper scrolls sideways on narrow screens instead of pushing the page wider
        return (f'<div class="scroll"><table{cls}><thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table></div>")


# ----------------------------------------------------------------------------------------------------
# Tables


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


def results_table(rows: list[dict[str, Any]]) -> Table:
    columns = ["Algorithm", "Seeds", "Reached target", "Steps to target, median [IQR]",
               "Samples to target", "NFE to target", "Wall-clock to target (s)", "Best score",
               "Final score", "Final gold score", "Score − gold, final (change since step 0)",
               f"Steps vs {REFERENCE_ALGORITHM} [95% CI]", "Samples ratio [95% CI]",
               "NFE ratio [95% CI]", "Wall-clock ratio [95% CI]", f"P(fewer steps than {REFERENCE_ALGORITHM}) [95% CI]",
               "AUC, IQM [95% CI]"]
    body = [[row["algorithm"], fmt(row["seeds"]), fmt_reached(row), fmt_median_iqr(row, "steps"),
             fmt_median_iqr(row, "samples"), fmt_median_iqr(row, "nfe"), fmt_median_iqr(row, "wall_s"),
             fmt(row["best_score"]), fmt(row["final_score"]), fmt(row["final_gold"]), fmt_gold_gap(row),
             fmt_ratio(row, "speedup_"),
             fmt_ratio(row, "speedup_samples_"), fmt_ratio(row, "speedup_nfe_"), fmt_ratio(row, "speedup_wall_s_"),
             fmt_prob(row), fmt_auc(row)] for row in rows]
    return Table(columns, body, numeric=set(range(1, len(columns))) - {2})


def power_text(power: dict[str, Any] | None) -> str:
    """One sentence: the task's per-seed log-ratio sd and the seeds a paired test needs (or why n/a)."""
    head = (f"Power analysis (seeds per algorithm for a two-sided paired test, α = {POWER_ALPHA:g}, "
            f"{100 * POWER_TARGET:.0f}% power, normal approximation)")
    if not power or power.get("sd_log_ratio") is None:
        why = power.get("note", "no data") if power else "no data"
        return f"{head}: n/a ({why})."
    needs = "; ".join(f"true ratio {r:g}: {power[f'seeds_for_ratio_{r:g}']} seeds" for r in POWER_RATIOS)
    left_out = (f"; left out, identical to {REFERENCE_ALGORITHM} on every seed: {', '.join(power['identical'])}"
                if power.get("identical") else "")
    return (f"{head}: sd of the per-seed log steps ratio vs {REFERENCE_ALGORITHM} {power['sd_log_ratio']:.3f} "
            f"(pooled over {', '.join(power['algorithms'])}; {power['df']} degrees of freedom{left_out}); "
            f"{needs}.")


def aggregate_table(entries: list[dict[str, Any]]) -> Table | None:
    """Statistics pooled over task versions (stratified by task version), or None when nothing pools."""
    if not entries:
        return None
    body = []
    for e in entries:
        ratio = _ratio_text(e["speedup_vs_flow_grpo"], e["speedup_ci_low"], e["speedup_ci_high"],
                            e["speedup_method"], e["speedup_censored"])
        prob = fmt_prob(e)
        body.append([e["algorithm"], ", ".join(e["tasks"]), fmt(e["seeds"]), ratio, prob,
                     fmt_interval(e["auc"], e["auc_ci_low"], e["auc_ci_high"])])
    return Table(["Algorithm", "Task versions", "Seeds", f"Steps vs {REFERENCE_ALGORITHM} [95% CI]",
                  f"P(fewer steps than {REFERENCE_ALGORITHM}) [95% CI]", "AUC, IQM [95% CI]"],
                 body, numeric={2, 3, 4, 5})


def paper_protocol_heading(rows: list[dict[str, Any]]) -> str:
    """The heading of a task's paper-protocol section (its target, or why the protocol is n/a)."""
    target = next((r["paper_target"] for r in rows if r["paper_target"] is not None), None)
    if target is None:
        return (f"Paper protocol: n/a (no finished {REFERENCE_ALGORITHM} run with an eval score on this "
                "task version)")
    return f"Paper protocol: steps to reach Flow-GRPO's final score ({target:.3f})"


def paper_protocol_table(rows: list[dict[str, Any]]) -> Table:
    columns = ["Algorithm", "Seeds", "Reached Flow-GRPO's final score", "Steps, median [IQR]",
               "Samples", "Wall-clock (s)", f"Steps vs {REFERENCE_ALGORITHM} [95% CI]"]
    body = []
    for row in rows:
        reached = "—" if row["paper_reached"] is None else f"{row['paper_reached']}/{row['seeds']}"
        if row["paper_censored"]:
            reached += f" ({row['paper_censored']} censored)"
        body.append([row["algorithm"], fmt(row["seeds"]), reached,
                     *(fmt_median_iqr(row, m, "paper_{}") for m in ("steps", "samples", "wall_s")),
                     fmt_paper_ratio(row)])
    return Table(columns, body, numeric=set(range(1, len(columns))) - {2})


def _measured(rows: list[dict[str, Any]], algorithm: str | None, field: str | None) -> str:
    """The measured counterpart of a paper number, per task, or why there is none."""
    if algorithm is None or field is None:
        return "n/a (targets here are set per task; see the task tables)"
    parts = []
    for row in rows:
        if row["algorithm"] != algorithm or row.get(field) is None:
            continue
        label = task_label(row["task"], row["task_version"])
        if field == "paper_speedup":
            parts.append(f"{label}: {fmt_paper_ratio(row)} (paper protocol: steps to reach "
                         f"{REFERENCE_ALGORITHM}'s final score {row['paper_target']:.3f})")
        elif field.startswith("speedup"):
            prefix = field.removesuffix("vs_flow_grpo")
            parts.append(f"{label}: {fmt_ratio(row, prefix)}")
        else:
            parts.append(f"{label}: {fmt_pct(row[field])}")
    return "; ".join(parts) if parts else f"not measured ({algorithm} has no finished runs with this field)"


def paper_table(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> Table:
    columns = ["Model", "Setting", "Quantity", "Reported (paper)", "Measured here (this benchmark's tasks)"]
    body = [[e["model"], e["setting"], e["quantity"], e["display"],
             _measured(rows, e["compare_algorithm"], e["compare_field"])] for e in reference]
    return Table(columns, body, numeric=set())


def diagnostics_table(rows: list[dict[str, Any]]) -> Table | None:
    keys = ("clipfrac_on_policy", "clipfrac_off_policy", "logw_range")
    chosen = [r for r in rows if any(r.get(k) is not None for k in keys)]
    if not chosen:
        return None
    body = [[task_label(r["task"], r["task_version"]), r["algorithm"], fmt_pct(r["clipfrac_on_policy"]),
             fmt_pct(r["clipfrac_off_policy"]), fmt(r["logw_range"])] for r in chosen]
    return Table(["Task", "Algorithm", "Clip fraction on-policy", "Clip fraction off-policy",
                  "log w range (max − min)"], body, numeric={2, 3, 4})


def regime_heading(family: dict[str, Any]) -> str:
    return (f"{family['label']}: {family['algorithm']} against {family['reference_algorithm']} by "
            "training-pool size")


def regime_table(family: dict[str, Any]) -> Table:
    """One task family's regime map: a row per pool size (module :mod:`.regime`)."""
    body = []
    for p in family["pools"]:
        size = "?" if p["pool_size"] is None else fmt(p["pool_size"])
        if p["pool_size_source"] == "task id":
            size += " (from the id)"
        ratio = "—" if p["speedup_vs_flow_grpo"] is None else _ratio_text(
            p["speedup_vs_flow_grpo"], p["speedup_ci_low"], p["speedup_ci_high"], p["speedup_method"],
            p["speedup_censored"])
        prob = fmt_interval(p["prob_improvement"], p["prob_improvement_ci_low"], p["prob_improvement_ci_high"])
        age = ("—" if p["replay_age_median"] is None
               else f"{fmt(p['replay_age_median'])} ({p['replay_age_runs']} runs)")
        late = "—" if p.get("replay_age_late_median") is None else fmt(p["replay_age_late_median"])
        body.append([size, p["label"], f"{p['seeds']} / {p['reference_seeds']}", ratio, prob, age, late,
                     fmt_sci(p["logw_spread_median"]), fmt_sci(p["logw_median_abs"])])
    ref, alg = family["reference_algorithm"], family["algorithm"]
    return Table(["Training prompts", "Task", f"Seeds ({alg} / {ref})", f"Steps vs {ref} [95% CI]",
                  f"P(fewer steps than {ref}) [95% CI]", "Replay age, median (iterations)",
                  "Replay age, second half of the runs", "log w spread (max − min), median",
                  "|log w| (per-iteration median), median"],
                 body, numeric={0, 2, 3, 4, 5, 6, 7, 8})


def regime_notes(families: list[dict[str, Any]]) -> list[str]:
    """Why a pool size is approximate or a ratio missing."""
    notes = []
    for family in families:
        for p in family["pools"]:
            if p["pool_size_note"]:
                notes.append(f"{p['label']}: {p['pool_size_note']}")
            if p["speedup_note"]:
                notes.append(f"{family['algorithm']} on {p['label']}: {p['speedup_note']}")
    return notes


def logratio_table(profiles: dict[str, dict[str, dict[str, list[Any]]]]) -> Table | None:
    """The per-step log-ratio profiles: a row per task and algorithm, a column per denoising step that
    has a value in some row (steps after every replayed prefix are left out)."""
    entries = [(label, algorithm, prof) for label, algos in profiles.items()
               for algorithm, prof in sorted(algos.items(), key=lambda kv: algorithm_sort_key(kv[0]))]
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


EXCLUDED_NOTE = ("Finished runs whose eval scores cannot be used (no eval record, or a score that is null or "
                 "not a finite number at some eval) are left out of every statistic, curve and ratio: their "
                 "steps to target are unknown.")


LEGEND = (
    f"Ratios are steps (samples, NFE, wall-clock) to target of the algorithm divided by those of "
    f"{REFERENCE_ALGORITHM} on the same task version: lower is better (0.34× = 34% of the steps). "
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

REGIME_LEGEND = (
    "When does replay pay off? Tasks whose ids differ only by a “-poolN” part are one task at several "
    "training-pool sizes (the id without it is the full pool); the size is run_start's num_train_prompts. "
    f"Per pool size, {REGIME_ALGORITHM} against {REFERENCE_ALGORITHM}: the steps ratio and P(fewer steps) "
    "of the task's table (same intervals); replay age: median over runs of each run's median "
    "op/replay_age_mean (iterations since the replayed prefixes were stored), and the same over the second "
    "half of each run (once the buffer, empty at the start, has filled); log w spread: median over "
    "step records (seeds pooled) of op/logw_max − op/logw_min; |log w|: median over the same records of "
    "|op/logw_median|. Definitions in docs/STATISTICS.md."
)

LOGRATIO_LEGEND = (
    "Per-step log-ratio profile (the paper's Fig. 2): per denoising step k of the replayed prefix, the mean "
    "over step records and seeds of op/logratio_by_step[k], the iteration's mean over replayed samples of "
    "log p_old − log p_behaviour (signed). Steps after every replayed prefix have no value and are not "
    "shown."
)

ROBUST_LEGEND = (
    "Conventions of rliable (Agarwal et al. 2021; definitions in docs/STATISTICS.md). "
    f"P(fewer steps than {REFERENCE_ALGORITHM}): probability that a random seed of the algorithm reaches the "
    f"target in fewer optimizer steps than a random {REFERENCE_ALGORITHM} seed, over all pairs of runs, ties "
    "half; a run that never reached the target only counts as slower than one that reached it by its budget "
    "(otherwise half). AUC: area under the eval-score curve over [0, budget] divided by the budget, each "
    "score normalised to 0 at the run's step-0 score and 1 at the target and clipped to [0, 1]; IQM = "
    "interquartile mean over seeds (a quarter of the seeds, rounded down, cut from each end: "
    "scipy.stats.trim_mean(x, 0.25)). Intervals: 95% "
    f"percentile bootstrap over seeds, stratified by task version ({BOOTSTRAP_RESAMPLES:,} resamples, fixed "
    "RNG seed)."
)

AGGREGATE_LEGEND = (
    "Pooled over the task versions each algorithm shares with flow-grpo (at least two): steps ratio = "
    "median of all per-seed paired ratios; P(fewer steps) = mean over task versions; AUC = IQM over all "
    "runs. The bootstrap resamples seeds within each task version, so every resample keeps each task's "
    "number of seeds."
)

PAPER_PROTOCOL_LEGEND = (
    "Paper protocol (the comparison arXiv 2604.04142 reports, shown as a second table per task): the "
    f"target is not the task's but {REFERENCE_ALGORITHM}'s final score, the median over finished "
    f"{REFERENCE_ALGORITHM} seeds of each run's last eval score. Every algorithm, {REFERENCE_ALGORITHM} "
    "included, is timed to first reach it, with the same censoring, markers, pairing and bootstrap as "
    "above."
)


def ratio_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Why a ratio is missing or approximate, per row: the main statistic, then the paper protocol."""
    notes = []
    for r in rows:
        where = f"{r['algorithm']} on {task_label(r['task'], r['task_version'])}"
        if r["speedup_note"]:
            notes.append(f"{where}: {r['speedup_note']}")
        if r["paper_speedup_note"] and r["paper_speedup_note"] != r["speedup_note"]:
            text = r["paper_speedup_note"]
            notes.append(f"{where}: {text if text.startswith('paper protocol') else 'paper protocol: ' + text}")
    return notes


# ----------------------------------------------------------------------------------------------------
# Document assembly


def _incomplete_entries(runs: list[Run]) -> list[dict[str, Any]]:
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


def _excluded_entries(runs: list[Run]) -> list[dict[str, Any]]:
    """Finished runs left out of the statistics because their eval scores cannot be used, with why."""
    return [{"file": run.path, "run_id": run.run_id, "task": run.task, "task_version": run.task_version,
             "algorithm": run.algorithm, "seed": run.seed, "reason": exclusion_reason(run)}
            for run in runs if run.finished and not usable(run)]


def _excluded_text(doc: dict[str, Any]) -> str:
    n = len(doc.get("excluded_runs", []))
    return f", {n} run(s) without a valid eval score excluded" if n else ""


def build_document(runs_dir: str, files: list[str], runs: list[Run], warnings: list[str],
                   skipped: list[str]) -> dict[str, Any]:
    """The leaderboard as one JSON-ready dict (the content of ``leaderboard.json``)."""
    rows = compute_rows(runs)
    return {
        "schema": LEADERBOARD_SCHEMA,
        "source_schema": SCHEMA,
        "runs_dir": runs_dir,
        "files_read": len(files),
        "runs_used": sum(usable(r) for r in runs),
        "statistics": {
            "reference_algorithm": REFERENCE_ALGORITHM,
            "ratio": f"to_target(algorithm) / to_target({REFERENCE_ALGORITHM}); lower is better",
            "center": "median over seeds (of paired per-seed ratios when seeds are shared)",
            "interval": "95% percentile bootstrap over seeds",
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
            "bootstrap_seed": BOOTSTRAP_SEED,
            "censored": "runs that never reached the target count as budget_steps (steps) or as what they "
                        "spent (samples, NFE, wall-clock) and are flagged",
            "incomplete": "runs without run_end are excluded from all statistics and listed",
            "excluded": "finished runs with no eval record, or with an eval score that is null or not a "
                        "finite number, are excluded from all statistics and listed in excluded_runs "
                        "with the reason",
            "conventions": "rliable (Agarwal et al. 2021), see docs/STATISTICS.md",
            "speedup_interval": "paired per-seed ratios resampled within each task version (stratified "
                                "bootstrap; one task version per row, so the paired bootstrap over seeds)",
            "prob_improvement": f"P(steps(X) < steps({REFERENCE_ALGORITHM})) over all pairs of runs, ties 1/2, "
                                "censored runs by Gehan's rule (a censored run is slower than a run that "
                                "reached by its budget, otherwise 1/2); bootstrap resamples both groups "
                                "independently",
            "auc": "trapezoid area under the normalised eval-score curve ((score - step-0 score) / (target - "
                   "step-0 score), clipped to [0, 1]) over [0, budget_steps], divided by budget_steps; "
                   "IQM over seeds (scipy.stats.trim_mean(x, 0.25))",
            "power": "tasks[].power: pooled sd of per-seed log steps ratios; seeds per algorithm for a "
                     f"two-sided paired test at alpha {POWER_ALPHA:g} with power {POWER_TARGET:g}, "
                     "n = ceil(((z_(1-alpha/2) + z_power) * sd / |log r|)^2), at least 2",
            "aggregate": "aggregate[]: per algorithm, pooled over the task versions it shares with "
                         f"{REFERENCE_ALGORITHM}, stratified bootstrap",
            "gold": "rows[].final_gold: median over seeds of the gold score (a held-out reader) at each run's "
                    "last eval; final_gold_gap: median over seeds of final score - final gold; "
                    "gold_gap_change: median over seeds of (final gap - gap at the first eval); null when "
                    "the runs record no gold",
            "regime_map": "regime_map[]: task ids that differ only by a -poolN part form a family; per pool "
                          "size (run_start num_train_prompts) the op-grpo row's steps ratio and "
                          "prob_improvement with their intervals, replay_age_median (median over runs of "
                          "the per-run median op/replay_age_mean), replay_age_late_median (the same over "
                          "each run's step records past half its last step), logw_spread_median (median over step "
                          "records of op/logw_max - op/logw_min), logw_median_abs (median over step "
                          "records of |op/logw_median|); families with at least two pool sizes",
            "logratio_profiles": "logratio_profiles[task][algorithm]: mean over step records and seeds of "
                                 "op/logratio_by_step per denoising step (mean), values per step (n)",
            "paper_protocol": f"paper_* keys: the same statistics with the target replaced by paper_target, "
                              f"the median over finished {REFERENCE_ALGORITHM} runs of each run's final "
                              f"eval score (null when there is none)",
        },
        "rows": rows,
        "regime_map": regime_map(runs, rows),
        "tasks": compute_tasks(runs),
        "aggregate": compute_aggregate(runs),
        "paper_reference": paper_reference(),
        "incomplete_runs": _incomplete_entries(runs),
        "excluded_runs": _excluded_entries(runs),
        "skipped_files": skipped,
        "warnings": warnings,
        "curves": eval_curves(runs),
        "sample_efficiency": sample_efficiency(runs),
        "logratio_profiles": logratio_profiles(runs),
    }


def _power_by_label(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["label"]: t["power"] for t in doc.get("tasks", [])}


def render_markdown(doc: dict[str, Any]) -> str:
    rows = doc["rows"]
    lines = ["# opgrpo-bench leaderboard", "",
             f"Computed from the results files under `{doc['runs_dir']}`: {doc['files_read']} file(s) read, "
             f"{doc['runs_used']} finished run(s) used, {len(doc['incomplete_runs'])} incomplete run(s) "
             f"excluded{_excluded_text(doc)}, {len(doc['skipped_files'])} file(s) skipped. Figures are in "
             "`index.html`.", "",
             LEGEND, "", ROBUST_LEGEND, "", PAPER_PROTOCOL_LEGEND, ""]
    if not rows:
        lines += ["*No finished runs with valid eval scores: there is nothing to rank yet.*", ""]
    power = _power_by_label(doc)
    for label, group in task_groups(rows):
        lines += [f"## {task_heading(label, group)}", "", results_table(group).markdown(), ""]
        if label in power:
            lines += [power_text(power[label]), ""]
        lines += [f"### {paper_protocol_heading(group)}", ""]
        if any(r["paper_target"] is not None for r in group):
            lines += [paper_protocol_table(group).markdown(), ""]
    notes = [f"- {note}" for note in ratio_notes(rows)]
    if notes:
        lines += ["Notes on ratios:", "", *notes, ""]
    agg = aggregate_table(doc.get("aggregate", []))
    if agg:
        lines += ["## Across task versions (stratified bootstrap)", "", AGGREGATE_LEGEND, "", agg.markdown(), ""]
    lines += ["## Regime map: when does replay pay off?", "", REGIME_LEGEND, ""]
    families = doc.get("regime_map", [])
    for family in families:
        lines += [f"### {regime_heading(family)}", "", regime_table(family).markdown(), ""]
    if not families:
        lines += [f"*{NO_REGIME}*", ""]
    lines += [f"- {note}" for note in regime_notes(families)]
    if regime_notes(families):
        lines.append("")
    lines += [f"## Paper reference ({PAPER_SOURCE})", "",
              "Numbers the OP-GRPO paper reports for SD3.5-M and Wan2.1, beside the closest quantity measured "
              "by this benchmark. The setups differ (models, tasks, targets, budgets): read them side by "
              "side, not as a reproduction.", "", paper_table(rows, doc["paper_reference"]).markdown(), ""]
    diag = diagnostics_table(rows)
    lines += ["## OP-GRPO diagnostics (medians over seeds of per-run means)", ""]
    lines += [diag.markdown() if diag else "*No run logs OP-GRPO diagnostics.*", ""]
    lr = logratio_table(doc.get("logratio_profiles", {}))
    if lr:
        lines += ["### Per-step log-ratio profile", "", LOGRATIO_LEGEND, "", lr.markdown(), ""]
    inc = incomplete_table(doc["incomplete_runs"])
    if inc:
        lines += ["## Incomplete runs (excluded from statistics)", "", inc.markdown(), ""]
    exc = excluded_table(doc.get("excluded_runs", []))
    if exc:
        lines += ["## Runs without a valid eval score (excluded from statistics)", "", EXCLUDED_NOTE, "",
                  exc.markdown(), ""]
    if doc["warnings"]:
        lines += ["## Input warnings", "", *[f"- {w}" for w in doc["warnings"]], ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px auto;
max-width:1280px;padding:0 16px;color:#1b1f24;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #d0d7de;
padding-bottom:.2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.86em;width:100%}
th,td{border:1px solid #d0d7de;padding:4px 7px;vertical-align:top}
th{background:#f3f5f7;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto}.nw{white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}
.legend,.note{font-size:.85em;color:#444}
.paper{border:2px dashed #9a6700;background:#fff8e6;padding:4px 14px 8px;margin-top:1.8em}
.paper h2{border-bottom-color:#e6c77a;margin-top:.6em}
.badge{display:inline-block;background:#9a6700;color:#fff;border-radius:3px;padding:0 6px;font-size:.8em}
figure{margin:1em 0 1.6em}figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{font-size:.85em;color:#444}
nav ul{columns:2;font-size:.9em}ul.warnings{font-size:.85em}code{font-size:.92em}
"""

# Checks that every figure decoded; reports through <body data-plots-loaded> and the console.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img.plot"), ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
    else { console.error("figure failed to load: " + imgs[i].id); }
  }
  document.body.setAttribute("data-plots-loaded", String(ok));
});
"""


NO_REGIME = "No task family has finished runs at two or more training-pool sizes yet."
ROBUST_KINDS = ("efficiency", "profile")
DIAGNOSTIC_KINDS = ("logratio", "clipfrac", "logw")

EFFICIENCY_LEGEND = (
    "rliable's figures, one pair per task version. Sample efficiency: interquartile mean over seeds of the "
    "normalised eval score (0 = the run's step-0 score, 1 = the target, clipped to [0, 1]) at each eval "
    "step, band = 95% percentile-bootstrap interval over seeds. Performance profiles: fraction of runs "
    "whose normalised final (left) or best (right) eval score exceeds tau."
)


def _figure_html(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure id="fig-{html.escape(plot.id)}"><img class="plot" id="{html.escape(plot.id)}" '
            f'data-kind="{plot.kind}" alt="{html.escape(plot.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{html.escape(plot.title)}.</b> {html.escape(plot.caption)}</figcaption></figure>")


def render_html(doc: dict[str, Any], plots: list[Plot]) -> str:
    rows = doc["rows"]
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>opgrpo-bench leaderboard</title>", f"<style>{_CSS}</style></head>",
             f'<body data-plots="{len(plots)}">', "<h1>opgrpo-bench leaderboard</h1>",
             f'<p class="note">Computed from the results files under <code>{esc(doc["runs_dir"])}</code>: '
             f'{doc["files_read"]} file(s) read, {doc["runs_used"]} finished run(s) used, '
             f'{len(doc["incomplete_runs"])} incomplete run(s) excluded{esc(_excluded_text(doc))}, '
             f'{len(doc["skipped_files"])} file(s) skipped.</p>']
    toc = ['<li><a href="#results">Measured results</a></li>',
           '<li><a href="#regime">Regime map: when does replay pay off?</a></li>',
           '<li><a href="#paper">Paper reference</a></li>',
           '<li><a href="#curves">Eval-score curves</a></li>',
           '<li><a href="#efficiency">Sample efficiency and performance profiles</a></li>',
           '<li><a href="#diagnostics">OP-GRPO diagnostics</a></li>']
    if doc["incomplete_runs"]:
        toc.append('<li><a href="#incomplete">Incomplete runs</a></li>')
    if doc.get("excluded_runs"):
        toc.append('<li><a href="#excluded">Runs without a valid eval score</a></li>')
    if doc["warnings"]:
        toc.append('<li><a href="#warnings">Input warnings</a></li>')
    parts.append(f"<nav><ul>{''.join(toc)}</ul></nav>")

    parts.append('<section id="results"><h2>Measured results</h2>')
    parts.append(f'<p class="legend">{esc(LEGEND)}</p>')
    parts.append(f'<p class="legend">{esc(ROBUST_LEGEND)}</p>')
    parts.append(f'<p class="legend">{esc(PAPER_PROTOCOL_LEGEND)}</p>')
    if not rows:
        parts.append("<p><em>No finished runs with valid eval scores: there is nothing to rank yet.</em></p>")
    power = _power_by_label(doc)
    for label, group in task_groups(rows):
        parts.append(f"<h3>{esc(task_heading(label, group))}</h3>")
        parts.append(results_table(group).html("results"))
        if label in power:
            parts.append(f'<p class="note power">{esc(power_text(power[label]))}</p>')
        parts.append(f'<h4 class="paper-protocol">{esc(paper_protocol_heading(group))}</h4>')
        if any(r["paper_target"] is not None for r in group):
            parts.append(paper_protocol_table(group).html("paper-protocol"))
    notes = ratio_notes(rows)
    if notes:
        parts.append('<ul class="note">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    agg = aggregate_table(doc.get("aggregate", []))
    if agg:
        parts.append("<h3>Across task versions (stratified bootstrap)</h3>")
        parts.append(f'<p class="legend">{esc(AGGREGATE_LEGEND)}</p>')
        parts.append(agg.html("aggregate"))
    parts.append("</section>")

    parts.append('<section id="regime"><h2>Regime map: when does replay pay off?</h2>')
    parts.append(f'<p class="legend">{esc(REGIME_LEGEND)}</p>')
    families = doc.get("regime_map", [])
    figures = {p.task: p for p in plots if p.kind == "regime"}
    for family in families:
        parts.append(f"<h3>{esc(regime_heading(family))}</h3>")
        parts.append(regime_table(family).html("regime"))
        if family["label"] in figures:
            parts.append(_figure_html(figures[family["label"]]))
    if not families:
        parts.append(f"<p><em>{esc(NO_REGIME)}</em></p>")
    notes = regime_notes(families)
    if notes:
        parts.append('<ul class="note">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    parts.append("</section>")

    parts.append('<section id="paper" class="paper">')
    parts.append(f'<h2>Paper reference <span class="badge">{esc(PAPER_SOURCE)}</span></h2>')
    parts.append('<p class="note">Numbers the OP-GRPO paper reports for SD3.5-M and Wan2.1, beside the closest '
                 "quantity measured by this benchmark. The setups differ (models, tasks, targets, budgets): "
                 "read them side by side, not as a reproduction.</p>")
    parts.append(paper_table(rows, doc["paper_reference"]).html("paper-table"))
    parts.append("</section>")

    by_kind = [p for p in plots if p.kind == "curve"]
    parts.append('<section id="curves"><h2>Eval-score curves</h2>')
    parts += [_figure_html(p) for p in by_kind] or ["<p><em>No eval records.</em></p>"]
    parts.append("</section>")

    parts.append('<section id="efficiency"><h2>Sample efficiency and performance profiles</h2>')
    parts.append(f'<p class="legend">{esc(EFFICIENCY_LEGEND)}</p>')
    robust = [p for p in plots if p.kind in ROBUST_KINDS]
    parts += [_figure_html(p) for p in robust] or ["<p><em>No normalisable eval records.</em></p>"]
    parts.append("</section>")

    parts.append('<section id="diagnostics"><h2>OP-GRPO diagnostics</h2>')
    diag = diagnostics_table(rows)
    parts.append(diag.html("diagnostics") if diag else "<p><em>No run logs OP-GRPO diagnostics.</em></p>")
    parts += [_figure_html(p) for p in plots if p.kind in DIAGNOSTIC_KINDS]
    parts.append("</section>")

    inc = incomplete_table(doc["incomplete_runs"])
    if inc:
        parts.append('<section id="incomplete"><h2>Incomplete runs (excluded from statistics)</h2>')
        parts.append(inc.html("incomplete") + "</section>")
    exc = excluded_table(doc.get("excluded_runs", []))
    if exc:
        parts.append('<section id="excluded"><h2>Runs without a valid eval score (excluded from statistics)</h2>')
        parts.append(f'<p class="note">{esc(EXCLUDED_NOTE)}</p>')
        parts.append(exc.html("excluded") + "</section>")
    if doc["warnings"]:
        parts.append('<section id="warnings"><h2>Input warnings</h2><ul class="warnings">')
        parts += [f"<li>{esc(w)}</li>" for w in doc["warnings"]]
        parts.append("</ul></section>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------------
# Writing


def default_warn(message: str) -> None:
    """Print a warning to stderr with rich (markup in file names is escaped, not interpreted)."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[yellow]warning:[/yellow] {escape(message)}")


def profile_data(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float | None]]]]:
    """Per task label, per algorithm: the per-seed normalised final and best scores the profiles plot."""
    out: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    for row in rows:
        if row["seeds"]:
            out.setdefault(task_label(row["task"], row["task_version"]), {})[row["algorithm"]] = {
                "final": row["normalised_final_per_seed"], "best": row["normalised_best_per_seed"]}
    return out


def build_leaderboard(runs_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      warn: Warn | None = None) -> dict[str, Any]:
    """Read every results file under ``runs_dir`` and write the report into ``out_dir``.

    Writes ``LEADERBOARD.md``, ``leaderboard.json`` and ``index.html`` and returns the JSON document
    (a dict with ``rows``, ``paper_reference``, ``warnings`` ...). Warnings about the input go to ``warn``
    (default: rich, to stderr) as they are found. Raises :class:`LeaderboardError` with a one-line message
    for a user error: missing or empty runs directory, no usable results file, unwritable output.
    """
    warn = warn or default_warn
    loaded = load_runs(runs_dir)
    issues: list[Issue] = list(loaded.issues)
    for run in loaded.runs:
        if not run.finished:
            issues.append(Issue(run.path, f"no run_end record (unfinished or crashed at step {run.last_step} "
                                          f"of {run.budget_steps}); excluded from statistics"))
        elif not usable(run):
            issues.append(Issue(run.path, f"{exclusion_reason(run)}; excluded from statistics"))
    for issue in issues:
        warn(str(issue))
    if not loaded.runs:
        raise LeaderboardError(f"no usable runs under '{loaded.runs_dir}': all {len(loaded.files)} results "
                               "file(s) were skipped (see the warnings above)")
    if not any(r.finished for r in loaded.runs):
        warn("no finished runs yet: the report lists only the incomplete ones")
    elif not any(usable(r) for r in loaded.runs):
        warn("no finished run has a valid eval score: the report lists the excluded runs and nothing is ranked")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LeaderboardError(f"output path '{out}' exists and is not a directory")
    doc = build_document(loaded.runs_dir, loaded.files, loaded.runs, [str(i) for i in issues],
                         loaded.skipped_files)
    labels = [label for label, _ in task_groups(doc["rows"])]
    algorithms = sorted({r["algorithm"] for r in doc["rows"]}, key=algorithm_sort_key)  # fixes colours
    # The per-step diagnostics series are plotted but not stored in the JSON: at one point per optimizer
    # step they would make it megabytes; the results files hold them.
    plots = all_plots(labels, doc["curves"], diagnostics(loaded.runs), algorithms,
                      efficiency=doc["sample_efficiency"], profiles=profile_data(doc["rows"]),
                      regime=doc["regime_map"])
    doc["figures"] = [{"id": p.id, "kind": p.kind, "task": p.task, "title": p.title} for p in plots]
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / MARKDOWN_FILE, render_markdown(doc))
        atomic_write_text(out / JSON_FILE, json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        atomic_write_text(out / HTML_FILE, render_html(doc, plots))
    except OSError as exc:
        raise LeaderboardError(f"cannot write the report to '{out}': {exc.strerror or exc}") from exc
    return doc
