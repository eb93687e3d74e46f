"""Reading and validating results files for the leaderboard.

The leaderboard is a pure function of the results files (``<runs>/**/metrics.jsonl``, or
``metrics.jsonl.gz`` for a packed run; schema ``opgrpo-bench/v1``, defined, validated and migrated by
:mod:`opgrpo_bench.schema`).
This module turns a runs directory into a list of validated :class:`Run` objects plus a list of
:class:`Issue` warnings. It is deliberately forgiving about *content* and strict about *meaning*:

- A missing or empty runs directory, or one without any results file, is a user error
  (:class:`LeaderboardError`, a one-line message).
- A line that is not valid JSON is skipped with a warning naming the file and line. A broken *last* line
  without a trailing newline is reported as truncated (a run that was killed, or is still writing).
- A file whose ``run_start`` carries an unknown schema version (one :func:`opgrpo_bench.schema.migrate`
  cannot bring to the current one) is skipped as a whole, with a warning that names the version found and
  the one this reader knows; other files are unaffected. A single record of an unknown schema inside a
  readable file is skipped on its own. Records of an older schema are read migrated.
- A file without a usable ``run_start`` is skipped (task, algorithm and seed are unknown without it).
- Two results files for the same task x version x algorithm x seed: one is kept (finished before
  unfinished, then more eval records, then path order) and the other is named in a warning.
- Runs of different versions of one task (``digits-v1`` and ``digits-v2``, or one id with different
  ``task_version`` values) are kept apart (separate rows, never compared) and a warning says so; runs
  of one task version that disagree on ``target`` or ``higher_is_better`` (or on ``prompt_hash``, where
  recorded) get a warning, and each run is scored against its own target.

Nothing here deletes or rewrites an input file.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opgrpo_bench import SCHEMA
from opgrpo_bench.errors import UserError
from opgrpo_bench.results import METRICS_FILE, PACKED_FILE, ResultsFileError, read_bytes
from opgrpo_bench.schema import migrate, progress_problem, start_problem


class LeaderboardError(UserError):
    """A user error (bad runs directory, nothing to report); ``str()`` is a one-line message."""


@dataclass(frozen=True)
class Issue:
    """A warning about the input: which file (and line, when there is one) and what is wrong."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


@dataclass
class Run:
    """One run's validated records. ``finished`` is true when the file holds a ``run_end`` record."""

    path: str
    run_id: str
    task: str
    task_version: str
    algorithm: str
    seed: int
    target: float
    higher_is_better: bool
    budget_steps: int
    start: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.end is not None

    @property
    def key(self) -> tuple[str, str, str, int]:
        """Identity of a run inside a leaderboard: task, task version, algorithm, seed."""
        return (self.task, self.task_version, self.algorithm, self.seed)

    @property
    def last_step(self) -> int:
        """The highest optimizer step any step or eval record reports (0 when there is none)."""
        return max((int(r["step"]) for r in (*self.steps, *self.evals)), default=0)


@dataclass
class LoadResult:
    """Everything read from a runs directory: runs (finished or not), warnings, file counts."""

    runs_dir: str
    files: list[str]
    runs: list[Run]
    issues: list[Issue]
    skipped_files: list[str]


def find_results_files(runs_dir: Path) -> list[Path]:
    """All ``metrics.jsonl`` and packed ``metrics.jsonl.gz`` files under ``runs_dir``, in sorted path order
    (symlinked dirs not followed). A directory holding both yields both: they are the same run, and the
    duplicate check keeps one with a warning."""
    found = []
    for root, dirs, files in os.walk(runs_dir, followlinks=False):
        dirs.sort()  # walk order does not matter (we sort below) but keeps traversal reproducible
        found.extend(Path(root) / name for name in (METRICS_FILE, PACKED_FILE) if name in files)
    return sorted(found)


def _read_lines(path: Path, shown: str, issues: list[Issue]) -> list[tuple[int, dict[str, Any]]]:
    """Parsed JSON objects with their 1-based line numbers; bad lines become warnings. A packed file that
    is not valid gzip raises :class:`OSError` (the file is skipped with a warning)."""
    try:
        data = read_bytes(path)
    except ResultsFileError as exc:  # the message names the file; the warning names it already
        raise OSError(str(exc).removeprefix(f"{path} ")) from None
    raw_lines = data.split(b"\n")
    # ``split`` leaves an empty last element when the file ends with a newline; if it does not, the last
    # element is a line whose writer never finished it.
    unterminated_last = len(raw_lines) if raw_lines and raw_lines[-1].strip() else None
    out = []
    for lineno, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if lineno == unterminated_last:
                issues.append(Issue(shown, "truncated last line skipped (the run was interrupted or is "
                                           "still writing)", lineno))
            else:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                issues.append(Issue(shown, f"corrupt line skipped ({reason})", lineno))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            issues.append(Issue(shown, "line is not a results record (a JSON object with a 'type'); "
                                       "skipped", lineno))
            continue
        out.append((lineno, obj))
    return out


def read_run(path: Path, shown: str, issues: list[Issue]) -> Run | None:
    """One results file as a :class:`Run`, or None (with a warning) when it cannot be used."""
    if path.stat().st_size == 0:
        issues.append(Issue(shown, "empty results file skipped"))
        return None
    records = _read_lines(path, shown, issues)
    starts = [(n, r) for n, r in records if r["type"] == "run_start"]
    if not starts:
        issues.append(Issue(shown, "no run_start record (task, algorithm and seed unknown); file skipped"))
        return None
    start_line, start = starts[0]
    if migrate(start) is None:
        issues.append(Issue(shown, f"unknown schema version {start.get('schema')!r} (this reader knows "
                                   f"'{SCHEMA}'; a newer opgrpo-bench may read it); file skipped",
                            start_line))
        return None
    start = migrate(start)
    problem = start_problem(start)
    if problem:
        issues.append(Issue(shown, f"unusable run_start ({problem}); file skipped", start_line))
        return None
    run = Run(
        path=shown,
        run_id=str(start.get("run_id") or path.parent.name),
        task=f"{start['task']} [{start['setup']}]" if start.get("setup") else start["task"],
        task_version=str(start["task_version"]),
        algorithm=row_label(start),
        seed=start["seed"],
        target=float(start["target"]),
        higher_is_better=start["higher_is_better"],
        budget_steps=start["budget_steps"],
        start=start,
    )
    # A resumed run may append a second run_start; it must describe the same run.
    for lineno, other in starts[1:]:
        if any(other.get(k) != start.get(k) for k in ("task", "task_version", "algorithm", "seed")):
            issues.append(Issue(shown, "file holds run_start records of different runs "
                                       f"(lines {start_line} and {lineno}); file skipped"))
            return None

    evals_by_step: dict[int, dict[str, Any]] = {}
    end: dict[str, Any] | None = None
    duplicates = 0
    for lineno, rec in records:
        kind = rec["type"]
        if kind not in ("step", "eval", "run_end"):
            continue  # run_start handled above; unknown types are ignored (forward compatibility)
        migrated = migrate(rec)
        if migrated is None:
            issues.append(Issue(shown, f"{kind} record of unknown schema {rec.get('schema')!r} skipped",
                                lineno))
            continue
        rec = migrated
        if kind == "run_end":
            end = rec
            continue
        problem = progress_problem(rec)
        if problem:
            issues.append(Issue(shown, f"{kind} record skipped ({problem})", lineno))
            continue
        if kind == "step":
            run.steps.append(rec)
        else:
            if rec["step"] in evals_by_step:
                duplicates += 1
            evals_by_step[rec["step"]] = rec  # the last one written wins (e.g. after a resume)
    if duplicates:
        issues.append(Issue(shown, f"{duplicates} eval record(s) repeat an earlier step; the last one "
                                   "written for each step is used"))
    run.evals = [evals_by_step[s] for s in sorted(evals_by_step)]
    run.steps.sort(key=lambda r: r["step"])
    if end is not None:  # the last run_end written; an older writer's gets its missing outcome fields
        run.end = migrate(end, run.evals, start)
    return run


def _prefer(a: Run, b: Run) -> Run:
    """Of two files for the same run, the one to keep: finished, then more evals, then path order."""
    rank_a = (not a.finished, -len(a.evals), a.path)
    rank_b = (not b.finished, -len(b.evals), b.path)
    return a if rank_a <= rank_b else b


def task_family(task: str, version: str) -> str:
    """The task id without its version suffix (``digits-v1`` with version ``v1`` or ``1`` -> ``digits``)."""
    for suffix in (f"-{version}", f"-v{version}"):
        if task.endswith(suffix) and len(task) > len(suffix):
            return task[: -len(suffix)]
    return task


def row_label(start: dict[str, Any]) -> str:
    """The row a run belongs to: its algorithm, and for a variant (settings changed from the preset's
    defaults, ``run_start["variant"]``) the changed settings in brackets, e.g. ``op-grpo[replay_proportion=0.25]``."""
    variant = start.get("variant")
    return f"{start['algorithm']}[{variant}]" if variant else str(start["algorithm"])


def base_algorithm(label: str) -> str:
    """The registered algorithm of a row label (:func:`row_label`; a split suffix is dropped too)."""
    return label.split("[", 1)[0]


SETTINGS_IGNORED = ("seed", "steps")
"""``config.train`` keys that are not a configuration: which seed, and the budget (compared on its own)."""


def settings_key(start: dict[str, Any]) -> str:
    """A canonical text of the settings a run was made with (trainer and algorithm config, seed and budget
    left out; settings added after results were published count only when changed from their default)."""
    from opgrpo_bench.config import identity_settings

    config = start.get("config") or {}
    train = identity_settings(config.get("train") or {}, drop=SETTINGS_IGNORED)
    return json.dumps({"train": train, "algorithm": config.get("algorithm") or {}}, sort_keys=True, default=str)


def _split_differing(runs: list[Run], issues: list[Issue]) -> None:
    """Runs of one row must share their configuration and budget, or their statistics would mix two
    experiments. Where they do not, the most common (configuration, budget) keeps the row and every other
    gets its own row (``[config HASH]`` or ``[budget N]`` appended to the label), with one warning."""
    import hashlib

    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.task, run.task_version, run.algorithm)].append(run)
    for (task, version, label), group in sorted(groups.items()):
        kinds: dict[tuple[str, int], list[Run]] = defaultdict(list)
        for run in group:
            kinds[(settings_key(run.start), run.budget_steps)].append(run)
        if len(kinds) == 1:
            continue
        ordered = sorted(kinds.items(), key=lambda kv: (-len(kv[1]), min(r.path for r in kv[1])))
        (main_settings, main_budget), _ = ordered[0]
        new_labels = []
        for (settings, budget), members in ordered[1:]:
            suffix = f"config {hashlib.sha256(settings.encode()).hexdigest()[:6]}" if settings != main_settings \
                else f"budget {budget}"
            if settings != main_settings and budget != main_budget:
                suffix += f", budget {budget}"
            for run in members:
                run.algorithm = f"{label}[{suffix}]"
            new_labels.append(f"{label}[{suffix}]")
        issues.append(Issue(f"{task} (version {version})", f"runs of {label} differ in configuration or budget; "
                                                            f"split into the rows {label}, {', '.join(new_labels)}"))


def _check_consistency(runs: list[Run], issues: list[Issue]) -> None:
    """Warn about mixed task versions and about runs of one version that disagree on what they measure."""
    versions: dict[str, set[tuple[str, str]]] = defaultdict(set)
    by_version: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        versions[task_family(run.task, run.task_version)].add((run.task, run.task_version))
        by_version[(run.task, run.task_version)].append(run)
    for family in sorted(versions):
        if len(versions[family]) > 1:
            listed = ", ".join(t if t != family else f"{t} version {v}" for t, v in sorted(versions[family]))
            issues.append(Issue(family, f"task has runs of several versions ({listed}); each version is "
                                        "reported in its own rows and never compared with another"))
    for (task, version), group in sorted(by_version.items()):
        where = f"{task} (version {version})"
        targets = sorted({r.target for r in group})
        directions = sorted({r.higher_is_better for r in group})
        if len(targets) > 1 or len(directions) > 1:
            issues.append(Issue(where, f"runs disagree on the target ({targets}) or its direction; each run "
                                       "is scored against its own run_start target"))
        # A prompt-set hash, where the writer records one, must not change inside a version.
        hashes = sorted({str(r.start["prompt_hash"]) for r in group if r.start.get("prompt_hash")})
        if len(hashes) > 1:
            issues.append(Issue(where, f"runs were made with different prompt sets (prompt_hash "
                                       f"{', '.join(hashes)}): the task changed without a new version"))


def load_runs(runs_dir: str | os.PathLike[str]) -> LoadResult:
    """Read every results file under ``runs_dir``.

    Raises :class:`LeaderboardError` when the directory is missing, is not a directory, or holds no
    ``metrics.jsonl`` file. Files that cannot be used are listed in ``skipped_files`` with a warning.
    """
    root = Path(runs_dir)
    if not root.exists():
        raise LeaderboardError(f"runs directory '{root}' does not exist")
    if not root.is_dir():
        raise LeaderboardError(f"runs directory '{root}' is not a directory")
    files = find_results_files(root)
    if not files:
        raise LeaderboardError(f"no results files ({METRICS_FILE}) found under '{root}'; "
                               "run `opgrpo-bench run` first or point to the directory holding the runs")
    issues: list[Issue] = []
    kept: dict[tuple[str, str, str, int], Run] = {}
    skipped: list[str] = []
    shown_files = []
    for path in files:
        shown = str(root / path.relative_to(root))
        shown_files.append(shown)
        try:
            run = read_run(path, shown, issues)
        except OSError as exc:
            issues.append(Issue(shown, f"cannot be read ({exc.strerror or exc}); file skipped"))
            run = None
        if run is None:
            skipped.append(shown)
            continue
        other = kept.get(run.key)
        if other is None:
            kept[run.key] = run
            continue
        winner = _prefer(other, run)
        loser = run if winner is other else other
        kept[run.key] = winner
        skipped.append(loser.path)
        issues.append(Issue(loser.path, f"same task, version, algorithm and seed as {winner.path}; "
                                        f"that file is used and this one ignored"))
    runs = list(kept.values())
    _split_differing(runs, issues)
    runs.sort(key=lambda r: (r.task, r.task_version, r.algorithm, r.seed, r.path))
    _check_consistency(runs, issues)
    return LoadResult(runs_dir=str(root), files=shown_files, runs=runs, issues=issues,
                      skipped_files=sorted(skipped))
