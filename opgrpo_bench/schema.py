"""The results schema: the four record types of a run's ``metrics.jsonl``, defined, validated and migrated
in one place.

Every record carries ``"schema"`` (the version, :data:`SCHEMA` = ``opgrpo-bench/v1``) and ``"type"``:

- ``run_start``: ``run_id``, ``task``, ``task_version``, ``algorithm``, ``seed``, ``target``,
  ``higher_is_better``, ``budget_steps`` (these eight are required), ``config`` (resolved; ``config.train``
  holds the trainer's settings, :class:`opgrpo_bench.config.TrainConfig`), ``config_hash``,
  ``prompt_hash``, ``num_train_prompts``, ``num_eval_prompts``, ``world_size``, ``fsdp``, ``precision``,
  ``versions``, ``git_sha``, ``device``, ``start_time``, ...
- ``step``: ``step`` (optimizer steps so far, required), ``samples`` (fresh samples generated so far),
  ``nfe`` (network evaluations so far), ``wall_s``, ``train/reward_mean``, ``loss/*``, ``ratio/*``,
  ``clipfrac/*``, ``op/*`` diagnostics.
- ``eval``: ``step`` (required), ``samples``, ``nfe``, ``wall_s``, ``score`` (the task's main metric, null
  when it could not be computed) and its components (``eval/*``, ``gold``, ``gold/*``).
- ``run_end``: ``status``, then :func:`run_outcome`'s fields (``steps_to_target``, ``samples_to_target``,
  ``nfe_to_target``, ``wall_s_to_target``, ``censored``, ``final_score``, ``best_score``), ``steps``,
  ``wall_s``.

:func:`record_problem` checks the types and bounds of a record's fields (fields it does not know are
left alone); the writer refuses an invalid record and every reader skips one. :func:`migrate` brings a
record of an older schema to the current one (:data:`MIGRATIONS`, one step per version) and fills the
``run_end`` fields added since a record was written, recomputed from its eval records. The run's outcome
(steps to target, best and final score) is computed once, by :func:`run_outcome`: the trainer's
``run_end`` and the leaderboard both use it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable

from opgrpo_bench import SCHEMA

__all__ = ["MIGRATIONS", "PROGRESS_TYPES", "RECORD_TYPES", "SCHEMA", "SchemaError", "first_reaching", "is_progress",
           "migrate", "progress_problem", "record_problem", "run_outcome", "scalars", "start_problem",
           "train_settings", "validate"]

RECORD_TYPES = ("run_start", "step", "eval", "run_end")
PROGRESS_TYPES = ("step", "eval")
"""The record types written while a run trains, each at an optimizer ``step``."""
ENVELOPE = ("schema", "type")
OUTCOME_FIELDS = ("steps_to_target", "samples_to_target", "nfe_to_target", "wall_s_to_target", "censored",
                  "final_score", "best_score")
"""The ``run_end`` fields :func:`run_outcome` computes, in the order the trainer writes them."""


class SchemaError(ValueError):
    """A record that does not follow the schema; ``str()`` is a one-line reason."""


# -- field checks ----------------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return is_number(value) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_progress(rec: Any) -> bool:
    """Whether ``rec`` is a ``step`` or ``eval`` record (what progress displays and mirrors follow)."""
    return isinstance(rec, dict) and rec.get("type") in PROGRESS_TYPES


def scalars(rec: dict[str, Any]) -> dict[str, float]:
    """The finite numeric fields of a record besides its envelope and ``step`` (bools and nulls left out),
    as floats: what a progress record measures."""
    return {key: float(value) for key, value in rec.items()
            if key not in (*ENVELOPE, "step") and is_finite(value)}


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool, not null), else None."""
    return float(value) if is_finite(value) else None


Check = tuple[Callable[[Any], bool], str]

_NON_EMPTY: Check = (lambda v: isinstance(v, str) and bool(v), "a non-empty string")
_COUNT: Check = (lambda v: is_int(v) and v >= 0, "a non-negative integer")
# samples and NFE are whole numbers as the trainer counts them; a float is accepted so that a writer's
# rounding never stops a run, a negative or non-finite value is not
_OPTIONAL_AMOUNT: Check = (lambda v: v is None or (is_finite(v) and v >= 0), "a non-negative number or null")
_OPTIONAL_INDEX: Check = (lambda v: v is None or (is_int(v) and v >= 0), "a non-negative integer or null")
_OPTIONAL_FINITE: Check = (lambda v: v is None or is_finite(v), "a finite number")
_OPTIONAL_POSITIVE: Check = (lambda v: v is None or (is_int(v) and v > 0), "a positive integer or null")
_OPTIONAL_SCORE: Check = (lambda v: v is None or is_number(v), "a number or null")
_OPTIONAL_TEXT: Check = (lambda v: v is None or isinstance(v, str), "a string or null")

START_REQUIRED: dict[str, Check] = {
    "task": _NON_EMPTY,
    "task_version": (lambda v: (isinstance(v, str) and bool(v)) or is_int(v), "a string or integer"),
    "algorithm": _NON_EMPTY,
    "seed": (is_int, "an integer"),
    "target": (is_finite, "a finite number"),
    "higher_is_better": (lambda v: isinstance(v, bool), "true or false"),
    "budget_steps": (lambda v: is_int(v) and v > 0, "a positive integer"),
}
"""The ``run_start`` fields without which a run cannot be scored (task, algorithm and seed identify it)."""

START_OPTIONAL: dict[str, Check] = {
    "run_id": _NON_EMPTY,
    "config": (lambda v: isinstance(v, dict), "an object"),
    "config_hash": _OPTIONAL_TEXT,
    "prompt_hash": _OPTIONAL_TEXT,
    "num_train_prompts": _OPTIONAL_POSITIVE,
    "num_eval_prompts": _OPTIONAL_POSITIVE,
    "world_size": (lambda v: is_int(v) and v > 0, "a positive integer"),
    "fsdp": (lambda v: isinstance(v, bool), "true or false"),
    "setup": (lambda v: isinstance(v, str) and 0 < len(v) <= 4096, "a non-empty text of at most 4096 characters"),
    "variant": (lambda v: isinstance(v, str) and 0 < len(v) <= 4096, "a non-empty text of at most 4096 characters"),
}

PROGRESS_FIELDS: dict[str, Check] = {"samples": _OPTIONAL_FINITE, "nfe": _OPTIONAL_FINITE, "wall_s": _OPTIONAL_FINITE}
"""Counters of ``step`` and ``eval`` records (besides ``step``): null or finite (what the leaderboard has
always accepted; the writer also asks for them to be non-negative, :data:`WRITER_BOUNDS`)."""

WRITER_BOUNDS: dict[str, Check] = {
    "samples": _OPTIONAL_AMOUNT, "nfe": _OPTIONAL_AMOUNT, "wall_s": _OPTIONAL_AMOUNT,
    "iteration": _OPTIONAL_INDEX,
}

END_FIELDS: dict[str, Check] = {
    "status": _NON_EMPTY,
    "steps_to_target": _OPTIONAL_INDEX,
    "samples_to_target": _OPTIONAL_AMOUNT,
    "nfe_to_target": _OPTIONAL_AMOUNT,
    "wall_s_to_target": _OPTIONAL_AMOUNT,
    "censored": (lambda v: isinstance(v, bool), "true or false"),
    "final_score": _OPTIONAL_SCORE,
    "best_score": _OPTIONAL_SCORE,
    "steps": _COUNT,
    "wall_s": _OPTIONAL_AMOUNT,
}


def _field_problems(rec: dict[str, Any], checks: dict[str, Check], required: bool) -> list[str]:
    problems = []
    for name, (check, expected) in checks.items():
        if name not in rec:
            if required:
                problems.append(f"'{name}' missing")
        elif not check(rec[name]):
            problems.append(f"'{name}' is {rec[name]!r}, expected {expected}")
    return problems


def start_problem(rec: dict[str, Any]) -> str | None:
    """Why a ``run_start`` record cannot identify and score a run (its required fields), or None."""
    problems = _field_problems(rec, START_REQUIRED, required=True)
    return "; ".join(problems) if problems else None


def progress_problem(rec: dict[str, Any]) -> str | None:
    """Why a ``step`` / ``eval`` record is unusable, or None when it is fine."""
    if not is_int(rec.get("step")) or rec["step"] < 0:
        return f"'step' is {rec.get('step')!r}, expected a non-negative integer"
    problems = _field_problems(rec, PROGRESS_FIELDS, required=False)
    if problems:
        return problems[0]
    if rec.get("type") == "eval" and rec.get("score") is not None and not is_number(rec["score"]):
        return f"'score' is {rec['score']!r}, expected a number or null"
    return None


def _train_problems(config: Any) -> list[str]:
    train = config.get("train") if isinstance(config, dict) else None
    if train is None:
        return []
    if not isinstance(train, dict):
        return [f"'config.train' is {train!r}, expected an object"]
    try:
        train_settings(train)
    except SchemaError as err:
        return [str(err)]
    return []


def record_problem(rec: Any) -> str | None:
    """Why ``rec`` is not a valid record of the current schema (types and bounds of the fields it has,
    and the ones its type requires), or None. Fields the schema does not name are not checked."""
    if not isinstance(rec, dict):
        return f"a record is a JSON object, not {type(rec).__name__}"
    if rec.get("schema") != SCHEMA:
        return f"'schema' is {rec.get('schema')!r}, expected '{SCHEMA}'"
    kind = rec.get("type")
    if kind not in RECORD_TYPES:
        return f"'type' is {kind!r}, expected one of {', '.join(RECORD_TYPES)}"
    if kind == "run_start":
        problems = (_field_problems(rec, START_REQUIRED, required=True)
                    + _field_problems(rec, START_OPTIONAL, required=False) + _train_problems(rec.get("config")))
    elif kind == "run_end":
        problems = _field_problems(rec, END_FIELDS, required=False)
    else:
        first = progress_problem(rec)
        problems = [first] if first else _field_problems(rec, WRITER_BOUNDS, required=False)
    return "; ".join(problems) if problems else None


def validate(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` itself when it is valid (:func:`record_problem`), else :class:`SchemaError`."""
    problem = record_problem(rec)
    if problem:
        raise SchemaError(f"invalid {rec.get('type', 'results') if isinstance(rec, dict) else 'results'} "
                          f"record: {problem}")
    return rec


def _fits(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a :class:`TrainConfig` field of this (string) annotation."""
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "int":
        return is_int(value)
    if annotation == "float":
        return is_finite(value)
    if annotation == "str":
        return isinstance(value, str)
    if annotation.startswith("tuple["):  # fixed-length tuples of numbers (adam_betas); JSON makes them lists
        size = annotation.count(",") + 1
        return isinstance(value, (list, tuple)) and len(value) == size and all(is_finite(v) for v in value)
    return True


def train_settings(train: dict[str, Any]) -> dict[str, Any]:
    """The recorded ``config.train`` settings that :class:`~opgrpo_bench.config.TrainConfig` knows, each
    checked against its field's type (:class:`SchemaError` naming the first that does not fit; unknown
    keys, e.g. of a newer version, are dropped). Lists become tuples where the field is a tuple."""
    from opgrpo_bench.config import TrainConfig

    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in train:
            continue
        value, annotation = train[f.name], str(f.type)
        if not _fits(value, annotation):
            raise SchemaError(f"'config.train.{f.name}' is {value!r}, expected {annotation}")
        out[f.name] = tuple(value) if annotation.startswith("tuple[") else value
    return out


# -- the outcome of a run --------------------------------------------------------------------------------


def first_reaching(
    evals: Iterable[dict[str, Any]], target: float, higher_is_better: bool = True
) -> dict[str, Any] | None:
    """The first ``eval`` record (in step order) whose ``score`` reaches ``target``; None if none does."""
    for rec in sorted(evals, key=lambda r: r["step"]):
        score = rec.get("score")
        if score is None:
            continue
        if (score >= target) if higher_is_better else (score <= target):
            return rec
    return None


def run_outcome(evals: list[dict[str, Any]], target: float, higher_is_better: bool) -> dict[str, Any]:
    """A run's outcome from its ``eval`` records, as ``run_end`` records it (:data:`OUTCOME_FIELDS`).

    ``steps/samples/nfe/wall_s_to_target``: the counters of the first eval (in step order) whose score
    reaches ``target`` (``>=``, or ``<=`` when lower is better; null scores skipped), all None and
    ``censored`` true when none does. ``final_score``: the score of the last record of ``evals`` (in the
    order given); ``best_score``: the best non-null score (max, or min when lower is better); both None
    without a score.
    """
    hit = first_reaching(evals, target, higher_is_better)
    scores = [e["score"] for e in evals if e.get("score") is not None]
    return {
        "steps_to_target": hit["step"] if hit else None,
        "samples_to_target": hit.get("samples") if hit else None,
        "nfe_to_target": hit.get("nfe") if hit else None,
        "wall_s_to_target": hit.get("wall_s") if hit else None,
        "censored": hit is None,
        "final_score": evals[-1].get("score") if evals else None,
        "best_score": (max(scores) if higher_is_better else min(scores)) if scores else None,
    }


# -- migration -------------------------------------------------------------------------------------------

Migration = Callable[[dict[str, Any]], dict[str, Any]]

MIGRATIONS: dict[str, tuple[str, Migration]] = {}
"""``{old version: (next version, function)}``: how a record of an older schema becomes one of the next.
:func:`migrate` applies them in a chain until it reaches :data:`SCHEMA`. ``opgrpo-bench/v1`` is the first
published schema, so the chain is empty; a ``v2`` adds ``"opgrpo-bench/v1": ("opgrpo-bench/v2", fn)``
and every reader keeps reading ``v1`` files through it."""


def migrate(rec: dict[str, Any], evals: list[dict[str, Any]] | None = None,
            start: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """``rec`` as a record of the current schema, or None when its version is unknown (newer, or not an
    opgrpo-bench record). The input is not modified.

    A ``run_end`` written before some of :data:`OUTCOME_FIELDS` existed (early ``v1`` files lack
    ``nfe_to_target``, ``final_score`` and ``best_score``) gets the missing ones from :func:`run_outcome`
    over ``evals`` when the run's ``start`` (its target) is given; fields it has are never changed.
    """
    version = rec.get("schema")
    seen = set()
    while version != SCHEMA:
        if version not in MIGRATIONS or version in seen:
            return None
        seen.add(version)
        version, step = MIGRATIONS[version]
        rec = {**step(dict(rec)), "schema": version}
    missing = [k for k in OUTCOME_FIELDS if k not in rec]
    if rec.get("type") == "run_end" and missing and evals is not None and start is not None \
            and start_problem(start) is None:
        outcome = run_outcome(evals, start["target"], start["higher_is_better"])
        rec = {**rec, **{k: outcome[k] for k in missing}}
    return rec
