"""--log tensorboard / wandb: copies of the JSONL records, which stay the source of truth."""

import json

import pytest

from opgrpo_bench.errors import UserError
from opgrpo_bench.mirrors import check_mirrors
from opgrpo_bench.results import read_records
from opgrpo_bench.runner import find_run_dir, run_one

from small import FAST


def test_tensorboard_holds_the_records_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_one("digits-v1", "flow-grpo", 0, out=tmp_path, steps=2, sets=FAST, log=["tensorboard"])
    run_dir = find_run_dir(tmp_path, "digits-v1", "flow-grpo", 0)
    records = read_records(run_dir / "metrics.jsonl")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("step/loss/total")]
    assert loss == [(r["step"], pytest.approx(r["loss/total"])) for r in records if r["type"] == "step"]
    score = [(e.step, e.value) for e in events.Scalars("eval/score")]
    assert score == [(r["step"], pytest.approx(r["score"])) for r in records if r["type"] == "eval"]
    assert "gold/correct" in events.Tags()["scalars"]


def test_wandb_offline_run_has_the_last_eval(tmp_path):
    pytest.importorskip("wandb")
    run_one("digits-v1", "flow-grpo", 0, out=tmp_path, steps=2, sets=FAST, log=["wandb"])
    run_dir = find_run_dir(tmp_path, "digits-v1", "flow-grpo", 0)
    last = [r for r in read_records(run_dir / "metrics.jsonl") if r["type"] == "eval"][-1]
    logs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1  # offline: a local log for `wandb sync`, nothing sent
    data = logs[0].read_bytes()  # wandb's record log holds each logged value as JSON text
    assert b"eval/score" in data and json.dumps(last["score"]).encode() in data


def test_unknown_mirror_is_one_line():
    with pytest.raises(UserError, match="unknown --log 'tensorbord'. Did you mean: tensorboard"):
        check_mirrors(["tensorbord"])
