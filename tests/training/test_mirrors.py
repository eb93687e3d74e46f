"""--log tensorboard / wandb: copies of the JSONL records, which stay the source of truth."""

from pathlib import Path

import pytest

from opgrpo_bench.errors import UserError
from opgrpo_bench.mirrors import check_mirrors
from opgrpo_bench.results import read_records
from opgrpo_bench.runner import find_run_dir, run_one

from small import FAST


@pytest.mark.train
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


@pytest.mark.train
def test_wandb_offline_run_has_the_last_eval(tmp_path, monkeypatch):
    """Checked through wandb's public run object (what the mirror passed to ``run.log``, offline mode, the
    run's folder, one ``finish()``), never through wandb's binary run log: wandb's service process writes
    that file in its own format and on its own schedule, after ``finish()`` has returned."""
    wandb = pytest.importorskip("wandb")
    real_init = wandb.init
    runs = []

    def init(*args, **kwargs):
        run = real_init(*args, **kwargs)
        seen = {"logged": [], "finished": [], "offline": run.offline, "dir": Path(run.dir)}
        log, finish = run.log, run.finish

        def logged(data, step=None, **more):
            seen["logged"].append((step, dict(data)))
            return log(data, step=step, **more)

        def finished(*a, **k):
            seen["finished"].append(len(seen["logged"]))  # how many log calls came before
            return finish(*a, **k)

        run.log, run.finish = logged, finished
        runs.append(seen)
        return run

    monkeypatch.setattr(wandb, "init", init)
    run_one("digits-v1", "flow-grpo", 0, out=tmp_path, steps=2, sets=FAST, log=["wandb"])
    run_dir = find_run_dir(tmp_path, "digits-v1", "flow-grpo", 0)
    records = read_records(run_dir / "metrics.jsonl")
    assert len(runs) == 1
    seen = runs[0]
    assert seen["offline"] and run_dir / "wandb" in seen["dir"].parents  # a local run for `wandb sync`
    assert seen["finished"] == [len(seen["logged"])]  # closed once, after the last record
    evals = [(r["step"], r["score"]) for r in records if r["type"] == "eval"]
    assert [(step, data["eval/score"]) for step, data in seen["logged"] if "eval/score" in data] == \
        [(step, pytest.approx(score)) for step, score in evals]
    steps = [(r["step"], r["loss/total"]) for r in records if r["type"] == "step"]
    assert [(step, data["step/loss/total"]) for step, data in seen["logged"] if "step/loss/total" in data] == \
        [(step, pytest.approx(loss)) for step, loss in steps]


def test_unknown_mirror_is_one_line():
    with pytest.raises(UserError, match="unknown --log 'tensorbord'. Did you mean: tensorboard"):
        check_mirrors(["tensorbord"])


@pytest.mark.train
def test_a_continued_run_is_one_wandb_run_with_its_identity_and_outcome(tmp_path, monkeypatch):
    """A run continued to a larger budget resumes the same wandb run (a stable id, resume allowed), grouped
    by task/algorithm and tagged; the run_end outcome goes into the run's summary. Checked through the
    arguments given to wandb's public API, not wandb's files."""
    wandb = pytest.importorskip("wandb")
    real_init = wandb.init
    inits, summaries = [], []

    def init(*args, **kwargs):
        inits.append(kwargs)
        return real_init(*args, **kwargs)

    from opgrpo_bench.mirrors import WandbMirror

    real_summarise = WandbMirror.summarise

    def summarise(self, outcome):
        summaries.append(dict(outcome))
        return real_summarise(self, outcome)  # wandb's public run.summary.update

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(WandbMirror, "summarise", summarise)
    run_one("digits-v1", "flow-grpo", 0, out=tmp_path, steps=2, sets=FAST, log=["wandb"])
    run_one("digits-v1", "flow-grpo", 0, out=tmp_path, steps=4, sets=FAST, log=["wandb"])
    assert len(inits) == 2 and inits[0]["id"] == inits[1]["id"] and inits[1]["resume"] == "allow"
    assert inits[0]["group"] == "digits-v1/flow-grpo" and inits[0]["tags"] == ["digits-v1", "flow-grpo", "seed0"]
    assert inits[0]["config"]["config_hash"] and inits[0]["mode"] == "offline"
    records = read_records(find_run_dir(tmp_path, "digits-v1", "flow-grpo", 0) / "metrics.jsonl")
    end = records[-1]
    assert summaries and summaries[-1]["steps"] == 4 and summaries[-1]["best_score"] == end["best_score"]


def test_a_bad_wandb_mode_is_one_line(monkeypatch):
    monkeypatch.setenv("OPGRPO_WANDB_MODE", "cloud")
    with pytest.raises(UserError, match="OPGRPO_WANDB_MODE must be 'offline' or 'online'"):
        check_mirrors(["wandb"])
