"""``run``'s finished-run check (runner.plan_run) reads results through the schema: a hand-edited
``run_start`` whose identifying fields have the wrong type is refused in one line, before any model
loads, and leaves the file as it was."""

import json

import pytest

from opgrpo_bench import SCHEMA
from opgrpo_bench.errors import UserError
from opgrpo_bench.results import METRICS_FILE
from opgrpo_bench.runner import resolve, run_one
from opgrpo_bench.trainer import Trainer

from small import FAST

RUN = resolve("digits-v1", "flow-grpo", 0, None, FAST).run_id  # the directory these settings train into


@pytest.mark.parametrize("change, problem", [
    ({"budget_steps": "2"}, "'budget_steps' is '2', expected a positive integer"),
    ({"seed": None}, "'seed' is None, expected an integer"),
    ({"target": "0.5"}, "'target' is '0.5', expected a finite number"),
])
def test_an_unusable_run_start_is_refused(tmp_path, monkeypatch, change, problem):
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("a model was loaded"))
    start = {"schema": SCHEMA, "type": "run_start", "run_id": RUN, "task": "digits-v1", "task_version": "v1",
             "algorithm": "flow-grpo", "seed": 0, "target": 0.5, "higher_is_better": True, "budget_steps": 2,
             "config_hash": "0" * 16, **change}
    path = tmp_path / RUN / METRICS_FILE
    path.parent.mkdir()
    path.write_text(json.dumps(start) + "\n")
    before = path.read_bytes()
    with pytest.raises(UserError, match="unusable run_start record") as err:
        run_one("digits-v1", "flow-grpo", 0, out=tmp_path, steps=2, sets=FAST)
    assert problem in str(err.value) and "\n" not in str(err.value)
    assert path.read_bytes() == before
