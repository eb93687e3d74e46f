"""docs/RESULTS.md's tables are generated from the committed leaderboard: the committed document equals its
regeneration (so a table cannot disagree with the results), and a bad marker is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opgrpo_bench.leaderboard.results_doc import MARKER, ResultsDocError, update_tables

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_results_document_equals_its_regeneration():
    text = (ROOT / "docs" / "RESULTS.md").read_text(encoding="utf-8")
    doc = json.loads((ROOT / "leaderboard" / "leaderboard.json").read_text(encoding="utf-8"))
    assert len(MARKER.findall(text)) >= 3  # the document does hold generated tables
    assert update_tables(text, doc) == text, ("docs/RESULTS.md is out of date: run `opgrpo-bench leaderboard "
                                              "leaderboard/runs --out leaderboard --results-doc docs/RESULTS.md`")


def test_a_table_is_rewritten_and_a_bad_marker_refused():
    doc = json.loads((ROOT / "leaderboard" / "leaderboard.json").read_text(encoding="utf-8"))
    stale = "x\n<!-- table: results task=digits-v1 algorithms=flow-grpo -->\n| old |\n<!-- end table -->\ny\n"
    fresh = update_tables(stale, doc)
    assert "| old |" not in fresh and "| flow-grpo |" in fresh and fresh.startswith("x\n") and fresh.endswith("y\n")
    assert update_tables(fresh, doc) == fresh
    for bad in ("results", "results task=no-such-task", "results task=digits-v1 algorithms=nope", "histogram"):
        with pytest.raises(ResultsDocError):
            update_tables(f"<!-- table: {bad} -->\n<!-- end table -->", doc)
