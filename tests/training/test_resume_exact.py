"""Exact resume from any point, exact budgets and evaluation timing, and runs that refuse to lie.

"Killed anywhere" is simulated by copying the run directory after every record the trainer writes (the
progress callback runs right after each write): each copy is what a ``kill -9`` at that moment leaves.
"""

import json
import os
import shutil

import pytest
import torch

from opgrpo_bench.errors import UserError
from opgrpo_bench.results import RunLock, read_records
from opgrpo_bench.runner import config_hash, find_run_dir, resolve, run_one
from opgrpo_bench.trainer import CHECKPOINT, Trainer

from small import FAST, comparable

pytestmark = pytest.mark.train  # every test trains, or reads the run its module fixture trains

OP = FAST + ["replay_proportion=0.5", "eval_every=3"]
FLOW = FAST + ["eval_every=3"]
RUN = resolve("digits-v1", "op-grpo", 0, None, OP).run_id  # the run directory of these settings
DROP = ("wall_s", "start_time", "wall_s_to_target")


def records(out):
    return read_records(out / RUN / "metrics.jsonl")


def snapshot_files(run_dir):
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file() and p.name != ".lock"}


def test_kill_anywhere_resumes_to_identical_records(tmp_path, monkeypatch):
    """7 steps, 2 optimizer steps per iteration, eval every 3: evals at 0, 3 (mid-iteration) and 6, and a
    budget that cuts the last iteration short. Resume from a copy taken after every record and after
    every checkpoint."""
    snaps = []

    def take(kind, step):
        dst = tmp_path / f"snap{len(snaps):02d}"
        shutil.copytree(tmp_path / "full" / RUN, dst / RUN)
        snaps.append((kind, step, dst))

    save = Trainer.save_checkpoint

    def save_and_take(self):
        before = self._saved_at
        save(self)
        if self._saved_at != before:  # written (it skips mid-iteration states and repeats)
            take("checkpoint", self.state.step)

    monkeypatch.setattr(Trainer, "save_checkpoint", save_and_take)
    run_one("digits-v1", "op-grpo", 0, out=tmp_path / "full", steps=7, sets=OP,
            progress=lambda rec: take(rec["type"], rec.get("step")))
    monkeypatch.undo()
    full = comparable(records(tmp_path / "full"), DROP)
    assert [r["step"] for r in full if r["type"] == "eval"] == [0, 3, 6]
    assert len([r for r in full if r["type"] == "step"]) == 7
    kinds = [k for k, _, _ in snaps]
    assert kinds.count("step") == 7 and kinds.count("eval") == 3 and kinds.count("run_end") == 1
    # checkpoints: after the step-0 eval, after the iterations holding evals 3 and 6, before the cut one
    assert [s for k, s, _ in snaps if k == "checkpoint"] == [0, 4, 6]
    for i, (kind, step, out) in enumerate(snaps):
        if i % 3 == 1:  # a kill in the middle of writing a line leaves half a record
            with (out / RUN / "metrics.jsonl").open("a") as f:
                f.write('{"schema": "opgrpo-bench/v1", "type": "st')
        run_one("digits-v1", "op-grpo", 0, out=out, steps=7, sets=OP)
        assert comparable(records(out), DROP) == full, (kind, step)


def test_budget_is_exact_and_evals_see_exactly_their_step(tmp_path):
    run_one("digits-v1", "flow-grpo", 0, out=tmp_path / "a", steps=3, sets=FLOW)
    run_one("digits-v1", "flow-grpo", 0, out=tmp_path / "b", steps=4, sets=FLOW)
    a = read_records(find_run_dir(tmp_path / "a", "digits-v1", "flow-grpo", 0) / "metrics.jsonl")
    b = read_records(find_run_dir(tmp_path / "b", "digits-v1", "flow-grpo", 0) / "metrics.jsonl")
    assert [r["step"] for r in a if r["type"] == "step"] == [1, 2, 3]
    assert a[-1]["type"] == "run_end" and a[-1]["steps"] == 3
    eval_a = [r for r in a if r["type"] == "eval" and r["step"] == 3]
    eval_b = [r for r in b if r["type"] == "eval" and r["step"] == 3]
    # the eval at step 3 is taken before step 4 (same iteration) in the 4-step run: the same weights
    assert eval_a and eval_a[0]["score"] == eval_b[0]["score"]


def test_a_finished_run_continues_to_a_larger_budget_identically(tmp_path):
    run_one("digits-v1", "op-grpo", 0, out=tmp_path / "long", steps=9, sets=OP)
    run_one("digits-v1", "op-grpo", 0, out=tmp_path / "ext", steps=5, sets=OP)
    assert (tmp_path / "ext" / RUN / CHECKPOINT).exists()  # kept at the end of a run
    end = run_one("digits-v1", "op-grpo", 0, out=tmp_path / "ext", steps=9, sets=OP)
    assert end["steps"] == 9
    assert comparable(records(tmp_path / "ext"), DROP) == comparable(records(tmp_path / "long"), DROP)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    run_one("digits-v1", "op-grpo", 0, out=out, steps=2, sets=OP)
    return out


def copy_of(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "out")
    return tmp_path / "out"


def test_same_configuration_returns_the_finished_result_without_training(finished, tmp_path, monkeypatch):
    out = copy_of(finished, tmp_path)
    before = snapshot_files(out / RUN)
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("a finished run was retrained"))
    end = run_one("digits-v1", "op-grpo", 0, out=out, steps=2, sets=OP)
    assert end["type"] == "run_end" and snapshot_files(out / RUN) == before


def _record_another_configuration(run_dir):
    """Make the finished run's records say they were made with another configuration (as results of an
    older version, or a directory renamed by hand, would)."""
    path = run_dir / "metrics.jsonl"
    recs = read_records(path)
    recs[0]["config_hash"] = "0" * 16
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


@pytest.mark.parametrize("change, message", [
    (dict(sets=OP), "another configuration"),
    (dict(sets=OP, steps=1), "budget of 2 steps"),
])
def test_a_different_configuration_is_refused_and_nothing_is_touched(finished, tmp_path, monkeypatch, change,
                                                                     message):
    out = copy_of(finished, tmp_path)
    if message == "another configuration":
        _record_another_configuration(out / RUN)
    before = snapshot_files(out / RUN)
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("a model was loaded"))
    kwargs = {"steps": 2, **change}
    with pytest.raises(UserError, match=message) as err:
        run_one("digits-v1", "op-grpo", 0, out=out, **kwargs)
    assert "--fresh" in str(err.value) and "\n" not in str(err.value)
    assert snapshot_files(out / RUN) == before


class _WouldTrain(Exception):
    pass


@pytest.mark.parametrize("extra", [["lr=0.5"], ["group_size=8"], ["clip_range=0.001"]])
def test_changed_settings_are_another_result_in_their_own_directory(finished, tmp_path, monkeypatch, extra):
    """A changed trainer or algorithm setting never reuses, refuses or touches the finished run: it is another
    result, with its own run id."""
    out = copy_of(finished, tmp_path)
    before = snapshot_files(out / RUN)
    other = resolve("digits-v1", "op-grpo", 0, 2, OP + extra).run_id
    assert other != RUN

    def would_train(self, *args, **kwargs):
        raise _WouldTrain(args[3])  # the run directory it was given

    monkeypatch.setattr(Trainer, "__init__", would_train)
    with pytest.raises(_WouldTrain) as err:
        run_one("digits-v1", "op-grpo", 0, out=out, steps=2, sets=OP + extra)
    assert err.value.args[0] == out / other
    assert snapshot_files(out / RUN) == before


def test_a_larger_budget_without_the_checkpoint_is_refused(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    (out / RUN / CHECKPOINT).unlink()
    before = snapshot_files(out / RUN)
    with pytest.raises(UserError, match="checkpoint is gone"):
        run_one("digits-v1", "op-grpo", 0, out=out, steps=4, sets=OP)
    assert snapshot_files(out / RUN) == before


def test_results_of_an_older_version_without_a_hash_are_refused(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    path = out / RUN / "metrics.jsonl"
    recs = read_records(path)
    recs[0].pop("config_hash")
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    before = snapshot_files(out / RUN)
    with pytest.raises(UserError, match="older version"):
        run_one("digits-v1", "op-grpo", 0, out=out, steps=2, sets=OP)
    assert snapshot_files(out / RUN) == before


def test_a_damaged_checkpoint_is_one_line_suggesting_fresh(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    ckpt = out / RUN / CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    before = snapshot_files(out / RUN)
    with pytest.raises(UserError, match="--fresh") as err:
        run_one("digits-v1", "op-grpo", 0, out=out, steps=4, sets=OP)
    assert "\n" not in str(err.value)
    assert snapshot_files(out / RUN) == before


def test_a_second_writer_is_refused_with_the_holders_pid(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    with RunLock(out / RUN):
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):
            run_one("digits-v1", "op-grpo", 0, out=out, steps=4, sets=OP)
    # released: the same call now goes through
    assert run_one("digits-v1", "op-grpo", 0, out=out, steps=2, sets=OP)["steps"] == 2


def test_fresh_retrains_a_run_of_another_configuration(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    _record_another_configuration(out / RUN)
    end = run_one("digits-v1", "op-grpo", 0, out=out, steps=2, sets=OP, resume=False)
    assert end["steps"] == 2
    assert read_records(out / RUN / "metrics.jsonl")[0]["config_hash"] == config_hash(resolve("digits-v1", "op-grpo",
                                                                                                0, 2, OP))


def test_a_full_disk_keeps_the_last_checkpoint_and_the_metrics(finished, tmp_path, monkeypatch):
    import errno

    import opgrpo_bench.checkpoint as ckpt_mod

    out = copy_of(finished, tmp_path)
    before = snapshot_files(out / RUN)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", full)
    with pytest.raises(OSError):
        run_one("digits-v1", "op-grpo", 0, out=out, steps=4, sets=OP)
    after = snapshot_files(out / RUN)
    assert after[CHECKPOINT] == before[CHECKPOINT]
    assert not any(name.endswith(".tmp") for name in after)
    # the records written before the failure are whole lines; resuming later reproduces a clean run
    monkeypatch.undo()
    run_one("digits-v1", "op-grpo", 0, out=out, steps=4, sets=OP)
    run_one("digits-v1", "op-grpo", 0, out=tmp_path / "clean", steps=4, sets=OP)
    assert comparable(records(out), DROP) == comparable(records(tmp_path / "clean"), DROP)


@pytest.mark.parametrize("sets", [FAST, FAST + ["micro_batch=3"], []], ids=["fast", "odd-blocks", "defaults"])
def test_ratio_is_exactly_one_before_the_first_update(tmp_path, sets):
    """Same rows, same shapes, same inputs as the sampler's calls: bit-identical log-probs on any CPU."""
    r = resolve("digits-v1", "flow-grpo", 0, 2, list(sets))
    trainer = Trainer(r.task, r.algorithm, r.train_config, tmp_path / r.run_id)
    rollout, shares = trainer.rollout()
    batch = trainer.algorithm.prepare(rollout)
    metrics = trainer.update(batch, shares[0])
    assert metrics["train/trained_pairs"] > 0
    assert metrics["ratio/min"] == 1.0 and metrics["ratio/max"] == 1.0
    assert metrics["clipfrac/on_policy"] == 0.0


def test_ratio_is_one_within_1e6_when_the_sampler_splits_calls(tmp_path):
    """A backbone that splits no-grad calls (``max_batch``) changes the sampler's shapes, not the
    training forward's: the ratio then differs from 1 by rounding only, far inside the clip range 1e-4."""
    r = resolve("digits-v1", "flow-grpo", 0, 2, FAST + ["micro_batch=4"])
    trainer = Trainer(r.task, r.algorithm, r.train_config, tmp_path / r.run_id)
    trainer.backbone.max_batch = 3
    rollout, shares = trainer.rollout()
    batch = trainer.algorithm.prepare(rollout)
    metrics = trainer.update(batch, shares[0])
    assert metrics["train/trained_pairs"] > 0
    assert abs(metrics["ratio/min"] - 1) <= 1e-6 and abs(metrics["ratio/max"] - 1) <= 1e-6
    assert metrics["clipfrac/on_policy"] == 0.0


def test_every_reward_nan_stops_with_one_line_naming_reward_and_prompt(tmp_path, monkeypatch):
    r = resolve("digits-v1", "flow-grpo", 0, 2, FAST)
    trainer = Trainer(r.task, r.algorithm, r.train_config, tmp_path / r.run_id)
    inner = trainer.scorer.reward

    def nan_scores(images, prompts, metas):
        out = inner(images, prompts, metas)
        out.scores = torch.full_like(out.scores, float("nan"))
        return out

    monkeypatch.setattr(trainer.scorer, "reward", nan_scores)
    with pytest.raises(UserError, match="digit-classifier") as err:
        trainer.iteration()
    assert "prompt" in str(err.value) and "\n" not in str(err.value)


def test_a_full_disk_through_the_cli_is_one_line_and_exit_2(finished, tmp_path, monkeypatch, capsys):
    import errno
    import sys

    import opgrpo_bench.checkpoint as ckpt_mod
    from opgrpo_bench import cli

    out = copy_of(finished, tmp_path)
    before = snapshot_files(out / RUN)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", full)
    monkeypatch.setattr(sys, "argv", ["opgrpo-bench", "run", "--task", "digits-v1", "--algorithm", "op-grpo",
                                      "--seed", "0", "--steps", "4", "--out", str(out), "-j", "1",
                                      *[a for kv in OP for a in ("--set", kv)]])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no space left" in lines[0] and "Traceback" not in err
    assert snapshot_files(out / RUN)[CHECKPOINT] == before[CHECKPOINT]
