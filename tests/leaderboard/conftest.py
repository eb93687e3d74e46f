"""Fixtures for the leaderboard tests; the synthetic results files are described in lb_synth.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from lb_synth import write_run, write_suite


@pytest.fixture
def make_run() -> Callable[..., Path]:
    return write_run


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    """A runs directory holding the standard suite."""
    return write_suite(tmp_path / "runs")


@pytest.fixture(scope="session")
def built_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """The standard suite and its report, built once per session (rendering figures takes a moment)."""
    from opgrpo_bench.leaderboard import build_leaderboard

    base = tmp_path_factory.mktemp("report")
    runs = write_suite(base / "runs")
    out = base / "out"
    doc = build_leaderboard(runs, out, warn=lambda message: None)
    return runs, out, doc
