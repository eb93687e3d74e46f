"""benchmarks/gpu_check.py --dry-run: every check of the GPU script runs on the CPU at tiny sizes (about 30 s:
the one default-run test of this directory that is not a few seconds, because the script must stay runnable)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_passes_every_check():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = re.findall(r"^(\S+).*\s(yes|FAIL)$", done.stdout, flags=re.M)
    names = [name for name, _ in rows]
    assert all(ok == "yes" for _, ok in rows) and len(rows) == 9
    for wanted in ("iteration/sd3.5-medium", "iteration/flux.1-dev", "iteration/wan2.1-t2v-1.3b", "trainer-vs-eager",
                   "logprob"):
        assert wanted in names
    assert sum(name.startswith("plan/") for name in names) == 4
    assert done.stdout.strip().splitlines()[-1] == '{"failed": []}'


def test_gpu_check_without_a_gpu_says_so():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: no CUDA device")
