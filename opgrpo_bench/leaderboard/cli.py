"""The ``opgrpo-bench leaderboard`` command (mounted by the main CLI with
``app.command("leaderboard")(leaderboard)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opgrpo_bench.leaderboard.outcomes import DEFAULT_REFERENCE

DEFAULT_OUT = "leaderboard-out"
"""The report's default directory, the same as ``opgrpo-bench run --leaderboard-out``'s (never the
committed ``leaderboard/``)."""


def _print_summary(doc: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from opgrpo_bench.leaderboard.format import fmt_median_iqr, fmt_ratio, fmt_reached
    from opgrpo_bench.leaderboard.outcomes import task_label

    table = Table(title="opgrpo-bench leaderboard", title_justify="left")
    reference = doc["statistics"]["reference_algorithm"]
    for name in ("task", "algorithm", "reached", "steps to target [IQR]", f"vs {reference} [95% CI]"):
        text = name in ("task", "algorithm")
        table.add_column(name, justify="left" if text else "right", no_wrap=text)
    for row in doc["rows"]:
        table.add_row(task_label(row["task"], row["task_version"]), row["algorithm"], fmt_reached(row),
                      fmt_median_iqr(row, "steps"), fmt_ratio(row, "speedup_"))
    from opgrpo_bench.leaderboard.report import HTML_FILE, JSON_FILE, MARKDOWN_FILE

    console = Console()
    if doc["rows"]:
        console.print(table)
    console.print(f"wrote {out / MARKDOWN_FILE}, {out / JSON_FILE}, {out / HTML_FILE}", markup=False,
                  highlight=False)


def _update_results_doc(path: Path, doc: dict) -> None:
    """Regenerate the marked tables of ``path`` from ``doc`` (atomically; the prose is left alone)."""
    from opgrpo_bench.leaderboard.load import LeaderboardError
    from opgrpo_bench.leaderboard.results_doc import ResultsDocError, update_tables
    from opgrpo_bench.storage import atomic_write_text

    try:
        text = path.read_text(encoding="utf-8")
        atomic_write_text(path, update_tables(text, doc))
    except (OSError, UnicodeDecodeError, ResultsDocError) as exc:
        raise LeaderboardError(f"--results-doc {path}: {exc}") from None


def leaderboard(
    runs_dir: Annotated[Path, typer.Argument(help="Directory searched recursively for metrics.jsonl (or packed metrics.jsonl.gz) files.")]
    = Path("runs"),
    out: Annotated[Path, typer.Option("--out", help="Directory for LEADERBOARD.md, leaderboard.json, "
                                                    "index.html (the committed leaderboard/ is never the "
                                                    "default).")] = Path(DEFAULT_OUT),
    reference: Annotated[str, typer.Option("--reference", help="The algorithm every ratio, probability of "
                                                               "improvement and paper-protocol target is "
                                                               "taken against.")] = DEFAULT_REFERENCE,
    results_doc: Annotated[Path | None, typer.Option("--results-doc", help="A Markdown file whose marked tables "
                                                     "(<!-- table: ... -->) are regenerated from this "
                                                     "leaderboard, e.g. docs/RESULTS.md.")] = None,
) -> None:
    """Rank algorithms by steps to target from results files; write Markdown, JSON and HTML reports."""
    from opgrpo_bench.errors import UserError
    from opgrpo_bench.leaderboard.load import LeaderboardError
    from opgrpo_bench.leaderboard.report import build_leaderboard
    from opgrpo_bench.validation import check_output_dir

    try:
        check_output_dir(out, "--out")
        if not reference.strip():
            raise LeaderboardError("--reference must name an algorithm")
        if results_doc is not None and not results_doc.is_file():
            raise LeaderboardError(f"--results-doc: {results_doc} is not a file")
        doc = build_leaderboard(runs_dir, out, reference=reference)
        if results_doc is not None:
            _update_results_doc(results_doc, doc)
    except (LeaderboardError, UserError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _print_summary(doc, out)
