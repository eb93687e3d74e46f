"""Damaged or oversized results files met by run, eval and the leaderboard: one line naming the file, exit 2,
nothing changed; a gzip bomb is refused in bounded memory."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opgrpo_bench.leaderboard.load import load_runs
from opgrpo_bench.results import MAX_RESULTS_BYTES, PACKED_FILE, ResultsFileError, pack_run, read_bytes
from opgrpo_bench.runner import find_run_dir, run_one

from small import FAST

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def packed_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed")
    run_one("digits-v1", "flow-grpo", 0, out=out, steps=2, sets=FAST)
    run_dir = find_run_dir(out, "digits-v1", "flow-grpo", 0)
    pack_run(run_dir)
    return run_dir


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opgrpo_bench.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("damage", ["truncated", "not-gzip"])
def test_a_damaged_packed_file_is_one_line_naming_it(packed_run, tmp_path, damage):
    run_dir = tmp_path / packed_run.name
    shutil.copytree(packed_run, run_dir)
    gz = run_dir / PACKED_FILE
    data = gz.read_bytes()
    gz.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"plain text, not gzip\n")
    before = gz.read_bytes()
    for args in (["eval", str(run_dir)],
                 ["run", "-t", "digits-v1", "-a", "flow-grpo", "-s", "0", "--steps", "2", "--out", str(tmp_path),
                  *[x for s in FAST for x in ("--set", s)]]):
        done = _cli(*args)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, done.stderr
        assert lines and lines[-1].startswith("error: ") and str(gz) in lines[-1] and "damaged" in lines[-1], done.stderr
        assert "Traceback" not in done.stderr and "aborted" not in done.stderr
    assert gz.read_bytes() == before
    issues = load_runs(tmp_path).issues  # the leaderboard skips it with a warning naming it
    assert any(str(gz) == i.path and "damaged" in i.message for i in issues)


def test_a_gzip_bomb_is_refused_in_bounded_memory(tmp_path):
    bomb = tmp_path / "run" / PACKED_FILE
    bomb.parent.mkdir()
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        chunk = b"0" * 2**20
        for _ in range(MAX_RESULTS_BYTES // 2**20 + 8):  # just past the limit; real bombs are far larger
            f.write(chunk)
    assert bomb.stat().st_size < 2 * 2**20
    with pytest.raises(ResultsFileError, match="expands to more than"):
        read_bytes(bomb)
    with pytest.raises(ResultsFileError, match="expands to more than"):
        read_bytes(bomb, limit=2**20)


@pytest.mark.parametrize("change, needle", [
    ({"num_threads": -3}, "num_threads=-3"),
    ({"eval_num_steps": 10_000_000}, "eval_num_steps=10000000"),
    ({"eval_guidance": "strong"}, "eval_guidance"),
    ({"micro_batch": [1, 2]}, "micro_batch"),
])
def test_hostile_recorded_settings_are_refused_by_eval_before_any_model_loads(packed_run, tmp_path, change, needle):
    import json

    run_dir = tmp_path / packed_run.name
    shutil.copytree(packed_run, run_dir)
    records = [json.loads(line) for line in read_bytes(run_dir / PACKED_FILE).decode().splitlines()]
    records[0]["config"]["train"].update(change)
    (run_dir / PACKED_FILE).unlink()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    done = _cli("eval", str(run_dir))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and needle in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("edit, needle", [
    (lambda s: s["state"].update(step="2"), "'step' is '2'"),
    (lambda s: s.update(state=[1, 2]), "cannot resume"),
    (lambda s: s["state"].update(wall_s=-1.0), "'wall_s' is -1.0"),
])
def test_a_hand_edited_checkpoint_header_is_one_line(tmp_path, edit, needle):
    from opgrpo_bench.checkpoint import load_state, save_state
    from opgrpo_bench.errors import UserError

    run_one("digits-v1", "flow-grpo", 0, out=tmp_path, steps=2, sets=FAST)
    run_dir = find_run_dir(tmp_path, "digits-v1", "flow-grpo", 0)
    state = load_state(run_dir / "checkpoint.safetensors")
    edit(state)
    save_state(run_dir / "checkpoint.safetensors", state)
    before = (run_dir / "metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match="cannot resume") as err:
        run_one("digits-v1", "flow-grpo", 0, out=tmp_path, steps=4, sets=FAST)  # a larger budget continues
    assert needle in str(err.value) and "\n" not in str(err.value) and "--fresh" in str(err.value)
    assert (run_dir / "metrics.jsonl").read_bytes() == before


def test_eval_names_another_schema_version(packed_run, tmp_path):
    import json

    run_dir = tmp_path / packed_run.name
    shutil.copytree(packed_run, run_dir)
    records = [json.loads(line) for line in read_bytes(run_dir / PACKED_FILE).decode().splitlines()]
    for r in records:
        r["schema"] = "opgrpo-bench/v9"
    (run_dir / PACKED_FILE).unlink()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    done = _cli("eval", str(run_dir))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "written by schema 'opgrpo-bench/v9'" in lines[0], done.stderr


def test_with_several_processes_a_locked_run_and_a_smaller_budget_are_one_line(tmp_path):
    """Checked before the ranks start: a run another process is writing, or finished with a larger budget."""
    out = tmp_path / "runs"
    run_one("digits-v1", "flow-grpo", 0, out=out, steps=4, sets=FAST)
    run_dir = find_run_dir(out, "digits-v1", "flow-grpo", 0)
    args = ["run", "-t", "digits-v1", "-a", "flow-grpo", "-s", "0", "--out", str(out), "--num-processes", "2",
            *[x for s in FAST for x in ("--set", s)]]
    done = _cli(*args, "--steps", "2")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "budget of 4 steps" in lines[0], done.stderr
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom opgrpo_bench.results import RunLock\n"
                               f"with RunLock({str(run_dir)!r}):\n    print('locked', flush=True)\n    time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # the lock is held from here on
        done = _cli(*args, "--steps", "6")
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1 and "being written by another process" in lines[0], \
            done.stderr
    finally:
        holder.kill()
        holder.wait()
