"""The GPU-path settings: gradient checkpointing changes no number; torch.compile runs (slow on a CPU)."""

import pytest

from opgrpo_bench.results import read_records
from opgrpo_bench.runner import config_hash, resolve, run_one

from small import FAST, comparable


@pytest.mark.train
def test_gradient_checkpointing_gives_the_same_records(tmp_path):
    run_one("digits-v1", "flow-grpo", 0, out=tmp_path / "plain", steps=2, sets=FAST)
    run_one("digits-v1", "flow-grpo", 0, out=tmp_path / "ckpt", steps=2, sets=FAST + ["gradient_checkpointing=true"])
    plain, ckpt = (read_records(next((tmp_path / d).glob("*/metrics.jsonl"))) for d in ("plain", "ckpt"))
    assert "gradient_checkpointing=true" in ckpt[0]["setup"].split(",") and "gradient_checkpointing" not in plain[0]["setup"]
    drop = ("setup",)  # the run says how it was made; every number is the same
    assert comparable([{k: v for k, v in r.items() if k not in drop} for r in plain]) == \
        comparable([{k: v for k, v in r.items() if k not in drop} for r in ckpt])


def test_settings_added_later_leave_earlier_hashes_alone():
    base = config_hash(resolve("digits-v1", "flow-grpo", 0))
    assert config_hash(resolve("digits-v1", "flow-grpo", 0, None, ["compile=false"])) == base
    assert config_hash(resolve("digits-v1", "flow-grpo", 0, None, ["compile=true"])) != base
    assert config_hash(resolve("digits-v1", "flow-grpo", 0, None, ["gradient_checkpointing=true"])) != base


@pytest.mark.train
def test_bfloat16_latents_keep_the_first_ratio_exactly_one(tmp_path):
    run_one("digits-v1", "op-grpo", 0, out=tmp_path, steps=4,
            sets=FAST + ["latent_dtype=bfloat16", "trajectory_device=cpu", "replay_proportion=0.5"])
    steps = [r for r in read_records(next(tmp_path.glob("*/metrics.jsonl"))) if r["type"] == "step"]
    assert [(r["ratio/min"], r["ratio/max"]) for r in steps[::2]] == [(1.0, 1.0)] * 2  # each iteration's first
    assert all(r["loss/total"] == r["loss/total"] for r in steps)  # finite (NaN != NaN)


@pytest.mark.train
@pytest.mark.slow
def test_a_compiled_transformer_trains(tmp_path):
    run_one("digits-v1", "flow-grpo", 0, out=tmp_path, steps=2, sets=FAST + ["compile=true"])
    steps = [r for r in read_records(next(tmp_path.glob("*/metrics.jsonl"))) if r["type"] == "step"]
    assert len(steps) == 2 and abs(steps[0]["ratio/max"] - 1) < 1e-4 and abs(steps[0]["ratio/min"] - 1) < 1e-4
