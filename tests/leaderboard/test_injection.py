"""Results files are data from elsewhere: a name in them never reaches the Markdown or HTML report as markup."""

from __future__ import annotations

from pathlib import Path

import pytest

from opgrpo_bench.leaderboard.report import build_leaderboard

from lb_synth import write_run

HOSTILE = {
    "algorithm": '<img src=x onerror="alert(1)">',
    "task": "[click](javascript:alert(2))-v1",
}


def test_names_that_look_like_math_are_plotted_as_text(tmp_path: Path):
    """matplotlib would parse "$...$" in a legend as math and fail on a broken expression."""
    for seed in range(2):
        write_run(tmp_path / "runs", "flow-grpo", seed, 20)
        write_run(tmp_path / "runs", "$x^{$", seed, 10)  # two dollars: matplotlib would parse it, and fail
    doc = build_leaderboard(tmp_path / "runs", tmp_path / "out")
    assert doc["figures"] and "| $x^{$ |" in (tmp_path / "out" / "LEADERBOARD.md").read_text()


@pytest.mark.parametrize("field", sorted(HOSTILE))
def test_hostile_names_are_inert_in_markdown_and_html(tmp_path: Path, field: str):
    name = HOSTILE[field]
    kwargs = {"task": name} if field == "task" else {}
    algorithm = name if field == "algorithm" else "op-grpo"
    for seed in range(2):
        write_run(tmp_path / "runs", "flow-grpo", seed, 20, **kwargs)
        write_run(tmp_path / "runs", algorithm, seed, 10, **kwargs)
    build_leaderboard(tmp_path / "runs", tmp_path / "out")
    md = (tmp_path / "out" / "LEADERBOARD.md").read_text()
    page = (tmp_path / "out" / "index.html").read_text()
    for text in (md, page):
        assert "<img src=x" not in text  # no tag of the name survives (the page's own figures are <img class=...>)
        assert 'href="javascript:' not in text
    assert "](javascript:" not in md  # no Markdown link either
    # still readable: the name is there as text
    assert ("&lt;img src=x" in md) if field == "algorithm" else ("[click]\\(javascript:alert(2))" in md)


def test_a_report_that_fails_midway_leaves_the_old_one_whole(tmp_path: Path, monkeypatch):
    """The three files are one report: a failure while writing them (a kill, a full disk) must not leave a
    new LEADERBOARD.md beside an old leaderboard.json."""
    for seed in range(2):
        write_run(tmp_path / "runs", "flow-grpo", seed, 20)
        write_run(tmp_path / "runs", "op-grpo", seed, 10)
    build_leaderboard(tmp_path / "runs", tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    write_run(tmp_path / "runs", "op-grpo", 2, 12)  # new input: every file would change

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("opgrpo_bench.leaderboard.report.render_html", broken)
    with pytest.raises(Exception, match="No space left"):
        build_leaderboard(tmp_path / "runs", tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
