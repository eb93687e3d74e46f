"""How the report writes numbers (cells of median [IQR], ratios with their intervals and markers,
percentages) and its tables, each rendered to Markdown and to HTML from one definition."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

from opgrpo_bench.leaderboard.outcomes import DEFAULT_REFERENCE


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


def ratio_text(ratio: float | None, low: float | None, high: float | None, method: str,
               censored: bool) -> str:
    """A ratio with its interval and markers (``*`` censored, ``†`` ratio of medians); ``—`` when None."""
    if ratio is None:
        return "—"
    if method == "reference":
        return "1 (reference)"
    marks = "*" if censored else ""
    marks += "†" if method == "ratio-of-medians" else ""
    if low is None or high is None:  # fewer than 2 seeds: no interval
        return f"{ratio:.2f}×{marks} [n/a]"
    return f"{ratio:.2f}×{marks} [{low:.2f}–{high:.2f}]"


def fmt_ratio(row: dict[str, Any], prefix: str) -> str:
    """``0.45× [0.30–0.60]`` plus markers: ``*`` censored runs involved, ``†`` not paired by seed."""
    return ratio_text(row[f"{prefix}vs_flow_grpo"], row[f"{prefix}ci_low"], row[f"{prefix}ci_high"],
                      row["speedup_method"], row["speedup_censored"])


def fmt_p(value: float | None) -> str:
    """A p-value, two significant digits (``—`` when there is none)."""
    return "—" if value is None else f"{value:.2g}"


def fmt_interval(value: float | None, low: float | None, high: float | None) -> str:
    """``0.91 [0.63–1.00]``: a point estimate and its 95% interval, two decimals (``[n/a]`` without one)."""
    if value is None:
        return "—"
    if low is None or high is None:
        return f"{value:.2f} [n/a]"
    return f"{value:.2f} [{low:.2f}–{high:.2f}]"


def fmt_prob(row: dict[str, Any], reference: str = DEFAULT_REFERENCE) -> str:
    """The probability of improvement over the reference and its interval (the reference row: 0.5); also
    for an ``aggregate`` entry."""
    if row["algorithm"] == reference and row["prob_improvement"] is not None:
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
