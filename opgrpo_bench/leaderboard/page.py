"""``index.html``: the report as one self-contained page (inline CSS, figures as base64 PNGs, no links off
the page). A few lines of inline script check, once the page has loaded, that every figure decoded: they
set ``data-plots-loaded`` on ``<body>`` and log a console error for a broken figure, which is what the
browser test looks at."""

from __future__ import annotations

import base64
import html
from typing import Any, Sequence

from opgrpo_bench.leaderboard.analyses import Analysis
from opgrpo_bench.leaderboard.diagnostics import declared_columns
from opgrpo_bench.leaderboard.document import excluded_text, power_by_label
from opgrpo_bench.leaderboard.legends import EFFICIENCY_LEGEND, aggregate_legend
from opgrpo_bench.leaderboard.markdown import (
    DIAGNOSTICS_LEGEND,
    DIAGNOSTICS_TITLE,
    NO_DIAGNOSTICS,
    NOTHING_RANKED,
    intro_legends,
)
from opgrpo_bench.leaderboard.outcomes import Comparison
from opgrpo_bench.leaderboard.plots import Plot
from opgrpo_bench.leaderboard.tables import (
    EXCLUDED_NOTE,
    aggregate_table,
    diagnostics_table,
    excluded_table,
    incomplete_table,
    power_text,
    ratio_notes,
    results_table,
    task_groups,
    task_heading,
)

ROBUST_KINDS = ("efficiency", "profile")
DIAGNOSTIC_KINDS = ("logratio", "clipfrac", "logw")

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


def figure_html(plot: Plot) -> str:
    """A figure as an ``<img>`` with its PNG inline (base64) and its caption."""
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure id="fig-{html.escape(plot.id)}"><img class="plot" id="{html.escape(plot.id)}" '
            f'data-kind="{plot.kind}" alt="{html.escape(plot.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{html.escape(plot.title)}.</b> {html.escape(plot.caption)}</figcaption></figure>")


def render_html(doc: dict[str, Any], plots: list[Plot], cmp: Comparison, analyses: Sequence[Analysis]) -> str:
    """The self-contained HTML page of a leaderboard document, with its figures."""
    rows = doc["rows"]
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>opgrpo-bench leaderboard</title>", f"<style>{_CSS}</style></head>",
             f'<body data-plots="{len(plots)}">', "<h1>opgrpo-bench leaderboard</h1>",
             f'<p class="note">Computed from the results files under <code>{esc(doc["runs_dir"])}</code>: '
             f'{doc["files_read"]} file(s) read, {doc["runs_used"]} finished run(s) used, '
             f'{len(doc["incomplete_runs"])} incomplete run(s) excluded{esc(excluded_text(doc))}, '
             f'{len(doc["skipped_files"])} file(s) skipped.</p>']
    sections = [("results", "Measured results"), *(a.section for a in analyses if a.section),
                ("curves", "Eval-score curves"), ("efficiency", "Sample efficiency and performance profiles"),
                ("diagnostics", DIAGNOSTICS_TITLE)]
    if doc["incomplete_runs"]:
        sections.append(("incomplete", "Incomplete runs"))
    if doc.get("excluded_runs"):
        sections.append(("excluded", "Runs without a valid eval score"))
    if doc["warnings"]:
        sections.append(("warnings", "Input warnings"))
    toc = [f'<li><a href="#{anchor}">{esc(title)}</a></li>' for anchor, title in sections]
    parts.append(f"<nav><ul>{''.join(toc)}</ul></nav>")

    parts.append('<section id="results"><h2>Measured results</h2>')
    parts += [f'<p class="legend">{esc(text)}</p>' for text in intro_legends(cmp, analyses)]
    if not rows:
        parts.append(f"<p><em>{esc(NOTHING_RANKED)}</em></p>")
    power = power_by_label(doc)
    for label, group in task_groups(rows):
        parts.append(f"<h3>{esc(task_heading(label, group))}</h3>")
        parts.append(results_table(group, cmp).html("results"))
        if label in power:
            parts.append(f'<p class="note power">{esc(power_text(power[label], cmp))}</p>')
        for analysis in analyses:
            parts += analysis.task_html(cmp, group)
    notes = ratio_notes(rows, cmp, analyses)
    if notes:
        parts.append('<ul class="note">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    agg = aggregate_table(doc.get("aggregate", []), cmp)
    if agg:
        parts.append("<h3>Across task versions (stratified bootstrap)</h3>")
        parts.append(f'<p class="legend">{esc(aggregate_legend(cmp))}</p>')
        parts.append(agg.html("aggregate"))
    parts.append("</section>")

    for analysis in analyses:
        figures = {p.task: figure_html(p) for p in plots if p.kind == analysis.figure_kind}
        parts += analysis.section_html(cmp, doc, figures)

    by_kind = [p for p in plots if p.kind == "curve"]
    parts.append('<section id="curves"><h2>Eval-score curves</h2>')
    parts += [figure_html(p) for p in by_kind] or ["<p><em>No eval records.</em></p>"]
    parts.append("</section>")

    parts.append('<section id="efficiency"><h2>Sample efficiency and performance profiles</h2>')
    parts.append(f'<p class="legend">{esc(EFFICIENCY_LEGEND)}</p>')
    robust = [p for p in plots if p.kind in ROBUST_KINDS]
    parts += [figure_html(p) for p in robust] or ["<p><em>No normalisable eval records.</em></p>"]
    parts.append("</section>")

    parts.append(f'<section id="diagnostics"><h2>{esc(DIAGNOSTICS_TITLE)}</h2>')
    parts.append(f'<p class="legend">{esc(DIAGNOSTICS_LEGEND)}</p>')
    diag = diagnostics_table(rows, declared_columns((r["algorithm"] for r in rows), cmp))
    parts.append(diag.html("diagnostics") if diag else f"<p><em>{esc(NO_DIAGNOSTICS)}</em></p>")
    parts += [figure_html(p) for p in plots if p.kind in DIAGNOSTIC_KINDS]
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
