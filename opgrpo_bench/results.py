"""Results files: one JSONL file per run, ``<out>/<run_id>/metrics.jsonl``, schema ``opgrpo-bench/v1``.

Record types (each carries ``"schema"`` and ``"type"``):

- ``run_start``: ``run_id``, ``task``, ``task_version``, ``algorithm``, ``config`` (resolved), ``seed``,
  ``world_size``, ``fsdp`` (whether the frozen weights were sharded), ``precision``, ``versions``, ``git_sha``, ``device``, ``start_time``, ``target``,
  ``higher_is_better``, ``budget_steps``.
- ``step``: ``step`` (optimizer steps so far), ``samples`` (fresh samples generated so far), ``nfe``
  (network evaluations so far), ``wall_s``, ``train/reward_mean``, ``train/reward_std``, ``loss/*``,
  ``ratio/*``, ``clipfrac/*``, ``op/*`` diagnostics.
- ``eval``: ``step``, ``samples``, ``nfe``, ``wall_s``, ``score`` (the task's main metric) and components.
- ``run_end``: ``status``, ``steps_to_target``, ``samples_to_target``, ``wall_s_to_target``, ``censored``.

Steps-to-target is always recomputable from the ``eval`` records (:func:`first_reaching`); the
leaderboard reads only these files.

A finished run may be *packed* (:func:`pack_run`, ``opgrpo-bench pack``): its ``metrics.jsonl`` is replaced
by ``metrics.jsonl.gz`` holding the same bytes, about a sixth of the size. That is how the committed
reference results fit their size budget. Everything that reads results (the leaderboard, ``eval``, the
runner's finished-run check) accepts either file; a packed run is finished, so it is never appended to.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from opgrpo_bench import SCHEMA
from opgrpo_bench.storage import atomic_write, atomic_write_text

METRICS_FILE = "metrics.jsonl"
PACKED_FILE = METRICS_FILE + ".gz"
LOCK_FILE = ".lock"


def _clean(value: Any) -> Any:
    """JSON-safe copy: tensors/numpy scalars to floats, non-finite floats to None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class ResultsWriter:
    """Appends records to ``run_dir/metrics.jsonl``; each line is flushed and fsynced when written.

    A failed write (e.g. a full disk) truncates the file back to its last complete record before the
    error propagates, so the file never ends in half a line.
    """

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE

    def write(self, type_: str, **fields: Any) -> dict[str, Any]:
        record = {"schema": SCHEMA, "type": type_, **_clean(fields)}
        line = json.dumps(record, sort_keys=False) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            size = f.tell()
            try:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                f.truncate(size)
                raise
        return record


def results_file(run_dir: str | os.PathLike[str]) -> Path | None:
    """The run's results file: ``metrics.jsonl``, else its packed ``metrics.jsonl.gz``, else ``None``."""
    for name in (METRICS_FILE, PACKED_FILE):
        path = Path(run_dir) / name
        if path.is_file():
            return path
    return None


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """A results file's bytes; a packed file (``metrics.jsonl.gz``) is decompressed (a damaged one raises
    ``OSError``, ``EOFError`` or ``zlib.error``)."""
    path = Path(path)
    data = path.read_bytes()
    return gzip.decompress(data) if path.name == PACKED_FILE else data


def read_text(path: str | os.PathLike[str]) -> str:
    """A results file's text, plain or packed."""
    return read_bytes(path).decode("utf-8")


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All well-formed records of one results file, plain or packed (a truncated last line is ignored)."""
    records = []
    with io.StringIO(read_text(path)) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def truncate_after_step(path: str | os.PathLike[str], step: int, budget_steps: int | None = None) -> None:
    """Drop records beyond optimizer step ``step`` (and any ``run_end``): used when resuming.

    ``budget_steps`` replaces the budget in ``run_start`` (``budget_steps`` and the recorded config's
    ``steps``), for a finished run continued to a larger budget.
    The file is rewritten atomically (temporary file, fsync, rename).
    """
    p = Path(path)
    kept = []
    for r in read_records(p):
        if r.get("type") == "run_start":
            if budget_steps is not None:
                r["budget_steps"] = budget_steps
                if isinstance(r.get("config", {}).get("train"), dict):
                    r["config"]["train"]["steps"] = budget_steps
            kept.append(r)
        elif r.get("type") in ("step", "eval") and r["step"] <= step:
            kept.append(r)
    atomic_write_text(p, "".join(json.dumps(r) + "\n" for r in kept))


def pack_bytes(data: bytes) -> bytes:
    """``data`` gzipped reproducibly: no file name, no time stamp, level 9 (the same input gives the same
    bytes, so a packed file is stable under git)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buffer, mtime=0) as f:
        f.write(data)
    return buffer.getvalue()


def pack_run(run_dir: str | os.PathLike[str]) -> Path | None:
    """Replace a finished run's ``metrics.jsonl`` with ``metrics.jsonl.gz`` (same bytes, compressed).

    Returns the packed file, or ``None`` when there is nothing to pack: no plain results file, or a run
    that has no ``run_end`` (an unfinished run must stay appendable). The packed file is written to a
    temporary name, fsynced, read back and compared with the original before it replaces it, so a
    failure at any point leaves the plain file intact.
    """
    plain = Path(run_dir) / METRICS_FILE
    if not plain.is_file() or not any(r.get("type") == "run_end" for r in read_records(plain)):
        return None
    data = plain.read_bytes()

    def write_checked(tmp: Path) -> None:
        tmp.write_bytes(pack_bytes(data))
        if gzip.decompress(tmp.read_bytes()) != data:
            raise OSError(f"packing {plain} did not read back the same bytes")

    packed = plain.with_name(PACKED_FILE)
    atomic_write(packed, write_checked)
    plain.unlink()
    return packed


def pack_tree(root: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """Pack every finished run under ``root`` (:func:`pack_run`), each under its :class:`RunLock`.

    Returns ``(packed, left)``: the packed files, and the plain results files left as they are (unfinished,
    or locked by a process that is writing them). Symlinked directories are not followed.
    """
    from opgrpo_bench.errors import UserError

    packed, left = [], []
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        if METRICS_FILE not in files:
            continue
        try:
            with RunLock(dirpath):
                done = pack_run(dirpath)
        except UserError:  # being written right now
            done = None
        if done is None:
            left.append(Path(dirpath) / METRICS_FILE)
        else:
            packed.append(done)
    return packed, left


class RunLock:
    """An exclusive lock on a run directory, so that two processes never write the same run.

    ``fcntl.flock`` on ``run_dir/.lock``: the kernel releases it when the holder exits, even after
    ``kill -9``, so a stale lock file never blocks a resume. The file holds the holder's pid for the message.
    """

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        from opgrpo_bench.errors import UserError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"run {self.path.parent} is being written by another process (pid {holder}, lock "
                            f"{self.path}); wait for it or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock; the file stays (removing it would race)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


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
