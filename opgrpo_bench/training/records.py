"""Where a rank's records go: rank 0 writes the results file (then each ``--log`` mirror), other ranks
build their records for progress only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from opgrpo_bench.results import METRICS_FILE, ResultsWriter


class NoWriter:
    """A data-parallel rank other than 0: records are built (for progress) but not written."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / METRICS_FILE

    def write(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": type_, **fields}


class MirroredWriter:
    """The results writer, then each mirror (``--log``): the JSONL record is written first, and stays the
    source of truth."""

    def __init__(self, writer: ResultsWriter | NoWriter, mirrors: Sequence[Any]):
        self.inner, self.mirrors, self.path = writer, list(mirrors), writer.path

    def write(self, type_: str, **fields: Any) -> dict[str, Any]:
        record = self.inner.write(type_, **fields)
        for mirror in self.mirrors:
            mirror.write(record)
        return record
