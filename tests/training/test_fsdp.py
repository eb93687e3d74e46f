"""FSDP: the frozen base weights sharded over 2 gloo processes, with the numbers of the unsharded run.

``micro_batch=3`` over 8 rows and one optimizer step per iteration makes 3 blocks, so rank 0 samples and
trains two blocks and rank 1 one: rank 1 must run idle calls to keep the weight gathers in step (without
them the run hangs). The records equal the unsharded 2-process run's exactly; against the 1-process
run the first step agrees to data parallelism's tolerance (the gradient is summed in another order).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from opgrpo_bench.runner import find_run_dir

from test_data_parallel import _compare, _run

UNEVEN = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4", "micro_batch=3",
          "optimizer_steps_per_iter=1", "replay_proportion=0.5"]


def _run_fsdp(out, steps: int, algorithm: str = "op-grpo", sets=UNEVEN):
    argv = [sys.executable, "-m", "opgrpo_bench.cli", "run", "-t", "digits-v1", "-a", algorithm, "-s", "0",
            "--steps", str(steps), "--out", str(out), "--num-processes", "2", "--fsdp"]
    for item in sets:
        argv += ["--set", item]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    from opgrpo_bench.results import read_records

    return read_records(find_run_dir(out, "digits-v1", algorithm, 0) / "metrics.jsonl")


# git_sha too: the two runs are separate processes, and a commit between them (while the suite runs in a
# working copy) must not fail the comparison of their numbers
WALL_CLOCK = ("wall_s", "start_time", "wall_s_to_target", "fsdp", "device", "git_sha")


def _without_wall_clock(records):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in records]


@pytest.mark.train
def test_fsdp_gives_the_unsharded_runs_records(tmp_path):
    """Same 2 processes, same blocks per rank, same gradient sum: sharding changes where the weights live,
    not one number (the gathered weights are the same values; idle calls add exact zeros)."""
    ddp = _run(tmp_path / "ddp", 2, steps=3, sets=UNEVEN)
    two = _run_fsdp(tmp_path / "fsdp", steps=3)
    assert two[0]["fsdp"] is True and two[0]["world_size"] == 2 and ddp[0]["fsdp"] is False
    assert two[0]["config_hash"] == ddp[0]["config_hash"]  # sharding is not a setting
    assert _without_wall_clock(two) == _without_wall_clock(ddp)
    # rank 0 exported the whole LoRA weights: the unsharded run's adapters, tensor for tensor
    from safetensors.torch import load_file

    for folder in ("lora", "lora_ema"):
        name = f"{folder}/pytorch_lora_weights.safetensors"
        sharded = load_file(find_run_dir(tmp_path / "fsdp", "digits-v1", "op-grpo", 0) / name)
        whole = load_file(find_run_dir(tmp_path / "ddp", "digits-v1", "op-grpo", 0) / name)
        assert sharded.keys() == whole.keys() and sharded
        assert all(bool((sharded[k] == whole[k]).all()) for k in whole)


@pytest.mark.train
@pytest.mark.multi_process
def test_fsdp_first_step_matches_one_process(tmp_path):
    one = _run(tmp_path / "one", 1, steps=3, sets=UNEVEN)
    two = _run_fsdp(tmp_path / "fsdp", steps=3)
    first1, first2 = (next(r for r in recs if r["type"] == "step") for recs in (one, two))
    for key in ("loss/total", "grad_norm", "train/reward_mean"):
        assert first1[key] == pytest.approx(first2[key], rel=1e-5, abs=1e-9), key
    evals1, evals2 = ([r for r in recs if r["type"] == "eval"] for recs in (one, two))
    assert evals1[0]["score"] == evals2[0]["score"]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(evals1, evals2)) < 1e-4


@pytest.mark.train
@pytest.mark.multi_process
def test_fsdp_forward_process_objective(tmp_path):
    """DiffusionNFT's update (a no-gradient call under the sampling weights, then a call with gradient per
    training point) also stays in step when the ranks own different numbers of blocks."""
    sets = [x for x in UNEVEN if not x.startswith("replay_proportion")]
    one = _run(tmp_path / "one", 1, steps=3, algorithm="diffusion-nft", sets=sets)
    two = _run_fsdp(tmp_path / "fsdp", steps=3, algorithm="diffusion-nft", sets=sets)
    _compare(one, two, keys=("loss/total", "grad_norm", "train/reward_mean", "nfe", "nft/velocity_drift"))


SHARD_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from opgrpo_bench.distributed import Distributed
    from opgrpo_bench.registry import TASKS

    dist = Distributed.from_environment()
    backbone = TASKS.get("digits-v1").build_backbone()
    backbone.add_lora(4, 8)
    lora = backbone.trainable_parameters()
    whole = sum(p.numel() for p in backbone.transformer.parameters() if not p.requires_grad)
    units = dist.shard_frozen(backbone.transformer, lora)
    local = sum(p.to_local().numel() for p in backbone.transformer.parameters() if not p.requires_grad)
    plain = all(type(p) is torch.nn.Parameter for p in backbone.trainable_parameters())
    if dist.is_main:
        json.dump({"units": units, "whole": whole, "local": local, "lora_plain": plain,
                   "lora_same": [id(p) for p in lora] == [id(p) for p in backbone.trainable_parameters()]},
                  open(sys.argv[1], "w"))
""")


def test_each_rank_holds_half_the_base_weights(tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT)
    out = tmp_path / "shard.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_FSDP": "true"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(out.read_text())
    assert found["units"] >= 2  # the transformer blocks, then the model
    assert found["lora_plain"] and found["lora_same"]  # LoRA weights whole, the same objects the optimizer holds
    # dim-0 sharding pads odd sizes up, so half of the whole, give or take a row per tensor
    assert 0.49 * found["whole"] <= found["local"] <= 0.55 * found["whole"], found


@pytest.mark.train
@pytest.mark.multi_process
def test_the_packaged_fsdp_config_through_accelerate_launch(tmp_path):
    """``accelerate launch --config_file .../fsdp-gpus.yaml`` (2 processes; gloo on a CPU machine) shards
    like ``--fsdp`` and gives the same records."""
    from importlib.resources import files

    from opgrpo_bench.results import read_records

    config = files("opgrpo_bench") / "configs" / "accelerate" / "fsdp-gpus.yaml"
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes",
            "2", "-m", "opgrpo_bench.cli", "run", "-t", "digits-v1", "-a", "op-grpo", "-s", "0", "--steps", "3",
            "--out", str(tmp_path / "acc")]
    for item in UNEVEN:
        argv += ["--set", item]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    launched = read_records(find_run_dir(tmp_path / "acc", "digits-v1", "op-grpo", 0) / "metrics.jsonl")
    assert launched[0]["fsdp"] is True and launched[0]["world_size"] == 2
    assert _without_wall_clock(launched) == _without_wall_clock(_run_fsdp(tmp_path / "flag", steps=3))
