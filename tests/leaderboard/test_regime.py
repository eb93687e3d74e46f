"""The regime map (task families by training-pool size) and the per-step log-ratio profiles, against
values computed by hand from synthetic runs (lb_synth.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from opgrpo_bench.leaderboard import build_leaderboard
from opgrpo_bench.leaderboard.load import load_runs
from opgrpo_bench.leaderboard.regime import pool_family, regime_map
from opgrpo_bench.leaderboard.rows import compute_rows

from lb_synth import write_run


@pytest.mark.parametrize("task, expected", [
    ("digits-number-pool20-v1", ("digits-number-v1", 20)),
    ("digits-number-pool100-v1", ("digits-number-v1", 100)),
    ("digits-number-v1", ("digits-number-v1", None)),  # the full pool: no pool part
    ("toy-pool5", ("toy", 5)),  # the pool part may end the id
    ("whirlpool20-v1", ("whirlpool20-v1", None)),  # "pool" must be its own part
    ("toy-poolside-v1", ("toy-poolside-v1", None)),
    ("toy-pool05-v1", ("toy-pool05-v1", None)),  # no leading zero: 05 and 5 would be one pool
    ("pool20-v1", ("pool20-v1", None)),  # nothing left once the part is removed
    ("a-pool1-pool2-v1", ("a-pool1-pool2-v1", None)),  # two pool parts: not a member of any family
])
def test_pool_family(task: str, expected: tuple[str, int | None]) -> None:
    assert pool_family(task) == expected


def _age_cycle(step: int) -> float | None:
    """1, 2, 3 repeating, null every fourth step (no replay): per-run median 2."""
    return None if step % 4 == 0 else float(step % 4)


def write_family(root: Path) -> Path:
    """``fam-pool20-v1`` (20 prompts) and ``fam-v1`` (800) with flow-grpo and op-grpo x seeds 0, 1, and a
    lone ``solo-pool5-v1`` (one pool size: no map).

    | task          | flow-grpo reaches | op-grpo reaches | op-grpo replay age (seed 0, seed 1)  |
    |---------------|-------------------|-----------------|--------------------------------------|
    | fam-pool20-v1 | 40, 60            | 20, 30          | 1, 2, 3 cycling (median 2); 12       |
    | fam-v1        | 40, 60            | 40, 30          | 15; not logged                       |

    op-grpo step records log ``op/logw_min`` -1 and ``op/logw_max`` 1 + seed (spread 2 and 3), median 0.
    """
    ages = {("fam-pool20-v1", 0): _age_cycle, ("fam-pool20-v1", 1): lambda step: 12.0,
            ("fam-v1", 0): lambda step: 15.0, ("fam-v1", 1): None}
    for task, pool, op_reach in (("fam-pool20-v1", 20, (20, 30)), ("fam-v1", 800, (40, 30))):
        for seed, (flow, op) in enumerate(zip((40, 60), op_reach)):
            write_run(root, "flow-grpo", seed, flow, task=task, num_train_prompts=pool)
            write_run(root, "op-grpo", seed, op, task=task, num_train_prompts=pool, replay_age=ages[(task, seed)])
    write_run(root, "flow-grpo", 0, 40, task="solo-pool5-v1", num_train_prompts=5)
    write_run(root, "op-grpo", 0, 20, task="solo-pool5-v1", num_train_prompts=5)
    return root


@pytest.fixture(scope="module")
def family_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    base = tmp_path_factory.mktemp("regime")
    runs = write_family(base / "runs")
    out = base / "out"
    return out, build_leaderboard(runs, out, warn=lambda message: None)


def test_regime_map_by_hand(family_report: tuple[Path, dict[str, Any]]) -> None:
    _, doc = family_report
    (family,) = doc["regime_map"]  # solo-pool5-v1 has one pool size: not mapped
    assert (family["family"], family["label"], family["algorithm"], family["reference_algorithm"]) == (
        "fam-v1", "fam-v1", "op-grpo", "flow-grpo")
    small, full = family["pools"]
    assert (small["task"], small["pool_size"], small["pool_size_source"]) == ("fam-pool20-v1", 20,
                                                                             "num_train_prompts")
    assert (full["task"], full["pool_size"], full["pool_size_source"]) == ("fam-v1", 800, "num_train_prompts")
    assert (small["seeds"], small["reference_seeds"]) == (2, 2)
    # steps ratio: per-seed 20/40, 30/60 = 0.5, 0.5 -> 0.5 (every resample too); 40/40, 30/60 -> 0.75
    assert (small["speedup_vs_flow_grpo"], small["speedup_ci_low"], small["speedup_ci_high"]) == (0.5, 0.5, 0.5)
    assert full["speedup_vs_flow_grpo"] == 0.75
    assert small["speedup_method"] == "paired" and not small["speedup_censored"]
    # P(fewer steps): {20, 30} vs {40, 60} wins all 4 pairs; {40, 30} vs {40, 60}: (½ + 1 + 1 + 1) / 4
    assert (small["prob_improvement"], small["prob_improvement_ci_low"], small["prob_improvement_ci_high"]) == (
        1.0, 1.0, 1.0)
    assert full["prob_improvement"] == 0.875
    # replay age: per-run medians 2 and 12 -> 7; on fam-v1 only seed 0 logs it (15)
    assert (small["replay_age_median"], small["replay_age_runs"]) == (7.0, 2)
    assert (full["replay_age_median"], full["replay_age_runs"]) == (15.0, 1)
    # over the second half (steps 51-100) the cycle's median is still 2, the constants stay
    assert (small["replay_age_late_median"], full["replay_age_late_median"]) == (7.0, 15.0)
    # log w spread: 100 records of 2 and 100 of 3, pooled -> 2.5; |logw_median| is 0 everywhere
    assert (small["logw_spread_median"], small["logw_median_abs"], small["logw_records"]) == (2.5, 0.0, 200)


def test_regime_map_reuses_the_row_statistics(family_report: tuple[Path, dict[str, Any]]) -> None:
    _, doc = family_report
    rows = {(r["task"], r["algorithm"]): r for r in doc["rows"]}
    for pool in doc["regime_map"][0]["pools"]:
        row = rows[(pool["task"], "op-grpo")]
        for key in ("speedup_vs_flow_grpo", "speedup_ci_low", "speedup_ci_high", "prob_improvement",
                    "prob_improvement_ci_low", "prob_improvement_ci_high"):
            assert pool[key] == row[key], key


def test_regime_map_in_markdown_and_html(family_report: tuple[Path, dict[str, Any]]) -> None:
    out, doc = family_report
    md = (out / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert "## Regime map: when does replay pay off?" in md
    assert "### fam-v1: op-grpo against flow-grpo by training-pool size" in md
    assert ("| 20 | fam-pool20-v1 | 2 / 2 | 0.50× [0.50–0.50] | 1.00 [1.00–1.00] | 7 (2 runs) | 7 | 2.50e+00 | "
            "0.00e+00 |") in md
    assert "| 800 | fam-v1 | 2 / 2 | 0.75× [" in md
    html = (out / "index.html").read_text(encoding="utf-8")
    section = html.split('<section id="regime">')[1].split("</section>")[0]
    assert '<table class="regime">' in section
    assert re.findall(r'<img class="plot" id="([^"]+)"', section) == ["regime-fam-v1"]
    assert [f["id"] for f in doc["figures"] if f["kind"] == "regime"] == ["regime-fam-v1"]
    # the regime map is the first figure on the page and in the JSON's list
    assert re.findall(r'<img class="plot" id="([^"]+)"', html)[0] == doc["figures"][0]["id"] == "regime-fam-v1"
    assert json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))["regime_map"] == doc["regime_map"]


def test_late_replay_age_reads_the_second_half_of_each_run(tmp_path: Path) -> None:
    """A buffer that fills during the run: replay age = step (1..100). Whole run: median 50.5; second
    half (steps 51..100): 75.5."""
    runs = tmp_path / "runs"
    for task, pool in (("ramp-pool20-v1", 20), ("ramp-v1", 800)):
        write_run(runs, "flow-grpo", 0, 40, task=task, num_train_prompts=pool)
        write_run(runs, "op-grpo", 0, 30, task=task, num_train_prompts=pool, replay_age=float)
    doc = build_leaderboard(runs, tmp_path / "out", warn=lambda message: None)
    for pool in doc["regime_map"][0]["pools"]:
        assert (pool["replay_age_median"], pool["replay_age_late_median"]) == (50.5, 75.5)


def test_pool_size_falls_back_to_the_id(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for task in ("fam-pool20-v1", "fam-v1"):  # neither records num_train_prompts
        write_run(runs, "flow-grpo", 0, 40, task=task)
        write_run(runs, "op-grpo", 0, 20, task=task)
    loaded = load_runs(runs).runs
    (family,) = regime_map(loaded, compute_rows(loaded))
    small, full = family["pools"]
    assert (small["pool_size"], small["pool_size_source"]) == (20, "task id")
    assert "no run records num_train_prompts" in small["pool_size_note"]
    assert (full["task"], full["pool_size"], full["pool_size_source"]) == ("fam-v1", None, None)  # unknown: last
    assert full["replay_age_median"] is None and full["replay_age_runs"] == 0


def test_no_family_without_two_pool_sizes(suite: Path, tmp_path: Path) -> None:
    doc = build_leaderboard(suite, tmp_path / "out", warn=lambda message: None)
    assert doc["regime_map"] == []
    md = (tmp_path / "out" / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert "No task family has finished runs at two or more training-pool sizes yet." in md
    assert not [f for f in doc["figures"] if f["kind"] == "regime"]


def test_logratio_profile_in_json(built_report: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, doc = built_report
    data = json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))
    # only op-grpo logs op/logratio_by_step; 4 finished seeds x 100 step records, values at k = 0..5
    # (k = 6..9 are null in every record: after the replayed prefix)
    assert set(data["logratio_profiles"]) == {"toy-v1"}
    profile = data["logratio_profiles"]["toy-v1"]["op-grpo"]
    assert profile["mean"] == pytest.approx([0.0, -0.01, -0.02, -0.05, -0.1, -0.3])
    assert profile["n"] == [400] * 6
    assert data == json.loads(json.dumps(doc))
    md = (out / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert "| toy-v1 | op-grpo | 0.00e+00 | -1.00e-02 | -2.00e-02 | -5.00e-02 | -1.00e-01 | -3.00e-01 |" in md
