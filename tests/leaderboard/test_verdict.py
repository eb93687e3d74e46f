"""The suite's closing verdict: both the ratio interval and the P(improvement) interval must agree."""

import json
from pathlib import Path

import pytest

from opgrpo_bench.leaderboard.verdict import verdict, verdict_rows


@pytest.mark.parametrize("ratio_ci, p_ci, expected", [
    ((0.5, 0.9), (0.6, 0.9), "faster"),
    ((0.5, 1.1), (0.6, 0.9), "inconclusive"),  # the ratio interval includes 1
    ((0.5, 0.9), (0.4, 0.9), "inconclusive"),  # P(improvement) interval includes 0.5
    ((1.1, 1.5), (0.1, 0.4), "slower"),
    ((None, None), (None, None), "inconclusive"),
])
def test_verdict_rules(ratio_ci, p_ci, expected):
    row = {"speedup_ci_low": ratio_ci[0], "speedup_ci_high": ratio_ci[1],
           "prob_improvement_ci_low": p_ci[0], "prob_improvement_ci_high": p_ci[1]}
    assert verdict(row) == expected


def test_committed_leaderboard_verdicts():
    doc = json.loads((Path(__file__).resolve().parents[2] / "leaderboard" / "leaderboard.json").read_text())
    rows = verdict_rows(doc)
    assert rows and all(r["algorithm"] != "flow-grpo" for r in rows)
    headline = {(r["task"], r["algorithm"]): r["verdict"] for r in rows}
    assert headline[("digits-v1", "op-grpo")] == "inconclusive"  # 1.00x [0.56, 1.13]
