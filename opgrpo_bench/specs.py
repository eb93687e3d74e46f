"""Run and suite files in TOML: ``opgrpo-bench run spec.toml`` is the same as the equivalent flags.

A **run file** names what the flags name; every key is optional and means the flag of the same name
(``set`` is a table of settings, as repeated ``--set key=value``)::

    task = "digits-number-v1"            # or a list: --task, repeatable
    algorithm = ["flow-grpo", "op-grpo"]  # --algorithm
    seed = [0, 1, 2]                      # --seed
    steps = 140                           # --steps
    out = "runs"                          # --out
    jobs = 2                              # -j
    fresh = false                         # --fresh
    launcher = "slurm"                    # --launcher: local (default), slurm or ray
    [set]
    lr = 3e-3                             # --set lr=0.003
    [launch]                              # where the runs go (opgrpo_bench/launchers): --partition, ...
    partition = "gpu"                     # also account, gpus_per_run, cpus_per_run, time_limit (minutes),
    time_limit = 240                      # wait, slurm_cluster, ray_address

A **suite file** is a named list of grids (each grid: every task x algorithm x seed), with an optional
common budget and settings, and ends with the leaderboard, like ``--suite``::

    suite = "my-suite"                    # a name for the printout (a named suite: suite = "quick" alone)
    steps = 80
    out = "runs"
    leaderboard_out = "report"
    [[grid]]
    tasks = ["digits-v1"]
    algorithms = ["flow-grpo", "op-grpo"]
    seeds = [0, 1, 2]

The file is turned into the flags' values and validated by the same code as the flags (names, settings,
output directories), before anything trains. A malformed file, an unknown key or a value of the wrong
type is one :class:`UserError` line naming the file and the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opgrpo_bench.errors import UserError

RUN_KEYS = {"task", "algorithm", "seed", "steps", "out", "jobs", "fresh", "set", "leaderboard_out", "suite", "grid",
            "launcher", "launch"}
GRID_KEYS = {"tasks", "algorithms", "seeds"}


@dataclass
class RunSpec:
    """What a run or suite file asks for, as the CLI's flag values (None / empty: not given)."""

    tasks: list[str] = field(default_factory=list)
    algorithms: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    steps: int | None = None
    sets: list[str] = field(default_factory=list)
    out: Path | None = None
    jobs: int | None = None
    fresh: bool = False
    leaderboard_out: Path | None = None
    suite: str | None = None
    grids: list[tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]] = field(default_factory=list)
    launcher: str | None = None
    launch: dict[str, Any] = field(default_factory=dict)
    """``[launch]``: :class:`opgrpo_bench.launchers.LaunchOptions` field values"""


def _strings(value: Any, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        raise UserError(f"{where} must be a non-empty string or list of strings, not {value!r}")
    return list(items)


def _ints(value: Any, where: str) -> list[int]:
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in items):
        raise UserError(f"{where} must be an integer or a non-empty list of integers, not {value!r}")
    return list(items)


def _setting(value: Any) -> str:
    """A TOML value as the text ``--set`` would carry (``3e-3`` -> ``0.003``, ``true`` -> ``true``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_setting(v) for v in value) + "]"
    return str(value)


def load_spec(path: str | Path) -> RunSpec:
    """Read a run or suite file (see the module docstring); every problem is one :class:`UserError` line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"spec file '{path}' does not exist" if not path.exists() else
                        f"spec file '{path}' is not a file")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid TOML: {str(err).splitlines()[0]}") from None
    unknown = sorted(set(doc) - RUN_KEYS)
    if unknown:
        import difflib

        hint = difflib.get_close_matches(unknown[0], sorted(RUN_KEYS), n=1)
        raise UserError(f"{path}: unknown key '{unknown[0]}'" + (f". Did you mean: {hint[0]}" if hint else "")
                        + f" (keys: {', '.join(sorted(RUN_KEYS))})")
    spec = RunSpec()
    if "task" in doc:
        spec.tasks = _strings(doc["task"], f"{path}: task")
    if "algorithm" in doc:
        spec.algorithms = _strings(doc["algorithm"], f"{path}: algorithm")
    if "seed" in doc:
        spec.seeds = _ints(doc["seed"], f"{path}: seed")
    for key in ("steps", "jobs"):
        if key in doc:
            value = doc[key]
            if not isinstance(value, int) or isinstance(value, bool):
                raise UserError(f"{path}: {key} must be an integer, not {value!r}")
            setattr(spec, key, value)
    for key in ("out", "leaderboard_out", "suite"):
        if key in doc:
            if not isinstance(doc[key], str) or not doc[key]:
                raise UserError(f"{path}: {key} must be a non-empty string, not {doc[key]!r}")
            setattr(spec, key, doc[key] if key == "suite" else Path(doc[key]))
    if "fresh" in doc:
        if not isinstance(doc["fresh"], bool):
            raise UserError(f"{path}: fresh must be true or false, not {doc['fresh']!r}")
        spec.fresh = doc["fresh"]
    if "set" in doc:
        if not isinstance(doc["set"], dict):
            raise UserError(f"{path}: set must be a table ([set] with key = value lines)")
        spec.sets = [f"{k}={_setting(v)}" for k, v in doc["set"].items()]
    if "launcher" in doc or "launch" in doc:
        from opgrpo_bench.launchers import launch_keys

        spec.launcher, spec.launch = launch_keys(doc, str(path))
    if "grid" in doc:
        grids = doc["grid"]
        if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) for g in grids):
            raise UserError(f"{path}: grid must be one or more [[grid]] tables")
        for i, g in enumerate(grids):
            where = f"{path}: grid {i + 1}"
            missing, extra = sorted(GRID_KEYS - set(g)), sorted(set(g) - GRID_KEYS)
            if missing or extra:
                raise UserError(f"{where} needs exactly the keys tasks, algorithms, seeds"
                                + (f" (missing: {', '.join(missing)})" if missing else "")
                                + (f" (unknown: {', '.join(extra)})" if extra else ""))
            spec.grids.append((tuple(_strings(g["tasks"], f"{where}: tasks")),
                               tuple(_strings(g["algorithms"], f"{where}: algorithms")),
                               tuple(_ints(g["seeds"], f"{where}: seeds"))))
        if spec.tasks or spec.algorithms or spec.seeds:
            raise UserError(f"{path}: a suite file lists its runs in [[grid]] tables; task/algorithm/seed "
                            "cannot be combined with them")
    return spec
