"""Tables of a results document (``docs/RESULTS.md``) generated from a leaderboard's JSON, so that the prose
around them can never quote a table that the committed results do not give.

A document marks each generated table with a pair of HTML comments that Markdown renderers hide::

    <!-- table: results task=digits-v1 -->
    ... (replaced) ...
    <!-- end table -->

Kinds: ``results task=LABEL [algorithms=a,b,...]`` (a task version's rows: seeds, targets reached, steps to
target, the steps ratio against the reference with its interval and Wilcoxon p, the NFE ratio, the
probability of improvement and the AUC), ``aggregate`` (statistics pooled over task versions) and
``power`` (the per-task power analysis). :func:`update_tables` fills every marked table;
``opgrpo-bench leaderboard ... --results-doc FILE`` rewrites the file, and a test checks that the committed
document equals its regeneration from the committed leaderboard.
"""

from __future__ import annotations

import re
from typing import Any

from opgrpo_bench.leaderboard.format import (
    Table,
    fmt,
    fmt_auc,
    fmt_median_iqr,
    fmt_p,
    fmt_prob,
    fmt_ratio,
    fmt_reached,
    ratio_text,
)
from opgrpo_bench.leaderboard.markdown import inert
from opgrpo_bench.leaderboard.outcomes import task_label
from opgrpo_bench.leaderboard.robust import POWER_RATIOS

MARKER = re.compile(r"(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


class ResultsDocError(ValueError):
    """A table marker that names an unknown kind, task or algorithm."""


def _options(spec: str) -> tuple[str, dict[str, str]]:
    kind, *rest = spec.split()
    options = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep:
            raise ResultsDocError(f"table marker '{spec}': expected key=value, got '{item}'")
        options[key] = value
    return kind, options


def results_table(doc: dict[str, Any], task: str, algorithms: list[str] | None = None) -> Table:
    """The rows of task version ``task`` (its label, e.g. ``digits-v1``), in leaderboard order."""
    reference = doc["statistics"]["reference_algorithm"]
    rows = [r for r in doc["rows"] if task_label(r["task"], r["task_version"]) == task]
    if not rows:
        raise ResultsDocError(f"the leaderboard has no rows for task '{task}'")
    if algorithms:
        missing = sorted(set(algorithms) - {r["algorithm"] for r in rows})
        if missing:
            raise ResultsDocError(f"the leaderboard has no rows for {', '.join(missing)} on task '{task}'")
        rows = [r for r in rows if r["algorithm"] in algorithms]
    body = [[r["algorithm"], fmt(r["seeds"]), fmt_reached(r), fmt_median_iqr(r, "steps"), fmt_ratio(r, "speedup_"),
             fmt_p(r.get("speedup_wilcoxon_p")), fmt_ratio(r, "speedup_nfe_"), fmt_prob(r, reference), fmt_auc(r)]
            for r in rows]
    return Table(["algorithm", "seeds", "reached", "steps to target [IQR]", f"steps vs {reference} [95% CI]",
                  "Wilcoxon p", "NFE ratio [95% CI]", f"P(fewer steps than {reference}) [95% CI]", "AUC IQM [95% CI]"],
                 body, numeric={1, 3, 4, 5, 6, 7, 8})


def aggregate_table(doc: dict[str, Any]) -> Table:
    """Statistics pooled over task versions (stratified by task version)."""
    reference = doc["statistics"]["reference_algorithm"]
    body = [[e["algorithm"], ", ".join(e["tasks"]), fmt(e["seeds"]),
             ratio_text(e["speedup_vs_flow_grpo"], e["speedup_ci_low"], e["speedup_ci_high"], e["speedup_method"],
                        e["speedup_censored"]), fmt_p(e.get("speedup_wilcoxon_p")), fmt_prob(e, reference)]
            for e in doc["aggregate"]]
    return Table(["algorithm", "task versions", "seeds", f"steps vs {reference} [95% CI]", "Wilcoxon p",
                  f"P(fewer steps than {reference}) [95% CI]"], body, numeric={2, 3, 4, 5})


def power_table(doc: dict[str, Any]) -> Table:
    """Per task version: the sd of the per-seed log steps ratio and the seeds a paired t-test needs."""
    body = []
    for t in doc["tasks"]:
        power = t["power"]
        body.append([t["label"], fmt(power.get("sd_log_ratio")), fmt(power.get("df")),
                     *(fmt(power.get(f"seeds_for_ratio_{r:g}")) for r in POWER_RATIOS)])
    return Table(["task", "sd of log steps ratio", "df", *(f"seeds for a true {r:g}" for r in POWER_RATIOS)],
                 body, numeric=set(range(1, 3 + len(POWER_RATIOS))))


def render(spec: str, doc: dict[str, Any]) -> str:
    """The Markdown of one marked table."""
    kind, options = _options(spec)
    if kind == "results":
        if "task" not in options:
            raise ResultsDocError(f"table marker '{spec}' needs task=LABEL")
        algorithms = options["algorithms"].split(",") if options.get("algorithms") else None
        return inert(results_table(doc, options["task"], algorithms).markdown())
    if kind == "aggregate":
        return inert(aggregate_table(doc).markdown())
    if kind == "power":
        return inert(power_table(doc).markdown())
    raise ResultsDocError(f"table marker '{spec}': unknown kind '{kind}' (results, aggregate, power)")


def update_tables(text: str, doc: dict[str, Any]) -> str:
    """``text`` with every marked table replaced by its rendering from ``doc`` (a leaderboard's JSON)."""
    return MARKER.sub(lambda m: f"{m.group(1)}{render(m.group('spec'), doc)}\n{m.group(4)}", text)
