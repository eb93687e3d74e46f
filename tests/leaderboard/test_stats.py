"""Leaderboard statistics against values computed by hand from the synthetic suite (see conftest)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from opgrpo_bench.leaderboard.load import load_runs
from opgrpo_bench.leaderboard.outcomes import outcome, summarize
from opgrpo_bench.leaderboard.rows import compute_rows
from opgrpo_bench.leaderboard.speedup import speedup

from lb_synth import BUDGET, write_run


def rows_by_algorithm(runs_dir: Path) -> dict[str, dict]:
    return {r["algorithm"]: r for r in compute_rows(load_runs(runs_dir).runs)}


def test_medians_and_interquartile_ranges(suite: Path) -> None:
    rows = rows_by_algorithm(suite)
    flow, op = rows["flow-grpo"], rows["op-grpo"]
    # flow-grpo steps 40, 60, 50 and a censored run at the budget 100: sorted 40 50 60 100
    assert flow["steps_to_target_median"] == 55
    assert flow["steps_to_target_q25"] == 47.5  # 40 + 0.75 * (50 - 40)
    assert flow["steps_to_target_q75"] == 70  # 60 + 0.25 * (100 - 60)
    # op-grpo steps 20, 30, 20, 50: sorted 20 20 30 50
    assert (op["steps_to_target_median"], op["steps_to_target_q25"], op["steps_to_target_q75"]) == (25, 20, 35)
    # samples = 16 x steps, NFE = 160 x steps; wall-clock = 1.5 s per step for op-grpo
    assert op["samples_to_target_median"] == 400
    assert op["nfe_to_target_median"] == 4000
    assert op["wall_s_to_target_median"] == 37.5


def test_censored_run_counts_as_budget_and_is_flagged(suite: Path) -> None:
    flow = rows_by_algorithm(suite)["flow-grpo"]
    assert (flow["seeds"], flow["reached"], flow["censored"]) == (4, 3, 1)
    assert flow["reached_fraction"] == 0.75
    censored = next(outcome(r) for r in load_runs(suite).runs if r.algorithm == "flow-grpo" and r.seed == 3)
    assert censored.censored
    assert censored.to_target["steps"] == BUDGET
    # samples / NFE / wall-clock of a censored run: what it had spent at its last record (step 100)
    assert censored.to_target["samples"] == 1600
    assert censored.to_target["wall_s"] == 200
    # median 55 sits between 50 and 60, both reached: it is exact, not a lower bound
    assert flow["steps_to_target_median_censored"] is False


def test_median_is_flagged_as_lower_bound_when_censored_runs_reach_it() -> None:
    assert summarize([(10, False), (100, True), (100, True)])["median_censored"] is True
    assert summarize([(10, False), (20, False), (100, True)])["median_censored"] is False
    # even n: both middle values matter
    assert summarize([(10, False), (20, False), (100, True), (100, True)])["median_censored"] is True
    assert summarize([(10, False), (20, False), (30, False), (100, True)])["median_censored"] is False
    assert summarize([])["median"] is None


def test_paired_speedup_and_its_bootstrap_interval(suite: Path) -> None:
    op = rows_by_algorithm(suite)["op-grpo"]
    # per-seed ratios 20/40, 30/60, 20/50, 50/100 (censored reference) = 0.5 0.5 0.4 0.5
    assert op["speedup_method"] == "paired"
    assert op["speedup_n"] == 4
    assert op["speedup_vs_flow_grpo"] == 0.5
    assert op["speedup_censored"] is True
    # resampled medians are 0.4 (p = 5.1%), 0.45 (21%) or 0.5: the 2.5th and 97.5th percentiles are
    assert op["speedup_ci_low"] == pytest.approx(0.4)
    assert op["speedup_ci_high"] == pytest.approx(0.5)
    # wall-clock: 30/80, 45/120, 30/100, 75/200 (flow-grpo's spent time) = .375 .375 .3 .375
    assert op["speedup_wall_s_vs_flow_grpo"] == pytest.approx(0.375)
    assert op["speedup_samples_vs_flow_grpo"] == pytest.approx(0.5)


def test_unpaired_speedup_is_a_ratio_of_medians(suite: Path) -> None:
    row = rows_by_algorithm(suite)["op-grpo-no-replay"]  # seeds 5, 6: none shared with flow-grpo
    assert row["speedup_method"] == "ratio-of-medians"
    assert row["speedup_vs_flow_grpo"] == pytest.approx(50 / 55)
    assert row["speedup_ci_low"] <= row["speedup_vs_flow_grpo"] <= row["speedup_ci_high"]
    assert "no shared seeds" in row["speedup_note"]


def test_reference_row_and_bootstrap_are_deterministic(suite: Path) -> None:
    flow = rows_by_algorithm(suite)["flow-grpo"]
    assert (flow["speedup_vs_flow_grpo"], flow["speedup_ci_low"], flow["speedup_ci_high"]) == (1.0, 1.0, 1.0)
    assert flow["speedup_method"] == "reference"
    x = {s: (v, False) for s, v in enumerate([12.0, 30.0, 7.0, 19.0, 25.0])}
    ref = {s: (v, False) for s, v in enumerate([20.0, 41.0, 30.0, 22.0, 50.0])}
    first, second = speedup(x, ref), speedup(x, ref)
    assert first == second
    assert first.low < first.ratio < first.high
    assert first.ratio == pytest.approx(0.6)  # ratios .6 .732 .233 .864 .5


def test_zero_reference_gives_no_ratio() -> None:
    result = speedup({0: (5.0, False)}, {0: (0.0, False)})
    assert result.ratio is None and "ratio undefined" in result.note


def test_scores_best_final_and_incomplete_runs(suite: Path) -> None:
    rows = rows_by_algorithm(suite)
    flow, op = rows["flow-grpo"], rows["op-grpo"]
    # per-run best: caps 0.85 0.86 0.87 for seeds 0-2, 0.5 for the censored seed 3
    assert flow["best_score"] == pytest.approx(0.855)
    assert flow["best_score_max"] == pytest.approx(0.87)
    assert flow["final_score"] == pytest.approx(0.855)
    assert op["best_score"] == pytest.approx(0.865)
    # op-grpo seed 4 has no run_end: left out of the statistics, counted as excluded
    assert op["seed_list"] == [0, 1, 2, 3]
    assert op["incomplete_excluded"] == 1


def test_row_order_is_deterministic(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    specs = [("zeta-algo", 0, 30, "toy-v1"), ("op-grpo", 0, 20, "toy-v1"), ("flow-grpo", 0, 40, "toy-v1"),
             ("abc-algo", 0, 30, "toy-v1"), ("flow-grpo", 0, 40, "alpha-v1"), ("op-grpo-rho5", 0, 30, "toy-v1")]
    for algorithm, seed, reach, task in specs:
        write_run(runs, algorithm, seed, reach, task=task)
    loaded = load_runs(runs).runs
    order = [(r["task"], r["algorithm"]) for r in compute_rows(loaded)]
    assert order == [("alpha-v1", "flow-grpo"), ("toy-v1", "flow-grpo"), ("toy-v1", "op-grpo"),
                     ("toy-v1", "abc-algo"), ("toy-v1", "op-grpo-rho5"), ("toy-v1", "zeta-algo")]
    shuffled = list(loaded)
    random.Random(0).shuffle(shuffled)
    assert compute_rows(shuffled) == compute_rows(loaded)


def test_lower_is_better_targets(tmp_path: Path) -> None:
    from opgrpo_bench.results import ResultsWriter

    w = ResultsWriter(tmp_path / "runs" / "r")
    w.write("run_start", run_id="r", task="loss-v1", task_version=1, algorithm="flow-grpo", seed=0, config={},
            target=0.2, higher_is_better=False, budget_steps=50)
    for step, score in [(0, 1.0), (10, 0.5), (20, 0.2), (30, 0.1)]:
        w.write("eval", step=step, samples=step, nfe=step, wall_s=step, score=score)
    w.write("run_end", status="completed")
    (row,) = compute_rows(load_runs(tmp_path / "runs").runs)
    assert row["steps_to_target_median"] == 20
    assert row["best_score"] == 0.1 and row["final_score"] == 0.1


# Paper protocol (target = median of flow-grpo's final scores). In the suite the final scores are the caps
# 0.85, 0.86, 0.87 (seeds 0-2) and 0.5 (seed 3, never near the target): median (0.85 + 0.86) / 2 = 0.855.
# A run with reach r and cap c scores min(c, 0.8 s / r) at eval step s (every 10), so it first reaches
# 0.855 at the first multiple of 10 >= 0.855 r / 0.8, provided c >= 0.855.


def test_paper_target_is_the_median_of_flow_grpo_final_scores(suite: Path) -> None:
    rows = rows_by_algorithm(suite)
    assert [r["paper_target"] for r in rows.values()] == [pytest.approx(0.855)] * 3


def test_paper_protocol_steps_and_censoring(suite: Path) -> None:
    rows = rows_by_algorithm(suite)
    flow, op, unpaired = rows["flow-grpo"], rows["op-grpo"], rows["op-grpo-no-replay"]
    # flow-grpo: seed 0 (cap 0.85) never, seed 1 (r 60) at 70, seed 2 (r 50) at 60, seed 3 never
    assert (flow["paper_reached"], flow["paper_censored"], flow["paper_reached_fraction"]) == (2, 2, 0.5)
    # sorted 60 70 100* 100*: median 85, a lower bound (a censored run sits at the median position)
    assert (flow["paper_steps_median"], flow["paper_steps_q25"], flow["paper_steps_q75"]) == (85, 67.5, 100)
    assert flow["paper_steps_median_censored"] is True
    assert flow["paper_samples_median"] == 16 * 85 and flow["paper_wall_s_median"] == 2 * 85
    # op-grpo: seed 0 (cap 0.85) never, seed 1 (r 30) at 40, seed 2 (r 20) at 30, seed 3 (r 50) at 60
    assert (op["paper_reached"], op["paper_censored"], op["paper_reached_fraction"]) == (3, 1, 0.75)
    # sorted 30 40 60 100*: median 50, exact (the censored run is above the median)
    assert (op["paper_steps_median"], op["paper_steps_median_censored"]) == (50, False)
    assert op["paper_wall_s_median"] == 1.5 * 50
    # op-grpo-no-replay: seeds 5 (r 40) at 50 and 6 (r 60) at 70
    assert (unpaired["paper_reached_fraction"], unpaired["paper_steps_median"]) == (1.0, 60)
    # the main statistic is untouched
    assert op["steps_to_target_median"] == 25 and op["speedup_vs_flow_grpo"] == 0.5


def test_paper_protocol_ratio(suite: Path) -> None:
    rows = rows_by_algorithm(suite)
    flow, op, unpaired = rows["flow-grpo"], rows["op-grpo"], rows["op-grpo-no-replay"]
    assert (flow["paper_speedup"], flow["paper_speedup_method"]) == (1.0, "reference")
    # paired per seed: 100*/100* = 1, 40/70, 30/60 = 0.5, 60/100* = 0.6 -> median (4/7 + 0.6) / 2
    assert op["paper_speedup_method"] == "paired" and op["paper_speedup_n"] == 4
    assert op["paper_speedup"] == pytest.approx((4 / 7 + 0.6) / 2)
    assert op["paper_speedup_censored"] is True
    # the same bootstrap as the main ratio, on the same per-seed values
    ref = speedup({0: (100.0, True), 1: (40.0, False), 2: (30.0, False), 3: (60.0, False)},
                  {0: (100.0, True), 1: (70.0, False), 2: (60.0, False), 3: (100.0, True)})
    assert (op["paper_speedup_ci_low"], op["paper_speedup_ci_high"]) == (ref.low, ref.high)
    assert op["paper_speedup_ci_low"] == pytest.approx(0.5) and op["paper_speedup_ci_high"] == pytest.approx(1.0)
    # no shared seeds: ratio of medians 60 / 85
    assert unpaired["paper_speedup_method"] == "ratio-of-medians"
    assert unpaired["paper_speedup"] == pytest.approx(60 / 85)


def test_paper_protocol_is_na_without_flow_grpo(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "op-grpo", 0, 20, task="solo-v1")
    write_run(runs, "flow-grpo", 0, 40, task="toy-v1", finished=False, last_step=50)  # unfinished: ignored
    write_run(runs, "op-grpo", 0, 20, task="toy-v1")
    for row in compute_rows(load_runs(runs).runs):
        if row["algorithm"] != "op-grpo":
            continue
        assert row["paper_target"] is None and row["paper_speedup"] is None
        assert row["paper_steps_median"] is None and row["paper_reached_fraction"] is None
        assert "paper protocol n/a" in row["paper_speedup_note"]
        assert row["steps_to_target_median"] == 20  # the main statistic is still there


def test_paper_protocol_lower_is_better(tmp_path: Path) -> None:
    from opgrpo_bench.results import ResultsWriter

    def run(algorithm: str, seed: int, scores: list[float]) -> None:
        w = ResultsWriter(tmp_path / "runs" / f"{algorithm}-{seed}")
        w.write("run_start", run_id=f"{algorithm}-{seed}", task="loss-v1", task_version=1, algorithm=algorithm,
                seed=seed, config={}, target=0.2, higher_is_better=False, budget_steps=50)
        for step, score in zip(range(0, 50, 10), scores):
            w.write("eval", step=step, samples=step, nfe=step, wall_s=step, score=score)
        w.write("run_end", status="completed")

    run("flow-grpo", 0, [1.0, 0.6, 0.4, 0.3, 0.25])  # final 0.25
    run("flow-grpo", 1, [1.0, 0.5, 0.3, 0.2, 0.15])  # final 0.15 -> paper target 0.2
    run("op-grpo", 0, [1.0, 0.3, 0.2, 0.2, 0.2])  # <= 0.2 at 20
    run("op-grpo", 1, [1.0, 0.1, 0.1, 0.1, 0.1])  # at 10
    rows = {r["algorithm"]: r for r in compute_rows(load_runs(tmp_path / "runs").runs)}
    assert rows["flow-grpo"]["paper_target"] == pytest.approx(0.2)
    # flow-grpo: seed 0 never (censored at 50), seed 1 at 30; op-grpo: 20, 10 -> ratios 0.4, 1/3
    assert rows["flow-grpo"]["paper_censored"] == 1
    assert rows["op-grpo"]["paper_steps_median"] == 15
    assert rows["op-grpo"]["paper_speedup"] == pytest.approx((0.4 + 1 / 3) / 2)
