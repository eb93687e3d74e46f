"""The reward server and its client over HTTP: bearer token, safetensors bodies, limits and timeouts,
loopback only, idle and slow clients beside real ones, generic HTTP clients (urllib, http.client, curl)."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import pickle
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from opgrpo_bench.errors import UserError
from opgrpo_bench.registry import REWARDS
from opgrpo_bench.rewards.base import BaseReward, RewardOutput
from opgrpo_bench.rewards.server import (
    PROTOCOL,
    SECRET_ENV,
    RemoteAddressError,
    RemoteReward,
    RewardSecretError,
    RewardServer,
    RewardServerError,
    check_loopback,
    decode_batch,
    encode_batch,
    main,
    parse_address,
    parse_url,
    reward_secret,
    secret_path,
    server_proof,
)

MAX_MB = 1  # the out-of-process server's --max-body-mb
READ_TIMEOUT = 2.0  # the out-of-process server's --read-timeout
MAX_CONNECTIONS = 8  # the out-of-process server's --max-connections
BOUND = 30.0  # seconds after which a test's loop gives up (far beyond every timeout it waits for)


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


class Blocking(Mean):
    """Mean, but each batch waits until ``release`` is set (``entered`` says a batch is being scored)."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        self.entered.set()
        self.release.wait(BOUND)
        return super().score(images, prompts, metadata)


def token() -> str:
    return os.environ[SECRET_ENV]


def jpeg_scores(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    return REWARDS.get("jpeg-incompressibility")(quality=90)(images, prompts).scores


def assert_serves(address: str) -> None:
    """A good client is served, with the right numbers."""
    remote = RemoteReward(address=address, timeout=BOUND)
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(remote(images, ["a", "b"]).scores, jpeg_scores(images, ["a", "b"]))


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """One request with the standard library's generic HTTP client; (status, JSON answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {token()}"}


def closed_by_server(sock: socket.socket) -> bytes:
    """Everything the server still sends before it closes (bounded by the socket's timeout)."""
    data = b""
    try:
        while len(data) < 1 << 16:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        return data
    raise AssertionError("the server kept the connection open")


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
         "--set", "quality=90", "--max-body-mb", str(MAX_MB), "--read-timeout", str(READ_TIMEOUT),
         "--max-connections", str(MAX_CONNECTIONS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        early = proc.stderr.read() if proc.poll() is not None else ""  # type: ignore[union-attr]
        assert "listening on http://127.0.0.1:" in line, (line, early)
        assert f"token from ${SECRET_ENV}" in proc.stdout.readline()  # type: ignore[union-attr]
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    assert "Traceback" not in stderr, stderr  # no client, however hostile, made it fail anywhere


def test_out_of_process_server(server_process: tuple[subprocess.Popen[str], int]) -> None:
    _, port = server_process
    remote = RemoteReward(address=f"127.0.0.1:{port}")
    assert remote.range == (0.0, float("inf")) and remote.remote_name == "jpeg-incompressibility"
    assert remote.max_body_bytes == MAX_MB * 2**20
    images = torch.rand(2, 3, 16, 16)
    local = REWARDS.get("jpeg-incompressibility")(quality=90)(images, ["a", "b"])
    out = remote(images, ["a", "b"])
    assert torch.equal(out.scores, local.scores) and torch.equal(out.components["jpeg_kb"], local.components["jpeg_kb"])
    assert out.info["server"] == "jpeg-incompressibility"
    # A batch larger than the server's limit (12 x 192 KiB of float32 > 1 MiB) is sent in several bodies.
    big = torch.rand(12, 3, 128, 128)
    assert torch.equal(remote(big, ["p"] * 12).scores, jpeg_scores(big, ["p"] * 12))
    remote.close()


def test_idle_and_slow_clients_beside_a_real_one(server_process: tuple[subprocess.Popen[str], int]) -> None:
    """Eight clients that connect and send nothing fill every connection slot; a real client is still
    served (the idle ones, which never showed a token, make room). A client that sends its request one
    byte at a time is cut off by the read timeout, and real clients are served meanwhile."""
    proc, port = server_process
    idle = [socket.create_connection(("127.0.0.1", port), timeout=BOUND) for _ in range(MAX_CONNECTIONS)]
    try:
        for _ in range(3):
            assert_serves(f"127.0.0.1:{port}")
    finally:
        for sock in idle:
            sock.close()

    with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as slow:
        request = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n" + b"X-Pad: " + b"a" * 10_000
        sent, cut_off = 0, False
        deadline = time.monotonic() + BOUND
        while sent < len(request) and time.monotonic() < deadline:
            try:
                slow.sendall(request[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                cut_off = True
                break
            sent += 1
            if sent == 3:
                assert_serves(f"127.0.0.1:{port}")  # served while the slow client dribbles
            time.sleep(0.05)
            if sent % 10 == 0:  # has the server answered and closed?
                slow.setblocking(False)
                try:
                    data = slow.recv(4096)
                except BlockingIOError:
                    data = None
                except ConnectionResetError:
                    data = b""
                slow.setblocking(True)
                if data is not None:
                    assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data
                    cut_off = True
                    break
        assert cut_off and sent < len(request), "the slow client was never cut off"

    with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as slow_body:  # authenticated, slow body
        slow_body.sendall(f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token()}\r\n"
                          f"Content-Length: 1000\r\n\r\n".encode() + b"\x00" * 10)
        answer = closed_by_server(slow_body)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"of 1000 bytes" in answer
    assert proc.poll() is None
    assert_serves(f"127.0.0.1:{port}")


def test_token_health_and_limits_with_a_generic_http_client(server_process: tuple[subprocess.Popen[str], int]
                                                            ) -> None:
    _, port = server_process
    status, health = http_request(port, "GET", "/health")
    assert status == 200 and health == {"status": "ok", "protocol": PROTOCOL}
    status, health = http_request(port, "GET", "/health?challenge=" + "ab" * 16)
    assert health["proof"] == server_proof(token().encode(), "ab" * 16)
    body = encode_batch(np.zeros((1, 3, 8, 8), np.float32), ["p"])
    for headers in ({}, {"Authorization": "Bearer not-the-token-at-all"}, {"Authorization": f"Basic {token()}"}):
        for method, path, data in (("GET", "/describe", None), ("POST", "/score", body)):
            status, answer = http_request(port, method, path, data, headers)
            assert status == 401 and "bearer token" in answer["error"], (headers, path)
    status, answer = http_request(port, "GET", "/describe", headers=auth())
    assert status == 200 and answer["name"] == "jpeg-incompressibility" and answer["max_body_bytes"] == 2**20
    big = encode_batch(np.zeros((3, 3, 256, 256), np.float32), ["p"] * 3)  # 2.25 MiB > 1 MiB
    status, answer = http_request(port, "POST", "/score", big, auth())
    assert status == 413 and "exceeds the server's limit" in answer["error"]
    status, answer = http_request(port, "POST", "/score", b"", dict(auth(), **{
        "Content-Length": str(1 << 40), "Expect": "100-continue"}))  # refused before a byte of it is sent
    assert status == 413
    status, answer = http_request(port, "POST", "/score", body, auth())
    assert status == 200 and len(answer["scores"]) == 1


def test_urllib_client_from_the_docs(server_process: tuple[subprocess.Popen[str], int]) -> None:
    """The client in docs/REWARDS.md: safetensors + urllib, nothing of this package."""
    _, port = server_process
    from safetensors.numpy import save

    images = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    body = save({"images": images}, metadata={"prompts": json.dumps(["a cat", "a dog"])})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token()}"})
    with urllib.request.urlopen(request, timeout=BOUND) as response:
        scores = json.loads(response.read())["scores"]
    local = jpeg_scores(torch.from_numpy(images).float() / 255, ["a cat", "a dog"])
    assert torch.equal(torch.tensor(scores, dtype=torch.float32), local)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/score", data=body), timeout=BOUND)
    assert err.value.code == 401


def test_curl(server_process: tuple[subprocess.Popen[str], int], tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl here")
    _, port = server_process
    images = torch.rand(2, 3, 16, 16)
    (tmp_path / "batch.safetensors").write_bytes(encode_batch(images, ["a", "b"]))
    base = [curl, "-sS", "--max-time", str(BOUND)]
    health = subprocess.run(base + [f"http://127.0.0.1:{port}/health"], capture_output=True, text=True, timeout=BOUND)
    assert json.loads(health.stdout)["status"] == "ok"
    scored = subprocess.run(base + ["-H", f"Authorization: Bearer {token()}", "--data-binary",
                                    f"@{tmp_path / 'batch.safetensors'}", f"http://127.0.0.1:{port}/score"],
                            capture_output=True, text=True, timeout=BOUND)
    assert torch.equal(torch.tensor(json.loads(scored.stdout)["scores"]), jpeg_scores(images, ["a", "b"]))
    refused = subprocess.run(base + ["-o", "/dev/null", "-w", "%{http_code}", "--data-binary",
                                     f"@{tmp_path / 'batch.safetensors'}", f"http://127.0.0.1:{port}/score"],
                             capture_output=True, text=True, timeout=BOUND)
    assert refused.stdout == "401"


def _safetensors(header: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_server_survives_malformed_requests(server_process: tuple[subprocess.Popen[str], int],
                                            tmp_path: Path) -> None:
    proc, port = server_process
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Evil(marker))
    pickle.loads(payload)  # the payload works: unpickling it makes the marker
    assert marker.exists()
    marker.unlink()
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    good = {"images": {"dtype": "F32", "shape": [2, 3, 8, 8], "data_offsets": [0, x.nbytes]},
            "__metadata__": {"prompts": '["a", "b"]'}}
    bad_bodies = {
        "pickle": (payload, "not a safetensors file"),
        "pickle protocol 0": (pickle.dumps(Evil(marker), protocol=0), "safetensors"),
        "empty": (b"", "shorter than 8 bytes"),
        "header runs past": (struct.pack("<Q", 1 << 40) + b"{}", "runs past the body"),
        "header not JSON": (struct.pack("<Q", 3) + b"{x}", "not JSON"),
        "header NaN": (_safetensors({"a": float("nan")}, b""), "NaN"),
        "header a list": (_safetensors([1], b""), "JSON object"),  # type: ignore[arg-type]
        "two tensors": (_safetensors(dict(good, other=good["images"]), x.tobytes()), "exactly one tensor"),
        "float64": (_safetensors(dict(good, images=dict(good["images"], dtype="F64")), x.tobytes()), "U8 or F32"),
        "3 dims": (_safetensors(dict(good, images=dict(good["images"], shape=[2, 192, 1])), x.tobytes()), "4 or 5"),
        "negative dim": (_safetensors(dict(good, images=dict(good["images"], shape=[2, 3, 8, -8])), x.tobytes()),
                         "integers in"),
        "bool dim": (_safetensors(dict(good, images=dict(good["images"], shape=[2, 3, 8, True])), x.tobytes()),
                     "integers in"),
        "huge shape": (_safetensors(dict(good, images=dict(good["images"], shape=[2**20] * 4)), x.tobytes()), "needs"),
        "short data": (_safetensors(good, x.tobytes()[:-4]), "needs"),
        "offsets": (_safetensors(dict(good, images=dict(good["images"], data_offsets=[4, x.nbytes + 4])),
                    x.tobytes()), "data_offsets"),
        "no prompts": (_safetensors(dict(good, __metadata__={}), x.tobytes()), "needs 'prompts'"),
        "prompt count": (_safetensors(dict(good, __metadata__={"prompts": '["a"]'}), x.tobytes()),
                         "2 images but 1 prompts"),
        "prompt types": (_safetensors(dict(good, __metadata__={"prompts": "[1, 2]"}), x.tobytes()), "list of strings"),
        "metadata types": (_safetensors(dict(good, __metadata__={"prompts": '["a", "b"]', "metadata": "[1, 2]"}),
                                        x.tobytes()), "metadata"),
        "unknown keys": (_safetensors(dict(good, __metadata__={"prompts": '["a", "b"]', "code": "1"}), x.tobytes()),
                         "unknown __metadata__"),
    }
    for name, (body, needle) in bad_bodies.items():
        status, answer = http_request(port, "POST", "/score", body, auth())
        assert status == 400 and needle in answer["error"], (name, answer)
    status, answer = http_request(port, "POST", "/score", _safetensors(good, x.tobytes()), auth())
    assert status == 200
    assert torch.equal(torch.tensor(answer["scores"]), jpeg_scores(torch.from_numpy(x), ["a", "b"]))

    raw_requests = {
        b"GET /nothing HTTP/1.1\r\nConnection: close\r\n\r\n": b"404",
        b"POST /health HTTP/1.0\r\n\r\n": b"405",
        b"garbage\r\n\r\n": b"400",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": b"505",
        b"GET /health HTTP/1.1\r\nbad header\r\n\r\n": b"400",
        b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"\r\n": b"431",
        b"GET /health HTTP/1.1\r\nX: " + b"y" * 70_000 + b"\r\n\r\n": b"431",
        f"POST /score HTTP/1.1\r\nAuthorization: Bearer {token()}\r\nTransfer-Encoding: chunked\r\n\r\n".encode(): b"501",
        f"POST /score HTTP/1.1\r\nAuthorization: Bearer {token()}\r\n\r\n".encode(): b"411",
        f"POST /score HTTP/1.1\r\nAuthorization: Bearer {token()}\r\nContent-Length: -5\r\n\r\n".encode(): b"400",
        b"POST /score HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n": b"400",
        payload + b"\r\n\r\n": b"400",  # a raw pickle stream instead of HTTP
    }
    for request, code in raw_requests.items():
        with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as sock:
            try:
                sock.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = closed_by_server(sock)
            assert answer.startswith(b"HTTP/1.1 " + code + b" "), (request[:60], answer[:200])
            body = answer.split(b"\r\n\r\n", 1)[1]
            assert list(json.loads(body)) == ["error"]
    from multiprocessing.connection import Client  # a pickle transport's client gets nowhere

    with pytest.raises(Exception):
        Client(("127.0.0.1", port), authkey=b"opgrpo-bench").send({"op": "describe"})
    assert not marker.exists()
    assert proc.poll() is None
    assert_serves(f"127.0.0.1:{port}")


# -- in-process servers -------------------------------------------------------------------------------
def test_remote_reward_round_trip_and_errors() -> None:
    with RewardServer(Mean(), port=0) as server:
        remote = RemoteReward(address=f"127.0.0.1:{server.port}")
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
        with pytest.raises(RewardServerError, match="HTTP 500: RuntimeError: the reward failed") as err:
            remote(images, ["a", "boom", "c"])  # reported, and the server goes on
        assert "\n" not in str(err.value) and isinstance(err.value, UserError)
        assert torch.allclose(remote(images[:1], ["a"]).scores, expected[:1])
        with pytest.raises(ValueError, match="JSON"):
            remote(images[:1], ["a"], [{"x": object()}])
        video = torch.rand(2, 4, 3, 8, 8)  # [B, F, C, H, W] crosses too
        assert torch.allclose(remote(video, ["a", "b"]).scores, video.flatten(1).mean(1))
        uint8 = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
        assert torch.allclose(remote(uint8, ["a"]).scores, (uint8.float() / 255).mean().reshape(1))
        half = torch.rand(1, 3, 4, 4, dtype=torch.bfloat16)
        assert torch.allclose(remote(half, ["a"]).scores, half.float().mean().reshape(1))
        remote.close()
        remote.close()  # idempotent


def test_remote_nan_pixels_and_digit_reward() -> None:
    with RewardServer(REWARDS.get("digit-classifier")(), port=0) as server:
        remote = RemoteReward(address=server.address)
        images = torch.rand(3, 1, 8, 8)
        images[2] = float("nan")
        local = REWARDS.get("digit-classifier")()(torch.nan_to_num(images, nan=0.0), ["a 3", "no digit", "a 5"])
        out = remote(images, ["a 3", "no digit", "a 5"])
        assert torch.allclose(out.scores, local.scores, equal_nan=True)
        assert "names no digit" in out.info["nan_reason"][1]


@pytest.mark.parametrize("host", ["::1", "localhost"])
def test_ipv6_and_localhost(host: str) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        server = RewardServer(Mean(), host=host, port=0).start()
    except OSError:
        pytest.skip(f"cannot listen on {host} here")
    with server:
        port = server.port
        for address in ([f"[{host}]:{port}", f"http://[{host}]:{port}"] if host == "::1"
                        else [f"localhost:{port}", f"http://localhost:{port}/"]):
            remote = RemoteReward(address=address)
            images = torch.rand(1, 3, 4, 4)
            assert torch.allclose(remote(images, ["a"]).scores, images.mean().reshape(1))


def test_busy_server_and_eviction_of_clients_without_a_token() -> None:
    """When every slot holds a request that showed the token, a new client gets 503 (one line); slots held by
    clients that never showed it are given to new clients."""
    reward = Blocking()
    with RewardServer(reward, port=0, max_connections=1, read_timeout=BOUND) as server:
        remote = RemoteReward(address=server.address, timeout=BOUND)
        result: list[Any] = []
        worker = threading.Thread(target=lambda: result.append(remote(torch.rand(1, 3, 4, 4), ["a"])), daemon=True)
        worker.start()
        assert reward.entered.wait(BOUND)  # that request is being scored: its slot is not up for grabs
        status, answer = http_request(server.port, "GET", "/health")
        assert status == 503 and "server busy" in answer["error"]
        reward.release.set()
        worker.join(BOUND)
        assert result and result[0].scores.shape == (1,)
        with socket.create_connection(("127.0.0.1", server.port), timeout=BOUND) as idle:
            status, _ = http_request(server.port, "GET", "/health")  # takes the idle client's slot
            assert status == 200
            assert closed_by_server(idle) == b""


def test_client_timeouts_are_one_line() -> None:
    """A silent server, a server that trickles, one that drops the connection and a slow reward: each makes
    the client fail with one line, within its timeout."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the kernel does), never answers
        start = time.monotonic()
        with pytest.raises(RewardServerError, match=r"no answer within 0.5 s") as err:
            RemoteReward(address=f"127.0.0.1:{silent.getsockname()[1]}", connect_timeout=0.5)
        assert time.monotonic() - start < BOUND and "\n" not in str(err.value)

    with socket.create_server(("127.0.0.1", 0)) as trickler:
        stop = threading.Event()

        def trickle() -> None:
            conn, _ = trickler.accept()
            with conn:
                for byte in b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 1000:  # never a whole head
                    if stop.wait(0.05):
                        return
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        return

        threading.Thread(target=trickle, daemon=True).start()
        with pytest.raises(RewardServerError, match=r"no answer within 0.5 s"):
            RemoteReward(address=f"127.0.0.1:{trickler.getsockname()[1]}", connect_timeout=0.5)
        stop.set()

    with socket.create_server(("127.0.0.1", 0)) as dropper:
        dropped: list[int] = []

        def drop() -> None:
            for _ in range(2):
                conn, _ = dropper.accept()
                conn.recv(1024)
                conn.close()
                dropped.append(1)

        thread = threading.Thread(target=drop, daemon=True)
        thread.start()
        with pytest.raises(RewardServerError, match="dropped") as err:
            RemoteReward(address=f"127.0.0.1:{dropper.getsockname()[1]}", connect_timeout=BOUND)
        assert "\n" not in str(err.value) and isinstance(err.value, UserError)
        thread.join(BOUND)
        assert len(dropped) == 2  # the client tried once more on a fresh connection, then gave up

    reward = Blocking()
    with RewardServer(reward, port=0) as server:
        remote = RemoteReward(address=server.address, timeout=0.5)
        with pytest.raises(RewardServerError, match=r"POST /score .* no answer within 0.5 s"):
            remote(torch.rand(1, 3, 4, 4), ["a"])
        reward.release.set()


class _Dropper(http.server.BaseHTTPRequestHandler):
    """Knows the token and answers /health and /describe, then drops every /score without an answer."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/health"):
            body = {"status": "ok", "protocol": PROTOCOL,
                    "proof": server_proof(token().encode(), self.path.split("challenge=")[1])}
        else:
            body = {"name": "fake", "range": [0, 1], "higher_is_better": True, "modality": "image",
                    "max_body_bytes": 1 << 20}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args: Any) -> None:
        pass


def test_remote_reward_errors_in_the_cli_are_one_line(tmp_path: Path) -> None:
    """`opgrpo-bench score --reward remote`: an out-of-range port, and a server that drops the connection
    while scoring, each give one `error:` line and exit code 2."""
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(image)
    dropper = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Dropper)
    threading.Thread(target=dropper.serve_forever, daemon=True).start()
    try:
        # (the other address errors are the same UserError: test_addresses_and_loopback_only)
        cases = {"127.0.0.1:99999": "out of range", f"127.0.0.1:{dropper.server_address[1]}": "POST /score to"}
        for address, needle in cases.items():
            run = subprocess.run([sys.executable, "-m", "opgrpo_bench.cli", "score", "--reward", "remote", "--set",
                                  f"address={address}", "--prompt", "p", str(image)],
                                 capture_output=True, text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            assert run.returncode == 2, (address, run.stderr[-2000:])
            assert run.stderr.startswith("error: ") and len(run.stderr.strip().splitlines()) == 1, run.stderr[-2000:]
            assert needle in run.stderr, (address, run.stderr)
        assert "dropped" in run.stderr
    finally:
        dropper.shutdown()
        dropper.server_close()


def test_remote_reward_without_server_is_a_clear_error() -> None:
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RewardServerError, match="no reward server there") as err:
        RemoteReward(address=f"127.0.0.1:{port}")
    assert "\n" not in str(err.value) and isinstance(err.value, UserError)


def test_client_refuses_a_server_without_the_token() -> None:
    """A server that does not know the token never receives it: the client checks its proof first."""
    with RewardServer(Mean(), port=0, token=b"another-token-0123456789") as server:
        with pytest.raises(RewardServerError, match="does not know this client's token") as err:
            RemoteReward(address=server.address)
        assert SECRET_ENV in str(err.value) and "\n" not in str(err.value)

    with socket.create_server(("127.0.0.1", 0)) as other:  # some other HTTP service: not our protocol
        port = other.getsockname()[1]
        requests: list[bytes] = []

        def talker() -> None:
            conn, _ = other.accept()
            with conn:
                requests.append(conn.recv(4096))
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

        threading.Thread(target=talker, daemon=True).start()
        with pytest.raises(RewardServerError, match="does not speak"):
            RemoteReward(address=f"127.0.0.1:{port}")
        assert requests and token().encode() not in requests[0]


def test_addresses_and_loopback_only() -> None:
    check_loopback("127.0.0.1")
    check_loopback("127.5.6.7")
    check_loopback("::1")
    check_loopback("localhost")
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org", "::ffff:10.0.0.1"):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(host)
    with pytest.raises(ValueError, match="loopback"):
        RemoteReward(address="10.0.0.1:18085")
    with pytest.raises(RemoteAddressError, match="loopback"):
        RewardServer(Mean(), "0.0.0.0", 0)
    assert RewardServer(Mean(), "0.0.0.0", 0, allow_remote=True).plaintext_remote  # nothing bound yet
    assert not RewardServer(Mean(), "127.0.0.1", 0).plaintext_remote
    assert parse_address("[::1]:5") == ("::1", 5) and parse_address("::1:5") == ("::1", 5)
    assert parse_address(":7") == ("127.0.0.1", 7)
    assert parse_url("https://localhost:443/") == ("https", "localhost", 443)
    for bad in ("127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000", "127.0.0.1:0", "ftp://127.0.0.1:5", "",
                "http://127.0.0.1:5/score", "127.0.0.1: 5", "[::1:5", "127.0.0.1:-1", "127.0.0.1:٣"):
        with pytest.raises(RemoteAddressError) as err:
            RemoteReward(address=bad)
        assert isinstance(err.value, ValueError) and isinstance(err.value, UserError) and "\n" not in str(err.value)
    for bad_port in (70000, -1, 1.5, "80"):
        with pytest.raises(RemoteAddressError, match="port"):
            RewardServer(Mean(), "127.0.0.1", bad_port)  # type: ignore[arg-type]
    with pytest.raises(RemoteAddressError, match="timeout"):
        RemoteReward(address="127.0.0.1:5", timeout=float("inf"))


def test_tls(tmp_path: Path) -> None:
    """With a certificate the server speaks https; the client checks it against ca_file."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl here to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                           "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                           "-keyout", str(key), "-out", str(cert)], capture_output=True, timeout=BOUND)
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate here ({made.stderr[:100]!r})")
    with RewardServer(Mean(), "127.0.0.1", 0, tls_cert=str(cert), tls_key=str(key)) as server:
        assert server.address.startswith("https://")
        remote = RemoteReward(address=server.address, ca_file=str(cert))
        images = torch.rand(2, 3, 4, 4)
        assert torch.allclose(remote(images, ["a", "b"]).scores, images.flatten(1).mean(1))
        with pytest.raises(RewardServerError, match="dropped|CERTIFICATE"):  # an unknown certificate: refused
            RemoteReward(address=server.address)
        with pytest.raises(RewardServerError):  # plain HTTP to a TLS port
            RemoteReward(address=f"127.0.0.1:{server.port}", connect_timeout=2)


# -- the token ----------------------------------------------------------------------------------------
def test_secret_key_file_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV)
    monkeypatch.setenv("OPGRPO_CACHE_DIR", str(tmp_path / "cache"))
    path = secret_path()
    assert path == tmp_path / "cache" / "reward-server.key" and not path.exists()
    first = reward_secret()
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) == 64
    assert reward_secret() == first  # stable
    assert [p.name for p in path.parent.iterdir()] == ["reward-server.key"]  # no temporary left behind
    with RewardServer(Mean(), port=0) as server:  # both sides read the same file
        remote = RemoteReward(address=server.address)
        assert remote(torch.rand(1, 3, 4, 4), ["a"]).scores.shape == (1,)
        token_file = tmp_path / "token"
        token_file.write_text(first.decode() + "\n")
        token_file.chmod(0o600)
        assert RemoteReward(address=server.address, token_file=str(token_file)).remote_name == "mean"
        token_file.chmod(0o640)
        with pytest.raises(RewardSecretError, match="chmod 600"):
            RemoteReward(address=server.address, token_file=str(token_file))
    with pytest.raises(RewardSecretError, match="does not exist"):
        reward_secret(tmp_path / "absent")
    path.chmod(0o644)
    with pytest.raises(RewardSecretError, match="chmod 600") as err:
        reward_secret()
    assert "\n" not in str(err.value)
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(RewardSecretError, match="delete it"):
        reward_secret()
    path.write_text("a token with spaces in it\n")
    with pytest.raises(RewardSecretError, match="printable ASCII"):
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


def test_server_cli_rejects_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = [["--reward", "nonexistent"],
           ["--reward", "jpeg-compressibility", "--host", "0.0.0.0"],
           ["--reward", "jpeg-compressibility", "--port", "70000"],
           ["--reward", "jpeg-compressibility", "--port", "-1"],
           ["--reward", "jpeg-compressibility", "--max-body-mb", "0"],
           ["--reward", "jpeg-compressibility", "--max-body-mb", "inf"],
           ["--reward", "jpeg-compressibility", "--max-body-mb", "nan"],
           ["--reward", "jpeg-compressibility", "--read-timeout", "inf"],
           ["--reward", "jpeg-compressibility", "--max-connections", "0"],
           ["--reward", "jpeg-compressibility", "--token-file", str(tmp_path / "absent")],
           ["--reward", "jpeg-compressibility", "--tls-key", str(tmp_path / "key.pem")],
           ["--reward", "jpeg-compressibility", "--tls-cert", str(tmp_path / "absent.pem")],
           ["--reward", "jpeg-compressibility", "--set", "novalue"]]
    for argv in bad:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (argv, err)
    for argv in (["--reward"], ["--reward", "x", "--port", "x"], ["--bogus"]):  # argparse's own errors: one line too
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (argv, err)
    with socket.create_server(("127.0.0.1", 0)) as busy:  # the port is taken: one line, exit 2
        assert main(["--reward", "jpeg-compressibility", "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1:" in err and len(err.strip().splitlines()) == 1


def test_batch_codec_round_trip() -> None:
    from safetensors.numpy import load

    x = np.random.default_rng(1).random((2, 3, 5, 7), dtype=np.float32)
    x[0, 0, 0, 0] = np.nan
    body = encode_batch(x, ["a", 'quote " and \\ and é'], [{"k": [1]}, {}])
    y, prompts, meta = decode_batch(body)
    assert y.dtype == np.float32 and y.flags.writeable and np.array_equal(x, y, equal_nan=True)
    assert prompts == ["a", 'quote " and \\ and é'] and meta == [{"k": [1]}, {}]
    assert np.array_equal(load(body)["images"], x, equal_nan=True)  # a plain safetensors file
    u = np.arange(24, dtype=np.uint8).reshape(1, 2, 3, 4)
    v, _, none = decode_batch(encode_batch(torch.from_numpy(u), ["p"]))
    assert np.array_equal(v, u) and v.dtype == np.uint8 and none is None
