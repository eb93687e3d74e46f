"""A finished run's adapters: diffusers LoRA files that reproduce the run's last evaluation.

The eval command and the trainer share one evaluation (:class:`opgrpo_bench.evaluation.Evaluator`) with
the same shapes and code path, so the re-evaluated score must equal the recorded one exactly.
"""

import json

import pytest
import torch
from safetensors import safe_open

from opgrpo_bench import cli
from opgrpo_bench.export import WEIGHT_NAME
from opgrpo_bench.results import read_records
from opgrpo_bench.runner import find_run_dir, run_one

from small import FAST


def _last_eval(run_dir):
    return [r for r in read_records(run_dir / "metrics.jsonl") if r["type"] == "eval"][-1]


def _eval_cli(argv, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["opgrpo-bench", *argv])
    code = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr().out
    assert code in (0, None), out
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.train
def test_digits_run_saves_adapters_that_the_eval_command_scores_like_the_run(tmp_path, monkeypatch, capsys):
    run_one("digits-v1", "op-grpo", 0, out=tmp_path, steps=4, sets=FAST)
    run_dir = find_run_dir(tmp_path, "digits-v1", "op-grpo", 0)
    for folder in ("lora", "lora_ema"):
        with safe_open(str(run_dir / folder / WEIGHT_NAME), "pt") as f:
            keys = list(f.keys())
            config = json.loads(f.metadata()["lora_adapter_metadata"])  # the LoraConfig, keys prefixed
        assert keys and all(k.startswith("transformer.") and ".lora_" in k for k in keys)
        assert config["transformer.r"] == 16 and config["transformer.lora_alpha"] == 32
    last = _last_eval(run_dir)
    got = _eval_cli(["eval", str(run_dir), "--json"], monkeypatch, capsys)
    assert last["step"] == 4 and got["score"] == last["score"] and got["gold"] == last["gold"]
    assert got["eval/correct"] == last["eval/correct"] and got["task"] == "digits-v1"
    # the final (non-EMA) weights differ from the EMA ones after 4 steps, and so does their score
    final = _eval_cli(["eval", str(run_dir), "--adapter", "final", "--json"], monkeypatch, capsys)
    assert final["score"] != got["score"]
    # another task with the same base model: its own eval prompts
    other = _eval_cli(["eval", str(run_dir), "--task", "digits-sparse-v1", "--json"], monkeypatch, capsys)
    assert other["task"] == "digits-sparse-v1" and other["run_task"] == "digits-v1" and 0 <= other["score"] <= 1


@pytest.mark.train
def test_tiny_sd3_adapter_loads_into_the_diffusers_pipeline(tmp_path):
    """``StableDiffusion3Pipeline.load_lora_weights`` takes the EMA adapter; evaluating that pipeline's
    transformer gives the run's last eval score."""
    from opgrpo_bench.evaluation import Evaluator
    from opgrpo_bench.registry import REWARDS, TASKS

    run_one("tiny-sd3-jpeg-v1", "flow-grpo", 0, out=tmp_path, steps=2,
            sets=["eval_every=2", "prompts_per_iter=2", "group_size=4"])
    run_dir = find_run_dir(tmp_path, "tiny-sd3-jpeg-v1", "flow-grpo", 0)
    task = TASKS.get("tiny-sd3-jpeg-v1")
    train = read_records(run_dir / "metrics.jsonl")[0]["config"]["train"]
    torch.set_num_threads(train["num_threads"])
    backbone = task.build_backbone()  # through StableDiffusion3Pipeline.from_pretrained
    before = {n: p.clone() for n, p in backbone.transformer.named_parameters()}
    backbone.pipeline.load_lora_weights(str(run_dir / "lora_ema"))
    lora = [n for n, _ in backbone.transformer.named_parameters() if "lora_" in n]
    assert lora and all(torch.equal(p, before[n]) for n, p in backbone.transformer.named_parameters() if n in before)
    with torch.no_grad():
        got = Evaluator(task, backbone, REWARDS.get(task.reward)(**task.reward_args), None,
                        train["eval_num_steps"], train["eval_guidance"])()
    assert got["score"] == _last_eval(run_dir)["score"]


def test_evaluation_in_slices_gives_the_same_score(monkeypatch):
    """Video-sized eval sets are sampled, decoded and scored in slices; the mean must not depend on it
    (up to rounding: other batch sizes may round differently)."""
    import opgrpo_bench.evaluation as evaluation
    from opgrpo_bench.registry import REWARDS, TASKS

    task = TASKS.get("digits-v1")
    backbone = task.build_backbone()
    reward = REWARDS.get(task.reward)(**task.reward_args)
    gold = REWARDS.get(task.gold_reward)(**task.gold_reward_args)
    whole = evaluation.Evaluator(task, backbone, reward, gold, 4, 1.0)()
    monkeypatch.setattr(evaluation, "SLICE", 7)  # 80 samples: 11 slices, the last one of 3
    sliced = evaluation.Evaluator(task, backbone, reward, gold, 4, 1.0)()
    assert set(sliced) == set(whole)
    assert all(abs(sliced[k] - whole[k]) < 1e-5 for k in whole)


@pytest.mark.train
def test_a_fresh_run_interrupted_early_leaves_no_adapters_of_the_run_it_replaced(tmp_path):
    """``--fresh`` over a finished run, killed before its end: the old run's adapters must not remain beside
    the new run's records (``eval`` would score them as the new run's)."""
    import pytest

    from opgrpo_bench.errors import RunInterrupted

    run_one("digits-v1", "flow-grpo", 0, out=tmp_path, steps=2, sets=FAST)
    run_dir = find_run_dir(tmp_path, "digits-v1", "flow-grpo", 0)
    assert (run_dir / "lora" / WEIGHT_NAME).exists() and (run_dir / "lora_ema" / WEIGHT_NAME).exists()

    def interrupt(record):
        if record["type"] == "step":
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted):
        run_one("digits-v1", "flow-grpo", 0, out=tmp_path, steps=4, sets=FAST, resume=False, progress=interrupt)
    assert not (run_dir / "lora").exists() and not (run_dir / "lora_ema").exists()
    assert [r["type"] for r in read_records(run_dir / "metrics.jsonl")][-1] == "step"
