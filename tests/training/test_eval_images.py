"""Every evaluation leaves an image grid of its first samples (fixed noises, so grids of two runs or two steps
show the same prompts from the same starting points), and ``opgrpo-bench eval --save-images`` draws the grid
of a saved adapter: the EMA adapter's grid is the run's last one, byte for byte."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from opgrpo_bench.images import IMAGES_DIR, TILE
from opgrpo_bench.runner import find_run_dir, run_one

from small import FAST

pytestmark = pytest.mark.train


def test_each_eval_leaves_a_grid_and_eval_redraws_the_last(tmp_path):
    run_one("digits-v1", "flow-grpo", 0, out=tmp_path / "a", steps=4, sets=FAST)
    run_one("digits-v1", "op-grpo", 0, out=tmp_path / "b", steps=2, sets=FAST)
    a = find_run_dir(tmp_path / "a", "digits-v1", "flow-grpo", 0)
    b = find_run_dir(tmp_path / "b", "digits-v1", "op-grpo", 0)
    grids = sorted(p.name for p in (a / IMAGES_DIR).iterdir())
    assert grids == ["step000000.png", "step000002.png", "step000004.png"]  # eval_every=2
    with Image.open(a / IMAGES_DIR / "step000000.png") as img:
        assert img.mode == "L" and img.width >= 4 * TILE  # 16 digits, 4 per row, enlarged to 128 px
    # same task, same fixed noises, the same base model before any update: the same picture
    assert (a / IMAGES_DIR / "step000000.png").read_bytes() == (b / IMAGES_DIR / "step000000.png").read_bytes()
    assert (a / IMAGES_DIR / "step000004.png").read_bytes() != (a / IMAGES_DIR / "step000000.png").read_bytes()
    out = tmp_path / "redrawn.png"
    done = subprocess.run([sys.executable, "-m", "opgrpo_bench.cli", "eval", str(a), "--save-images", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == (a / IMAGES_DIR / "step000004.png").read_bytes()
