"""The suite's closing verdict: both the ratio interval and the P(improvement) interval must agree."""

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


def test_verdict_rows_leave_out_the_reference_and_rows_without_a_ratio():
    faster = {"task": "t", "algorithm": "a", "seeds": 5, "speedup_vs_flow_grpo": 0.7, "speedup_ci_low": 0.5,
              "speedup_ci_high": 0.9, "prob_improvement": 0.8, "prob_improvement_ci_low": 0.6,
              "prob_improvement_ci_high": 0.9}
    doc = {"rows": [
        {"task": "t", "algorithm": "flow-grpo", "speedup_vs_flow_grpo": 1.0, "speedup_ci_low": 1.0,
         "speedup_ci_high": 1.0},
        faster,
        {"task": "t", "algorithm": "b", "speedup_vs_flow_grpo": None},  # no finished reference runs
        {**faster, "task": "u", "speedup_ci_high": 1.2},
    ]}
    rows = verdict_rows(doc)
    assert [(r["task"], r["algorithm"], r["verdict"]) for r in rows] == [("t", "a", "faster"),
                                                                         ("u", "a", "inconclusive")]
    assert rows[0]["ci"] == (0.5, 0.9) and rows[0]["p_ci"] == (0.6, 0.9) and rows[0]["ratio"] == 0.7
    assert verdict_rows({}) == []
