"""rliable-style statistics (docs/STATISTICS.md) against values computed by hand.

The suite's numbers: a run that reaches the target 0.8 at step r (budget 100, base score 0 at step 0)
has the normalised curve min(1, s / r), so its AUC is (r / 2 + (100 - r)) / 100 = 1 - r / 200; a run that
never reaches it scores 0.5 s / 100, normalised 0.625 s / 100, AUC 0.3125 (see lb_synth.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from opgrpo_bench.leaderboard.load import load_runs
from opgrpo_bench.leaderboard.robust import (
    auc,
    improvement_matrix,
    improvement_score,
    iqm,
    normalised_scores,
    pooled_sd,
    prob_improvement,
    seeds_needed,
    stratified_bootstrap,
)
from opgrpo_bench.leaderboard.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    compute_aggregate,
    compute_rows,
    compute_tasks,
    sample_efficiency,
    speedup,
    stratified_speedup,
)

from lb_synth import write_run

# z_{0.975} + z_{0.8}, from a normal table: 1.959964 + 0.841621
Z_SUM = 2.801585


def rows_by_algorithm(runs_dir: Path) -> dict[str, dict]:
    return {r["algorithm"]: r for r in compute_rows(load_runs(runs_dir).runs)}


# ----------------------------------------------------------------------------------------------------
# IQM


def test_iqm_of_known_arrays() -> None:
    assert iqm([1, 2, 3, 4]) == 2.5  # n = 4: the middle two
    assert iqm([4, 1, 100, 2]) == 3.0  # order does not matter; the outlier 100 is cut
    assert iqm([1, 2, 3, 4, 100]) == 3.0  # n = 5: floor(5 / 4) = 1 cut from each end, mean of 2 3 4
    # n = 10: 2 cut from each end, the mean of the middle six 0 1 2 3 4 10
    assert iqm([50, 0, 0, 4, 1, 2, 3, 0, 10, 50]) == pytest.approx(20 / 6)
    assert iqm([7.0]) == 7.0 and iqm([1, 3]) == 2.0 and iqm([1, 2, 9]) == 4.0  # n < 4: the mean
    # along an axis, one IQM per row (what the bootstrap uses)
    assert list(iqm(np.array([[1, 2, 3, 4], [10, 0, 0, 10]]), axis=1)) == [2.5, 5.0]
    with pytest.raises(ValueError):
        iqm([])


# ----------------------------------------------------------------------------------------------------
# Stratified bootstrap


def test_stratified_bootstrap_keeps_each_stratum_size() -> None:
    rng = np.random.default_rng(0)
    # every resample holds exactly three values of the first stratum and two of the second
    boot = stratified_bootstrap([np.zeros(3), np.ones(2)], lambda a: a.mean(axis=1), 1000, rng)
    assert boot.shape == (1000,) and np.all(boot == 0.4)
    # pooled without strata the share of ones varies from resample to resample
    pooled = np.array([0, 0, 0, 1, 1.0])
    plain = pooled[np.random.default_rng(0).integers(0, 5, size=(1000, 5))].mean(axis=1)
    assert plain.min() < 0.4 < plain.max()


def test_one_stratum_is_the_paired_bootstrap_over_seeds() -> None:
    ratios = np.array([0.6, 0.732, 0.233, 0.864, 0.5])
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    expected = np.median(ratios[rng.integers(0, 5, size=(BOOTSTRAP_RESAMPLES, 5))], axis=1)
    got = stratified_bootstrap([ratios], lambda a: np.median(a, axis=1), BOOTSTRAP_RESAMPLES,
                               np.random.default_rng(BOOTSTRAP_SEED))
    assert np.array_equal(got, expected)


def test_stratified_speedup_pools_task_versions() -> None:
    a = ({0: (10.0, False), 1: (10.0, False), 2: (10.0, False)},
         {0: (20.0, False), 1: (20.0, False), 2: (20.0, False)})  # ratios 0.5 0.5 0.5
    b = ({0: (30.0, False), 1: (30.0, False), 2: (30.0, False)},
         {0: (30.0, False), 1: (30.0, False), 2: (30.0, False)})  # ratios 1 1 1
    result = stratified_speedup([a, b])
    # every resample keeps three ratios of each task version: the median is always (0.5 + 1) / 2
    assert (result.ratio, result.low, result.high) == (0.75, 0.75, 0.75)
    assert (result.method, result.n, result.censored) == ("paired", 6, False)
    # one stratum: exactly speedup() of that task version
    assert stratified_speedup([a]) == speedup(*a)
    # a stratum without shared seeds is left out and named
    c = ({5: (1.0, False)}, {6: (2.0, False)})
    assert "no shared seeds" in stratified_speedup([a, c]).note
    assert stratified_speedup([a, c]).ratio == 0.5


# ----------------------------------------------------------------------------------------------------
# Probability of improvement


def test_improvement_score_ties_and_censoring() -> None:
    reached, censored = False, True
    assert improvement_score((10, reached), (20, reached)) == 1.0
    assert improvement_score((20, reached), (10, reached)) == 0.0
    assert improvement_score((20, reached), (20, reached)) == 0.5  # same eval step: a tie
    # a censored run carries its budget and only "more than that"
    assert improvement_score((100, reached), (100, censored)) == 1.0  # reached at the budget beats never
    assert improvement_score((100, censored), (100, reached)) == 0.0
    assert improvement_score((100, censored), (100, censored)) == 0.5  # neither reached: undetermined
    assert improvement_score((100, censored), (200, censored)) == 0.5  # even with different budgets
    # different budgets: reached after the other's budget is undetermined, before it a win
    assert improvement_score((150, reached), (100, censored)) == 0.5
    assert improvement_score((100, censored), (150, reached)) == 0.5
    assert improvement_score((150, reached), (200, censored)) == 1.0
    assert improvement_score((200, censored), (150, reached)) == 0.0


def test_prob_improvement_of_known_step_lists() -> None:
    x = [(10.0, False), (20.0, False)]
    y = [(20.0, False), (30.0, True)]
    # pairs: 10<20 (1), 10 vs never by 30 (1), 20=20 (1/2), 20 vs never by 30 (1)
    assert improvement_matrix(x, y).tolist() == [[1.0, 1.0], [0.5, 1.0]]
    p, low, high = prob_improvement([(x, y)], 2000, np.random.default_rng(0))
    assert p == 0.875
    assert 0 <= low <= p <= high <= 1
    assert (p, low, high) == prob_improvement([(x, y)], 2000, np.random.default_rng(0))  # deterministic
    # the same runs against themselves: exactly one half
    assert prob_improvement([(x, x)], 10, np.random.default_rng(0))[0] == 0.5
    # over two task versions: the mean of the per-task values
    p2, _, _ = prob_improvement([(x, y), (y, x)], 2000, np.random.default_rng(0))
    assert p2 == pytest.approx((0.875 + 0.125) / 2)


def test_prob_improvement_of_the_suite(suite: Path) -> None:
    rows = rows_by_algorithm(suite)
    # op-grpo 20 30 20 50 against flow-grpo 40 60 50 100 (censored): every pair a win except
    # 50 vs 40 (0), 50 vs 50 (1/2): (4 + 4 + 4 + 2.5) / 16
    assert rows["op-grpo"]["prob_improvement"] == 14.5 / 16
    assert rows["op-grpo"]["prob_improvement_pairs"] == 16
    # op-grpo-no-replay 40 60 (no seed shared: the statistic is not paired anyway): 40 -> 3.5, 60 -> 1.5
    assert rows["op-grpo-no-replay"]["prob_improvement"] == 5 / 8
    flow = rows["flow-grpo"]
    assert (flow["prob_improvement"], flow["prob_improvement_ci_low"], flow["prob_improvement_ci_high"]) == (
        0.5, 0.5, 0.5)
    for row in rows.values():
        assert row["prob_improvement_ci_low"] <= row["prob_improvement"] <= row["prob_improvement_ci_high"]


# ----------------------------------------------------------------------------------------------------
# AUC


def test_auc_of_a_known_curve() -> None:
    # base 0.2, target 0.8: normalised 0, 0.5, 1.5 -> clipped 1, 2/3; held at 2/3 from step 40 to 50
    # trapezoids 10 * 0.25 + 10 * 0.75 + 20 * (5/6) + 10 * (2/3) = 2.5 + 7.5 + 16.667 + 6.667 = 33.333
    assert auc([0, 10, 20, 40], [0.2, 0.5, 1.1, 0.6], 0.2, 0.8, 50, True) == pytest.approx(100 / 3 / 50)
    # lower is better: 1.0 -> 0.2 (target) linearly over 20 steps: half the area
    assert auc([0, 10, 20], [1.0, 0.6, 0.2], 1.0, 0.2, 20, False) == pytest.approx(0.5)
    # evals after the budget do not count
    assert auc([0, 10, 20, 30], [1.0, 0.6, 0.2, 5.0], 1.0, 0.2, 20, False) == pytest.approx(0.5)
    # clipping below 0 as well: a curve that only falls has area 0
    assert auc([0, 10], [0.5, 0.1], 0.5, 0.9, 10, True) == 0.0
    # the base already meets the target: no normalisation, no AUC
    assert auc([0, 10], [0.9, 0.95], 0.9, 0.8, 10, True) is None
    assert normalised_scores([0.9], 0.9, 0.8, True) is None
    assert normalised_scores([0.5, 0.65, 0.8], 0.5, 0.8, True).tolist() == pytest.approx([0, 0.5, 1])


def test_auc_of_the_suite_is_the_iqm_over_seeds(suite: Path) -> None:
    rows = rows_by_algorithm(suite)
    flow, op, unpaired = rows["flow-grpo"], rows["op-grpo"], rows["op-grpo-no-replay"]
    # 1 - r / 200 for r = 40, 60, 50 and 0.3125 for the run that never reaches the target
    assert flow["auc_per_seed"] == pytest.approx([0.8, 0.7, 0.75, 0.3125])
    assert flow["auc"] == pytest.approx((0.7 + 0.75) / 2)  # IQM of 4: the middle two
    assert op["auc_per_seed"] == pytest.approx([0.9, 0.85, 0.9, 0.75])
    assert op["auc"] == pytest.approx((0.85 + 0.9) / 2)
    assert unpaired["auc"] == pytest.approx(0.75) and unpaired["auc_n"] == 2
    for row in rows.values():
        assert row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"]
    # normalised final scores: the caps 0.85 + 0.01 seed over the target 0.8, and 0.5 / 0.8 (never)
    assert flow["normalised_final_per_seed"] == pytest.approx([0.85 / 0.8, 0.86 / 0.8, 0.87 / 0.8, 0.625])


def test_sample_efficiency_curve(suite: Path) -> None:
    curves = sample_efficiency(load_runs(suite).runs)["toy-v1"]["algorithms"]
    op = curves["op-grpo"]
    assert op["step"] == list(range(0, 101, 10)) and op["n"] == [4] * 11
    # at step 10 the normalised scores are 10/20, 10/30, 10/20, 10/50: IQM of the middle two
    assert op["iqm"][1] == pytest.approx((1 / 3 + 0.5) / 2)
    assert op["iqm"][0] == 0.0 and op["iqm"][-1] == 1.0
    assert all(lo <= c <= hi for lo, c, hi in zip(op["ci_low"], op["iqm"], op["ci_high"]))


# ----------------------------------------------------------------------------------------------------
# Power analysis


def test_seeds_needed_against_a_hand_computation() -> None:
    # n = ((Z_SUM * sd) / |log r|)^2, rounded up; Z_SUM = z(0.975) + z(0.8) (two-sided 5%, 80% power);
    # by hand: (2.801585 * 0.25 / 0.356675)^2 = 3.856, (2.801585 * 0.5 / 0.356675)^2 = 15.42,
    # (2.801585 / 1.072945)^2 = 6.818
    from scipy.stats import norm

    assert Z_SUM == pytest.approx(norm.ppf(0.975) + norm.ppf(0.8), abs=1e-6)
    assert seeds_needed(0.25, 0.7) == 4
    assert seeds_needed(0.5, 0.7) == 16
    assert seeds_needed(1.0, 0.342) == 7
    assert seeds_needed(0.5, 1 / 0.7) == 16  # symmetric in log r
    assert seeds_needed(0.01, 0.342) == 2  # at least two seeds
    assert seeds_needed(None, 0.7) is None and seeds_needed(0.5, 1.0) is None


def test_seeds_needed_by_simulation() -> None:
    """Simulated paired experiments at the computed n reach 80% power (z-test with the true sd, the
    normal approximation's assumption); one seed fewer does not. A t-test with the sd estimated from the
    same n seeds falls a little short, as the approximation's docstring says."""
    sd, ratio = 0.5, 0.7
    n = seeds_needed(sd, ratio)
    rng = np.random.default_rng(7)
    sims = 40_000

    def power(k: int) -> tuple[float, float]:
        logs = rng.normal(math.log(ratio), sd, size=(sims, k))
        mean = logs.mean(axis=1)
        z = np.abs(mean) / (sd / math.sqrt(k))
        t = np.abs(mean) / (logs.std(axis=1, ddof=1) / math.sqrt(k))
        from scipy.stats import t as student

        return float((z > 1.959964).mean()), float((t > student.ppf(0.975, k - 1)).mean())

    z_power, t_power = power(n)
    assert z_power == pytest.approx(0.814, abs=0.01)  # Phi(|log r| sqrt(16) / sd - 1.96) = 0.814
    assert z_power >= 0.8 - 0.006  # 3 standard errors
    assert power(n - 1)[0] < 0.8
    assert 0.74 < t_power < 0.8


def test_pooled_sd() -> None:
    # squared deviations 1 + 0 + 1 and 1 + 1 on 2 + 1 degrees of freedom; a single value adds nothing
    assert pooled_sd([[1, 2, 3], [10, 12], [99]]) == (pytest.approx(math.sqrt(4 / 3)), 3)
    assert pooled_sd([[1.0], []]) == (None, 0)


def test_power_of_the_suite(suite: Path) -> None:
    (task,) = compute_tasks(load_runs(suite).runs)
    power = task["power"]
    assert task["label"] == "toy-v1"
    # op-grpo's per-seed log ratios log 0.5, 0.5, 0.4, 0.5 (op-grpo-no-replay shares no seed)
    logs = [math.log(0.5)] * 3 + [math.log(0.4)]
    assert power["algorithms"] == ["op-grpo"] and power["df"] == 3
    assert power["sd_log_ratio"] == pytest.approx(float(np.std(logs, ddof=1)))
    assert power["seeds_for_ratio_0.7"] == seeds_needed(power["sd_log_ratio"], 0.7) == 2
    assert power["seeds_for_ratio_0.342"] == 2


def test_power_leaves_out_an_algorithm_identical_to_the_reference(tmp_path: Path) -> None:
    """A copy of flow-grpo (ratio exactly 1 on every seed, as op-grpo-no-replay) would add 2 degrees of
    freedom of zero spread; it is named in ``identical`` and left out of the sd."""
    runs = tmp_path / "runs"
    for seed, (flow, op) in enumerate([(40, 20), (60, 30), (50, 20)]):
        write_run(runs, "flow-grpo", seed, flow)
        write_run(runs, "op-grpo", seed, op)
        write_run(runs, "op-grpo-no-replay", seed, flow)
    (task,) = compute_tasks(load_runs(runs).runs)
    power = task["power"]
    assert power["algorithms"] == ["op-grpo"] and power["identical"] == ["op-grpo-no-replay"]
    logs = [math.log(0.5), math.log(0.5), math.log(0.4)]
    assert (power["sd_log_ratio"], power["df"]) == (pytest.approx(float(np.std(logs, ddof=1))), 2)


def test_power_is_na_without_shared_seeds(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "flow-grpo", 0, 40)
    write_run(runs, "op-grpo", 1, 20)
    (task,) = compute_tasks(load_runs(runs).runs)
    assert task["power"]["sd_log_ratio"] is None and task["power"]["seeds_for_ratio_0.7"] is None
    assert "sd is unknown" in task["power"]["note"]


# ----------------------------------------------------------------------------------------------------
# Across task versions


def test_aggregate_over_two_task_versions(suite: Path) -> None:
    for algorithm, seed, reach in [("flow-grpo", 0, 60), ("flow-grpo", 1, 80), ("flow-grpo", 2, None),
                                   ("op-grpo", 0, 30), ("op-grpo", 1, 40), ("op-grpo", 2, 70)]:
        write_run(suite, algorithm, seed, reach, task="alpha-v1")
    runs = load_runs(suite).runs
    entries = {e["algorithm"]: e for e in compute_aggregate(runs)}
    assert set(entries) == {"flow-grpo", "op-grpo"}  # op-grpo-no-replay ran one task version only
    op = entries["op-grpo"]
    assert op["tasks"] == ["alpha-v1", "toy-v1"] and op["seeds"] == 7
    # pooled per-seed ratios: alpha 0.5 0.5 0.7 (70 / censored 100), toy 0.5 0.5 0.4 0.5
    assert op["speedup_vs_flow_grpo"] == 0.5 and op["speedup_censored"] is True
    # alpha: 30 and 40 beat all three flow-grpo runs, 70 beats 80 and the censored one: 8/9
    assert op["prob_improvement"] == pytest.approx((8 / 9 + 14.5 / 16) / 2)
    # AUCs 0.85 0.8 0.65 and 0.9 0.85 0.9 0.75: seven values, one cut from each end
    assert op["auc"] == pytest.approx((0.75 + 0.8 + 0.85 + 0.85 + 0.9) / 5)
    assert entries["flow-grpo"]["speedup_method"] == "reference"
