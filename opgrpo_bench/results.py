"""Results files: one JSONL file per run, ``<out>/<run_id>/metrics.jsonl``, schema ``opgrpo-bench/v1``.

The record types, their fields, their validation and the migration of old records are defined in
:mod:`opgrpo_bench.schema`; this module writes and reads the files. :class:`ResultsWriter` refuses a record
the schema rejects; :func:`read_run` gives one file's records through the schema (migrated, validated,
sorted by type), which is how ``run``'s finished-run check and ``eval`` read a run; the leaderboard reads
with the same checks and reports what it skips.

Steps-to-target is always recomputable from the ``eval`` records (:func:`opgrpo_bench.schema.run_outcome`);
the leaderboard reads only these files.

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
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opgrpo_bench import SCHEMA
from opgrpo_bench.errors import UserError
from opgrpo_bench.schema import first_reaching, migrate, progress_problem, start_problem, validate
from opgrpo_bench.storage import atomic_write, atomic_write_text

__all__ = ["LOCK_FILE", "METRICS_FILE", "PACKED_FILE", "ResultsWriter", "RunLock", "RunRecords", "first_reaching",
           "pack_bytes", "pack_run", "pack_tree", "read_bytes", "read_records", "read_run", "read_text",
           "results_file", "truncate_after_step"]

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
    error propagates, so the file never ends in half a line. A record the schema rejects
    (:func:`opgrpo_bench.schema.validate`) raises :class:`~opgrpo_bench.schema.SchemaError` and is not
    written.
    """

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE

    def write(self, type_: str, **fields: Any) -> dict[str, Any]:
        record = validate({"schema": SCHEMA, "type": type_, **_clean(fields)})
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


MAX_RESULTS_BYTES = 256 * 2**20
"""The largest results file read (plain, or packed once decompressed): a 200-step run writes about 0.1 MB, so
anything near this is not a run's records (a gzip bomb of 13 MB expands to gigabytes); read in bounded
memory and refused."""


class ResultsFileError(UserError, OSError):
    """A results file that cannot be read as one: damaged or truncated packing, or over
    :data:`MAX_RESULTS_BYTES`; the message names the file and what is wrong, in one line (the CLI prints it
    and exits 2; readers that skip bad files catch it as an ``OSError``)."""


def read_bytes(path: str | os.PathLike[str], limit: int = MAX_RESULTS_BYTES) -> bytes:
    """A results file's bytes; a packed file (``metrics.jsonl.gz``) is decompressed as a stream, never past
    ``limit`` bytes. A damaged packed file or one over the limit raises :class:`ResultsFileError`."""
    path = Path(path)
    if path.name != PACKED_FILE:
        if path.stat().st_size > limit:
            raise ResultsFileError(f"{path} is larger than {limit // 2**20} MiB; not a run's results, not read")
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            data = f.read(limit + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ResultsFileError(f"{path} is a damaged packed results file ({exc or type(exc).__name__})") from None
    if len(data) > limit:
        raise ResultsFileError(f"{path} expands to more than {limit // 2**20} MiB; not a run's results, not read")
    return data


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


@dataclass
class RunRecords:
    """One results file read through the schema (:func:`read_run`).

    ``start``: the first ``run_start`` (None when there is none); ``start_problem``: why it cannot identify
    the run (:func:`opgrpo_bench.schema.start_problem`), else None; ``steps`` / ``evals``: the valid
    progress records in file order; ``end``: the first ``run_end``, its outcome fields completed when an
    older writer left some out (:func:`opgrpo_bench.schema.migrate`); ``skipped``: the records left out
    (unknown schema version, or invalid), one reason each.
    """

    start: dict[str, Any] | None = None
    start_problem: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    skipped: list[str] = field(default_factory=list)


def read_run(path: str | os.PathLike[str]) -> RunRecords:
    """The records of one results file (plain or packed) through the schema; see :class:`RunRecords`."""
    out = RunRecords()
    ends = []
    for raw in read_records(path):
        if not isinstance(raw, dict):
            out.skipped.append("not a JSON object")
            continue
        kind = raw.get("type")
        rec = migrate(raw)
        if rec is None:
            out.skipped.append(f"{kind} record of unknown schema {raw.get('schema')!r}")
            continue
        if kind == "run_start":
            if out.start is None:
                out.start, out.start_problem = rec, start_problem(rec)
        elif kind in ("step", "eval"):
            problem = progress_problem(rec)
            if problem:
                out.skipped.append(f"{kind} record: {problem}")
            else:
                (out.steps if kind == "step" else out.evals).append(rec)
        elif kind == "run_end":
            ends.append(rec)
    if ends:
        out.end = migrate(ends[0], out.evals, out.start)
    return out


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
    failure at any point leaves the plain file intact. A directory that already holds a packed file beside
    the plain one is refused (:class:`~opgrpo_bench.errors.UserError`): the two may be different runs, and
    packing would replace the packed one's records.
    """
    from opgrpo_bench.errors import UserError

    plain = Path(run_dir) / METRICS_FILE
    if plain.is_file() and plain.with_name(PACKED_FILE).exists():
        raise UserError(f"{run_dir} holds both {METRICS_FILE} and {PACKED_FILE}; they may be different runs, "
                        "so nothing is packed: keep the one that belongs there and remove the other")
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
    or locked by a process that is writing them). Symlinked directories are not followed. A directory that
    holds a plain and a packed results file is refused before anything is packed (:class:`UserError`).
    """
    from opgrpo_bench.errors import UserError

    found = []
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        if METRICS_FILE in files:
            if PACKED_FILE in files:
                raise UserError(f"{dirpath} holds both {METRICS_FILE} and {PACKED_FILE}; they may be different "
                                "runs, so nothing was packed: keep the one that belongs there and remove the other")
            found.append(dirpath)
    packed, left = [], []
    for dirpath in found:
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
