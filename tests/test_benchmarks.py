"""The benchmark scripts run (numbers are read from their output, never asserted on)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.train
def test_gpu_iteration_tiny_runs_both_loops():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_iteration.py"), "--tiny", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = dict(re.findall(r"^(trainer|eager)\s+([0-9.]+)\s", done.stdout, flags=re.M))
    assert set(rows) == {"trainer", "eager"} and all(float(v) > 0 for v in rows.values())
    assert re.search(r"^eager\s.*\s1\.000$", done.stdout, flags=re.M)  # the ratio's reference row
