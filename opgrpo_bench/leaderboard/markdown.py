"""``LEADERBOARD.md``: the report as Markdown (tables and legends; the figures are in ``index.html``)."""

from __future__ import annotations

from typing import Any, Sequence

from opgrpo_bench.leaderboard.analyses import Analysis
from opgrpo_bench.leaderboard.diagnostics import declared_columns
from opgrpo_bench.leaderboard.document import excluded_text, power_by_label
from opgrpo_bench.leaderboard.legends import LOGRATIO_LEGEND, aggregate_legend, legend, robust_legend, see
from opgrpo_bench.leaderboard.outcomes import Comparison
from opgrpo_bench.leaderboard.tables import (
    EXCLUDED_NOTE,
    aggregate_table,
    diagnostics_table,
    excluded_table,
    incomplete_table,
    logratio_table,
    power_text,
    ratio_notes,
    results_table,
    task_groups,
    task_heading,
)

NOTHING_RANKED = "No finished runs with valid eval scores: there is nothing to rank yet."
DIAGNOSTICS_TITLE = "Training diagnostics"
NO_DIAGNOSTICS = "No run logs a diagnostic that its algorithm declares."
DIAGNOSTICS_LEGEND = ("Each algorithm declares the step-record keys it logs and how one run summarises them; a "
                      "column per declared key: " + see("Per row (task version × algorithm)") + ".")


def intro_legends(cmp: Comparison, analyses: Sequence[Analysis]) -> list[str]:
    """The legends above the result tables: the statistics', then each analysis's."""
    texts = [legend(cmp), robust_legend(cmp), *(a.legend(cmp) for a in analyses)]
    return [t for t in texts if t]


def render_markdown(doc: dict[str, Any], cmp: Comparison, analyses: Sequence[Analysis]) -> str:
    """The Markdown report of a leaderboard document (:func:`~.document.build_document`)."""
    rows = doc["rows"]
    lines = ["# opgrpo-bench leaderboard", "",
             f"Computed from the results files under `{doc['runs_dir']}`: {doc['files_read']} file(s) read, "
             f"{doc['runs_used']} finished run(s) used, {len(doc['incomplete_runs'])} incomplete run(s) "
             f"excluded{excluded_text(doc)}, {len(doc['skipped_files'])} file(s) skipped. Figures are in "
             "`index.html`.", ""]
    for text in intro_legends(cmp, analyses):
        lines += [text, ""]
    if not rows:
        lines += [f"*{NOTHING_RANKED}*", ""]
    power = power_by_label(doc)
    for label, group in task_groups(rows):
        lines += [f"## {task_heading(label, group)}", "", results_table(group, cmp).markdown(), ""]
        if label in power:
            lines += [power_text(power[label], cmp), ""]
        for analysis in analyses:
            lines += analysis.task_markdown(cmp, group)
    notes = [f"- {note}" for note in ratio_notes(rows, cmp, analyses)]
    if notes:
        lines += ["Notes on ratios:", "", *notes, ""]
    agg = aggregate_table(doc.get("aggregate", []), cmp)
    if agg:
        lines += ["## Across task versions (stratified bootstrap)", "", aggregate_legend(cmp), "", agg.markdown(), ""]
    for analysis in analyses:
        lines += analysis.section_markdown(cmp, doc)
    diag = diagnostics_table(rows, declared_columns((r["algorithm"] for r in rows), cmp))
    lines += [f"## {DIAGNOSTICS_TITLE} (medians over seeds of per-run summaries)", "", DIAGNOSTICS_LEGEND, ""]
    lines += [diag.markdown() if diag else f"*{NO_DIAGNOSTICS}*", ""]
    lr = logratio_table(doc.get("logratio_profiles", {}), cmp)
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
    return inert("\n".join(lines).rstrip() + "\n")


def inert(markdown: str) -> str:
    """The one escaping rule of the Markdown report: results files are data from elsewhere, and any name in
    them (task, algorithm, variant, file, warning) must render as text. The report's own text uses neither
    raw HTML nor links, so every ``&`` and ``<`` becomes an entity (no tag, comment or entity can open) and
    every link or image opener a literal bracket (no ``javascript:`` link): the text reads the same."""
    return markdown.replace("&", "&amp;").replace("<", "&lt;").replace("](", "]\\(").replace("![", "!\\[")
