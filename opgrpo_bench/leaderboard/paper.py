"""The paper protocol, an analysis (:class:`PaperProtocol`): the comparison the OP-GRPO paper (arXiv
2604.04142) reports, and the numbers it reports, shown beside the measured rows.

Protocol
    Every row is re-timed to the reference's median final score instead of the task's target
    (:func:`paper_fields`; definition in docs/STATISTICS.md, "Paper protocol").

Reported numbers
    These are *reported, not measured here*: they come from the paper's main text (ALGORITHMS.md
    sections 3 and 4) on SD3.5-M and Wan2.1, while this benchmark's tasks are other (usually much smaller)
    setups. Each entry names the measured field it is most comparable to (``compare_algorithm`` /
    ``compare_field`` of a leaderboard row), so the report can put both side by side without pretending
    they are the same quantity.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from opgrpo_bench.leaderboard.analyses import Analysis
from opgrpo_bench.leaderboard.format import Table, fmt, fmt_median_iqr, fmt_pct, fmt_ratio, ratio_text
from opgrpo_bench.leaderboard.legends import see
from opgrpo_bench.leaderboard.load import Run
from opgrpo_bench.leaderboard.outcomes import Comparison, Outcome, outcome, summarize, task_label
from opgrpo_bench.leaderboard.speedup import Speedup, row_speedup

PAPER_BASELINE = "flow-grpo"
"""The algorithm the paper times OP-GRPO against (how the report names the reference when it is this one)."""
PAPER_METRICS = ("steps", "samples", "wall_s")
SOURCE = "reported in arXiv 2604.04142, not measured here"

PAPER_REFERENCE: tuple[dict[str, Any], ...] = (
    {
        "id": "sd35m-geneval-flow-grpo-best",
        "model": "SD3.5-M", "setting": "GenEval",
        "quantity": "Flow-GRPO best score (the score OP-GRPO is timed to reach)",
        "value": 0.95, "display": "0.95",
        "compare_algorithm": None, "compare_field": None,
    },
    {
        "id": "sd35m-ocr-flow-grpo-best",
        "model": "SD3.5-M", "setting": "OCR",
        "quantity": "Flow-GRPO best score (the score OP-GRPO is timed to reach)",
        "value": 0.92, "display": "0.92",
        "compare_algorithm": None, "compare_field": None,
    },
    {
        "id": "sd35m-pickscore-flow-grpo-best",
        "model": "SD3.5-M", "setting": "PickScore",
        "quantity": "Flow-GRPO best score (the score OP-GRPO is timed to reach)",
        "value": 23.32, "display": "23.32",
        "compare_algorithm": None, "compare_field": None,
    },
    {
        "id": "sd35m-op-grpo-steps-fraction",
        "model": "SD3.5-M", "setting": "average over GenEval, OCR, PickScore",
        "quantity": "OP-GRPO steps to reach Flow-GRPO's best score, as a fraction of Flow-GRPO's steps",
        "value": 0.342, "display": "34.2% (ratio 0.342)",
        "compare_algorithm": "op-grpo", "compare_field": "paper_speedup",
    },
    {
        "id": "wan21-video-ocr-time-fraction",
        "model": "Wan2.1", "setting": "video OCR",
        "quantity": "OP-GRPO training time to reach Flow-GRPO's best score, as a fraction of Flow-GRPO's",
        "value": 0.301, "display": "30.1% (ratio 0.301)",
        "compare_algorithm": "op-grpo", "compare_field": "speedup_wall_s_vs_flow_grpo",
    },
    {
        "id": "sd35m-replay-5pct-speed-gain",
        "model": "SD3.5-M", "setting": "ablation: replay proportion 5%",
        "quantity": "speed gain over Flow-GRPO with replay proportion 5% (op-grpo-rho5)",
        "value": 0.231, "display": "only 23.1%",
        "compare_algorithm": "op-grpo-rho5", "compare_field": "speedup_vs_flow_grpo",
    },
    {
        "id": "sd35m-offpolicy-clip-sequence",
        "model": "SD3.5-M", "setting": "sequence-level importance correction",
        "quantity": "fraction of off-policy samples clipped (op-grpo)",
        "value": 0.118, "display": "11.8%",
        "compare_algorithm": "op-grpo", "compare_field": "clipfrac_off_policy",
    },
    {
        "id": "sd35m-offpolicy-clip-naive",
        "model": "SD3.5-M", "setting": "naive per-step importance ratio",
        "quantity": "fraction of off-policy samples clipped (op-grpo-naive-is)",
        "value": 0.40, "display": "> 40%",
        "compare_algorithm": "op-grpo-naive-is", "compare_field": "clipfrac_off_policy",
    },
)


def paper_reference() -> list[dict[str, Any]]:
    """The reported numbers as JSON-ready dicts, each labelled with its source."""
    return [{**entry, "source": SOURCE, "measured_here": False} for entry in PAPER_REFERENCE]


def paper_target(ref: list[Outcome]) -> float | None:
    """The paper protocol's target: median over the finished reference runs of their final eval score."""
    finals = [o.final_score for o in ref if o.final_score is not None]
    return float(np.median(finals)) if finals else None


def paper_fields(algorithm: str, outs: list[Outcome], ref: list[Outcome], target: float | None,
                 cmp: Comparison = Comparison()) -> dict[str, Any]:
    """A row's ``paper_*`` values: ``outs`` and ``ref`` re-timed to ``target`` (None: protocol n/a)."""
    if target is not None:
        outs = [outcome(o.run, target) for o in outs]
        ref = [outcome(o.run, target) for o in ref]
        sp = row_speedup(algorithm, outs, ref, "steps", cmp)
    else:
        outs = ref = []
        sp = Speedup(None, None, None, "none", 0, False,
                     f"paper protocol n/a: no finished {cmp.reference} run with an eval score")
    n, reached = len(outs), sum(o.reached for o in outs)
    fields: dict[str, Any] = {"paper_target": target, "paper_reached": reached if n else None,
                              "paper_censored": n - reached if n else None,
                              "paper_reached_fraction": reached / n if n else None}
    for metric in PAPER_METRICS:
        s = summarize((o.to_target[metric], o.censored) for o in outs)
        fields.update({f"paper_{metric}_median": s["median"], f"paper_{metric}_q25": s["q25"],
                       f"paper_{metric}_q75": s["q75"], f"paper_{metric}_median_censored": s["median_censored"]})
    fields.update({"paper_speedup": sp.ratio, "paper_speedup_ci_low": sp.low, "paper_speedup_ci_high": sp.high,
                   "paper_speedup_method": sp.method, "paper_speedup_n": sp.n,
                   "paper_speedup_censored": sp.censored, "paper_speedup_note": sp.note})
    return fields


def fmt_paper_ratio(row: dict[str, Any]) -> str:
    """The paper-protocol steps ratio, formatted like :func:`~.format.fmt_ratio`."""
    return ratio_text(row["paper_speedup"], row["paper_speedup_ci_low"], row["paper_speedup_ci_high"],
                      row["paper_speedup_method"], row["paper_speedup_censored"])


def _title(cmp: Comparison) -> str:
    """How the tables name the reference: as the paper does when it is the paper's baseline."""
    return "Flow-GRPO" if cmp.reference == PAPER_BASELINE else cmp.reference


def paper_protocol_heading(rows: list[dict[str, Any]], cmp: Comparison = Comparison()) -> str:
    """The heading of a task's paper-protocol section (its target, or why the protocol is n/a)."""
    target = next((r["paper_target"] for r in rows if r["paper_target"] is not None), None)
    if target is None:
        return (f"Paper protocol: n/a (no finished {cmp.reference} run with an eval score on this "
                "task version)")
    return f"Paper protocol: steps to reach {_title(cmp)}'s final score ({target:.3f})"


def paper_protocol_table(rows: list[dict[str, Any]], cmp: Comparison = Comparison()) -> Table:
    columns = ["Algorithm", "Seeds", f"Reached {_title(cmp)}'s final score", "Steps, median [IQR]",
               "Samples", "Wall-clock (s)", f"Steps vs {cmp.reference} [95% CI]"]
    body = []
    for row in rows:
        reached = "—" if row["paper_reached"] is None else f"{row['paper_reached']}/{row['seeds']}"
        if row["paper_censored"]:
            reached += f" ({row['paper_censored']} censored)"
        body.append([row["algorithm"], fmt(row["seeds"]), reached,
                     *(fmt_median_iqr(row, m, "paper_{}") for m in PAPER_METRICS), fmt_paper_ratio(row)])
    return Table(columns, body, numeric=set(range(1, len(columns))) - {2})


def _measured(rows: list[dict[str, Any]], algorithm: str | None, field: str | None, cmp: Comparison) -> str:
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
                         f"{cmp.reference}'s final score {row['paper_target']:.3f})")
        elif field.startswith("speedup"):
            prefix = field.removesuffix("vs_flow_grpo")
            parts.append(f"{label}: {fmt_ratio(row, prefix)}")
        else:
            parts.append(f"{label}: {fmt_pct(row[field])}")
    return "; ".join(parts) if parts else f"not measured ({algorithm} has no finished runs with this field)"


def paper_table(rows: list[dict[str, Any]], reference: list[dict[str, Any]], cmp: Comparison = Comparison()) -> Table:
    columns = ["Model", "Setting", "Quantity", "Reported (paper)", "Measured here (this benchmark's tasks)"]
    body = [[e["model"], e["setting"], e["quantity"], e["display"],
             _measured(rows, e["compare_algorithm"], e["compare_field"], cmp)] for e in reference]
    return Table(columns, body, numeric=set())


PAPER_NOTE = ("Numbers the OP-GRPO paper reports for SD3.5-M and Wan2.1, beside the closest quantity measured "
              "by this benchmark. The setups differ (models, tasks, targets, budgets): read them side by "
              "side, not as a reproduction.")


class PaperProtocol(Analysis):
    """The paper protocol (``paper_*`` row fields and a table per task version) and the paper's reported
    numbers beside their measured counterparts (``paper_reference`` and its section)."""

    section = ("paper", "Paper reference")
    document_after = "aggregate"

    def legend(self, cmp: Comparison) -> str:
        return ("Paper protocol (the comparison arXiv 2604.04142 reports, a second table per task): every "
                f"algorithm, {cmp.reference} included, is timed to first reach {cmp.reference}'s median final "
                f"score instead of the task's target. {see('Paper protocol')}.")

    def statistics(self, cmp: Comparison) -> dict[str, str]:
        return {"paper_protocol": see("Paper protocol")}

    def row_fields(self, cmp: Comparison, algorithm: str, outs: list[Outcome],
                   ref: list[Outcome]) -> dict[str, Any]:
        return paper_fields(algorithm, outs, ref, paper_target(ref), cmp)

    def document(self, cmp: Comparison, runs: list[Run], rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"paper_reference": paper_reference()}

    def row_notes(self, cmp: Comparison, row: dict[str, Any]) -> list[str]:
        text = row["paper_speedup_note"]
        if not text or text == row["speedup_note"]:
            return []
        return [text if text.startswith("paper protocol") else "paper protocol: " + text]

    def task_markdown(self, cmp: Comparison, rows: list[dict[str, Any]]) -> list[str]:
        lines = [f"### {paper_protocol_heading(rows, cmp)}", ""]
        if any(r["paper_target"] is not None for r in rows):
            lines += [paper_protocol_table(rows, cmp).markdown(), ""]
        return lines

    def task_html(self, cmp: Comparison, rows: list[dict[str, Any]]) -> list[str]:
        parts = [f'<h4 class="paper-protocol">{html.escape(paper_protocol_heading(rows, cmp))}</h4>']
        if any(r["paper_target"] is not None for r in rows):
            parts.append(paper_protocol_table(rows, cmp).html("paper-protocol"))
        return parts

    def section_markdown(self, cmp: Comparison, doc: dict[str, Any]) -> list[str]:
        return [f"## Paper reference ({SOURCE})", "", PAPER_NOTE, "",
                paper_table(doc["rows"], doc["paper_reference"], cmp).markdown(), ""]

    def section_html(self, cmp: Comparison, doc: dict[str, Any], figures: dict[str, str]) -> list[str]:
        return ['<section id="paper" class="paper">',
                f'<h2>Paper reference <span class="badge">{html.escape(SOURCE)}</span></h2>',
                f'<p class="note">{PAPER_NOTE}</p>',
                paper_table(doc["rows"], doc["paper_reference"], cmp).html("paper-table"), "</section>"]
