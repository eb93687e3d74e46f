"""The leaderboard report: ``LEADERBOARD.md``, ``leaderboard.json`` and a self-contained ``index.html``.

:func:`build_leaderboard` is the whole pipeline: read the results files (:mod:`.load`), compute the rows
(:mod:`.rows`) and the analyses (:mod:`.analyses`), render the figures (:mod:`.plots`) and write the three
files (:mod:`.document`, :mod:`.markdown`, :mod:`.page`) atomically (temporary file, then rename; an
existing report is replaced only once the new file is complete). The output depends only on the input
files, the reference algorithm and the runs directory as it was named (file paths are shown relative to
it): no timestamps or unseeded randomness leak into it, so the same input gives byte-identical files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from opgrpo_bench.leaderboard.analyses import Analysis, comparison, default_analyses
from opgrpo_bench.leaderboard.diagnostics import diagnostics
from opgrpo_bench.leaderboard.document import build_document, profile_data
from opgrpo_bench.leaderboard.load import Issue, LeaderboardError, load_runs
from opgrpo_bench.leaderboard.markdown import render_markdown
from opgrpo_bench.leaderboard.outcomes import DEFAULT_REFERENCE, exclusion_reason, usable
from opgrpo_bench.leaderboard.page import render_html
from opgrpo_bench.leaderboard.plots import all_plots
from opgrpo_bench.leaderboard.tables import task_groups
from opgrpo_bench.storage import atomic_write_texts

MARKDOWN_FILE, JSON_FILE, HTML_FILE = "LEADERBOARD.md", "leaderboard.json", "index.html"

Warn = Callable[[str], None]


def default_warn(message: str) -> None:
    """Print a warning to stderr with rich (markup in file names is escaped, not interpreted)."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[yellow]warning:[/yellow] {escape(message)}")


def build_leaderboard(runs_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      warn: Warn | None = None, reference: str = DEFAULT_REFERENCE,
                      analyses: Sequence[Analysis] | None = None) -> dict[str, Any]:
    """Read every results file under ``runs_dir`` and write the report into ``out_dir``.

    ``reference``: the algorithm every ratio is taken against; ``analyses``: the analyses the report runs
    (default :func:`~.analyses.default_analyses`).

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
    if reference not in {r.algorithm for r in loaded.runs}:
        warn(f"no runs of the reference algorithm '{reference}': every ratio against it is n/a")
    if not any(r.finished for r in loaded.runs):
        warn("no finished runs yet: the report lists only the incomplete ones")
    elif not any(usable(r) for r in loaded.runs):
        warn("no finished run has a valid eval score: the report lists the excluded runs and nothing is ranked")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LeaderboardError(f"output path '{out}' exists and is not a directory")
    analyses = default_analyses() if analyses is None else tuple(analyses)
    cmp = comparison(reference, analyses)
    doc = build_document(loaded.runs_dir, loaded.files, loaded.runs, [str(i) for i in issues],
                         loaded.skipped_files, cmp, analyses)
    labels = [label for label, _ in task_groups(doc["rows"])]
    algorithms = sorted({r["algorithm"] for r in doc["rows"]}, key=cmp.algorithm_key)  # fixes colours
    # The per-step diagnostics series are plotted but not stored in the JSON: at one point per optimizer
    # step they would make it megabytes; the results files hold them.
    plots = all_plots(labels, doc["curves"], diagnostics(loaded.runs, cmp), algorithms,
                      efficiency=doc["sample_efficiency"], profiles=profile_data(doc["rows"]),
                      regime=doc.get("regime_map", []))
    doc["figures"] = [{"id": p.id, "kind": p.kind, "task": p.task, "title": p.title} for p in plots]
    try:
        out.mkdir(parents=True, exist_ok=True)
        # the three files are one report: all written and synced before any replaces its old version
        atomic_write_texts({
            out / MARKDOWN_FILE: render_markdown(doc, cmp, analyses),
            out / JSON_FILE: json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
            out / HTML_FILE: render_html(doc, plots, cmp, analyses),
        })
    except OSError as exc:
        raise LeaderboardError(f"cannot write the report to '{out}': {exc.strerror or exc}") from exc
    return doc
