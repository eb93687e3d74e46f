"""The results schema (opgrpo_bench/schema.py): field checks, the writer's refusal of invalid records,
run_outcome (the one computation of steps to target, best and final score) and the migration of old
records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opgrpo_bench import SCHEMA
from opgrpo_bench.errors import UserError
from opgrpo_bench.results import METRICS_FILE, PACKED_FILE, ResultsWriter, read_records, read_run
from opgrpo_bench.schema import (
    MIGRATIONS,
    OUTCOME_FIELDS,
    SchemaError,
    migrate,
    record_problem,
    run_outcome,
    train_settings,
)

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "leaderboard" / "runs"

START = dict(run_id="r", task="toy-v1", task_version="v1", algorithm="flow-grpo", seed=0,
             config={"train": {"steps": 40, "lr": 0.003, "adam_betas": [0.9, 0.999], "cfg_detach_uncond": True}},
             target=0.5, higher_is_better=True, budget_steps=40)


def evals(*scores: float | None) -> list[dict]:
    return [{"schema": SCHEMA, "type": "eval", "step": 10 * i, "samples": 8 * i, "nfe": 80 * i,
             "wall_s": 1.5 * i, "score": s} for i, s in enumerate(scores)]


@pytest.mark.skipif(not COMMITTED.is_dir(), reason="no committed results files")
def test_run_outcome_reproduces_every_committed_run_end():
    """The trainer wrote these run_end records; run_outcome gives the same seven fields, bit for bit."""
    files = sorted(p for name in (METRICS_FILE, PACKED_FILE) for p in COMMITTED.rglob(name))
    assert len(files) > 100
    for path in files:
        run = read_run(path)
        assert run.start_problem is None and not run.skipped, path
        assert record_problem(run.start) is None and record_problem(run.end) is None, path
        outcome = run_outcome(run.evals, run.start["target"], run.start["higher_is_better"])
        assert list(outcome) == list(OUTCOME_FIELDS)
        assert {k: run.end[k] for k in OUTCOME_FIELDS} == outcome, path


def test_run_outcome_semantics():
    hit = run_outcome(evals(0.1, None, 0.6, 0.4), target=0.5, higher_is_better=True)
    assert hit == {"steps_to_target": 20, "samples_to_target": 16, "nfe_to_target": 160, "wall_s_to_target": 3.0,
                   "censored": False, "final_score": 0.4, "best_score": 0.6}
    lower = run_outcome(evals(1.0, 0.3, 0.2), target=0.25, higher_is_better=False)
    assert (lower["steps_to_target"], lower["best_score"], lower["final_score"]) == (20, 0.2, 0.2)
    never = run_outcome(evals(0.1, 0.2, None), target=0.5, higher_is_better=True)
    assert never["censored"] and never["steps_to_target"] is None and never["wall_s_to_target"] is None
    assert never["final_score"] is None and never["best_score"] == 0.2  # the last eval had no score
    assert run_outcome([], 0.5, True) == dict.fromkeys(OUTCOME_FIELDS) | {"censored": True}


@pytest.mark.parametrize("type_, fields, problem", [
    ("step", {"step": -1}, "'step' is -1"),
    ("step", {"step": 3, "samples": -8}, "'samples' is -8"),
    ("eval", {"step": 3, "score": "high"}, "'score' is 'high'"),
    ("run_start", {k: v for k, v in START.items() if k != "seed"}, "'seed' missing"),
    ("run_start", {**START, "higher_is_better": "yes"}, "'higher_is_better' is 'yes'"),
    ("run_start", {**START, "config": {"train": {"lr": "fast"}}}, "'config.train.lr' is 'fast'"),
    ("run_start", {**START, "config": {"train": {"num_steps": 2.5}}}, "'config.train.num_steps' is 2.5"),
    ("run_end", {"status": "completed", "censored": "no"}, "'censored' is 'no'"),
    ("run_end", {"status": "completed", "steps_to_target": True}, "'steps_to_target' is True"),
    ("progress", {"step": 1}, "'type' is 'progress'"),
])
def test_the_writer_refuses_an_invalid_record(tmp_path, type_, fields, problem):
    writer = ResultsWriter(tmp_path)
    writer.write("run_start", **START)
    before = writer.path.read_bytes()
    with pytest.raises(SchemaError, match=problem) as err:
        writer.write(type_, **fields)
    assert "\n" not in str(err.value)
    assert writer.path.read_bytes() == before  # nothing written


def test_valid_records_are_written_as_given(tmp_path):
    writer = ResultsWriter(tmp_path)
    start = writer.write("run_start", **START)
    step = writer.write("step", step=1, iteration=0, samples=8, nfe=80, wall_s=0.5,
                        **{"op/logratio_by_step": [0.1, None]})
    end = writer.write("run_end", status="completed", **run_outcome(evals(0.1, 0.6), 0.5, True), steps=1, wall_s=1.0)
    assert read_records(writer.path) == [start, step, end]
    assert start["schema"] == SCHEMA and start["config"]["train"]["adam_betas"] == [0.9, 0.999]


def test_train_settings_checks_and_converts():
    assert train_settings({"lr": 1, "adam_betas": [0.9, 0.99], "future_knob": 3, "compile": False}) == {
        "lr": 1, "adam_betas": (0.9, 0.99), "compile": False}  # unknown keys dropped, lists to tuples
    for bad in ({"adam_betas": [0.9]}, {"compile": 1}, {"seed": True}, {"latent_dtype": 16}, {"lr": float("nan")}):
        with pytest.raises(SchemaError, match="config.train"):
            train_settings(bad)


def test_an_early_run_end_gets_its_missing_outcome_fields(tmp_path):
    """An early v1 run_end has no nfe_to_target, final_score or best_score: reading fills them from the eval
    records (the fields it has are kept as written)."""
    path = tmp_path / METRICS_FILE
    records = [{"schema": SCHEMA, "type": "run_start", **START}, *evals(0.1, 0.6, 0.55),
               {"schema": SCHEMA, "type": "run_end", "status": "completed", "steps_to_target": 12,
                "samples_to_target": 8, "wall_s_to_target": 1.5, "censored": False}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    end = read_run(path).end
    assert end["steps_to_target"] == 12  # as written, though the evals say 10
    assert (end["nfe_to_target"], end["final_score"], end["best_score"]) == (80, 0.55, 0.6)
    assert "nfe_to_target" not in records[-1]  # the input is not modified


def test_migration_chain_and_unknown_versions(monkeypatch):
    old = {"schema": "opgrpo-bench/v0", "type": "eval", "step": 3, "reward": 0.4}
    assert migrate(old) is None  # no migration registered: unknown
    assert migrate({**old, "schema": "opgrpo-bench/v9"}) is None
    monkeypatch.setitem(MIGRATIONS, "opgrpo-bench/v0",
                        (SCHEMA, lambda r: {**{k: v for k, v in r.items() if k != "reward"}, "score": r["reward"]}))
    assert migrate(old) == {"schema": SCHEMA, "type": "eval", "step": 3, "score": 0.4}
    monkeypatch.setitem(MIGRATIONS, "opgrpo-bench/v8", ("opgrpo-bench/v8", lambda r: r))  # a loop
    assert migrate({**old, "schema": "opgrpo-bench/v8"}) is None


def test_read_run_skips_what_the_schema_rejects(tmp_path):
    path = tmp_path / METRICS_FILE
    lines = [{"schema": SCHEMA, "type": "run_start", **START, "seed": "zero"}, *evals(0.2),
             {"schema": SCHEMA, "type": "step", "step": "one"},
             {"schema": "opgrpo-bench/v7", "type": "step", "step": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    run = read_run(path)
    assert run.start_problem == "'seed' is 'zero', expected an integer"
    assert len(run.evals) == 1 and run.steps == [] and run.end is None
    assert run.skipped == ["step record: 'step' is 'one', expected a non-negative integer",
                           "step record of unknown schema 'opgrpo-bench/v7'"]


def test_eval_refuses_hostile_run_start_values(tmp_path):
    """eval reads the run's settings back from run_start: a hand-edited value of the wrong type is one
    line, before any model loads."""
    from opgrpo_bench.evaluation import evaluate_saved_run

    run = tmp_path / "run"
    run.mkdir()
    start = {**START, "task": "digits-v1", "config": {"train": {"eval_num_steps": "twenty"}}}
    (run / METRICS_FILE).write_text(json.dumps({"schema": SCHEMA, "type": "run_start", **start}) + "\n")
    with pytest.raises(UserError, match="'config.train.eval_num_steps' is 'twenty'") as err:
        evaluate_saved_run(run)
    assert "\n" not in str(err.value)
    (run / METRICS_FILE).write_text(json.dumps({"schema": SCHEMA, "type": "run_start", **start, "task": 7}) + "\n")
    with pytest.raises(UserError, match="'task' is 7"):
        evaluate_saved_run(run)
