"""Suites: every named suite resolves, a grid runs in worker processes and resumes, and Ctrl-C or a failed
run stops a grid cleanly."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from opgrpo_bench.errors import RunInterrupted
from opgrpo_bench.runner import find_run_dir, resolve
from opgrpo_bench.suite import SUITES, GridInterrupted, run_grid

SMALL = ["prompts_per_iter=2", "group_size=4", "eval_every=2", "eval_num_steps=4"]


def test_every_suite_resolves():
    for suite in SUITES.values():
        combos = suite.combos()
        assert combos and len(set(combos)) == len(combos)
        for task, algorithm, seed in combos:
            resolve(task, algorithm, seed, suite.steps, list(suite.sets))


@pytest.mark.train
def test_grid_in_two_worker_processes_then_skips_finished_runs(tmp_path):
    combos = [("digits-v1", "flow-grpo", 0), ("digits-v1", "op-grpo", 0)]
    ends = run_grid(combos, tmp_path, steps=2, sets=SMALL, jobs=2)
    assert [e["type"] for e in ends] == ["run_end", "run_end"]
    paths = [find_run_dir(tmp_path, "digits-v1", a, 0) / "metrics.jsonl" for _, a, _ in combos]
    before = [p.read_text() for p in paths]
    assert all(json.loads(t.splitlines()[0])["type"] == "run_start" for t in before)
    again = run_grid(combos, tmp_path, steps=2, sets=SMALL, jobs=1)
    assert again == ends and [p.read_text() for p in paths] == before


@pytest.mark.train
def test_a_log_that_is_not_a_terminal_gets_a_plain_progress_line(tmp_path, monkeypatch):
    import io
    import re

    from rich.console import Console

    import opgrpo_bench.suite as suite

    monkeypatch.setattr(suite, "HEARTBEAT_S", 0.0)  # due at every record (30 s in use)
    log = io.StringIO()
    run_grid([("digits-v1", "flow-grpo", 0)], tmp_path, steps=2, sets=SMALL, jobs=1,
             console=Console(file=log, width=200))
    lines = re.findall(r"\[\d+ s\] (\d)/1 runs done; running: digits-v1 flow-grpo s0 step (\d)/2", log.getvalue())
    assert ("0", "2") in lines and ("0", "0") in lines  # the step-0 eval, then the last step
    monkeypatch.setattr(suite, "HEARTBEAT_S", 3600.0)
    quiet = io.StringIO()
    run_grid([("digits-v1", "flow-grpo", 1)], tmp_path, steps=2, sets=SMALL, jobs=1, console=Console(file=quiet))
    assert "runs done" not in quiet.getvalue()


# -- Ctrl-C in a grid of worker processes -------------------------------------------------------------
# The fake per-run functions below run inside real pool workers (spawned; they import this module), so
# they exercise the real signal handling of the parent and of `interruptible` in the workers.

COMBOS = [("digits-v1", "flow-grpo", s) for s in range(4)]


def _fake_end(seed: int) -> dict:
    return {"type": "run_end", "steps_to_target": 1, "censored": False, "best_score": 1.0, "wall_s": 0.0}


def _held(out: str | Path) -> None:
    """Block until the test writes ``release`` (it never does while the grid runs): a run that returns
    here was waited for, not stopped. The deadline only ends a failing test."""
    deadline = time.monotonic() + 600
    while not (Path(out) / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _sleepy_worker(task, algorithm, seed, out, steps, sets, resume, updates, log=None):
    """Seed 0 finishes at once; the others write started-<seed> and wait until Ctrl-C, then stop cleanly
    at a fake step 10 * seed (writing interrupted-<seed>), as the trainer does."""
    from opgrpo_bench.suite import interruptible

    def body():
        if seed == 0:
            return _fake_end(seed)
        (Path(out) / f"started-{seed}").write_text("")
        try:
            _held(out)
        except KeyboardInterrupt:
            (Path(out) / f"interrupted-{seed}").write_text("")
            raise RunInterrupted(10 * seed) from None
        (Path(out) / f"finished-{seed}").write_text("")
        return _fake_end(seed)

    return interruptible(body)


def _stubborn_worker(task, algorithm, seed, out, steps, sets, resume, updates, log=None):
    """Like _sleepy_worker, but the runs ignore Ctrl-C (a run stuck in a long call); each Ctrl-C it
    swallows writes ignored-<seed>."""
    from opgrpo_bench.suite import interruptible

    def body():
        if seed == 0:
            return _fake_end(seed)
        (Path(out) / f"started-{seed}").write_text("")
        while True:
            try:
                _held(out)
                break
            except KeyboardInterrupt:
                (Path(out) / f"ignored-{seed}").write_text("")
        (Path(out) / f"finished-{seed}").write_text("")
        return _fake_end(seed)

    return interruptible(body)


def _wait_for(paths: list[Path]) -> None:
    deadline = time.monotonic() + 300  # ends a failing test only
    while time.monotonic() < deadline and not all(p.exists() for p in paths):
        time.sleep(0.05)


def _press_ctrl_c_when_started(out: Path, seeds: tuple[int, ...], times: int = 1) -> threading.Thread:
    """Ctrl-C once the runs of ``seeds`` have started; a second Ctrl-C only once each of those runs has
    received the first (forwarded by the parent, so the parent has handled it): two signals sent before
    the parent handles the first would reach it as one."""
    def press():
        _wait_for([out / f"started-{s}" for s in seeds])
        os.kill(os.getpid(), signal.SIGINT)
        if times > 1:
            _wait_for([out / f"ignored-{s}" for s in seeds])
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=press, daemon=True)
    thread.start()
    return thread


def test_ctrl_c_stops_the_grid_cleanly_and_keeps_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setattr("opgrpo_bench.suite._worker", _sleepy_worker)
    presser = _press_ctrl_c_when_started(tmp_path, (1, 2))
    with pytest.raises(GridInterrupted) as info:
        run_grid(COMBOS, tmp_path, steps=2, sets=SMALL, jobs=2)
    presser.join()
    err = info.value
    assert (err.finished, err.total) == (1, 4)
    assert err.stopped == {COMBOS[1]: 10, COMBOS[2]: 20}  # each worker stopped its run and said where
    assert str(err) == ("interrupted: 1 of 4 runs finished and are kept; run the same command again to resume "
                        "the others from their last checkpoint")
    names = sorted(p.name for p in tmp_path.iterdir())
    # the held runs were interrupted, not waited for; seed 3 never started
    assert names == ["interrupted-1", "interrupted-2", "started-1", "started-2"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the parent's handler is restored


def test_a_second_ctrl_c_stops_stuck_workers_hard(tmp_path, monkeypatch):
    monkeypatch.setattr("opgrpo_bench.suite._worker", _stubborn_worker)
    presser = _press_ctrl_c_when_started(tmp_path, (1, 2), times=2)
    with pytest.raises(GridInterrupted) as info:
        run_grid(COMBOS, tmp_path, steps=2, sets=SMALL, jobs=2)
    presser.join()
    assert info.value.forced and info.value.finished == 1
    assert "workers stopped hard at a second Ctrl-C" in str(info.value)
    assert not list(tmp_path.glob("finished-*"))  # the stuck runs were stopped, not waited for
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _failing_worker(task, algorithm, seed, out, steps, sets, resume, updates, log=None):
    """Seed 1 fails with a user error (e.g. missing weights found at load time) once seed 2 is running."""
    from opgrpo_bench.errors import MissingWeightsError
    from opgrpo_bench.suite import interruptible

    def body():
        if seed == 1:
            _wait_for([Path(out) / "started-2"])
            raise MissingWeightsError("weights for seed 1 are missing")
        return _sleepy_worker(task, algorithm, seed, out, steps, sets, resume, updates)

    return interruptible(body)


def test_a_failed_run_stops_the_others_and_its_error_is_raised(tmp_path, monkeypatch):
    from opgrpo_bench.errors import UserError

    monkeypatch.setattr("opgrpo_bench.suite._worker", _failing_worker)
    with pytest.raises(UserError, match="^weights for seed 1 are missing$"):
        run_grid(COMBOS[1:], tmp_path, steps=2, sets=SMALL, jobs=2)
    assert not list(tmp_path.glob("finished-*"))  # the held runs were stopped, not waited for
    started = {p.name.split("-")[1] for p in tmp_path.glob("started-*")}
    assert "2" in started  # seed 3 may have started in the worker seed 1 freed, before the grid stopped
    assert {p.name.split("-")[1] for p in tmp_path.glob("interrupted-*")} == started  # each one stopped
