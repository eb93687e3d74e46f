"""Python API behind ``opgrpo-bench run``: resolve (task, algorithm, seed, overrides) and train one run.

Settings resolve in this order: library defaults (:class:`TrainConfig`, the algorithm's config), then the
task's ``train_defaults``, then the preset's overrides, then ``--set key=value``. A key names a field of
either config; unknown keys are a user error with suggestions.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from opgrpo_bench.errors import UserError
from opgrpo_bench.registry import ALGORITHMS, TASKS


def run_id_for(task: str, algorithm: str, seed: int) -> str:
    """Deterministic run id, so that finished runs can be found and skipped."""
    return f"{task}__{algorithm}__seed{seed}"


def _parse_value(raw: str, field: dataclasses.Field, owner: type) -> Any:
    hint = typing.get_type_hints(owner)[field.name]
    text = raw.strip()
    if text.lower() in ("none", "null"):
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    for typ in args:
        try:
            if typ is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if typ in (int, float):
                return typ(float(text)) if typ is int and float(text).is_integer() else typ(text)
            if typing.get_origin(typ) is tuple:
                return tuple(json.loads(text))
            if typing.get_origin(typ) is typing.Literal:
                if text in typing.get_args(typ):
                    return text
                raise ValueError
            if typ is str:
                return text
        except (ValueError, json.JSONDecodeError):
            continue
    raise UserError(f"invalid value '{raw}' for setting '{field.name}' (expected {hint})")


def parse_sets(sets: list[str] | None) -> dict[str, str]:
    out = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got '{item}'")
        out[key.strip().replace("-", "_")] = value
    return out


@dataclass
class ResolvedRun:
    task: Any
    task_name: str
    algorithm_name: str
    algorithm: Any
    train_config: Any
    run_id: str


def resolve(task: str, algorithm: str, seed: int, steps: int | None = None,
            sets: list[str] | None = None) -> ResolvedRun:
    """Look up task and algorithm and build both configs (raises UserError / UnknownNameError)."""
    from opgrpo_bench.trainer import TrainConfig

    spec = TASKS.get(task)
    preset = ALGORITHMS.get(algorithm)
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    algo_fields = preset.config_fields()
    algo_cls = preset.algorithm_class().config_cls
    train_values: dict[str, Any] = {"steps": spec.budget_steps, "eval_every": spec.eval_every}
    algo_values: dict[str, Any] = {}
    for key, value in spec.train_defaults.items():
        (train_values if key in train_fields else algo_values)[key] = value
    for key, raw in parse_sets(sets).items():
        if key in train_fields:
            train_values[key] = _parse_value(raw, train_fields[key], TrainConfig)
        elif key in algo_fields:
            algo_values[key] = _parse_value(raw, algo_fields[key], algo_cls)
        else:
            known = sorted(train_fields) + sorted(algo_fields)
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UserError(f"unknown setting '{key}' for algorithm '{algorithm}'.{hint}")
    if steps is not None:
        train_values["steps"] = steps
    train_values["seed"] = seed
    if train_values["steps"] <= 0:
        raise UserError(f"--steps must be positive, got {train_values['steps']}")
    try:
        algo = preset.build(**{k: v for k, v in algo_values.items() if k in algo_fields})
    except (TypeError, ValueError) as err:
        raise UserError(f"invalid settings for '{algorithm}': {err}") from None
    entry = ALGORITHMS.entry(algorithm)
    return ResolvedRun(spec, spec.id, entry.name, algo, TrainConfig(**train_values),
                       run_id_for(spec.id, entry.name, seed))


def run_one(task: str, algorithm: str, seed: int, out: str | Path = "runs", steps: int | None = None,
            sets: list[str] | None = None, resume: bool = True,
            progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one run into ``out/<run_id>/``; returns its ``run_end`` record.

    With ``resume`` a finished run is returned as is and an interrupted one continues from its last
    checkpoint (written at every evaluation).
    """
    from opgrpo_bench.results import METRICS_FILE, read_records
    from opgrpo_bench.trainer import Trainer

    resolved = resolve(task, algorithm, seed, steps, sets)
    run_dir = Path(out) / resolved.run_id
    if resume and (run_dir / METRICS_FILE).exists():
        records = read_records(run_dir / METRICS_FILE)
        start = next((r for r in records if r.get("type") == "run_start"), None)
        end = next((r for r in records if r.get("type") == "run_end"), None)
        if end and start and start.get("budget_steps") == resolved.train_config.steps:
            return end
    trainer = Trainer(resolved.task, resolved.algorithm, resolved.train_config, run_dir,
                      algorithm_name=resolved.algorithm_name, progress=progress)
    return trainer.run(resolved.run_id, resume=resume)
