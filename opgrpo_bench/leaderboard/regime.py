"""The regime map, an analysis (:class:`RegimeMap`): when does replay pay off? One task at several
training-pool sizes, a replay algorithm (default ``op-grpo``) against the reference, beside how old the
replayed prefixes are and how far their importance weights spread.

Task families
    Task ids that differ only by a ``-poolN`` part (``N`` a positive integer, the part followed by ``-``
    or the end of the id) are one task at several training-pool sizes: ``digits-number-pool20-v1``,
    ``digits-number-pool100-v1`` and ``digits-number-v1`` form the family ``digits-number-v1`` (the id
    with the pool part removed; the id without one is the full pool). Only task versions with the same
    ``task_version`` are grouped, and only ids with at most one pool part count as members (the first
    ``-poolN`` is the one removed). A family is mapped when at least two of its members have rows.

Pool size of a member
    The ``num_train_prompts`` its usable runs record in ``run_start`` (``pool_size_source =
    "num_train_prompts"``), which is what the runs actually trained on; when no run records it, or the runs
    disagree, the ``N`` of the id (``"task id"``), else unknown (null; such a member is listed but not
    plotted). ``pool_size_note`` says when a fallback was used or the id disagrees with the runs.

Per member (pool size), for the analysis's algorithm against the reference
    The steps ratio with its interval and the probability of improvement with its interval are copied from
    the leaderboard rows (:func:`opgrpo_bench.leaderboard.rows.compute_rows`), so the map and the task
    tables can never disagree. From the algorithm's usable runs' step records:

    ``replay_age_median``
        Per run, the median over its step records of ``op/replay_age_mean`` (the mean age, in
        iterations, of the prefixes that iteration replayed; records without replay carry null and are
        skipped); then the median over runs (``replay_age_runs`` runs had a value).
    ``replay_age_late_median``
        The same over the second half of each run only (step records past half the run's last step).
        The buffer starts empty, so early replays are young whatever the pool; the second half shows the
        age once the buffer has filled, which the whole-run median understates on a short run.
    ``logw_spread_median``
        Median over all step records of those runs, seeds pooled, of ``op/logw_max - op/logw_min``: the
        spread of the iteration's sequence-level log importance weights over its replayed samples (0 for
        an iteration that replays a single sample).
    ``logw_median_abs``
        Median over the same records of ``|op/logw_median|``: the size of the iteration's typical log
        weight (0 = replayed prefixes as likely under the current policy as when they were stored).
        ``logw_records`` counts the records (those with finite ``op/logw_min`` and ``op/logw_max``).

    The trainer writes an iteration's ``op/*`` values on each of its optimizer steps' records; a median
    over records is unchanged by that repetition when every iteration has the same number of steps.
"""

from __future__ import annotations

import html
import re
from collections import defaultdict
from typing import Any, Iterable

import numpy as np

from opgrpo_bench.leaderboard.analyses import Analysis
from opgrpo_bench.leaderboard.format import Table, fmt, fmt_interval, fmt_sci, ratio_text
from opgrpo_bench.leaderboard.legends import see
from opgrpo_bench.leaderboard.load import Run
from opgrpo_bench.leaderboard.outcomes import Comparison, resolve, task_label, usable, version_sort_key
from opgrpo_bench.schema import finite_or_none as _finite

DEFAULT_ALGORITHM = "op-grpo"
POOL_PART = re.compile(r"^(?P<head>.+?)-pool(?P<size>[1-9][0-9]*)(?P<tail>-.+)?$")
REPLAY_AGE_KEY = "op/replay_age_mean"
LOGW_MIN, LOGW_MEDIAN, LOGW_MAX = "op/logw_min", "op/logw_median", "op/logw_max"

# The row fields the map copies, unchanged, from the algorithm's row of each member.
ROW_FIELDS = ("speedup_vs_flow_grpo", "speedup_ci_low", "speedup_ci_high", "speedup_method", "speedup_n",
              "speedup_censored", "speedup_note", "prob_improvement", "prob_improvement_ci_low",
              "prob_improvement_ci_high", "reached")


def pool_family(task: str) -> tuple[str, int | None]:
    """The family id of a task and the pool size its id names: ``("digits-number-v1", 20)`` for
    ``digits-number-pool20-v1``, ``(task, None)`` for an id without a pool part (or with two)."""
    match = POOL_PART.match(task)
    if match is None or POOL_PART.match(match["head"] + (match["tail"] or "")) is not None:
        return task, None
    return match["head"] + (match["tail"] or ""), int(match["size"])


def _median(values: Iterable[float]) -> float | None:
    vals = list(values)
    return float(np.median(vals)) if vals else None


def pool_size(runs: list[Run], task: str) -> tuple[int | None, str | None, str]:
    """``(size, source, note)`` of one member's training pool (module docstring, "Pool size")."""
    recorded = sorted({r.start["num_train_prompts"] for r in runs
                       if isinstance(r.start.get("num_train_prompts"), int)
                       and not isinstance(r.start.get("num_train_prompts"), bool)
                       and r.start["num_train_prompts"] > 0})
    _, named = pool_family(task)
    if len(recorded) == 1:
        size = recorded[0]
        note = "" if named in (None, size) else f"the id names {named} prompts, the runs trained on {size}"
        return size, "num_train_prompts", note
    why = ("runs disagree on num_train_prompts (" + ", ".join(map(str, recorded)) + ")" if recorded
           else "no run records num_train_prompts")
    if named is not None:
        return named, "task id", f"{why}; the size is the one the id names"
    return None, None, f"{why}; the pool size is unknown"


def replay_age(runs: list[Run], late: bool = False) -> tuple[float | None, int]:
    """Median over runs of each run's median ``op/replay_age_mean``; and how many runs had a value.
    With ``late``, each run's median is over its step records past half its last step."""
    per_run = [_median(v for v in (_finite(rec.get(REPLAY_AGE_KEY)) for rec in run.steps
                                   if not late or rec["step"] > run.last_step / 2) if v is not None)
               for run in runs]
    values = [v for v in per_run if v is not None]
    return _median(values), len(values)


def logw_stats(runs: list[Run]) -> tuple[float | None, float | None, int]:
    """Median over step records (seeds pooled) of ``logw_max - logw_min`` and of ``|logw_median|``, and
    how many records had a spread."""
    spreads, sizes = [], []
    for run in runs:
        for rec in run.steps:
            low, high = _finite(rec.get(LOGW_MIN)), _finite(rec.get(LOGW_MAX))
            if low is None or high is None:
                continue
            spreads.append(high - low)
            middle = _finite(rec.get(LOGW_MEDIAN))
            if middle is not None:
                sizes.append(abs(middle))
    return _median(spreads), _median(sizes), len(spreads)


def _member(task: str, version: str, rows: dict[str, dict[str, Any]], runs: list[Run], algorithm: str,
            reference: str) -> dict[str, Any]:
    """One pool size of a family: its size, the algorithm's row statistics and the replay diagnostics."""
    size, source, note = pool_size(runs, task)
    op_row, ref_row = rows.get(algorithm), rows.get(reference)
    op_runs = [r for r in runs if r.algorithm == algorithm]
    age, age_runs = replay_age(op_runs)
    late_age, _ = replay_age(op_runs, late=True)
    spread, size_abs, records = logw_stats(op_runs)
    entry: dict[str, Any] = {
        "task": task, "task_version": version, "label": task_label(task, version),
        "pool_size": size, "pool_size_source": source, "pool_size_note": note,
        "seeds": op_row["seeds"] if op_row else 0,
        "reference_seeds": ref_row["seeds"] if ref_row else 0,
        "reference_reached": ref_row["reached"] if ref_row else None,
    }
    entry.update({k: (op_row[k] if op_row else None) for k in ROW_FIELDS})
    entry.update({"replay_age_median": age, "replay_age_late_median": late_age, "replay_age_runs": age_runs,
                  "logw_spread_median": spread,
                  "logw_median_abs": size_abs, "logw_records": records})
    return entry


def regime_map(runs: list[Run], rows: list[dict[str, Any]], algorithm: str = DEFAULT_ALGORITHM,
               cmp: Comparison | None = None) -> list[dict[str, Any]]:
    """One entry per task family with at least two mapped pool sizes, in family order; its ``pools`` in
    increasing pool size (unknown sizes last). ``rows`` are the leaderboard rows of the same runs;
    ``algorithm`` is compared with ``cmp``'s reference."""
    reference = resolve(cmp).reference
    by_task: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        if row["seeds"]:
            by_task[(row["task"], row["task_version"])][row["algorithm"]] = row
    runs_by_task: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in sorted((r for r in runs if usable(r)), key=lambda r: (r.task, r.task_version, r.algorithm,
                                                                      r.seed)):
        runs_by_task[(run.task, run.task_version)].append(run)
    families: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for task, version in by_task:
        families[(pool_family(task)[0], version)].append((task, version))
    out = []
    for family, version in sorted(families, key=lambda k: (k[0], version_sort_key(k[1]))):
        members = families[(family, version)]
        if len(members) < 2:
            continue
        pools = [_member(t, v, by_task[(t, v)], runs_by_task[(t, v)], algorithm, reference) for t, v in members]
        pools.sort(key=lambda p: (p["pool_size"] is None, p["pool_size"] or 0, p["task"]))
        out.append({"family": family, "task_version": version, "label": task_label(family, version),
                    "algorithm": algorithm, "reference_algorithm": reference,
                    "pools": pools})
    return out


NO_REGIME = "No task family has finished runs at two or more training-pool sizes yet."


def regime_heading(family: dict[str, Any]) -> str:
    return (f"{family['label']}: {family['algorithm']} against {family['reference_algorithm']} by "
            "training-pool size")


def regime_table(family: dict[str, Any]) -> Table:
    """One task family's regime map: a row per pool size."""
    body = []
    for p in family["pools"]:
        size = "?" if p["pool_size"] is None else fmt(p["pool_size"])
        if p["pool_size_source"] == "task id":
            size += " (from the id)"
        ratio = "—" if p["speedup_vs_flow_grpo"] is None else ratio_text(
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


class RegimeMap(Analysis):
    """The regime map of one replay algorithm against the reference (module docstring)."""

    section = ("regime", "Regime map: when does replay pay off?")
    document_after = "rows"
    figure_kind = "regime"

    def __init__(self, algorithm: str = DEFAULT_ALGORITHM):
        self.algorithm = algorithm
        self.algorithms = (algorithm,)

    def legend_text(self, cmp: Comparison) -> str:
        """What the section's table shows."""
        return ("When does replay pay off? One task at several training-pool sizes (task ids that differ only "
                f"by a “-poolN” part), {self.algorithm} against {cmp.reference}: the steps ratio and P(fewer "
                "steps) of the task's table, beside how old the replayed prefixes are and how far their log "
                f"importance weights spread. {see('Regime map')}.")

    def statistics(self, cmp: Comparison) -> dict[str, str]:
        return {"regime_map": see("Regime map")}

    def document(self, cmp: Comparison, runs: list[Run], rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"regime_map": regime_map(runs, rows, self.algorithm, cmp)}

    def section_markdown(self, cmp: Comparison, doc: dict[str, Any]) -> list[str]:
        lines = [f"## {self.section[1]}", "", self.legend_text(cmp), ""]
        families = doc.get("regime_map", [])
        for family in families:
            lines += [f"### {regime_heading(family)}", "", regime_table(family).markdown(), ""]
        if not families:
            lines += [f"*{NO_REGIME}*", ""]
        notes = regime_notes(families)
        lines += [f"- {note}" for note in notes]
        return lines + ([""] if notes else [])

    def section_html(self, cmp: Comparison, doc: dict[str, Any], figures: dict[str, str]) -> list[str]:
        esc = html.escape
        parts = [f'<section id="{self.section[0]}"><h2>{esc(self.section[1])}</h2>',
                 f'<p class="legend">{esc(self.legend_text(cmp))}</p>']
        families = doc.get("regime_map", [])
        for family in families:
            parts.append(f"<h3>{esc(regime_heading(family))}</h3>")
            parts.append(regime_table(family).html("regime"))
            if family["label"] in figures:
                parts.append(figures[family["label"]])
        if not families:
            parts.append(f"<p><em>{esc(NO_REGIME)}</em></p>")
        notes = regime_notes(families)
        if notes:
            parts.append('<ul class="note">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
        parts.append("</section>")
        return parts
