"""Absent weights fail fast with one clear line; the `score` command; the background worker and server."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

import reward_standins as standins
from opgrpo_bench.registry import REWARDS
from opgrpo_bench.rewards.base import BaseReward, MissingWeightsError, RewardOutput, RewardUnavailableError
from opgrpo_bench.rewards.cli import score
from opgrpo_bench.rewards.server import RemoteReward, check_loopback, parse_sets, serve
from opgrpo_bench.rewards.worker import AsyncRewardWorker

HEAVY = ["pickscore", "clipscore", "aesthetic", "hpsv2", "image-reward", "geneval"]
needs_ocr = pytest.mark.skipif(importlib.util.find_spec("rapidocr_onnxruntime") is None,
                               reason="rapidocr-onnxruntime not installed (extra 'ocr')")


@pytest.mark.parametrize("name", HEAVY)
def test_absent_weights_fail_fast_with_one_line(name: str) -> None:
    start = time.perf_counter()
    with pytest.raises(MissingWeightsError) as err:
        REWARDS.get(name)()
    message = str(err.value)
    assert time.perf_counter() - start < 5  # no network retries
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


def _save(tensor: torch.Tensor, path: Path) -> Path:
    Image.fromarray((tensor.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)
    return path


@needs_ocr
def test_score_command_ocr(tmp_path: Path) -> None:
    a = _save(standins.render_text("HELLO"), tmp_path / "a.png")
    b = _save(standins.render_text("GOODBYE"), tmp_path / "b.png")
    runner = CliRunner()
    res = runner.invoke(app, ["score", "--reward", "ocr", "--prompt", 'A sign that says "HELLO"', str(a), str(b)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2 and float(lines[0].split()[0]) > 0.95 and float(lines[1].split()[0]) < 0.5
    res = runner.invoke(app, ["score", "--reward", "ocr", "--prompt", 'says "HELLO"', "--json", str(a), str(b)])
    rows = json.loads(res.stdout)
    assert [r["image"] for r in rows] == [str(a), str(b)] and rows[0]["score"] > 0.95
    assert rows[0]["ocr_text"].replace(" ", "") == "HELLO"


def test_score_command_json_components_and_set(tmp_path: Path) -> None:
    a = _save(torch.rand(3, 24, 24), tmp_path / "a.png")
    res = CliRunner().invoke(app, ["score", "-r", "jpeg-incompressibility", "-p", "x", "--set", "scale=2", "--json", str(a)])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)[0]
    assert row["score"] == pytest.approx(2 * row["jpeg_kb"], rel=1e-5)


@pytest.mark.parametrize(("args", "needle"), [
    (["-r", "pickscor", "-p", "x"], "did you mean"),
    (["-r", "hpsv2", "-p", "x"], "hpsv2"),
    (["-r", "jpeg-compressibility", "-p", "x", "--set", "nonsense=1"], "bad --set"),
    (["-r", "jpeg-compressibility", "-p", "x", "--metadata", "[1]"], "JSON object"),
])
def test_score_command_user_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    a = _save(torch.rand(3, 8, 8), tmp_path / "a.png")
    res = CliRunner().invoke(app, ["score", *args, str(a)])
    assert res.exit_code == 2
    assert needle.lower() in res.stderr.lower()
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_score_command_missing_image(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["score", "-r", "jpeg-compressibility", "-p", "x", str(tmp_path / "none.png")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


# -- background worker and server -----------------------------------------------------------------------
class Slow(BaseReward):
    name = "slow"

    def score(self, images, prompts, metadata):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        return RewardOutput(images.mean(dim=(1, 2, 3)))


def test_worker_overlaps_scoring_with_caller() -> None:
    with AsyncRewardWorker(Slow()) as worker:
        start = time.perf_counter()
        images = torch.rand(2, 3, 8, 8)
        pending = worker.submit(images, ["a", "b"])
        images.zero_()  # the worker scored a copy
        time.sleep(0.3)  # "the next rollout"
        out = pending.result()
        elapsed = time.perf_counter() - start
    assert elapsed < 0.5
    assert (out.scores > 0).all()


def test_worker_keeps_order_and_reports_errors() -> None:
    with AsyncRewardWorker(REWARDS.get("jpeg-incompressibility")()) as worker:
        images = [torch.rand(1, 3, 16, 16) for _ in range(4)]
        futures = [worker.submit(x, ["p"]) for x in images]
        direct = [REWARDS.get("jpeg-incompressibility")()(x, ["p"]).scores for x in images]
        assert all(torch.equal(f.result().scores, d) for f, d in zip(futures, direct))
        with pytest.raises(ValueError):
            worker.submit(torch.rand(1, 3, 8, 8), ["a", "b"]).result()


def test_server_is_loopback_only() -> None:
    check_loopback("127.0.0.1")
    check_loopback("::1")
    check_loopback("localhost")
    for host in ("0.0.0.0", "192.168.1.10", "example.org"):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(host)
    with pytest.raises(ValueError, match="loopback"):
        RemoteReward(address="10.0.0.1:18085")


def test_remote_reward_round_trip_and_errors() -> None:
    ready = threading.Event()
    threading.Thread(target=serve, args=(Slow(), "127.0.0.1", 0, ready, 1), daemon=True).start()
    assert ready.wait(10)
    remote = RemoteReward(address=f"127.0.0.1:{ready.port}")  # type: ignore[attr-defined]
    images = torch.rand(2, 3, 8, 8)
    assert torch.allclose(remote(images, ["a", "b"]).scores, images.mean(dim=(1, 2, 3)))
    assert remote.remote_name == "slow"
    with pytest.raises(ValueError):
        remote(images, ["a"])  # checked on the client side
    remote.close()


def test_remote_reward_without_server_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RewardUnavailableError, match="no reward server"):
        RemoteReward(address=f"127.0.0.1:{port}")


def test_parse_sets() -> None:
    assert parse_sets(["a=1", "b=x", "c=[1, 2]", "d=true"]) == {"a": 1, "b": "x", "c": [1, 2], "d": True}
    with pytest.raises(ValueError):
        parse_sets(["novalue"])


def test_out_of_process_server() -> None:
    """The server as its own process (as it runs beside a conflicting environment), reached over loopback."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "opgrpo_bench.rewards.server", "--reward", "jpeg-incompressibility", "--port", "0",
         "--set", "quality=90"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "listening on 127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        port = int(line.rsplit(":", 1)[1])
        remote = RemoteReward(address=f"127.0.0.1:{port}")
        images = torch.rand(2, 3, 16, 16)
        local = REWARDS.get("jpeg-incompressibility")(quality=90)(images, ["a", "b"])
        assert torch.equal(remote(images, ["a", "b"]).scores, local.scores)
        assert remote.range == (0.0, float("inf"))
        remote.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_server_cli_rejects_bad_input() -> None:
    from opgrpo_bench.rewards.server import main

    assert main(["--reward", "nonexistent"]) == 2
    assert main(["--reward", "jpeg-compressibility", "--host", "0.0.0.0"]) == 2
