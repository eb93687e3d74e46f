"""Packed runs (``opgrpo-bench pack``): a finished run's ``metrics.jsonl`` becomes ``metrics.jsonl.gz`` with
the same bytes, and every reader (runner, leaderboard, ``eval``) treats it as the same finished run."""

import gzip
import shutil
import subprocess
import sys

import pytest

from opgrpo_bench.errors import UserError
from opgrpo_bench.leaderboard.load import load_runs
from opgrpo_bench.results import METRICS_FILE, PACKED_FILE, RunLock, pack_run, pack_tree, read_records
from opgrpo_bench.runner import resolve, run_one
from opgrpo_bench.trainer import Trainer

from small import FAST

pytestmark = pytest.mark.train  # every test reads the run its module fixture trains

OP = FAST + ["eval_every=1"]
RUN = resolve("digits-v1", "op-grpo", 0, None, OP).run_id  # the run directory of these settings


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    run_one("digits-v1", "op-grpo", 0, out=out, steps=2, sets=OP)
    return out


@pytest.fixture
def packed(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    plain = (out / RUN / METRICS_FILE).read_bytes()
    assert pack_run(out / RUN) == out / RUN / PACKED_FILE
    return out, plain


def test_packing_keeps_the_bytes_and_is_reproducible(packed):
    out, plain = packed
    gz = out / RUN / PACKED_FILE
    assert not (out / RUN / METRICS_FILE).exists()
    assert gzip.decompress(gz.read_bytes()) == plain
    assert len(gz.read_bytes()) < len(plain) / 2
    # the same input packs to the same bytes (no time stamp, no file name), so git sees no change
    (out / RUN / METRICS_FILE).write_bytes(plain)
    first = gz.read_bytes()
    gz.unlink()
    pack_run(out / RUN)
    assert gz.read_bytes() == first


def test_an_unfinished_or_busy_run_is_left_as_it_is(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    path = out / RUN / METRICS_FILE
    recs = path.read_text().splitlines(keepends=True)
    path.write_text("".join(r for r in recs if '"run_end"' not in r))
    before = path.read_bytes()
    assert pack_run(out / RUN) is None and path.read_bytes() == before
    assert pack_tree(out) == ([], [path])
    shutil.copytree(finished / RUN, out / "busy")
    with RunLock(out / "busy"):
        packed, left = pack_tree(out)
    assert packed == [] and out / "busy" / METRICS_FILE in left


def test_a_packed_run_is_done_without_training_and_refuses_to_continue(packed, monkeypatch):
    out, _ = packed
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("a finished run was retrained"))
    end = run_one("digits-v1", "op-grpo", 0, out=out, steps=2, sets=OP)
    assert end == next(r for r in read_records(out / RUN / PACKED_FILE) if r["type"] == "run_end")
    before = (out / RUN / PACKED_FILE).read_bytes()
    with pytest.raises(UserError, match=f"gunzip .*{PACKED_FILE}") as err:
        run_one("digits-v1", "op-grpo", 0, out=out, steps=4, sets=OP)
    assert "\n" not in str(err.value)
    # another configuration is another result: its own directory, the packed run untouched
    monkeypatch.undo()
    run_one("digits-v1", "op-grpo", 0, out=out, steps=1, sets=OP + ["lr=0.5"])
    assert (out / RUN / PACKED_FILE).read_bytes() == before and len([p for p in out.iterdir() if p.is_dir()]) == 2


def test_plain_and_packed_side_by_side_is_refused(packed):
    out, plain = packed
    (out / RUN / METRICS_FILE).write_bytes(plain)
    with pytest.raises(UserError, match="both"):
        run_one("digits-v1", "op-grpo", 0, out=out, steps=2, sets=OP)


def test_fresh_replaces_a_packed_run(packed):
    out, _ = packed
    before = read_records(out / RUN / PACKED_FILE)[0]["start_time"]
    run_one("digits-v1", "op-grpo", 0, out=out, steps=2, sets=OP, resume=False)
    assert not (out / RUN / PACKED_FILE).exists()
    records = read_records(out / RUN / METRICS_FILE)
    assert records[0]["type"] == "run_start" and records[-1]["type"] == "run_end" and records[0]["start_time"] >= before


def test_the_leaderboard_reads_packed_runs_as_plain_ones(finished, packed):
    out, _ = packed
    plain, gz = load_runs(finished), load_runs(out)
    assert [r.key for r in gz.runs] == [r.key for r in plain.runs]
    assert [r.evals for r in gz.runs] == [r.evals for r in plain.runs] and not gz.issues
    broken = out / "broken" / PACKED_FILE
    broken.parent.mkdir()
    broken.write_bytes((out / RUN / PACKED_FILE).read_bytes()[:-20])  # cut short
    result = load_runs(out)
    assert [r.key for r in result.runs] == [r.key for r in plain.runs]
    assert any("damaged packed results file" in i.message and "broken" in i.path for i in result.issues)


def test_pack_command_and_its_bad_input(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    cli = [sys.executable, "-m", "opgrpo_bench.cli", "pack"]
    done = subprocess.run(cli + [str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "packed 1 finished run" in done.stdout
    assert (out / RUN / PACKED_FILE).is_file() and not (out / RUN / METRICS_FILE).exists()
    bad = subprocess.run(cli + [str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a directory" in bad.stderr


def test_eval_reads_a_packed_run(packed):
    from opgrpo_bench.evaluation import evaluate_saved_run

    out, _ = packed
    last = [r for r in read_records(out / RUN / PACKED_FILE) if r["type"] == "eval"][-1]
    assert evaluate_saved_run(out / RUN)["score"] == last["score"]


def test_pack_refuses_a_directory_holding_plain_and_packed_results(packed, tmp_path):
    """Another run's plain records beside a packed run: packing would overwrite the packed run with them."""
    out, plain = packed
    run_dir = out / RUN
    other = plain.replace(b'"seed": 0', b'"seed": 0').replace(b'"op-grpo"', b'"flow-grpo"')
    (run_dir / METRICS_FILE).write_bytes(other)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(UserError, match="both"):
        pack_tree(out)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    (run_dir / METRICS_FILE).unlink()
