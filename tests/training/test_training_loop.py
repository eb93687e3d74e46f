"""The trainer on the real digits-v1 task, at a reduced batch size."""

import pytest
import torch

from opgrpo_bench.runner import find_run_dir, resolve, run_one
from opgrpo_bench.trainer import Trainer

from small import FAST, comparable, run_records

pytestmark = pytest.mark.train  # every test builds a Trainer


def make_trainer(tmp_path, algorithm="flow-grpo", seed=0, steps=4, sets=()):
    r = resolve("digits-v1", algorithm, seed, steps, FAST + list(sets))
    return Trainer(r.task, r.algorithm, r.train_config, tmp_path / r.run_id, algorithm_name=r.algorithm_name)


def test_on_policy_parity_ratio_is_exactly_one_before_first_update(tmp_path):
    trainer = make_trainer(tmp_path)
    rollout, shares = trainer.rollout()
    batch = trainer.algorithm.prepare(rollout)
    metrics = trainer.update(batch, [b for share in shares for b in share])
    assert metrics["train/trained_pairs"] > 0
    assert metrics["ratio/min"] == 1.0 and metrics["ratio/max"] == 1.0
    assert metrics["clipfrac/on_policy"] == 0.0


def test_trainable_parameters_change_and_frozen_ones_do_not(tmp_path):
    trainer = make_trainer(tmp_path)
    named = dict(trainer.backbone.transformer.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    text_before = {n: p.detach().clone() for n, p in trainer.backbone.prompt_encoder.text_encoder.named_parameters()}
    for _ in range(2):
        trainer.iteration()
    lora = [n for n in named if "lora_" in n]
    frozen = [n for n in named if "lora_" not in n]
    assert lora and frozen
    assert any(not torch.equal(before[n], named[n]) for n in lora)
    assert all(torch.equal(before[n], named[n]) for n in frozen)
    assert all(named[n].requires_grad for n in lora) and not any(named[n].requires_grad for n in frozen)
    for n, p in trainer.backbone.prompt_encoder.text_encoder.named_parameters():
        assert torch.equal(text_before[n], p)


def test_same_seed_gives_identical_metrics(tmp_path):
    ends = [run_one("digits-v1", "flow-grpo", 3, out=tmp_path / d, steps=4, sets=FAST) for d in ("a", "b")]
    recs = [run_records(find_run_dir(tmp_path / d, "digits-v1", "flow-grpo", 3) / "metrics.jsonl") for d in ("a", "b")]
    assert comparable(recs[0]) == comparable(recs[1])
    assert len([r for r in recs[0] if r["type"] == "step"]) == 4
    other = run_one("digits-v1", "flow-grpo", 4, out=tmp_path / "c", steps=4, sets=FAST)
    assert other["best_score"] != ends[0]["best_score"] or other["final_score"] != ends[0]["final_score"]


def test_records_follow_the_schema(tmp_path):
    end = run_one("digits-v1", "op-grpo", 0, out=tmp_path, steps=4, sets=FAST + ["replay_proportion=0.5"])
    recs = run_records(find_run_dir(tmp_path, "digits-v1", "op-grpo", 0) / "metrics.jsonl")
    assert [r["type"] for r in recs][0] == "run_start" and recs[-1]["type"] == "run_end"
    assert all(r["schema"] == "opgrpo-bench/v1" for r in recs)
    start = recs[0]
    for key in ("run_id", "task", "task_version", "algorithm", "config", "seed", "target", "budget_steps"):
        assert key in start
    steps = [r for r in recs if r["type"] == "step"]
    for key in ("step", "samples", "nfe", "wall_s", "train/reward_mean", "loss/total", "op/buffer_size",
                "op/buffer_mean_age", "clipfrac/on_policy"):
        assert key in steps[-1], key
    # once the buffer holds entries, replayed samples and their diagnostics appear
    replayed = [r for r in steps if "op/logw_min" in r]
    assert replayed and all(len(r["op/logratio_by_step"]) == 10 for r in replayed)
    evals = [r for r in recs if r["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 2, 4]
    assert {"steps_to_target", "censored", "samples_to_target", "wall_s_to_target"} <= set(end)


def test_op_grpo_no_replay_reproduces_flow_grpo_exactly(tmp_path):
    run_one("digits-v1", "flow-grpo", 1, out=tmp_path, steps=4, sets=FAST)
    run_one("digits-v1", "op-grpo-no-replay", 1, out=tmp_path, steps=4, sets=FAST)
    flow = run_records(find_run_dir(tmp_path, "digits-v1", "flow-grpo", 1) / "metrics.jsonl")
    op = run_records(find_run_dir(tmp_path, "digits-v1", "op-grpo-no-replay", 1) / "metrics.jsonl")
    assert comparable(flow) == comparable(op)


def test_no_truncation_reuses_the_stored_reward(tmp_path):
    trainer = make_trainer(tmp_path, "op-grpo-no-truncation", sets=["replay_proportion=0.5"])
    trainer.iteration()
    assert len(trainer.algorithm.buffer) > 0
    stored = {e.prompt_id: e.reward for e in trainer.algorithm.buffer}
    rollout, _ = trainer.rollout()
    replayed = torch.nonzero(rollout.replayed).flatten().tolist()
    assert replayed
    for i in replayed:
        assert rollout.forced_len[i] == 10
        assert rollout.rewards[i].item() == pytest.approx(stored[int(rollout.prompt_ids[i])], abs=0)
        entry = trainer.algorithm.buffer.get(int(rollout.prompt_ids[i]))
        assert torch.equal(rollout.latents[i], entry.latents)  # the whole stored trajectory


def test_truncated_replay_keeps_prefix_and_regenerates_suffix(tmp_path):
    trainer = make_trainer(tmp_path, "op-grpo", sets=["replay_proportion=0.5"])
    trainer.iteration()
    rollout, _ = trainer.rollout()
    i = torch.nonzero(rollout.replayed).flatten()[0].item()
    entry = trainer.algorithm.buffer.get(int(rollout.prompt_ids[i]))
    assert rollout.forced_len[i] == 6
    assert torch.equal(rollout.latents[i, :7], entry.latents)
    assert torch.equal(rollout.behaviour_log_probs[i, :6], entry.log_probs)
    # the suffix is new: its behaviour log-probs are those recorded under theta_old
    assert torch.equal(rollout.behaviour_log_probs[i, 6:], rollout.log_probs[i, 6:])
    batch = trainer.algorithm.prepare(rollout)
    expected = torch.exp((rollout.log_probs[i, :6] - entry.log_probs).sum())
    assert batch.weights[i].item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.all(batch.weights[~rollout.replayed] == 1.0)


def test_resume_continues_an_interrupted_run_identically(tmp_path):
    full = tmp_path / "full"
    run_one("digits-v1", "op-grpo", 0, out=full, steps=6, sets=FAST + ["replay_proportion=0.5"])

    class Interrupt(Exception):
        pass

    def stop_at_5(record):
        if record.get("type") == "step" and record["step"] == 5:
            raise Interrupt

    part = tmp_path / "part"
    with pytest.raises(Interrupt):
        run_one("digits-v1", "op-grpo", 0, out=part, steps=6, sets=FAST + ["replay_proportion=0.5"],
                progress=stop_at_5)
    run_one("digits-v1", "op-grpo", 0, out=part, steps=6, sets=FAST + ["replay_proportion=0.5"])
    name = find_run_dir(full, "digits-v1", "op-grpo", 0).name + "/metrics.jsonl"
    drop = ("wall_s", "start_time", "wall_s_to_target")
    a = comparable(run_records(full / name), drop)
    b = comparable(run_records(part / name), drop)
    assert a == b


def test_short_run_eval_score_rises(tmp_path):
    end = run_one("digits-v1", "flow-grpo", 0, out=tmp_path, steps=20)
    evals = [r for r in run_records(find_run_dir(tmp_path, "digits-v1", "flow-grpo", 0) / "metrics.jsonl")
             if r["type"] == "eval"]
    assert evals[-1]["score"] > evals[0]["score"] + 0.02
    assert end["best_score"] >= evals[-1]["score"]


def test_chunked_rollout_scores_each_sample_with_its_own_image(tmp_path):
    trainer = make_trainer(tmp_path, sets=["micro_batch=3"])
    rollout, _ = trainer.rollout()
    again = trainer.reward(trainer.backbone.decode(rollout.latents[:, -1]), rollout.prompts, rollout.metas)
    # same values up to float rounding of a different batch size in the classifier
    assert torch.allclose(again.scores, rollout.rewards, atol=1e-6, rtol=0)
    assert rollout.latents.shape[0] == 8 and len(set(rollout.group_ids.tolist())) == 2
