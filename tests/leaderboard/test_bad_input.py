"""Bad input (issue item 7): each case gives a clear message, and nothing valid is lost or modified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from opgrpo_bench.leaderboard import LeaderboardError, build_leaderboard
from opgrpo_bench.leaderboard.load import load_runs
from opgrpo_bench.leaderboard.report import default_warn
from opgrpo_bench.leaderboard.rows import compute_rows

from lb_synth import write_run


def rows(runs_dir: Path) -> dict[str, dict]:
    return {r["algorithm"]: r for r in compute_rows(load_runs(runs_dir).runs)}


def warnings_of(runs_dir: Path) -> list[str]:
    return [str(i) for i in load_runs(runs_dir).issues]


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def metrics_of(suite: Path, algorithm: str, seed: int) -> Path:
    return suite / f"toy-v1-{algorithm}-s{seed}" / "metrics.jsonl"


def test_leaderboard_error_is_a_user_error() -> None:
    from opgrpo_bench.errors import UserError

    assert issubclass(LeaderboardError, UserError) and issubclass(LeaderboardError, Exception)


def test_missing_runs_directory(tmp_path: Path) -> None:
    with pytest.raises(LeaderboardError, match=r"runs directory '.*nope' does not exist"):
        build_leaderboard(tmp_path / "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_runs_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("x")
    with pytest.raises(LeaderboardError, match="is not a directory"):
        build_leaderboard(tmp_path / "runs", tmp_path / "out")


def test_empty_runs_directory(tmp_path: Path) -> None:
    (tmp_path / "runs" / "some-run").mkdir(parents=True)
    with pytest.raises(LeaderboardError, match=r"no results files \(metrics.jsonl\) found under"):
        build_leaderboard(tmp_path / "runs", tmp_path / "out")


def test_truncated_last_line_is_skipped_with_file_and_line(suite: Path) -> None:
    path = metrics_of(suite, "flow-grpo", 0)
    n_lines = len(path.read_text().splitlines())
    with path.open("a") as f:
        f.write('{"schema": "opgrpo-bench/v1", "type": "st')  # a writer killed mid-line
    assert f"{path}:{n_lines + 1}: truncated last line skipped" in "\n".join(warnings_of(suite))
    flow = rows(suite)["flow-grpo"]
    assert flow["seeds"] == 4 and flow["steps_to_target_median"] == 55  # nothing valid lost


def test_truncated_run_end_makes_the_run_incomplete(suite: Path) -> None:
    path = metrics_of(suite, "op-grpo", 1)
    text = path.read_text()
    path.write_text(text[: text.rindex('"type": "run_end"') + 10])  # cut inside the run_end record
    warnings = "\n".join(warnings_of(suite))
    assert "truncated last line skipped" in warnings
    op = rows(suite)["op-grpo"]
    assert op["seed_list"] == [0, 2, 3] and op["incomplete_excluded"] == 2


def test_corrupt_line_is_skipped_and_the_rest_kept(suite: Path) -> None:
    path = metrics_of(suite, "op-grpo", 0)
    lines = path.read_text().splitlines(keepends=True)
    lines[4] = "{this is not json}\n"  # a step record in the middle
    lines[6] = "[1, 2, 3]\n"  # valid JSON, not a record
    path.write_text("".join(lines))
    warnings = warnings_of(suite)
    assert any(w.startswith(f"{path}:5: corrupt line skipped") for w in warnings)
    assert any(w.startswith(f"{path}:7: line is not a results record") for w in warnings)
    op = rows(suite)["op-grpo"]
    assert op["seeds"] == 4 and op["steps_to_target_median"] == 25


def test_unknown_schema_version_is_skipped_and_named(suite: Path) -> None:
    write_run(suite, "op-grpo", 9, 10, schema="opgrpo-bench/v2")
    warnings = "\n".join(warnings_of(suite))
    assert "unknown schema version 'opgrpo-bench/v2' (this reader knows 'opgrpo-bench/v1'" in warnings
    assert rows(suite)["op-grpo"]["seed_list"] == [0, 1, 2, 3]
    assert any(p.endswith("toy-v1-op-grpo-s9/metrics.jsonl") for p in load_runs(suite).skipped_files)


def test_only_unknown_schema_is_a_clear_error(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", "flow-grpo", 0, 10, schema="opgrpo-bench/v2")
    seen: list[str] = []
    with pytest.raises(LeaderboardError, match="no usable runs under .*all 1 results file"):
        build_leaderboard(tmp_path / "runs", tmp_path / "out", warn=seen.append)
    assert any("unknown schema version 'opgrpo-bench/v2'" in w for w in seen)


def test_mixed_task_versions_are_kept_apart(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed, reach in [(0, 40), (1, 60)]:
        write_run(runs, "flow-grpo", seed, reach, task="toy-v1", task_version="v1")
        write_run(runs, "op-grpo", seed, reach // 2, task="toy-v1", task_version="v1")
    write_run(runs, "op-grpo", 0, 10, task="toy-v2", task_version="v2")
    loaded = load_runs(runs)
    assert any(str(i) == "toy: task has runs of several versions (toy-v1, toy-v2); each version is reported "
               "in its own rows and never compared with another" for i in loaded.issues)
    result = compute_rows(loaded.runs)
    assert [(r["task"], r["algorithm"], r["seeds"]) for r in result] == [
        ("toy-v1", "flow-grpo", 2), ("toy-v1", "op-grpo", 2), ("toy-v2", "op-grpo", 1)]
    v1_op, v2_op = result[1], result[2]
    assert v1_op["speedup_vs_flow_grpo"] == 0.5  # compared only with toy-v1's flow-grpo
    assert v2_op["speedup_vs_flow_grpo"] is None
    assert "no finished flow-grpo runs on this task version" in v2_op["speedup_note"]
    doc = build_leaderboard(runs, tmp_path / "out", warn=lambda m: None)
    text = (tmp_path / "out" / "LEADERBOARD.md").read_text()
    assert "## toy-v1 — target" in text and "## toy-v2 — target" in text
    assert doc["rows"] == result


def test_one_task_id_with_several_versions(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "flow-grpo", 0, 40, task="toy", task_version=1)
    write_run(runs, "flow-grpo", 0, 50, task="toy", task_version=2, run_id="toy2")
    loaded = load_runs(runs)
    assert any("several versions (toy version 1, toy version 2)" in str(i) for i in loaded.issues)
    assert [(r["task_version"], r["steps_to_target_median"]) for r in compute_rows(loaded.runs)] == [
        ("1", 40), ("2", 50)]


def test_changed_prompt_set_without_new_version_warns(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed, digest in [(0, "aaaa"), (1, "bbbb")]:
        path = write_run(runs, "flow-grpo", seed, 40)
        path.write_text(path.read_text().replace('"budget_steps": 100', f'"budget_steps": 100, "prompt_hash": '
                                                                          f'"{digest}"', 1))
    assert any("different prompt sets (prompt_hash aaaa, bbbb)" in w for w in warnings_of(runs))


def test_disagreeing_targets_in_one_version_warn(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "flow-grpo", 0, 40)
    path = write_run(runs, "flow-grpo", 1, 40)
    path.write_text(path.read_text().replace('"target": 0.8', '"target": 0.7', 1))
    assert any("runs disagree on the target ([0.7, 0.8])" in w for w in warnings_of(runs))


def test_duplicate_seed_keeps_the_finished_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "flow-grpo", 0, 40, run_id="a-unfinished", finished=False, last_step=20)
    write_run(runs, "flow-grpo", 0, 40, run_id="b-finished")
    loaded = load_runs(runs)
    (run,) = loaded.runs
    assert run.run_id == "b-finished"
    assert any("a-unfinished/metrics.jsonl: same task, version, algorithm and seed as" in str(i)
               for i in loaded.issues)


def test_files_without_usable_run_start(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "flow-grpo", 0, 40)
    (runs / "empty").mkdir()
    (runs / "empty" / "metrics.jsonl").write_text("")
    (runs / "no-start").mkdir()
    (runs / "no-start" / "metrics.jsonl").write_text(
        json.dumps({"schema": "opgrpo-bench/v1", "type": "eval", "step": 0, "score": 0.1}) + "\n")
    bad = write_run(runs, "flow-grpo", 1, 40, run_id="bad-seed")
    bad.write_text(bad.read_text().replace('"seed": 1', '"seed": "one"', 1))
    warnings = "\n".join(warnings_of(runs))
    assert "empty/metrics.jsonl: empty results file skipped" in warnings
    assert "no-start/metrics.jsonl: no run_start record" in warnings
    assert "bad-seed/metrics.jsonl:1: unusable run_start ('seed' is 'one', expected an integer)" in warnings
    assert [r.seed for r in load_runs(runs).runs] == [0]


def test_bad_records_inside_a_good_file(tmp_path: Path) -> None:
    path = write_run(tmp_path / "runs", "flow-grpo", 0, 40)
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(3, json.dumps({"schema": "opgrpo-bench/v1", "type": "eval", "step": "ten", "score": 1}) + "\n")
    lines.insert(3, json.dumps({"schema": "opgrpo-bench/v0", "type": "eval", "step": 5, "score": 1}) + "\n")
    path.write_text("".join(lines))
    warnings = "\n".join(warnings_of(tmp_path / "runs"))
    assert f"{path}:4: eval record of unknown schema 'opgrpo-bench/v0' skipped" in warnings
    assert f"{path}:5: eval record skipped ('step' is 'ten'" in warnings
    assert rows(tmp_path / "runs")["flow-grpo"]["steps_to_target_median"] == 40


def test_only_unfinished_runs_still_give_a_report(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "flow-grpo", 0, 40, finished=False, last_step=20)
    seen: list[str] = []
    doc = build_leaderboard(runs, tmp_path / "out", warn=seen.append)
    assert any("no finished runs yet" in w for w in seen)
    assert doc["rows"][0]["seeds"] == 0 and doc["rows"][0]["incomplete_excluded"] == 1
    assert doc["incomplete_runs"][0]["last_step"] == 20
    assert (tmp_path / "out" / "index.html").is_file()


def test_inputs_are_never_modified(suite: Path, tmp_path: Path) -> None:
    path = metrics_of(suite, "flow-grpo", 2)
    with path.open("a") as f:
        f.write("garbage")
    before = digests(suite)
    build_leaderboard(suite, suite / "report", warn=lambda m: None)  # even with the output inside runs/
    after = digests(suite)
    assert {k: v for k, v in after.items() if not k.startswith("report")} == before
    # the report directory does not look like a run to the next build
    assert not any("report" in f for f in load_runs(suite).files)


def test_output_path_that_is_a_file(suite: Path, tmp_path: Path) -> None:
    (tmp_path / "out").write_text("keep me")
    with pytest.raises(LeaderboardError, match="exists and is not a directory"):
        build_leaderboard(suite, tmp_path / "out", warn=lambda m: None)
    assert (tmp_path / "out").read_text() == "keep me"


def test_default_warnings_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    default_warn("runs/[x]/metrics.jsonl:3: corrupt line skipped")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "warning: runs/[x]/metrics.jsonl:3: corrupt line skipped" in captured.err


def _rewrite_scores(path: Path, replace) -> None:
    """Rewrite the ``score`` of eval records: ``replace(step, score)`` returns the JSON text to write."""
    import re

    def sub(line: str) -> str:
        if '"type": "eval"' not in line:
            return line
        step = json.loads(line)["step"]
        return re.sub(r'"score": [^,}]+', lambda m: f'"score": {replace(step, m.group(0))}', line)

    path.write_text("".join(sub(line) for line in path.read_text().splitlines(keepends=True)))


def test_runs_without_valid_scores_are_excluded_and_listed(suite: Path, tmp_path: Path) -> None:
    expected = {a: {k: r[k] for k in ("seeds", "steps_to_target_median", "speedup_vs_flow_grpo")}
                for a, r in rows(suite).items()}
    all_null = write_run(suite, "flow-grpo", 7, 40)
    _rewrite_scores(all_null, lambda step, old: "null")
    one_nan = write_run(suite, "op-grpo", 8, 20)
    _rewrite_scores(one_nan, lambda step, old: "NaN" if step == 30 else old.split(": ")[1])
    no_eval = write_run(suite, "op-grpo-no-replay", 9, 40)
    no_eval.write_text("".join(l for l in no_eval.read_text().splitlines(keepends=True) if '"type": "eval"' not in l))
    before = digests(suite)
    seen: list[str] = []
    doc = build_leaderboard(suite, tmp_path / "out", warn=seen.append)
    assert digests(suite) == before  # inputs untouched
    # the statistics are those of the valid runs alone
    got = {r["algorithm"]: {k: r[k] for k in ("seeds", "steps_to_target_median", "speedup_vs_flow_grpo")}
           for r in doc["rows"]}
    assert got == expected
    assert {r["algorithm"]: r["unscored_excluded"] for r in doc["rows"]} == {
        "flow-grpo": 1, "op-grpo": 1, "op-grpo-no-replay": 1}
    reasons = {(e["algorithm"], e["seed"]): e["reason"] for e in doc["excluded_runs"]}
    assert reasons == {
        ("flow-grpo", 7): "eval score missing or not a finite number (null/NaN) at 11 of 11 evals (first at step 0)",
        ("op-grpo", 8): "eval score missing or not a finite number (null/NaN) at 1 of 11 evals (first at step 30)",
        ("op-grpo-no-replay", 9): "no eval record",
    }
    assert sum("excluded from statistics" in w and "eval" in w for w in seen) == 3
    # every file is complete and the JSON is strict (no NaN)
    text = (tmp_path / "out" / "leaderboard.json").read_text(encoding="utf-8")
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}")) == \
        json.loads(json.dumps(doc))
    md = (tmp_path / "out" / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert "3 run(s) without a valid eval score excluded" in md
    assert "## Runs without a valid eval score (excluded from statistics)" in md
    assert "| 4/4 (+1 incomplete, excluded) (+1 unscored, excluded) |" in md
    assert f"| {one_nan} | toy-v1 | op-grpo | 8 | eval score missing or not a finite number" in md
    html = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert '<section id="excluded">' in html and "no eval record" in html and html.rstrip().endswith("</html>")


def test_only_runs_without_valid_scores_still_give_a_report(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _rewrite_scores(write_run(runs, "flow-grpo", 0, 40), lambda step, old: "null")
    seen: list[str] = []
    doc = build_leaderboard(runs, tmp_path / "out", warn=seen.append)
    assert any("no finished run has a valid eval score" in w for w in seen)
    assert doc["runs_used"] == 0 and doc["rows"][0]["seeds"] == 0 and doc["rows"][0]["unscored_excluded"] == 1
    assert doc["curves"] == {} and len(doc["excluded_runs"]) == 1
    for name in ("LEADERBOARD.md", "leaderboard.json", "index.html"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_non_finite_counts_skip_the_record(tmp_path: Path) -> None:
    path = write_run(tmp_path / "runs", "flow-grpo", 0, 40)
    lines = path.read_text().splitlines(keepends=True)
    i = next(n for n, l in enumerate(lines) if '"type": "step"' in l)
    lines[i] = lines[i].replace('"wall_s": ', '"wall_s": NaN, "was": ', 1)
    path.write_text("".join(lines))
    assert f"{path}:{i + 1}: step record skipped ('wall_s' is nan, expected a finite number)" in \
        "\n".join(warnings_of(tmp_path / "runs"))
    build_leaderboard(tmp_path / "runs", tmp_path / "out", warn=lambda m: None)  # strict JSON still writes
