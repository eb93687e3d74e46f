"""The committed leaderboard is a pure function of the committed results files.

``opgrpo-bench leaderboard leaderboard/runs --out DIR`` must rebuild ``leaderboard/leaderboard.json`` and
``leaderboard/LEADERBOARD.md`` byte for byte (the statistics use fixed bootstrap seeds; wall-clock fields
come from the same files, so they match too).
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "leaderboard" / "runs"


@pytest.mark.skipif(not RUNS.is_dir(), reason="no committed results files")
def test_committed_leaderboard_is_rebuilt_from_its_runs(tmp_path):
    subprocess.run([sys.executable, "-m", "opgrpo_bench.cli", "leaderboard", "leaderboard/runs", "--out",
                    str(tmp_path)], cwd=ROOT, check=True, capture_output=True, timeout=300)
    for name in ("leaderboard.json", "LEADERBOARD.md"):
        assert (tmp_path / name).read_bytes() == (ROOT / "leaderboard" / name).read_bytes(), name


@pytest.mark.skipif(not RUNS.is_dir(), reason="no committed results files")
def test_committed_results_fit_their_25_mb_budget():
    from opgrpo_bench.results import METRICS_FILE, PACKED_FILE

    files = [p for name in (METRICS_FILE, PACKED_FILE) for p in RUNS.rglob(name)]
    assert files and sum(p.stat().st_size for p in files) <= 25_000_000


@pytest.mark.skipif(not RUNS.is_dir(), reason="no committed results files")
def test_the_committed_runs_are_the_reference_suite():
    """``opgrpo-bench run --suite reference`` names exactly the committed runs, so the command in README
    regenerates them all and nothing committed is left out of it."""
    from opgrpo_bench.results import METRICS_FILE, PACKED_FILE
    from opgrpo_bench.suite import SUITES

    committed = {p.parent.name for name in (METRICS_FILE, PACKED_FILE) for p in RUNS.glob(f"*/{name}")}
    suite = {f"{t}__{a}__seed{s}" for t, a, s in SUITES["reference"].combos()}
    assert committed == suite
