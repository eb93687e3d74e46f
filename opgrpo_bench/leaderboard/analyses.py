"""Analyses that plug into the leaderboard: comparisons beyond the per-row statistics, each contributing
row fields, ``leaderboard.json`` entries and report sections through one interface (:class:`Analysis`).

The report iterates over :data:`ANALYSES` (in order) at each of its hooks; an analysis leaves alone the
hooks it does not need. The built-in ones are the paper protocol and the paper's reported numbers
(:class:`~opgrpo_bench.leaderboard.paper.PaperProtocol`) and the regime map
(:class:`~opgrpo_bench.leaderboard.regime.RegimeMap`). Neither the rows nor the report name an algorithm:
the reference comes from :class:`~opgrpo_bench.leaderboard.outcomes.Comparison` (``--reference``), and the
algorithms an analysis compares are its own parameters (:attr:`Analysis.algorithms`; they are listed
right after the reference in every table).
"""

from __future__ import annotations

from typing import Any, Sequence

from opgrpo_bench.leaderboard.load import Run
from opgrpo_bench.leaderboard.outcomes import DEFAULT_REFERENCE, Comparison, Outcome

Row = dict[str, Any]


class Analysis:
    """One analysis; every hook has a default that contributes nothing.

    Placement in ``leaderboard.json``: the entries of :meth:`document` go right after the top-level key
    :attr:`document_after` and those of :meth:`statistics` right after :attr:`statistics_after` in the
    ``statistics`` block (None: at the end), so the file's layout does not depend on registry order.
    """

    algorithms: tuple[str, ...] = ()
    """Algorithms this analysis compares with the reference (listed right after it in the tables)."""
    section: tuple[str, str] | None = None
    """``(html id, title)`` of the analysis's own report section (its entry in the page's contents)."""
    figure_kind: str | None = None
    """The kind of figure (:class:`~opgrpo_bench.leaderboard.plots.Plot`) its section shows, if any."""
    document_after: str | None = None
    statistics_after: str | None = None

    def statistics(self, cmp: Comparison) -> dict[str, str]:
        """Definitions for the ``statistics`` block of ``leaderboard.json``."""
        return {}

    def row_fields(self, cmp: Comparison, algorithm: str, outs: list[Outcome],
                   ref: list[Outcome]) -> Row:
        """Fields added to one row (``outs``: its outcomes; ``ref``: the reference row's)."""
        return {}

    def document(self, cmp: Comparison, runs: list[Run], rows: list[Row]) -> dict[str, Any]:
        """Top-level entries of ``leaderboard.json``."""
        return {}

    def legend(self, cmp: Comparison) -> str | None:
        """A paragraph for the legends above the result tables."""
        return None

    def row_notes(self, cmp: Comparison, row: Row) -> list[str]:
        """Notes on a row's ratios (why one is missing or approximate)."""
        return []

    def task_markdown(self, cmp: Comparison, rows: list[Row]) -> list[str]:
        """Markdown lines after a task version's result table (``rows``: its rows)."""
        return []

    def task_html(self, cmp: Comparison, rows: list[Row]) -> list[str]:
        """HTML parts after a task version's result table."""
        return []

    def section_markdown(self, cmp: Comparison, doc: dict[str, Any]) -> list[str]:
        """The analysis's own Markdown section (after the result tables)."""
        return []

    def section_html(self, cmp: Comparison, doc: dict[str, Any], figures: dict[str, str]) -> list[str]:
        """The analysis's own HTML section; ``figures`` maps a figure's task label to its ``<figure>``
        for the figures of kind :attr:`figure_kind`."""
        return []


def default_analyses() -> tuple[Analysis, ...]:
    """The analyses the leaderboard runs: the regime map of ``op-grpo`` and the paper protocol with the
    paper's reported numbers."""
    from opgrpo_bench.leaderboard.paper import PaperProtocol
    from opgrpo_bench.leaderboard.regime import RegimeMap

    return (RegimeMap(algorithm="op-grpo"), PaperProtocol())


def comparison(reference: str = DEFAULT_REFERENCE, analyses: Sequence[Analysis] | None = None) -> Comparison:
    """The :class:`Comparison` of a leaderboard against ``reference`` with these analyses (default:
    :func:`default_analyses`)."""
    featured = tuple(a for analysis in (default_analyses() if analyses is None else analyses)
                     for a in analysis.algorithms)
    return Comparison(reference, tuple(dict.fromkeys(featured)))


def default_comparison() -> Comparison:
    """The comparison of the default leaderboard: ``flow-grpo`` as the reference, the default analyses."""
    return comparison()


def insert_after(entries: dict[str, Any], after: str | None, new: dict[str, Any]) -> dict[str, Any]:
    """``entries`` with ``new`` inserted right after the key ``after`` (at the end when it is None or
    absent); a new dict, insertion order being the order of ``leaderboard.json``."""
    if after is None or after not in entries:
        return {**entries, **new}
    out: dict[str, Any] = {}
    for key, value in entries.items():
        out[key] = value
        if key == after:
            out.update(new)
    return out
