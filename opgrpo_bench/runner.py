"""Python API behind ``opgrpo-bench run``: resolve (task, algorithm, seed, overrides) and train one run.

Settings resolve in this order: library defaults (:class:`TrainConfig`, the algorithm's config), then the
task's ``train_defaults``, then the preset's overrides, then ``--set key=value``. A key names a field of
either config; unknown keys are a user error with suggestions.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from opgrpo_bench.config import HASH_NEUTRAL_DEFAULTS, identity_settings  # noqa: F401 (re-exported)
from opgrpo_bench.distributed import Distributed
from opgrpo_bench.errors import UserError
from opgrpo_bench.registry import ALGORITHMS, BACKBONES, TASKS, UnknownNameError


def run_id_for(task: str, algorithm: str, seed: int, setup: str = "", variant: str = "") -> str:
    """Deterministic run id, so that finished runs can be found and skipped: ``task__algorithm__seedK`` at the
    task's and preset's defaults, ``task__algorithm+HASH__seedK`` otherwise (``HASH``: 8 hex digits of the
    changed trainer and algorithm settings, :func:`variant_of`), so that no two configurations share a
    directory."""
    if not setup and not variant:
        return f"{task}__{algorithm}__seed{seed}"
    import hashlib

    digest = hashlib.sha256(f"{setup}|{variant}".encode()).hexdigest()[:8]
    return f"{task}__{algorithm}+{digest}__seed{seed}"


def find_run_dir(out: str | Path, task: str, algorithm: str, seed: int) -> Path:
    """The one run directory of (task, algorithm, seed) under ``out``, the preset's or a variant's
    (:func:`run_id_for`); :class:`UserError` when there is none or there are several."""
    out = Path(out)
    names = [f"{task}__{algorithm}__seed{seed}"]
    found = [p for p in [out / names[0], *sorted(out.glob(f"{task}__{algorithm}+*__seed{seed}"))] if p.is_dir()]
    if len(found) != 1:
        what = "no run" if not found else f"{len(found)} runs ({', '.join(p.name for p in found)})"
        raise UserError(f"{out} holds {what} of {task} / {algorithm} / seed {seed}")
    return found[0]


def variant_of(default: Any, resolved: Any) -> str:
    """The fields in which the config ``resolved`` differs from ``default``, as ``key=value,...`` in key
    order; "" when none (seed and budget excluded: they are not a configuration).

    Trainer settings changed from the task's defaults make a *setup* (the experiment every algorithm of a
    comparison shares; the leaderboard compares rows of one setup only), algorithm settings changed from
    the preset's make a *variant* (its own row beside the preset's)."""
    default_fields, fields = dataclasses.asdict(default), dataclasses.asdict(resolved)
    return ",".join(f"{key}={json.dumps(fields[key])}" for key in sorted(fields)
                    if key not in ("seed", "steps") and fields[key] != default_fields.get(key))


def parse_sets(sets: list[str] | None) -> dict[str, str]:
    """``--set key=value`` texts -> {setting: value text}; ``-`` in a key reads as ``_`` (``--set micro-batch=4``)."""
    from opgrpo_bench.validation import KeyValueError, parse_sets as parse_key_values

    try:
        pairs = parse_key_values(sets or [])
    except KeyValueError as err:
        raise UserError(f"--set expects key=value, got '{err.item}'") from None
    return {key.replace("-", "_"): value for key, value in pairs.items()}


@dataclass
class ResolvedRun:
    task: Any
    algorithm_name: str
    algorithm: Any
    train_config: Any
    run_id: str
    setup: str = ""
    """Trainer settings changed from the task's defaults (:func:`variant_of`); "" at the defaults."""
    variant: str = ""
    """Algorithm settings changed from the preset's (:func:`variant_of`); "" for the preset itself."""


def resolve(task: str, algorithm: str, seed: int, steps: int | None = None,
            sets: list[str] | None = None) -> ResolvedRun:
    """Look up task and algorithm and build both configs (raises UserError / UnknownNameError).

    Every setting is merged and checked by :func:`opgrpo_bench.validation.build_settings` (types, ranges,
    unknown keys, also in the task's ``train_defaults``) before anything loads; so is the task's backbone
    name (an entry lookup: nothing is imported).
    """
    from opgrpo_bench.validation import build_settings

    spec = TASKS.get(task)
    try:
        BACKBONES.entry(spec.backbone)
    except UnknownNameError as err:  # a task (e.g. a plugin's) naming a backbone that is not installed
        raise UserError(f"task '{spec.id}' names an {err}") from None
    preset = ALGORITHMS.get(algorithm)
    entry = ALGORITHMS.entry(algorithm)
    pairs = parse_sets(sets)
    train_config, algo = build_settings(spec, preset, entry.name, seed, steps, pairs)
    setup = variant = ""
    if pairs:  # a result's identity includes its configuration: it gets its own run id and row
        base_train, base_algo = build_settings(spec, preset, entry.name, seed, steps, {})
        setup, variant = variant_of(base_train, train_config), variant_of(base_algo.config, algo.config)
    return ResolvedRun(spec, entry.name, algo, train_config,
                       run_id_for(spec.id, entry.name, seed, setup, variant), setup, variant)


def resolved_config(resolved: ResolvedRun) -> dict[str, Any]:
    """Everything that determines a run's numbers except its budget: task (id, version, prompt sets),
    algorithm (preset name, class, every config field), every trainer setting, and the seed.

    The task's gold reward is left out on purpose: it only reads the eval images and changes no trained or
    recorded training number, so results written before it existed stay valid (their eval records just
    lack ``gold``; the leaderboard shows it as missing)."""
    task = resolved.task
    train = identity_settings(dataclasses.asdict(resolved.train_config), drop=("steps",))
    return {
        "task": task.id, "task_version": task.version, "prompt_hash": task.prompt_hash,
        "target": task.target, "eval_metric": task.eval_metric,
        "algorithm": resolved.algorithm_name, "algorithm_class": type(resolved.algorithm).__name__,
        "algorithm_config": dataclasses.asdict(resolved.algorithm.config), "train": train,
        "seed": resolved.train_config.seed,
    }


def config_hash(resolved: ResolvedRun) -> str:
    """16-hex-digit SHA-256 of :func:`resolved_config` (canonical JSON); recorded in ``run_start``."""
    import hashlib

    payload = json.dumps(resolved_config(resolved), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def plan_run(resolved: ResolvedRun, run_dir: Path, resume: bool = True) -> tuple[str, dict[str, Any] | None]:
    """Decide what to do with ``run_dir`` before any model loads: ``("fresh", None)``, ``("resume", None)``
    or ``("done", run_end)``. Refusals are :class:`UserError` and touch nothing.

    - no results yet, or ``resume=False`` (``--fresh``): train from scratch;
    - results of a different configuration (or of a version that recorded none): refuse;
    - the same configuration, finished at the same budget: return its ``run_end`` (nothing recomputed);
    - finished at a smaller budget: continue from its last checkpoint if it was kept, else refuse;
      finished at a larger budget: refuse (its records describe a longer run);
    - unfinished: resume from its checkpoint (a damaged one is refused), or start over if it has none;
    - packed (``metrics.jsonl.gz``, :func:`~opgrpo_bench.results.pack_run`): read like a plain file, but only
      "done" is possible; anything that would append to it is refused with the command that unpacks it.
    """
    from opgrpo_bench.checkpoint import CheckpointError, load_state
    from opgrpo_bench.results import METRICS_FILE, PACKED_FILE, read_run, results_file
    from opgrpo_bench.training.state import CHECKPOINT, counters

    ckpt = run_dir / CHECKPOINT
    if not resume:
        return "fresh", None
    hint = "use --fresh to retrain it or another --out"
    if (run_dir / METRICS_FILE).exists() and (run_dir / PACKED_FILE).exists():
        raise UserError(f"run {run_dir} has both {METRICS_FILE} and {PACKED_FILE}, which may hold different "
                        f"runs; keep the one that belongs there and remove the other, or {hint}")
    metrics = results_file(run_dir)
    if metrics is None:
        return "fresh", None
    records = read_run(metrics)
    start, end = records.start, records.end
    if start is None:
        if ckpt.exists() or end is not None:
            raise UserError(f"{metrics} has no run_start record; {hint}")
        return "fresh", None
    if records.start_problem:
        raise UserError(f"{metrics} has an unusable run_start record ({records.start_problem}); {hint}")
    recorded = start.get("config_hash")
    wanted = config_hash(resolved)
    if recorded != wanted:
        what = "records no configuration hash (written by an older version)" if recorded is None else \
            f"was trained with another configuration (hash {recorded}, now {wanted})"
        raise UserError(f"run {run_dir} {what}; {hint}")
    budget, done_budget = resolved.train_config.steps, start.get("budget_steps")
    if end is not None and budget == done_budget:
        return "done", end
    if metrics.name == PACKED_FILE:  # finished; continuing would append to a compressed file
        raise UserError(f"run {run_dir} is packed ({PACKED_FILE}, " + (f"finished at {done_budget} steps)"
                        if end is not None else "without a run_end)") + f"; unpack it (gunzip {metrics}) to "
                        f"continue it to {budget} steps, or {hint}")
    if end is not None and budget < (done_budget or 0):
        raise UserError(f"run {run_dir} finished with a budget of {done_budget} steps, more than --steps "
                        f"{budget}; {hint}")
    if not ckpt.exists():
        if end is not None:
            raise UserError(f"run {run_dir} finished at {done_budget} steps and its checkpoint is gone, so it "
                            f"cannot continue to {budget}; {hint}")
        return "fresh", None
    try:
        state = dataclasses.asdict(counters(load_state(ckpt)))
    except (CheckpointError, KeyError, TypeError, ValueError, RecursionError) as err:
        raise UserError(f"cannot resume {run_dir}: {str(err).splitlines()[0]}; run with --fresh to retrain "
                        "this run") from None
    if state.get("step", 0) > budget:
        raise UserError(f"run {run_dir} has a checkpoint at step {state.get('step')}, beyond --steps {budget}; "
                        f"{hint}")
    return "resume", None


def run_one(task: str, algorithm: str, seed: int, out: str | Path = "runs", steps: int | None = None,
            sets: list[str] | None = None, resume: bool = True,
            progress: Callable[[dict[str, Any]], None] | None = None,
            log: list[str] | None = None) -> dict[str, Any]:
    """Train one run into ``out/<run_id>/``; returns its ``run_end`` record.

    ``log`` names mirrors of the records (``tensorboard``, ``wandb``; :mod:`opgrpo_bench.mirrors`).

    With ``resume`` a finished run of the same configuration is returned as is and an interrupted one
    continues exactly from its last checkpoint (:func:`plan_run`). The run directory is locked for the
    duration (:class:`~opgrpo_bench.results.RunLock`).
    """
    from opgrpo_bench.results import RunLock
    from opgrpo_bench.trainer import Trainer

    resolved = resolve(task, algorithm, seed, steps, sets)
    run_dir = Path(out) / resolved.run_id
    dist = Distributed.from_environment()
    if log:
        from opgrpo_bench.mirrors import check_mirrors

        log = check_mirrors(log)
    if dist.active:
        return _run_one_of_many(resolved, run_dir, resume, progress, dist, log or [])
    plan_run(resolved, run_dir, resume)  # refuse before creating or locking anything
    with RunLock(run_dir):
        action, end = plan_run(resolved, run_dir, resume)  # again, now that no one else can write
        if action == "done":
            return end
        trainer = Trainer(resolved.task, resolved.algorithm, resolved.train_config, run_dir,
                          algorithm_name=resolved.algorithm_name, progress=progress, mirrors=log or [],
                          setup=resolved.setup, variant=resolved.variant)
        return trainer.run(resolved.run_id, resume=action == "resume", config_hash=config_hash(resolved))


_ACTIONS = ("fresh", "resume", "done")


def _run_one_of_many(resolved: ResolvedRun, run_dir: Path, resume: bool,
                     progress: Callable[[dict[str, Any]], None] | None, dist: Distributed,
                     log: list[str]) -> dict[str, Any]:
    """One rank of a data-parallel run: rank 0 locks the run directory and decides (fresh / resume /
    done), every rank follows its decision (a refusal is raised on rank 0 and ends the launch)."""
    from contextlib import nullcontext

    from opgrpo_bench.results import RunLock
    from opgrpo_bench.trainer import Trainer, follower_end

    with RunLock(run_dir) if dist.is_main else nullcontext():
        action, end = plan_run(resolved, run_dir, resume) if dist.is_main else ("fresh", None)
        action = _ACTIONS[dist.broadcast_int(_ACTIONS.index(action))]
        if action == "done":
            return end if dist.is_main else follower_end(dist.rank)
        trainer = Trainer(resolved.task, resolved.algorithm, resolved.train_config, run_dir,
                          algorithm_name=resolved.algorithm_name, progress=progress, distributed=dist,
                          mirrors=log, setup=resolved.setup, variant=resolved.variant)
        return trainer.run(resolved.run_id, resume=action == "resume", config_hash=config_hash(resolved))
