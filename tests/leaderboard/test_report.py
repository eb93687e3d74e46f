"""The three report files, their required content, reproducibility, and the Typer command."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from opgrpo_bench.leaderboard import build_leaderboard
from opgrpo_bench.leaderboard.cli import leaderboard

REQUIRED_ROW_KEYS = {"task", "algorithm", "seeds", "steps_to_target_median", "reached_fraction",
                     "speedup_vs_flow_grpo", "speedup_ci_low", "speedup_ci_high", "best_score",
                     "paper_target", "paper_steps_median", "paper_reached_fraction", "paper_speedup",
                     "paper_speedup_ci_low", "paper_speedup_ci_high", "paper_speedup_censored",
                     "prob_improvement", "prob_improvement_ci_low", "prob_improvement_ci_high",
                     "auc", "auc_ci_low", "auc_ci_high", "auc_n", "auc_per_seed"}
PAPER_LABEL = "reported in arXiv 2604.04142, not measured here"


def test_report_files_and_json_rows(built_report: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, doc = built_report
    for name in ("LEADERBOARD.md", "leaderboard.json", "index.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary leftovers
    data = json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(doc))  # the API returns exactly what the file holds
    assert [(r["task"], r["algorithm"]) for r in data["rows"]] == [
        ("toy-v1", "flow-grpo"), ("toy-v1", "op-grpo"), ("toy-v1", "op-grpo-no-replay")]
    for row in data["rows"]:
        assert REQUIRED_ROW_KEYS <= row.keys()
    assert data["incomplete_runs"][0]["seed"] == 4
    assert any("no run_end" in w for w in data["warnings"])


def test_json_robust_statistics(built_report: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, _ = built_report
    data = json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))
    (task,) = data["tasks"]
    assert task["label"] == "toy-v1"
    assert {"sd_log_ratio", "seeds_for_ratio_0.7", "seeds_for_ratio_0.342"} <= task["power"].keys()
    assert task["power"]["seeds_for_ratio_0.7"] == 4  # a paired t-test at sd 0.112 (test_robust.py)
    assert data["aggregate"] == []  # one task version: nothing to pool
    assert set(data["sample_efficiency"]["toy-v1"]["algorithms"]) == {"flow-grpo", "op-grpo", "op-grpo-no-replay"}
    op = next(r for r in data["rows"] if r["algorithm"] == "op-grpo")
    assert (op["prob_improvement"], op["auc"]) == (0.90625, 0.875)
    assert "docs/STATISTICS.md" in data["statistics"]["conventions"]


def test_paper_reference_section_is_labelled(built_report: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, doc = built_report
    md = (out / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert f"## Paper reference ({PAPER_LABEL})" in md
    for reported in ("34.2%", "30.1%", "0.95", "0.92", "23.32", "23.1%", "11.8%", "> 40%"):
        assert reported in md
    # the paper-protocol op-grpo ratio (target: flow-grpo's final score) sits beside the paper's 34.2%
    line = next(l for l in md.splitlines() if "34.2%" in l)
    assert "toy-v1: 0.59×* [0.50–1.00] (paper protocol: steps to reach flow-grpo's final score 0.855)" in line
    assert all(e["measured_here"] is False and e["source"] == PAPER_LABEL for e in doc["paper_reference"])
    html = (out / "index.html").read_text(encoding="utf-8")
    assert PAPER_LABEL in html


def test_markdown_tables(built_report: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, _ = built_report
    md = (out / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert "## toy-v1 — target score ≥ 0.8, budget 100 steps" in md
    assert "| flow-grpo | 4 | 3/4 (1 censored) | 55 [47.5–70] |" in md
    assert "| op-grpo | 4 | 4/4 (+1 incomplete, excluded) | 25 [20–35] |" in md
    assert "0.50×* [0.40–0.50]" in md
    # the paper protocol, a second table per task (values in test_stats.py)
    assert "### Paper protocol: steps to reach Flow-GRPO's final score (0.855)" in md
    assert "| flow-grpo | 4 | 2/4 (2 censored) | ≥85 [67.5–100] |" in md
    assert "| op-grpo | 4 | 3/4 (1 censored) | 50 [37.5–70] | 800 [600–1,120] | 75 [56.25–105] | 0.59×* [0.50–1.00] |" in md
    # rliable's statistics: two more columns, and the power analysis under each task's table
    assert "| P(fewer steps than flow-grpo) [95% CI] | AUC, IQM [95% CI] |" in md
    op = next(l for l in md.splitlines() if l.startswith("| op-grpo | 4 | 4/4"))
    assert op.endswith("| 0.50×* [0.40–0.50] | 0.50×* [0.40–0.50] | 0.38×* [0.30–0.38] | 0.91 [0.62–1.00] | "
                       "0.88 [0.75–0.90] |")
    assert "| 0.5 (reference) | 0.72 [0.31–0.80] |" in md
    assert "sd of the per-seed log steps ratio vs flow-grpo 0.112 (pooled over op-grpo; 3 degrees of freedom); " \
           "true ratio 0.7: 4 seeds; true ratio 0.342: 3 seeds." in md


def test_html_is_self_contained_with_every_plot(built_report: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, doc = built_report
    html = (out / "index.html").read_text(encoding="utf-8")
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "DATA", html)
    for external in ("http:", "https:", "//", "<link", "@import", "url(", "file:"):
        assert external not in text
    # every src is an embedded PNG, every href an anchor on the page
    assert set(re.findall(r'src="([^"]*)"', text)) == {"DATA"}
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', text))
    kinds = [f["kind"] for f in doc["figures"]]
    assert kinds == ["curve", "efficiency", "profile", "logratio", "clipfrac", "logw"]
    images = re.findall(r'<img class="plot" id="([^"]+)"[^>]*src="data:image/png;base64,([^"]+)"', html)
    assert [i for i, _ in images] == [f["id"] for f in doc["figures"]]
    for _, data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    assert html.count("<table") == 5  # results, paper protocol, paper reference, diagnostics, incomplete runs
    assert "Paper protocol: steps to reach Flow-GRPO&#x27;s final score (0.855)" in html
    # sample-efficiency curves and performance profiles, one each per task, in their own section
    section = html.split('<section id="efficiency">')[1].split("</section>")[0]
    assert re.findall(r'<img class="plot" id="([^"]+)"', section) == ["efficiency-toy-v1", "profile-toy-v1"]
    assert 'href="#efficiency"' in html
    assert "Power analysis" in html


def test_output_is_reproducible(built_report: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    runs, out, _ = built_report
    again = tmp_path / "again"
    build_leaderboard(runs, again, warn=lambda message: None)
    for name in ("LEADERBOARD.md", "leaderboard.json", "index.html"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    build_leaderboard(runs, again, warn=lambda message: None)  # rebuilding over a report replaces it
    assert sorted(p.name for p in again.iterdir()) == ["LEADERBOARD.md", "index.html", "leaderboard.json"]


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("leaderboard")(leaderboard)

    @app.command("other")
    def other() -> None:  # a second command keeps Typer in sub-command mode, as in the real CLI
        pass

    return app


def test_cli_writes_the_report(suite: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["leaderboard", str(suite), "--out", str(tmp_path / "lb")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lb" / "index.html").is_file()
    assert "op-grpo" in result.stdout and "wrote" in result.stdout
    assert "no run_end" in result.stderr  # warnings go to stderr


def test_cli_user_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["leaderboard", str(tmp_path / "nope"), "--out", str(tmp_path / "lb")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: runs directory '{tmp_path / 'nope'}' does not exist"
    assert "Traceback" not in result.output
    assert not (tmp_path / "lb").exists()


def test_aggregate_table_over_two_task_versions(suite: Path, tmp_path: Path) -> None:
    from lb_synth import write_run

    for algorithm, seed, reach in [("flow-grpo", 0, 60), ("flow-grpo", 1, 80), ("op-grpo", 0, 30),
                                   ("op-grpo", 1, 40)]:
        write_run(suite, algorithm, seed, reach, task="alpha-v1")
    doc = build_leaderboard(suite, tmp_path / "out", warn=lambda message: None)
    assert [e["algorithm"] for e in doc["aggregate"]] == ["flow-grpo", "op-grpo"]
    md = (tmp_path / "out" / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert "## Across task versions (stratified bootstrap)" in md
    assert "| op-grpo | alpha-v1, toy-v1 | 6 |" in md
    html = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert '<table class="aggregate">' in html
    assert [f["id"] for f in doc["figures"] if f["kind"] in ("efficiency", "profile")] == [
        "efficiency-alpha-v1", "profile-alpha-v1", "efficiency-toy-v1", "profile-toy-v1"]
