"""The reward server and its client: JSON wire format, HMAC secret, loopback only, survives hostile clients."""

from __future__ import annotations

import base64
import json
import os
import pickle
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from opgrpo_bench.registry import REWARDS
from opgrpo_bench.rewards.base import BaseReward, RewardOutput, RewardUnavailableError
from opgrpo_bench.rewards.server import (
    HANDSHAKE_MAX_BYTES,
    PROTOCOL,
    SECRET_ENV,
    RemoteReward,
    RewardSecretError,
    _mac,
    check_loopback,
    decode_array,
    encode_array,
    main,
    parse_address,
    recv_message,
    reward_secret,
    secret_path,
    serve,
)

MAX_MB = 1  # the out-of-process server's --max-message-mb
BIG = 2 * 1024 * 1024


class Mean(BaseReward):
    """Mean pixel; raises on the prompt "boom"; NaN (with a reason) on the prompt "nan"."""

    name = "mean"
    modality = "any"

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        if "boom" in prompts:
            raise RuntimeError("the reward failed")
        scores = images.flatten(1).mean(1)
        scores[[p == "nan" for p in prompts]] = float("nan")
        return RewardOutput(scores, {"double": 2 * scores}, {"nan_reason": [("asked" if p == "nan" else None)
                                                                            for p in prompts], "meta": metadata})


def start_thread_server(reward: Any = None, host: str = "127.0.0.1", **kwargs: Any) -> int:
    ready = threading.Event()
    thread = threading.Thread(target=serve, args=(reward or Mean(), host, 0, ready,
                                                  kwargs.pop("max_connections", None)), kwargs=kwargs, daemon=True)
    thread.start()
    # listening, or the thread ended (e.g. the address cannot be bound); the deadline only ends a hung start
    deadline = time.monotonic() + 60
    while not ready.wait(0.05):
        assert thread.is_alive() and time.monotonic() < deadline, "the reward server did not start"
    return ready.port  # type: ignore[attr-defined]


# -- raw clients --------------------------------------------------------------------------------------
def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def recv(sock: socket.socket) -> dict[str, Any]:
    return recv_message(sock, 1 << 26)


def authenticate(sock: socket.socket, secret: bytes | None = None) -> dict[str, Any]:
    return authenticate_after_challenge(sock, recv(sock), secret)


def authenticate_after_challenge(sock: socket.socket, challenge: dict[str, Any],
                                 secret: bytes | None = None) -> dict[str, Any]:
    assert challenge["type"] == "challenge" and challenge["protocol"] == PROTOCOL
    nonce = "ab" * 32
    mac = _mac(secret or os.environ[SECRET_ENV].encode(), "client", challenge["nonce"])
    sock.sendall(frame(json.dumps({"type": "auth", "mac": mac, "nonce": nonce}).encode()))
    reply = recv(sock)
    assert reply["ok"] is True and reply["mac"] == _mac(secret or os.environ[SECRET_ENV].encode(), "server", nonce,
                                                        challenge["nonce"])
    return challenge


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, socket.timeout):
        return True


def score_request(images: np.ndarray, prompts: list[str] | None = None) -> dict[str, Any]:
    return {"op": "score", "images": encode_array(images), "prompts": prompts or ["p"] * images.shape[0],
            "metadata": None}


def assert_serves(port: int) -> None:
    """A good client is served, with the right numbers."""
    remote = RemoteReward(address=f"127.0.0.1:{port}")
    images = torch.rand(2, 3, 16, 16)
    local = REWARDS.get("jpeg-incompressibility")(quality=90)(images, ["a", "b"])
    assert torch.equal(remote(images, ["a", "b"]).scores, local.scores)
    remote.close()


class Evil:
    """Unpickling this creates a marker file: the server must never do it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


# -- the real out-of-process server -------------------------------------------------------------------
@pytest.fixture(scope="module")
def server_process() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The server as its own process (as it runs beside a conflicting environment), reached over loopback."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "opgrpo_bench.rewards.server", "--reward", "jpeg-incompressibility", "--port", "0",
         "--set", "quality=90", "--max-message-mb", str(MAX_MB)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        early = proc.stderr.read() if proc.poll() is not None else ""  # type: ignore[union-attr]
        assert "listening on 127.0.0.1:" in line, (line, early)
        assert f"secret from ${SECRET_ENV}" in proc.stdout.readline()  # type: ignore[union-attr]
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    assert "Traceback" not in stderr, stderr  # no client, however hostile, made it fail anywhere


def test_out_of_process_server(server_process: tuple[subprocess.Popen[str], int]) -> None:
    _, port = server_process
    remote = RemoteReward(address=f"127.0.0.1:{port}")
    assert remote.range == (0.0, float("inf")) and remote.remote_name == "jpeg-incompressibility"
    assert remote.max_message_bytes == MAX_MB * 2**20
    images = torch.rand(2, 3, 16, 16)
    local = REWARDS.get("jpeg-incompressibility")(quality=90)(images, ["a", "b"])
    out = remote(images, ["a", "b"])
    assert torch.equal(out.scores, local.scores) and torch.equal(out.components["jpeg_kb"], local.components["jpeg_kb"])
    assert out.info["server"] == "jpeg-incompressibility"
    # A batch larger than the server's limit (12 x 196 KiB of float32 > 1 MiB) is sent in several frames.
    big = torch.rand(12, 3, 128, 128)
    local = REWARDS.get("jpeg-incompressibility")(quality=90)(big, ["p"] * 12)
    assert torch.equal(remote(big, ["p"] * 12).scores, local.scores)
    remote.close()


def _hostile_malformed_json(port: int, tmp_path: Path) -> None:
    with connect(port) as sock:
        authenticate(sock)
        sock.sendall(frame(b'{"op": "score", "images": '))
        answer = recv(sock)
        assert answer["ok"] is False and "not JSON" in answer["error"]
        assert closed_by_server(sock)  # a client that sends garbage is dropped
    with connect(port) as sock:  # not even a JSON object / not UTF-8 / NaN constants
        authenticate(sock)
        sock.sendall(frame(b"[1, 2]"))
        assert "expected a JSON object" in recv(sock)["error"]
    with connect(port) as sock:
        authenticate(sock)
        sock.sendall(frame(b'{"op": "describe", "x": NaN}'))
        assert "NaN" in recv(sock)["error"]
    for payload, needle in ((b"[" * 200_000, "nested too deeply"), (b'{"n": ' + b"9" * 100_000 + b"}", "digits")):
        with connect(port) as sock:
            authenticate(sock)
            sock.sendall(frame(payload))
            assert needle in recv(sock)["error"]
    with connect(port) as sock:  # before authentication
        recv(sock)
        sock.sendall(frame(b"\xff\xfe\x00garbage"))
        answer = recv(sock)
        assert answer["ok"] is False and "authentication failed" in answer["error"]
        assert closed_by_server(sock)


def _hostile_wrong_secret(port: int, tmp_path: Path) -> None:
    with connect(port) as sock:
        challenge = recv(sock)
        mac = _mac(b"not-the-secret-at-all", "client", challenge["nonce"])
        sock.sendall(frame(json.dumps({"type": "auth", "mac": mac, "nonce": "cd" * 32}).encode()))
        answer = recv(sock)
        assert answer == {"ok": False, "error": "authentication failed: wrong secret"}
        assert closed_by_server(sock)
    with connect(port) as sock:  # skipping the handshake: a request instead of the answer
        recv(sock)
        sock.sendall(frame(json.dumps({"op": "describe"}).encode()))
        assert "authentication failed" in recv(sock)["error"]
    os.environ[SECRET_ENV], good = "a-different-secret-0123456789", os.environ[SECRET_ENV]
    try:
        with pytest.raises(RewardUnavailableError, match="refused this client") as err:
            RemoteReward(address=f"127.0.0.1:{port}")
        assert "\n" not in str(err.value) and SECRET_ENV in str(err.value)
    finally:
        os.environ[SECRET_ENV] = good


def _hostile_oversized(port: int, tmp_path: Path) -> None:
    with connect(port) as sock:
        authenticate(sock)
        sock.sendall(struct.pack(">I", BIG))  # announces 2 MiB; the limit is 1 MiB: refused unread
        answer = recv(sock)
        assert answer["ok"] is False and "exceeds the limit" in answer["error"]
        assert closed_by_server(sock)
    with connect(port) as sock:  # before authentication the limit is 4 KiB
        recv(sock)
        sock.sendall(struct.pack(">I", HANDSHAKE_MAX_BYTES + 1))
        assert "exceeds the limit" in recv(sock)["error"]
    with connect(port) as sock:  # a truncated frame: the client goes away mid-message
        authenticate(sock)
        sock.sendall(struct.pack(">I", 1000) + b"{")
    with connect(port) as sock:  # a huge shape in a small message
        authenticate(sock)
        request = {"op": "score", "images": {"dtype": "uint8", "shape": [2**20, 2**20, 2**20, 2**20], "data": ""},
                   "prompts": ["p"]}
        sock.sendall(frame(json.dumps(request).encode()))
        assert "base64 characters" in recv(sock)["error"]


def _hostile_wrong_shape_dtype(port: int, tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    good = score_request(x)
    bad_requests = {
        "dtype must be one of": dict(good, images=dict(good["images"], dtype="float64")),
        "dtype must be one of ": dict(good, images=dict(good["images"], dtype="object")),
        "shape must be a list of 4 or 5": dict(good, images=dict(good["images"], shape=[2, 192])),
        "integers in": dict(good, images=dict(good["images"], shape=[2, 3, 8, -8])),
        "integers in ": dict(good, images=dict(good["images"], shape=[2, 3, 8, True])),
        "needs": dict(good, images=dict(good["images"], shape=[1, 3, 8, 8])),  # data for 2 images
        "not valid base64": dict(good, images=dict(good["images"], data="!" * len(good["images"]["data"]))),
        "exactly the keys": dict(good, images=dict(good["images"], extra=1)),
        "exactly the keys ": dict(good, images=[[0.5]]),
        "2 images but 1 prompts": dict(good, prompts=["p"]),
        "list of strings": dict(good, prompts=[1, 2]),
        "metadata": dict(good, metadata=[1, 2]),
        "unknown keys": dict(good, code="__import__('os')"),
        "unknown op": {"op": "exec", "code": "print(1)"},
        "unknown op ": {"images": good["images"]},
        "no other keys": {"op": "describe", "x": 1},
    }
    with connect(port) as sock:
        authenticate(sock)
        for needle, request in bad_requests.items():
            sock.sendall(frame(json.dumps(request).encode()))
            answer = recv(sock)
            assert answer["ok"] is False and needle.strip() in answer["error"], (needle, answer)
        sock.sendall(frame(json.dumps(good).encode()))  # the same client goes on
        answer = recv(sock)
        assert answer["ok"] is True
        scores = decode_array(answer["scores"], "scores", ndims=(1,))
        local = REWARDS.get("jpeg-incompressibility")(quality=90)(torch.from_numpy(x), ["p", "p"]).scores
        assert torch.equal(torch.from_numpy(scores), local)


def _hostile_pickle(port: int, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Evil(marker))
    assert not marker.exists()
    pickle.loads(payload)  # the payload works: unpickling it makes the marker
    assert marker.exists()
    marker.unlink()
    with connect(port) as sock:  # instead of the handshake answer
        recv(sock)
        sock.sendall(frame(payload))
        assert recv(sock)["ok"] is False
    with connect(port) as sock:  # after authentication
        authenticate(sock)
        sock.sendall(frame(payload))
        answer = recv(sock)
        assert answer["ok"] is False and "pickle" in answer["error"]
    for protocol in (0, 2):  # ASCII pickles are not JSON either
        with connect(port) as sock:
            authenticate(sock)
            sock.sendall(frame(pickle.dumps(Evil(marker), protocol=protocol)))
            assert recv(sock)["ok"] is False
    with connect(port) as sock:  # a raw pickle stream: its first bytes read as a huge length
        authenticate(sock)
        sock.sendall(payload)
        assert "exceeds the limit" in recv(sock)["error"]
    from multiprocessing.connection import Client  # the old transport's client (pickle) gets nowhere

    with pytest.raises(Exception):
        Client(("127.0.0.1", port), authkey=b"opgrpo-bench").send({"op": "describe"})
    assert not marker.exists()  # each pickle above was answered, so the server had already read it


def _hostile_silent(port: int, tmp_path: Path) -> None:
    with connect(port) as idle:  # connected, never authenticates: others are still served meanwhile
        assert_serves(port)
        assert recv(idle)["type"] == "challenge"


HOSTILE = {"malformed-json": _hostile_malformed_json, "wrong-secret": _hostile_wrong_secret,
           "oversized": _hostile_oversized, "wrong-shape-dtype": _hostile_wrong_shape_dtype,
           "pickle": _hostile_pickle, "silent": _hostile_silent}


@pytest.mark.parametrize("attack", list(HOSTILE))
def test_server_survives_hostile_clients(server_process: tuple[subprocess.Popen[str], int], attack: str,
                                         tmp_path: Path) -> None:
    proc, port = server_process
    HOSTILE[attack](port, tmp_path)
    assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
    assert_serves(port)


# -- in-process servers -------------------------------------------------------------------------------
def test_server_is_loopback_only() -> None:
    check_loopback("127.0.0.1")
    check_loopback("127.5.6.7")
    check_loopback("::1")
    check_loopback("localhost")
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org", "::ffff:10.0.0.1"):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(host)
    with pytest.raises(ValueError, match="loopback"):
        RemoteReward(address="10.0.0.1:18085")
    with pytest.raises(ValueError, match="loopback"):
        serve(Mean(), "0.0.0.0", 0)
    assert parse_address("[::1]:5") == ("::1", 5) and parse_address("::1:5") == ("::1", 5)
    assert parse_address(":7") == ("127.0.0.1", 7)
    for bad in ("127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_remote_reward_round_trip_and_errors() -> None:
    port = start_thread_server(max_connections=1)
    remote = RemoteReward(address=f"127.0.0.1:{port}")
    images = torch.rand(3, 3, 8, 8)
    meta = [{"k": [1, 2]}, {}, {"s": "x"}]
    out = remote(images, ["a", "nan", "c"], meta)
    expected = images.mean(dim=(1, 2, 3))
    assert torch.allclose(out.scores[[0, 2]], expected[[0, 2]]) and torch.isnan(out.scores[1])
    assert torch.allclose(out.components["double"], 2 * out.scores, equal_nan=True)
    assert out.info["nan_reason"] == [None, "asked", None] and out.info["meta"] == meta
    assert remote.remote_name == "mean"
    with pytest.raises(ValueError):
        remote(images, ["a"])  # checked on the client side
    with pytest.raises(RuntimeError, match="the reward failed"):
        remote(images, ["a", "boom", "c"])  # reported, and the server goes on
    assert torch.allclose(remote(images[:1], ["a"]).scores, expected[:1])
    with pytest.raises(ValueError, match="JSON"):
        remote(images[:1], ["a"], [{"x": object()}])
    video = torch.rand(2, 4, 3, 8, 8)  # [B, F, C, H, W] crosses too
    assert torch.allclose(remote(video, ["a", "b"]).scores, video.flatten(1).mean(1))
    uint8 = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    assert torch.allclose(remote(uint8, ["a"]).scores, (uint8.float() / 255).mean().reshape(1))
    remote.close()
    remote.close()  # idempotent


def test_remote_nan_pixels_and_digit_reward() -> None:
    port = start_thread_server(REWARDS.get("digit-classifier")(), max_connections=1)
    remote = RemoteReward(address=f"127.0.0.1:{port}")
    images = torch.rand(3, 1, 8, 8)
    images[2] = float("nan")
    local = REWARDS.get("digit-classifier")()(torch.nan_to_num(images, nan=0.0), ["a 3", "no digit", "a 5"])
    out = remote(images, ["a 3", "no digit", "a 5"])
    assert torch.allclose(out.scores, local.scores, equal_nan=True)
    assert "names no digit" in out.info["nan_reason"][1]
    remote.close()


@pytest.mark.parametrize("host", ["::1", "localhost"])
def test_ipv6_and_localhost(host: str) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        port = start_thread_server(host=host, max_connections=2)
    except AssertionError:
        pytest.skip(f"cannot listen on {host} here")
    for address in ([f"[{host}]:{port}", f"{host}:{port}"] if host == "::1" else [f"localhost:{port}"] * 2):
        remote = RemoteReward(address=address)
        images = torch.rand(1, 3, 4, 4)
        assert torch.allclose(remote(images, ["a"]).scores, images.mean().reshape(1))
        remote.close()


def test_handshake_timeout_and_busy() -> None:
    port = start_thread_server(handshake_timeout=0.3, max_clients=1)
    with connect(port) as silent:
        recv(silent)
        assert silent.recv(1) == b""  # dropped after 0.3 s without a handshake (recv waits up to 10 s)
    # the slot is free again once the server has noticed the dropped client: connect until one is served
    # (a generous deadline, since when the server notices depends on the machine's load)
    deadline = time.monotonic() + 60
    while True:
        holder = connect(port)
        first = recv(holder)
        if first.get("type") == "challenge" or time.monotonic() > deadline:
            break
        holder.close()
        time.sleep(0.05)
    with holder:
        assert first["type"] == "challenge", first
        authenticate_after_challenge(holder, first)
        with connect(port) as second:
            answer = recv(second)
            assert answer["ok"] is False and "busy" in answer["error"]
        with pytest.raises(RewardUnavailableError, match="busy"):
            RemoteReward(address=f"127.0.0.1:{port}")


def test_remote_reward_without_server_is_a_clear_error() -> None:
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RewardUnavailableError, match="no reward server") as err:
        RemoteReward(address=f"127.0.0.1:{port}")
    assert "\n" not in str(err.value)


def test_client_refuses_a_server_without_the_secret() -> None:
    """A process squatting on the port that does not know the secret learns nothing and is refused."""
    checked = threading.Event()  # each fake server keeps its connection open until the client has judged it
    with socket.create_server(("127.0.0.1", 0)) as fake:
        port = fake.getsockname()[1]

        def impostor() -> None:
            conn, _ = fake.accept()
            with conn:
                conn.sendall(frame(json.dumps({"type": "challenge", "protocol": PROTOCOL, "nonce": "ef" * 32,
                                               "max_message_bytes": 1 << 20}).encode()))
                recv(conn)
                conn.sendall(frame(json.dumps({"type": "welcome", "ok": True, "mac": "00" * 32}).encode()))
                checked.wait(60)

        threading.Thread(target=impostor, daemon=True).start()
        with pytest.raises(RewardUnavailableError, match="could not prove"):
            RemoteReward(address=f"127.0.0.1:{port}")
        checked.set()

    checked.clear()
    with socket.create_server(("127.0.0.1", 0)) as other:  # some other service: not our protocol
        port = other.getsockname()[1]

        def talker() -> None:
            conn, _ = other.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                checked.wait(60)

        threading.Thread(target=talker, daemon=True).start()
        with pytest.raises(RewardUnavailableError, match="handshake"):
            RemoteReward(address=f"127.0.0.1:{port}")
        checked.set()


# -- the secret ---------------------------------------------------------------------------------------
def test_secret_key_file_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV)
    monkeypatch.setenv("OPGRPO_CACHE_DIR", str(tmp_path / "cache"))
    path = secret_path()
    assert path == tmp_path / "cache" / "reward-server.key" and not path.exists()
    first = reward_secret()
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) == 64
    assert reward_secret() == first  # stable
    assert [p.name for p in path.parent.iterdir()] == ["reward-server.key"]  # no temporary left behind
    port = start_thread_server(max_connections=1)  # both sides read the same file
    remote = RemoteReward(address=f"127.0.0.1:{port}")
    assert remote(torch.rand(1, 3, 4, 4), ["a"]).scores.shape == (1,)
    remote.close()
    path.chmod(0o644)
    with pytest.raises(RewardSecretError, match="chmod 600") as err:
        reward_secret()
    assert "\n" not in str(err.value)
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(RewardSecretError, match="delete it"):
        reward_secret()
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RewardSecretError):
        reward_secret()


def test_secret_env_must_be_long_enough(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(RewardSecretError, match="at least 16"):
        reward_secret()
    assert main(["--reward", "jpeg-compressibility", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_server_cli_rejects_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--reward", "nonexistent"]) == 2
    assert main(["--reward", "jpeg-compressibility", "--host", "0.0.0.0"]) == 2
    assert main(["--reward", "jpeg-compressibility", "--max-message-mb", "0"]) == 2
    capsys.readouterr()
    with socket.create_server(("127.0.0.1", 0)) as busy:  # the port is taken: one line, exit 2
        assert main(["--reward", "jpeg-compressibility", "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1:" in err and len(err.strip().splitlines()) == 1


def test_array_codec_round_trip() -> None:
    x = np.random.default_rng(1).random((2, 3, 5, 7), dtype=np.float32)
    x[0, 0, 0, 0] = np.nan
    y = decode_array(encode_array(x), "x", ndims=(4,))
    assert y.dtype == np.float32 and y.flags.writeable and np.array_equal(x, y, equal_nan=True)
    raw = base64.b64decode(encode_array(x)["data"])
    assert raw == x.astype("<f4").tobytes()  # little-endian, C order
    u = np.arange(24, dtype=np.uint8).reshape(1, 2, 3, 4)
    assert np.array_equal(decode_array(encode_array(u), "u", ndims=(4,)), u)
