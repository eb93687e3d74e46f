"""Absent weights fail fast with one clear line; the `score` command; the background worker (server: test_rewards_server)."""

from __future__ import annotations

import importlib.util
import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

import reward_standins as standins
from opgrpo_bench.errors import UserError
from opgrpo_bench.registry import REWARDS
from opgrpo_bench.rewards.base import BaseReward, MissingWeightsError, RewardOutput, nan_reason
from opgrpo_bench.rewards.cli import score
from opgrpo_bench.rewards.server import parse_sets
from opgrpo_bench.rewards.worker import AsyncRewardWorker

HEAVY = ["pickscore", "clipscore", "aesthetic", "hpsv2", "image-reward", "geneval"]
needs_ocr = pytest.mark.skipif(importlib.util.find_spec("rapidocr_onnxruntime") is None,
                               reason="rapidocr-onnxruntime not installed (extra 'ocr')")


@pytest.mark.parametrize("name", HEAVY)
def test_absent_weights_fail_fast_with_one_line(name: str, no_network: list) -> None:
    with pytest.raises(MissingWeightsError) as err:
        REWARDS.get(name)()
    message = str(err.value)
    assert no_network == []  # no download tried, so no network retries to wait for
    assert "\n" not in message and name in message
    assert "path=" in message and "OPGRPO_" in message  # says how to provide the files


def test_explicit_missing_path_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingWeightsError, match="does not exist"):
        REWARDS.get("clipscore")(path=tmp_path / "nope")
    monkeypatch.setenv("OPGRPO_HPSV2_PATH", str(tmp_path / "missing.pt"))
    with pytest.raises(MissingWeightsError, match=r"\$OPGRPO_HPSV2_PATH"):
        REWARDS.get("hpsv2")()
    (tmp_path / "incomplete").mkdir()
    with pytest.raises(MissingWeightsError, match="lacks config.json"):
        REWARDS.get("clipscore")(path=tmp_path / "incomplete")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path, clip_dir: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MissingWeightsError, match="cannot read"):
        REWARDS.get("aesthetic")(path=clip_dir, mlp_path=bad)


def test_weights_found_in_hf_cache(_empty_hf_cache: Path, clip_dir: Path) -> None:
    """A repo id resolves through the local Hugging Face cache layout, offline."""
    repo = _empty_hf_cache / "models--openai--clip-vit-large-patch14"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    for f in clip_dir.iterdir():
        if f.is_file():
            (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snap.name)
    try:
        reward = REWARDS.get("clipscore")()
        assert reward(torch.rand(1, 3, 32, 32), ["a cat"]).scores.shape == (1,)
    finally:
        import shutil

        shutil.rmtree(repo)


# -- CLI -------------------------------------------------------------------------------------------------
app = typer.Typer()
app.command("score")(score)


@app.callback()
def _root() -> None:
    """Keep `score` a sub-command, as in the main CLI."""


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


def run_score(args: list[str]) -> Result:
    """`opgrpo-bench score ARGS` in-process, with the main CLI's handling: UserError -> "error: ..." + exit 2."""
    res = CliRunner().invoke(app, ["score", *args])
    if isinstance(res.exception, UserError):
        return Result(2, res.stdout, f"error: {res.exception}\n")
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return Result(res.exit_code, res.stdout, res.stderr)


def _save(tensor: torch.Tensor, path: Path) -> Path:
    array = (tensor.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path


@needs_ocr
def test_score_command_ocr(tmp_path: Path) -> None:
    a = _save(standins.render_text("HELLO"), tmp_path / "a.png")
    b = _save(standins.render_text("GOODBYE"), tmp_path / "b.png")
    res = run_score(["--reward", "ocr", "--prompt", 'A sign that says "HELLO"', str(a), str(b)])
    assert res.exit_code == 0, res.stdout
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2 and float(lines[0].split()[0]) > 0.95 and float(lines[1].split()[0]) < 0.5
    res = run_score(["--reward", "ocr", "--prompt", 'says "HELLO"', "--json", str(a), str(b)])
    rows = json.loads(res.stdout)
    assert [r["image"] for r in rows] == [str(a), str(b)] and rows[0]["score"] > 0.95
    assert rows[0]["ocr_text"].replace(" ", "") == "HELLO" and "nan_reason" not in rows[0]


@needs_ocr
def test_score_command_explains_nan_ocr(tmp_path: Path) -> None:
    a = _save(standins.render_text("HELLO"), tmp_path / "a.png")
    res = run_score(["--reward", "ocr", "--prompt", "a sign that says HELLO", str(a)])
    assert res.exit_code == 0
    line = res.stdout.strip()
    assert line.startswith("nan\t") and "not applicable" in line and "double quotes" in line
    res = run_score(["--reward", "ocr", "--prompt", "a sign", "--json", str(a)])
    row = json.loads(res.stdout)[0]
    assert row["score"] is None and "double quotes" in row["nan_reason"]
    res = run_score(["--reward", "ocr", "--prompt", "a sign", "--metadata", '{"text": "HELLO"}', str(a)])
    assert float(res.stdout.split()[0]) > 0.95  # metadata "text" is a target: not NaN


def test_score_command_explains_nan_digits_and_composite(tmp_path: Path) -> None:
    a = _save(torch.rand(1, 8, 8), tmp_path / "a.png")
    res = run_score(["-r", "digit-classifier", "-p", "a drawing", str(a)])
    assert res.exit_code == 0 and "names no digit" in res.stdout and res.stdout.startswith("nan")
    res = run_score(["-r", "digit-classifier", "-p", "the digit 3", "--json", str(a)])
    row = json.loads(res.stdout)[0]
    assert 0.0 <= row["score"] <= 1.0 and "nan_reason" not in row and row["correct"] in (0.0, 1.0)
    res = run_score(["-r", "threshold", "-p", "a drawing", "--json", str(a)])  # wraps digit-classifier
    assert "names no digit" in json.loads(res.stdout)[0]["nan_reason"]
    composite = REWARDS.get("composite")(weights={"digit-classifier": 1.0})
    out = composite(torch.rand(2, 1, 8, 8), ["x", "a 5"])
    assert nan_reason(out, 1) is None and not math.isnan(out.scores[1])
    reason = nan_reason(out, 0)
    assert reason and "every part is NaN" in reason and "digit-classifier: the prompt names no digit" in reason


@pytest.mark.parametrize(("reward", "size", "ok_size"), [
    ("digit-classifier", (3, 32, 32), (1, 8, 8)), ("digit-pair", (1, 8, 8), (1, 8, 16)),
    ("threshold", (3, 16, 8), (3, 8, 8)),
])
def test_score_command_rejects_wrong_size_for_digit_rewards(
        tmp_path: Path, reward: str, size: tuple[int, int, int], ok_size: tuple[int, int, int]) -> None:
    bad = _save(torch.rand(*size), tmp_path / "bad.png")
    good = _save(torch.rand(*ok_size), tmp_path / "good.png")
    res = run_score(["-r", reward, "-p", "a 3 left of a 7", str(good), str(bad)])
    assert res.exit_code == 2 and not res.stdout  # checked before anything is scored
    assert len(res.stderr.strip().splitlines()) == 1
    w, h = ok_size[2], ok_size[1]
    assert f"scores {w}x{h} images" in res.stderr and f"is {size[2]}x{size[1]}" in res.stderr
    res = run_score(["-r", reward, "-p", "a 3 left of a 7", "--json", str(good)])  # RGB or grey, right size
    assert res.exit_code == 0, res.stderr
    assert 0.0 <= json.loads(res.stdout)[0]["score"] <= 1.0


def test_score_command_json_components_and_set(tmp_path: Path) -> None:
    a = _save(torch.rand(3, 24, 24), tmp_path / "a.png")
    res = run_score(["-r", "jpeg-incompressibility", "-p", "x", "--set", "scale=2", "--json", str(a)])
    assert res.exit_code == 0, res.stderr
    row = json.loads(res.stdout)[0]
    assert row["score"] == pytest.approx(2 * row["jpeg_kb"], rel=1e-5)


@pytest.mark.parametrize(("args", "needle"), [
    (["-r", "pickscor", "-p", "x"], "did you mean"),
    (["-r", "hpsv2", "-p", "x"], "hpsv2"),
    (["-r", "jpeg-compressibility", "-p", "x", "--set", "nonsense=1"], "bad --set"),
    (["-r", "jpeg-compressibility", "-p", "x", "--set", "novalue"], "bad --set"),
    (["-r", "jpeg-compressibility", "-p", "x", "--metadata", "[1]"], "must be a JSON object"),
    (["-r", "jpeg-compressibility", "-p", "x", "--metadata", "{text: HELLO}"], "--metadata is not valid JSON"),
    (["-r", "jpeg-compressibility", "-p", "x", "--metadata", "tag=counting"], "--metadata is not valid JSON"),
])
def test_score_command_user_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    a = _save(torch.rand(3, 8, 8), tmp_path / "a.png")
    res = run_score([*args, str(a)])
    assert res.exit_code == 2
    assert needle.lower() in res.stderr.lower()
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr + res.stdout


def test_score_command_missing_or_unreadable_image(tmp_path: Path) -> None:
    res = run_score(["-r", "jpeg-compressibility", "-p", "x", str(tmp_path / "none.png")])
    assert res.exit_code == 2 and "does not exist" in res.stderr
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    res = run_score(["-r", "jpeg-compressibility", "-p", "x", str(junk)])
    assert res.exit_code == 2 and "cannot read image" in res.stderr


def test_score_command_through_the_console_entry_point(tmp_path: Path) -> None:
    """The real `opgrpo-bench` main: a wrong-size digit image and bad --metadata give one line and exit 2."""
    import subprocess
    import sys

    a = _save(torch.rand(3, 16, 16), tmp_path / "a.png")
    code = "import sys; from opgrpo_bench.cli import main; sys.argv[0] = 'opgrpo-bench'; main()"
    for args, needle in ((["-r", "digit-classifier", "-p", "3", str(a)], "scores 8x8 images"),
                         (["-r", "jpeg-compressibility", "-p", "x", "--metadata", "{oops", str(a)], "not valid JSON")):
        proc = subprocess.run([sys.executable, "-c", code, "score", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and needle in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout


# -- background worker ---------------------------------------------------------------------------------
class Held(BaseReward):
    """Scoring starts, then waits until the caller releases it: scoring overlaps the caller only if the
    caller can release it while the batch is being scored."""

    name = "held"

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.released_in_time: bool | None = None

    def score(self, images, prompts, metadata):  # type: ignore[no-untyped-def]
        self.started.set()
        self.released_in_time = self.release.wait(60)  # False only if submit() blocked the caller
        return RewardOutput(images.mean(dim=(1, 2, 3)))


def test_worker_overlaps_scoring_with_caller() -> None:
    reward = Held()
    with AsyncRewardWorker(reward) as worker:
        images = torch.rand(2, 3, 8, 8)
        pending = worker.submit(images, ["a", "b"])
        assert reward.started.wait(60)  # scoring began in the background; the caller goes on
        assert not pending.done()
        images.zero_()  # "the next rollout" overwrites the batch: the worker scores its own copy
        reward.release.set()
        out = pending.result()
    assert reward.released_in_time is True
    assert (out.scores > 0).all()


def test_worker_keeps_order_and_reports_errors() -> None:
    with AsyncRewardWorker(REWARDS.get("jpeg-incompressibility")()) as worker:
        images = [torch.rand(1, 3, 16, 16) for _ in range(4)]
        futures = [worker.submit(x, ["p"]) for x in images]
        direct = [REWARDS.get("jpeg-incompressibility")()(x, ["p"]).scores for x in images]
        assert all(torch.equal(f.result().scores, d) for f, d in zip(futures, direct))
        with pytest.raises(ValueError):
            worker.submit(torch.rand(1, 3, 8, 8), ["a", "b"]).result()


def test_parse_sets() -> None:
    assert parse_sets(["a=1", "b=x", "c=[1, 2]", "d=true"]) == {"a": 1, "b": "x", "c": [1, 2], "d": True}
    with pytest.raises(ValueError):
        parse_sets(["novalue"])
