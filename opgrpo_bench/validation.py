"""Settings and paths, checked before any model loads: a mistake is one :class:`UserError` line.

:func:`build_settings` (called by :func:`opgrpo_bench.runner.resolve`) merges a run's settings in the
documented order (library defaults, the task's ``train_defaults``, the algorithm preset's overrides,
``--set key=value``, then ``--steps`` and ``--seed``), parses ``--set`` values by the field's type and checks
every value against the rule declared on its field: config dataclasses (:class:`opgrpo_bench.config.TrainConfig`,
the algorithms' configs) declare checked fields with :func:`setting` (``lr: float = setting(3e-4, gt=0)``),
whose bounds sit in the field's metadata and whose kind of check is read from the field's type, so a rule
cannot drift from its field. A field declared without :func:`setting` is not checked (new fields work before
a rule is written for them). Choices of a ``Literal`` field are read from its type annotation.

:func:`check_output_dir` is the CLI's check that an output directory can be written (or created).

Messages name the setting, its value, where the value came from when it was not ``--set``, and the rule:
``invalid setting group_size=1: must be >= 2``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tempfile
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from opgrpo_bench.errors import UserError

Check = Callable[[Any, Any], "str | None"]
"""``check(value, type_hint)``: why ``value`` is invalid ("must be >= 2"), or None when it is fine."""


# ----------------------------------------------------------------------------------------------------
# Rules


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_text(value: float) -> str:
    """An integer bound in full (``4294967295``, not ``4.29497e+09``), any other in ``%g``."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _bounds_text(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    n = _number_text
    low = f"> {n(gt)}" if gt is not None else f">= {n(ge)}" if ge is not None else None
    high = f"< {n(lt)}" if lt is not None else f"<= {n(le)}" if le is not None else None
    if low and high:
        lo_b = "(" if gt is not None else "["
        hi_b = ")" if lt is not None else "]"
        lo_v = gt if gt is not None else ge
        hi_v = lt if lt is not None else le
        return f"in {lo_b}{n(lo_v)}, {n(hi_v)}{hi_b}"
    return low or high or ""


def _in_bounds(v: float, gt: float | None, ge: float | None, lt: float | None, le: float | None) -> bool:
    return not ((gt is not None and not v > gt) or (ge is not None and not v >= ge)
                or (lt is not None and not v < lt) or (le is not None and not v <= le))


def integer(ge: int | None = None, le: int | None = None) -> Check:
    """An ``int`` (not a bool, not a float) within the bounds."""
    def check(value: Any, hint: Any = None) -> str | None:
        if not _is_int(value):
            return "must be an integer"
        if not _in_bounds(value, None, ge, None, le):
            return "must be " + _bounds_text(None, ge, None, le)
        return None
    return check


def number(gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None, finite: bool = True, optional: bool = False) -> Check:
    """A real number (int or float, not a bool, never NaN; finite unless ``finite=False``) within the
    bounds; None too when ``optional``."""
    def check(value: Any, hint: Any = None) -> str | None:
        if value is None and optional:
            return None
        if not _is_number(value):
            return "must be a number" + (" or none" if optional else "")
        if math.isnan(value):
            return "must be a number, not NaN"
        if finite and math.isinf(value):
            return "must be finite"
        if not _in_bounds(value, gt, ge, lt, le):
            return "must be " + _bounds_text(gt, ge, lt, le)
        return None
    return check


def boolean() -> Check:
    """True or false (a real bool, not 0 or 1)."""
    def check(value: Any, hint: Any = None) -> str | None:
        return None if isinstance(value, bool) else "must be true or false"
    return check


def choice(*values: str) -> Check:
    """One of ``values``; with no values, one of the field's ``Literal[...]`` annotation."""
    def check(value: Any, hint: Any = None) -> str | None:
        allowed = values or _literal_values(hint)
        if not allowed or value in allowed:
            return None
        return "must be one of " + ", ".join(f"'{a}'" for a in allowed)
    return check


def number_tuple(length: int, ge: float | None = None, lt: float | None = None) -> Check:
    """A tuple (or list) of ``length`` finite numbers, each within the bounds."""
    def check(value: Any, hint: Any = None) -> str | None:
        what = f"must be {length} numbers" + (f" {_bounds_text(None, ge, lt, None)}" if ge is not None
                                              or lt is not None else "")
        if not isinstance(value, (tuple, list)) or len(value) != length:
            return what
        for v in value:
            if not _is_number(v) or not math.isfinite(v) or not _in_bounds(v, None, ge, lt, None):
                return what
        return None
    return check


SETTING_CHECK = "check"
"""The dataclass-field metadata key under which :func:`setting` declares a field's bounds."""


def setting(default: Any, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
            le: float | None = None, finite: bool = True, choices: tuple[str, ...] = ()) -> Any:
    """A checked config field: ``lr: float = setting(3e-4, gt=0)``, the rule declared beside the field.

    The kind of check comes from the field's type (:func:`rule_for`): ``int`` an integer, ``float`` a real
    number (NaN never; infinities only with ``finite=False``; ``float | None`` also None), ``bool`` true or
    false, ``Literal[...]`` one of its values, ``tuple[float, float]`` that many numbers; ``choices`` lists
    the values of a plain ``str`` field. A field declared without :func:`setting` is not checked; a subclass
    that only changes a default (``clip_range: float = 1e-5``) keeps its base class's rule.
    """
    bounds: dict[str, Any] = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    if not finite:
        bounds["finite"] = False
    if choices:
        bounds["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata={SETTING_CHECK: bounds})


def rule_for(hint: Any, bounds: dict[str, Any]) -> Check:
    """The check of a field of type ``hint`` declared with ``bounds`` (see :func:`setting`)."""
    bounds = dict(bounds)
    choices = bounds.pop("choices", ())
    if choices or _literal_values(hint):
        return choice(*choices)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return number_tuple(len([a for a in args if a is not Ellipsis]), ge=bounds.get("ge"), lt=bounds.get("lt"))
    optional = type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if base is bool:
        return boolean()
    if base is int:
        return integer(ge=bounds.get("ge"), le=bounds.get("le"))
    if base is float:
        return number(optional=optional, **bounds)
    raise TypeError(f"no rule for settings of type {hint!r}")


def field_rule(cls: type, name: str, hint: Any) -> Check | None:
    """The rule of field ``name`` of config dataclass ``cls``: its own :func:`setting`, else that of the
    nearest base class declaring the same field with one (a default changed in a subclass), else None."""
    for klass in cls.__mro__:
        own = getattr(klass, "__dataclass_fields__", {}).get(name)
        if own is not None and SETTING_CHECK in own.metadata:
            return rule_for(hint, own.metadata[SETTING_CHECK])
    return None


def _cross_checks(train: Any, algo: Any) -> list[tuple[str, str]]:
    """Rules that involve two settings: ``(field, why)`` for each one broken."""
    problems = []
    n_rows = getattr(train, "prompts_per_iter", None), getattr(train, "group_size", None)
    shares = getattr(train, "optimizer_steps_per_iter", None)
    if all(_is_int(v) for v in (*n_rows, shares)) and shares > n_rows[0] * n_rows[1]:
        problems.append(("optimizer_steps_per_iter",
                         f"must be <= prompts_per_iter * group_size = {n_rows[0] * n_rows[1]} "
                         "(each optimizer step trains a share of the iteration's samples)"))
    fraction, steps = getattr(algo, "train_fraction", None), getattr(train, "num_steps", None)
    if _is_number(fraction) and _is_int(steps) and 0 < fraction <= 1 and math.floor(fraction * steps) < 1:
        problems.append(("train_fraction", f"with num_steps={steps} it trains no denoising step "
                                           f"(floor(train_fraction * num_steps) = 0)"))
    return problems


# ----------------------------------------------------------------------------------------------------
# Parsing --set values by the field's type


class KeyValueError(ValueError):
    """An item of ``--set`` that is not ``key=value``; ``item`` is the text as given."""

    def __init__(self, item: str):
        super().__init__(f"expected key=value, got '{item}'")
        self.item = item


def parse_sets(items: typing.Iterable[str], value: Callable[[str], Any] = str) -> dict[str, Any]:
    """Every ``--set``: ``key=value`` items -> ``{key: value(text)}``, keys stripped, the last of a key wins.

    The one parser of ``--set`` (trainer settings, reward constructor arguments): callers differ only in
    how a value's text becomes a value. Raises :class:`KeyValueError` for an item without ``=`` or key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise KeyValueError(item)
        out[key.strip()] = value(text)
    return out


def _literal_values(hint: Any) -> tuple[Any, ...]:
    for typ in (hint, *typing.get_args(hint)):
        if typing.get_origin(typ) is typing.Literal:
            return typing.get_args(typ)
    return ()


def describe(hint: Any) -> str:
    """A field type in words: "an integer", "one of 'sde', 'ode'", "a number or none"."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"'{a}'" for a in args)
    if origin is tuple:
        inner = [a for a in args if a is not Ellipsis]
        return f"{len(inner)} comma-separated numbers, e.g. 0.9,0.999" if inner else "a list"
    if args and type(None) in args:  # Optional[X]
        rest = [a for a in args if a is not type(None)]
        return " or ".join(describe(a) for a in rest) + " or none"
    if args:  # another Union
        return " or ".join(describe(a) for a in args)
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _parse_as(text: str, typ: Any) -> Any:
    """``text`` as ``typ``; ValueError when it is not one."""
    low = text.lower()
    if typ is type(None):
        if low in ("none", "null"):
            return None
        raise ValueError
    if typ is bool:
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError
    if typ is int:
        number_ = float(text)
        if not number_.is_integer():
            raise ValueError
        return int(number_)
    if typ is float:
        return float(text)
    if typ is str:
        return text
    if typing.get_origin(typ) is typing.Literal:
        if text in typing.get_args(typ):
            return text
        raise ValueError
    if typing.get_origin(typ) is tuple:
        inner = [a for a in typing.get_args(typ) if a is not Ellipsis] or [float]
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            items = [p for p in text.strip("()[] ").split(",") if p.strip()]
        if not isinstance(items, list):
            items = [items]
        types = inner if len(inner) == len(items) else [inner[0]] * len(items)
        return tuple(_parse_as(str(item).strip(), t) for item, t in zip(items, types))
    raise ValueError


def parse_value(raw: str, name: str, hint: Any) -> Any:
    """A ``--set`` value parsed by the field's type hint (UserError with the expected type otherwise)."""
    text = raw.strip()
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    # None is accepted only for Optional fields; bool before int, since "1" parses as both
    options = sorted(options, key=lambda t: (t is not type(None), t is not bool))
    for typ in options:
        try:
            return _parse_as(text, typ)
        except (ValueError, TypeError):
            continue
    raise UserError(f"invalid value '{raw}' for setting '{name}' (expected {describe(hint)})")


# ----------------------------------------------------------------------------------------------------
# Merging and checking a run's settings


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value).replace("null", "none")
    if isinstance(value, (tuple, list)):
        return ",".join(_show(v) for v in value)
    if isinstance(value, float):
        return repr(value) if not math.isfinite(value) else f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class _Value:
    value: Any
    origin: str  # "--set", "--steps", "--seed", "task 'x'", "preset 'y'", "default"


def _where(origin: str) -> str:
    return {"--set": "", "default": " (library default)"}.get(origin, f" (from {origin})")


def check_config(config: Any, origins: dict[str, str] | None = None) -> None:
    """Check every field of a config dataclass declared with :func:`setting`; the first broken one is a
    UserError."""
    origins = origins or {}
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        rule = field_rule(type(config), f.name, hints.get(f.name))
        if rule is None:
            continue
        value = getattr(config, f.name)
        problem = rule(value, hints.get(f.name))
        if problem:
            raise _invalid(f.name, value, problem, origins.get(f.name, "default"))


def _invalid(name: str, value: Any, problem: str, origin: str) -> UserError:
    if origin == "--steps":
        return UserError(f"--steps must be positive, got {_show(value)}" if _is_int(value)
                         else f"--steps must be an integer, got {_show(value)}")
    if origin == "--seed":
        return UserError(f"invalid --seed {_show(value)}: {problem}")
    return UserError(f"invalid setting {name}={_show(value)}{_where(origin)}: {problem}")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def all_algorithm_fields() -> dict[str, list[str]]:
    """Every registered algorithm's config field -> the algorithms that have it."""
    from opgrpo_bench.registry import ALGORITHMS

    owners: dict[str, list[str]] = {}
    for entry in ALGORITHMS.entries():
        try:
            names = entry.load().config_fields()
        except Exception:  # a broken plugin does not block the built-ins
            continue
        for name in names:
            owners.setdefault(name, []).append(entry.name)
    return owners


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def build_settings(spec: Any, preset: Any, algorithm: str, seed: int, steps: int | None,
                   sets: dict[str, str]) -> tuple[Any, Any]:
    """The run's checked ``(TrainConfig, algorithm object)``; raises UserError for any bad setting.

    ``sets`` are the raw ``--set`` pairs (key -> text); ``steps`` and ``seed`` come from ``--steps`` and
    ``--seed``. Nothing is loaded: the algorithm object holds only its config (and an empty buffer).
    """
    from opgrpo_bench.config import TrainConfig

    train_fields = _fields(TrainConfig)
    algo_cls = preset.algorithm_class().config_cls
    algo_fields = _fields(algo_cls)
    task_origin = f"the defaults of task '{spec.id}'"

    train: dict[str, _Value] = {"steps": _Value(spec.budget_steps, task_origin),
                                "eval_every": _Value(spec.eval_every, task_origin)}
    algo: dict[str, _Value] = {}
    others = None
    for key, value in spec.train_defaults.items():
        if key in train_fields:
            train[key] = _Value(value, task_origin)
        elif key in algo_fields:
            algo[key] = _Value(value, task_origin)
        else:  # another algorithm's setting is fine (it applies to that algorithm); anything else is not
            others = all_algorithm_fields() if others is None else others
            if key not in others:
                known = sorted(set(train_fields) | set(others))
                raise UserError(f"task '{spec.id}' has an unknown setting '{key}' in its train_defaults "
                                f"(neither a trainer setting nor any algorithm's).{_suggest(key, known)}")
    preset_origin = f"preset '{algorithm}'"
    for key, value in getattr(preset, "overrides", {}).items():
        if key not in algo_fields:
            raise UserError(f"preset '{algorithm}' overrides an unknown setting '{key}' of "
                            f"{algo_cls.__name__}.{_suggest(key, sorted(algo_fields))}")
        algo[key] = _Value(value, preset_origin)
    train_hints, algo_hints = typing.get_type_hints(TrainConfig), typing.get_type_hints(algo_cls)
    for key, raw in sets.items():
        if key == "seed":
            raise UserError("choose seeds with --seed (repeatable), not --set seed=...")
        if key in train_fields:
            train[key] = _Value(parse_value(raw, key, train_hints[key]), "--set")
        elif key in algo_fields:
            algo[key] = _Value(parse_value(raw, key, algo_hints[key]), "--set")
        else:
            others = all_algorithm_fields() if others is None else others
            if key in others:
                raise UserError(f"setting '{key}' does not apply to algorithm '{algorithm}' (it is a setting "
                                f"of {', '.join(others[key][:3])}{', ...' if len(others[key]) > 3 else ''})")
            known = sorted(train_fields) + sorted(algo_fields)
            raise UserError(f"unknown setting '{key}' for algorithm '{algorithm}'.{_suggest(key, known)}")
    if steps is not None:
        train["steps"] = _Value(steps, "--steps")
    train["seed"] = _Value(seed, "--seed")

    train_origins = {k: v.origin for k, v in train.items()}
    algo_origins = {k: v.origin for k, v in algo.items()}
    train_cfg = TrainConfig(**{k: v.value for k, v in train.items()})
    check_config(train_cfg, train_origins)
    algo_values = {k: v.value for k, v in algo.items()}
    algo_cfg = algo_cls(**algo_values)
    check_config(algo_cfg, algo_origins)
    for name, problem in _cross_checks(train_cfg, algo_cfg):
        origin = train_origins.get(name) or algo_origins.get(name, "default")
        raise _invalid(name, getattr(train_cfg, name, getattr(algo_cfg, name, None)), problem, origin)
    try:
        algorithm_obj = preset.build(**algo_values)
    except (TypeError, ValueError) as err:
        raise UserError(f"invalid settings for '{algorithm}': {err}") from None
    return train_cfg, algorithm_obj


# ----------------------------------------------------------------------------------------------------
# Paths


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as err:  # e.g. permission denied on a parent
        raise UserError(f"cannot access '{path}': {err.strerror or err}") from None


def check_output_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` is a directory this process can write to, or can be created; UserError otherwise.

    Nothing is created: an existing directory, or the nearest existing parent of a missing one, is probed
    with ``os.access`` and with a temporary file (created and removed at once), which also catches
    read-only file systems and the cases where ``os.access`` is too optimistic (root).
    """
    path = Path(path)
    if _exists(path) and not path.is_dir():
        raise UserError(f"{option} '{path}' exists and is not a directory")
    nearest = path
    while not _exists(nearest) and nearest.parent != nearest:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise UserError(f"{option} '{path}' cannot be created: '{nearest}' is a file, not a directory")
    why = None
    if not os.access(nearest, os.W_OK | os.X_OK):
        why = "permission denied"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=".opgrpo-write-probe-", dir=nearest)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            why = f"creating a file there failed ({err.strerror or err})"
    if why:
        where = f"'{path}'" if nearest == path else f"'{path}' (its parent '{nearest}')"
        raise UserError(f"{option} {where} is not writable: {why}")
    return path


def check_positive(option: str, value: int | None) -> None:
    """An integer command-line option that must be >= 1 (None = not given)."""
    if value is not None and value < 1:
        raise UserError(f"{option} must be >= 1, got {value}")
