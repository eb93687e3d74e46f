"""The held-out gold metric in the leaderboard: per-row final gold score and its gap to the eval score,
null / a dash for runs that record no gold, and the gold curves (values by hand from lb_synth.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from opgrpo_bench.leaderboard import build_leaderboard

from lb_synth import write_run

GOLD_OFFSET, GOLD_DRIFT = 0.25, 0.001  # gold = score - 0.25 - 0.001 * step: the gap grows by 0.1 in 100 steps


@pytest.fixture(scope="module")
def gold_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """flow-grpo seeds 0, 1 record gold; op-grpo seed 0 records it, seed 1 does not; op-grpo-no-replay
    seed 0 records none (a run made before the gold metric existed)."""
    base = tmp_path_factory.mktemp("gold")
    runs = base / "runs"
    gold = {"gold_offset": GOLD_OFFSET, "gold_drift": GOLD_DRIFT}
    write_run(runs, "flow-grpo", 0, 40, **gold)
    write_run(runs, "flow-grpo", 1, 60, **gold)
    write_run(runs, "op-grpo", 0, 20, **gold)
    write_run(runs, "op-grpo", 1, 30)
    write_run(runs, "op-grpo-no-replay", 0, 40)
    out = base / "out"
    return out, build_leaderboard(runs, out, warn=lambda message: None)


def test_gold_fields_by_hand(gold_report: tuple[Path, dict[str, Any]]) -> None:
    _, doc = gold_report
    rows = {r["algorithm"]: r for r in doc["rows"]}
    flow, op, none = rows["flow-grpo"], rows["op-grpo"], rows["op-grpo-no-replay"]
    # final scores at step 100 are the caps 0.85 + 0.01 seed; final gold = score - 0.25 - 0.1
    assert flow["final_score"] == pytest.approx(0.855)
    assert flow["final_gold"] == pytest.approx(0.505)
    assert flow["final_gold_gap"] == pytest.approx(0.35)
    assert flow["gold_gap_change"] == pytest.approx(0.1)  # 0.35 at the end - 0.25 at step 0
    assert flow["gold_seeds"] == 2
    # op-grpo: only seed 0 has gold (0.85 - 0.35); the gap is paired, so seed 1 does not enter it
    assert (op["gold_seeds"], op["final_gold"], op["final_gold_gap"]) == (1, pytest.approx(0.5),
                                                                         pytest.approx(0.35))
    assert op["final_score"] == pytest.approx(0.855)  # the final score still has both seeds
    # no run records gold: null, not 0
    assert (none["final_gold"], none["final_gold_gap"], none["gold_gap_change"], none["gold_seeds"]) == (
        None, None, None, 0)


def test_gold_columns_in_markdown(gold_report: tuple[Path, dict[str, Any]]) -> None:
    out, _ = gold_report
    md = (out / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert "| Final score | Final gold score | Score − gold, final (change since step 0) |" in md
    flow = next(l for l in md.splitlines() if l.startswith("| flow-grpo | 2 |"))
    assert "| 0.855 | 0.505 | 0.35 (+0.1) | 1 (reference) |" in flow
    none = next(l for l in md.splitlines() if l.startswith("| op-grpo-no-replay | 1 |"))
    assert "| 0.85 | — | — |" in none


def test_gold_curves_beside_the_score_curves(gold_report: tuple[Path, dict[str, Any]]) -> None:
    _, doc = gold_report
    curves = doc["curves"]["toy-v1"]
    assert set(curves["gold"]) == {"flow-grpo", "op-grpo"}  # op-grpo-no-replay has no gold series
    flow = curves["gold"]["flow-grpo"]
    assert flow["step"] == list(range(0, 101, 10)) and flow["n"] == [2] * 11
    assert flow["mean"][0] == pytest.approx(-GOLD_OFFSET)  # both seeds score 0 at step 0
    assert curves["gold"]["op-grpo"]["n"] == [1] * 11


def test_runs_without_gold_have_no_gold_curve(built_report: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, doc = built_report
    assert doc["curves"]["toy-v1"]["gold"] == {}
    assert all(r["final_gold"] is None and r["gold_seeds"] == 0 for r in doc["rows"])
