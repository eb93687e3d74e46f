"""A leaderboard that knows no algorithm: the reference is a parameter, the diagnostics columns come from
the algorithms' own declarations, and analyses plug in through one interface."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from opgrpo_bench.algorithms.base import Diagnostic
from opgrpo_bench.algorithms.flow_grpo import FlowGRPO
from opgrpo_bench.leaderboard import build_leaderboard
from opgrpo_bench.leaderboard.analyses import Analysis, comparison, default_analyses
from opgrpo_bench.leaderboard.load import load_runs
from opgrpo_bench.leaderboard.outcomes import Comparison
from opgrpo_bench.leaderboard.rows import compute_rows
from opgrpo_bench.registry import ALGORITHMS

from lb_synth import write_run


def rows_by_algorithm(runs: Path, cmp: Comparison | None = None) -> dict[str, dict[str, Any]]:
    return {r["algorithm"]: r for r in compute_rows(load_runs(runs).runs, cmp)}


def test_the_reference_is_a_parameter(suite: Path) -> None:
    default = rows_by_algorithm(suite)
    swapped = rows_by_algorithm(suite, comparison("op-grpo"))
    assert swapped["op-grpo"]["speedup_method"] == "reference" and swapped["op-grpo"]["prob_improvement"] == 0.5
    assert default["op-grpo"]["speedup_method"] == "paired"
    # flow-grpo seeds 0-3: 40, 60, 50, 100 (censored); op-grpo: 20, 30, 20, 50 -> per-seed ratios 2 each
    assert swapped["flow-grpo"]["speedup_vs_flow_grpo"] == pytest.approx(2.0)
    assert default["op-grpo"]["speedup_vs_flow_grpo"] == pytest.approx(0.5)
    assert swapped["flow-grpo"]["prob_improvement"] == pytest.approx(1 - default["op-grpo"]["prob_improvement"])
    # the paper protocol times every row to the reference's median final score
    assert swapped["op-grpo"]["paper_target"] != default["op-grpo"]["paper_target"]
    order = [r["algorithm"] for r in compute_rows(load_runs(suite).runs, Comparison("op-grpo-no-replay"))]
    assert order[0] == "op-grpo-no-replay"


def test_reference_option_names_the_reference_everywhere(suite: Path, tmp_path: Path) -> None:
    doc = build_leaderboard(suite, tmp_path / "out", warn=lambda _: None, reference="op-grpo")
    assert doc["statistics"]["reference_algorithm"] == "op-grpo"
    assert [r["algorithm"] for r in doc["rows"]][0] == "op-grpo"
    md = (tmp_path / "out" / "LEADERBOARD.md").read_text()
    assert "Steps vs op-grpo [95% CI]" in md and "Steps vs flow-grpo" not in md
    assert "Paper protocol: steps to reach op-grpo's final score" in md


def test_reference_option_on_the_command_line(suite: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from opgrpo_bench.leaderboard.cli import leaderboard

    app = typer.Typer()
    app.command("leaderboard")(leaderboard)
    app.command("other")(lambda: None)  # sub-command mode, as in the real CLI
    run = CliRunner().invoke(app, ["leaderboard", str(suite), "--out", str(tmp_path / "a"),
                                   "--reference", "op-grpo"])
    assert run.exit_code == 0, run.output
    doc = json.loads((tmp_path / "a" / "leaderboard.json").read_text())
    assert doc["statistics"]["reference_algorithm"] == "op-grpo" and "op-grpo" in run.stdout
    missing = CliRunner().invoke(app, ["leaderboard", str(suite), "--out", str(tmp_path / "b"), "--reference", "x"])
    assert missing.exit_code == 0 and "no runs of the reference algorithm 'x'" in missing.stderr
    empty = CliRunner().invoke(app, ["leaderboard", str(suite), "--out", str(tmp_path / "c"), "--reference", " "])
    assert empty.exit_code == 2 and empty.stderr.strip() == "error: --reference must name an algorithm"


@pytest.fixture
def replay_algorithm(monkeypatch: pytest.MonkeyPatch) -> str:
    """A new replay algorithm, registered for the test only, that declares a diagnostic of its own."""

    class ReplayX(FlowGRPO):
        name = "replay-x"
        diagnostics = FlowGRPO.diagnostics + (
            Diagnostic("x/buffer_age", "Buffer age, late", "late_median", "age of the replayed entries"),
            Diagnostic("x/buffer_size", "Largest buffer", "max", "entries in the buffer"),
        )

    ALGORITHMS.names()  # the built-ins are registered before the copy
    monkeypatch.setattr(ALGORITHMS, "_entries", dict(ALGORITHMS._entries))
    ALGORITHMS.register("replay-x", ReplayX)
    return "replay-x"


def test_a_new_algorithms_diagnostics_appear(tmp_path: Path, replay_algorithm: str) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "flow-grpo", 0, 40)
    path = write_run(runs, replay_algorithm, 0, 30)
    # add the algorithm's own keys to its step records: age = step, buffer size = step // 10
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for rec in records:
        if rec["type"] == "step":
            rec.update({"x/buffer_age": float(rec["step"]), "x/buffer_size": rec["step"] // 10})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = rows_by_algorithm(runs)
    row = rows[replay_algorithm]
    # late median: step records past half the last step (51..100) -> median 75.5; max of step // 10 -> 10
    assert row["x_buffer_age"] == pytest.approx(75.5) and row["x_buffer_size"] == 10
    assert rows["flow-grpo"]["x_buffer_age"] is None  # every row has every declared column
    assert row["clipfrac_on_policy"] == pytest.approx(0.05)
    build_leaderboard(runs, tmp_path / "out", warn=lambda _: None)
    md = (tmp_path / "out" / "LEADERBOARD.md").read_text()
    assert "| Task | Algorithm | Clip fraction on-policy | Clip fraction off-policy | Buffer age, late | " \
           "Largest buffer |" in md
    assert "log w range" not in md  # no ranked algorithm declares it


def test_an_unknown_algorithm_declares_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "someone-elses-algo", 0, 40)
    (row,) = compute_rows(load_runs(runs).runs)
    assert "clipfrac_on_policy" not in row and row["steps_to_target_median"] == 40


class CountSeeds(Analysis):
    """A toy analysis: a row field, a document entry placed after ``tasks`` and a section."""

    section = ("seed-count", "Seed count")
    document_after = "tasks"

    def row_fields(self, cmp, algorithm, outs, ref):
        return {"seeds_vs_reference": len(outs) - len(ref)}

    def document(self, cmp, runs, rows):
        return {"seed_count": {r["algorithm"]: r["seeds"] for r in rows}}

    def section_markdown(self, cmp, doc):
        return ["## Seed count", "", f"{sum(doc['seed_count'].values())} seeds in all.", ""]

    def section_html(self, cmp, doc, figures):
        return [f'<section id="{self.section[0]}"><h2>{self.section[1]}</h2></section>']


def test_an_analysis_plugs_in(suite: Path, tmp_path: Path) -> None:
    analyses = (*default_analyses(), CountSeeds())
    doc = build_leaderboard(suite, tmp_path / "out", warn=lambda _: None, analyses=analyses)
    keys = list(doc)
    assert keys[keys.index("tasks") + 1] == "seed_count"
    rows = {r["algorithm"]: r for r in doc["rows"]}
    assert rows["op-grpo"]["seeds_vs_reference"] == 0 and rows["op-grpo-no-replay"]["seeds_vs_reference"] == -2
    md = (tmp_path / "out" / "LEADERBOARD.md").read_text()
    assert "## Seed count\n\n10 seeds in all." in md
    page = (tmp_path / "out" / "index.html").read_text()
    assert '<a href="#seed-count">Seed count</a>' in page and '<section id="seed-count">' in page
    # without the analyses, the regime map and the paper protocol are simply absent
    bare = build_leaderboard(suite, tmp_path / "bare", warn=lambda _: None, analyses=())
    assert "regime_map" not in bare and "paper_reference" not in bare
    assert not any(k.startswith("paper_") for k in bare["rows"][0])
    assert "Paper protocol" not in (tmp_path / "bare" / "LEADERBOARD.md").read_text()
