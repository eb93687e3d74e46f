"""Out-of-process reward scoring over loopback, for rewards whose dependencies conflict with training.

Start a server in the environment that has the reward's dependencies (it needs this package and the
reward's own packages, nothing of the training stack)::

    python -m opgrpo_bench.rewards.server --reward geneval --port 18085 --set path=/models/m2f

and score from the trainer with the ``remote`` reward::

    REWARDS.get("remote")(address="127.0.0.1:18085")

Security model. The server binds loopback addresses only (127.0.0.0/8, ``::1``, ``localhost`` when it
resolves to loopback) and refuses anything else. Nothing received is ever unpickled or executed: the wire
format is JSON only (protocol ``opgrpo-reward/1``):

- a frame is a 4-byte big-endian unsigned length followed by that many bytes of UTF-8 JSON, one object;
  a frame longer than the limit (``--max-message-mb``, default 256 MiB; 4 KiB before authentication) is
  refused without being read;
- arrays travel as ``{"dtype": "float32" | "uint8", "shape": [...], "data": base64}`` where ``data`` holds
  the raw little-endian bytes in C order; dtype, shape and byte count are checked before anything is built;
- both sides prove knowledge of a per-user secret by HMAC-SHA256 challenge-response (:func:`reward_secret`:
  ``$OPGRPO_REWARD_SECRET``, else a 0600 key file ``reward-server.key`` in the user cache folder, created
  on first use), so other users of the machine can neither score nor pose as the server.

Handshake: the server sends ``{"type": "challenge", "protocol", "nonce", "max_message_bytes"}``; the client
answers ``{"type": "auth", "mac": HMAC(secret, "opgrpo-reward/1 client " + nonce), "nonce": client_nonce}``;
the server answers ``{"type": "welcome", "ok": true, "mac": HMAC(secret, "opgrpo-reward/1 server " +
client_nonce + nonce)}`` (the client checks it) or an error, and closes. Requests are then ``{"op":
"describe"}``, ``{"op": "score", "images": ARRAY, "prompts": [str], "metadata": [object] | null}`` and
``{"op": "close"}``; every answer has ``"ok"`` and, when false, a one-line ``"error"``.

A malformed message never stops the server: a request that is valid JSON but wrong (unknown op, bad dtype,
shape, sizes, types) gets an error answer and the client may go on; a frame that is not a JSON object or is
too large gets an error answer and that client is dropped. Each client has its own thread (at most
``max_clients`` at once); batches are scored one at a time, in arrival order.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import math
import os
import secrets
import socket
import stat
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from opgrpo_bench.rewards.base import BaseReward, RewardOutput, RewardUnavailableError
from opgrpo_bench.storage import cache_root

DEFAULT_PORT = 18085
PROTOCOL = "opgrpo-reward/1"
SECRET_ENV = "OPGRPO_REWARD_SECRET"
KEY_FILE_NAME = "reward-server.key"
MIN_SECRET_CHARS = 16
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
HANDSHAKE_MAX_BYTES = 4096
HANDSHAKE_TIMEOUT_S = 10.0
MAX_CLIENTS = 8
MAX_DIM = 1 << 20
MAX_PROMPT_CHARS = 100_000
DTYPES = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}
_HEADER = struct.Struct(">I")
_NONCE_HEX = 64  # 32 random bytes


class ProtocolError(ValueError):
    """A message that breaks the wire protocol (not JSON, too large, wrong types, shapes or sizes)."""


class FrameError(ProtocolError):
    """A frame that cannot be read as one JSON object (the connection is dropped after answering)."""


class RewardSecretError(RewardUnavailableError):
    """The shared secret is missing, too short or its key file is unsafe; the message is one line."""


# -- secret ------------------------------------------------------------------------------------------
def secret_path() -> Path:
    """Where the per-user key file lives: ``cache_root() / "reward-server.key"``."""
    return cache_root() / KEY_FILE_NAME


def secret_source() -> str:
    """A short description of where :func:`reward_secret` takes the secret from (for messages)."""
    return f"${SECRET_ENV}" if os.environ.get(SECRET_ENV) else f"key file {secret_path()}"


def reward_secret() -> bytes:
    """The secret shared by the reward server and its clients.

    ``$OPGRPO_REWARD_SECRET`` when set (at least 16 characters), else the content of the key file
    (:func:`secret_path`), which is created with 32 random bytes (hex) and mode 0600 on first use. A key
    file that is not a regular file owned by this user, or that others can read or write, is refused.

    Raises:
        RewardSecretError: one line saying what is wrong and how to fix it.
    """
    env = os.environ.get(SECRET_ENV)
    if env:
        if len(env) < MIN_SECRET_CHARS:
            raise RewardSecretError(f"${SECRET_ENV} is {len(env)} characters; use at least {MIN_SECRET_CHARS} "
                                    f"(e.g. `export {SECRET_ENV}=$(python -c 'import secrets; "
                                    f"print(secrets.token_hex(32))')`)")
        return env.encode("utf-8")
    path = secret_path()
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        return _create_key_file(path)


def _read_key_file(path: Path) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RewardSecretError(f"cannot read the reward-server key file {path} ({exc.strerror}); delete it or set "
                                f"${SECRET_ENV}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise RewardSecretError(f"the reward-server key file {path} is not a regular file; delete it or set "
                                    f"${SECRET_ENV}")
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise RewardSecretError(f"the reward-server key file {path} belongs to another user; delete it or set "
                                    f"${SECRET_ENV}")
        if st.st_mode & 0o077:
            raise RewardSecretError(f"the reward-server key file {path} is accessible to other users (mode "
                                    f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`")
        data = f.read(4096).strip()
    if len(data) < MIN_SECRET_CHARS:
        raise RewardSecretError(f"the reward-server key file {path} is empty or shorter than {MIN_SECRET_CHARS} "
                                f"characters; delete it to have a new one made")
    return data


def _create_key_file(path: Path) -> bytes:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.parent / f".{KEY_FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(secrets.token_hex(32).encode("ascii") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic and never overwrites: a concurrent first use keeps one key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    except OSError as exc:
        raise RewardSecretError(f"cannot create the reward-server key file {path} ({exc.strerror or exc}); set "
                                f"${SECRET_ENV} instead") from None
    return _read_key_file(path)


def _mac(secret: bytes, label: str, *parts: str) -> str:
    message = " ".join((PROTOCOL, label, *parts)).encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


# -- addresses ---------------------------------------------------------------------------------------
def check_loopback(host: str) -> None:
    """Raise ValueError unless ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"the reward server listens on loopback only (127.0.0.1, localhost, ::1), not '{host}'")


def loopback_addresses(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    """(family, sockaddr) of ``host:port``, IPv4 first; ValueError unless every one is a loopback address."""
    check_loopback(host)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve '{host}' ({exc.strerror})") from None
    out: list[tuple[int, tuple[Any, ...]]] = []
    for family, _, _, _, sockaddr in infos:
        if not ipaddress.ip_address(sockaddr[0]).is_loopback:
            raise ValueError(f"'{host}' resolves to {sockaddr[0]}, which is not a loopback address")
        if (family, sockaddr) not in out:
            out.append((family, sockaddr))
    out.sort(key=lambda item: item[0] != socket.AF_INET)
    if not out:
        raise ValueError(f"'{host}' resolves to no address")
    return out


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` or ``::1:port`` for IPv6; an empty host is 127.0.0.1) -> (host, port)."""
    host, _, port = address.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"expected host:port, got '{address}'") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} is out of range in '{address}'")
    return (host.strip("[]") or "127.0.0.1"), number


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- framing and values ------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"non-standard JSON constant {name}")


def decode_json(payload: bytes) -> dict[str, Any]:
    """One JSON object from a frame's bytes (strict JSON: no NaN/Infinity); :class:`FrameError` otherwise."""
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except ProtocolError as exc:
        raise FrameError(f"malformed message: {exc}") from None
    except UnicodeDecodeError:
        raise FrameError("malformed message: not UTF-8 JSON (pickle and other binary payloads are refused)") from None
    except json.JSONDecodeError as exc:
        raise FrameError(f"malformed message: not JSON ({exc.msg} at char {exc.pos})") from None
    except RecursionError:
        raise FrameError("malformed message: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise FrameError(f"malformed message: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(obj, dict):
        raise FrameError(f"malformed message: expected a JSON object, got {type(obj).__name__}")
    return obj


def encode_json(obj: dict[str, Any]) -> bytes:
    """A frame's bytes for ``obj`` (strict JSON; ValueError for NaN/inf, TypeError for non-JSON values)."""
    return json.dumps(obj, allow_nan=False, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def send_message(sock: socket.socket, obj: dict[str, Any]) -> None:
    """Send one frame: 4-byte big-endian length + JSON."""
    payload = encode_json(obj)
    if len(payload) > 0xFFFFFFFF:
        raise ValueError(f"message of {len(payload)} bytes is too large for one frame")
    sock.sendall(_HEADER.pack(len(payload)))
    sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int, at_start: bool = False) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 20))
        if k == 0:
            if at_start and got == 0:
                raise EOFError("connection closed")
            raise FrameError(f"truncated message ({got} of {n} bytes)")
        got += k
    return bytes(buf)


def recv_message(sock: socket.socket, max_bytes: int) -> dict[str, Any]:
    """Receive one frame and decode it (EOFError on a clean close; FrameError when malformed or too large)."""
    (n,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, at_start=True))
    if n > max_bytes:
        raise FrameError(f"message of {n} bytes exceeds the limit of {max_bytes} bytes")
    return decode_json(_recv_exact(sock, n))


def encode_array(array: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """``{"dtype", "shape", "data"}`` of a float32 or uint8 array (raw little-endian bytes, base64)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    name = "uint8" if array.dtype == np.uint8 else "float32"
    arr = np.ascontiguousarray(array, dtype=DTYPES[name])
    return {"dtype": name, "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_array(obj: Any, what: str, ndims: Sequence[int], dtypes: Sequence[str] = ("float32", "uint8")) -> np.ndarray:
    """Validate and decode :func:`encode_array`'s format; :class:`ProtocolError` names what is wrong.

    Checks: a JSON object with exactly ``dtype``, ``shape``, ``data``; dtype in ``dtypes``; shape a list of
    ``ndims`` positive integers (each at most 2^20); ``data`` strict base64 of exactly prod(shape) x itemsize
    bytes. Returns a writable native-endian array.
    """
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise ProtocolError(f"'{what}' must be an object with exactly the keys dtype, shape, data")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(dtype, str) or dtype not in dtypes:
        raise ProtocolError(f"'{what}' dtype must be one of {', '.join(dtypes)}, got {str(dtype)[:40]!r}")
    if (not isinstance(shape, list) or len(shape) not in ndims
            or not all(type(d) is int and 1 <= d <= MAX_DIM for d in shape)):
        raise ProtocolError(f"'{what}' shape must be a list of {' or '.join(map(str, ndims))} integers in "
                            f"[1, {MAX_DIM}], got {str(shape)[:80]}")
    if not isinstance(data, str):
        raise ProtocolError(f"'{what}' data must be a base64 string")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    chars = 4 * -(-expected // 3)  # base64 length of `expected` bytes, exact integer arithmetic
    if len(data) != chars:
        raise ProtocolError(f"'{what}' data has {len(data)} base64 characters; shape {shape} {dtype} needs {chars}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"'{what}' data is not valid base64") from None
    if len(raw) != expected:
        raise ProtocolError(f"'{what}' data has {len(raw)} bytes; shape {shape} {dtype} needs {expected}")
    array = np.frombuffer(bytearray(raw), dtype=DTYPES[dtype]).reshape(shape)
    return array.astype(DTYPES[dtype].newbyteorder("="), copy=False)


def float_to_json(x: float) -> float | str:
    """A float for strict JSON: finite as is, else ``"inf"``, ``"-inf"`` or ``"nan"``."""
    x = float(x)
    return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


def float_from_json(x: Any, what: str) -> float:
    """Inverse of :func:`float_to_json`; :class:`ProtocolError` for anything else."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    if x in ("inf", "-inf", "nan"):
        return float(x)
    raise ProtocolError(f"'{what}' must be a number, got {str(x)[:40]!r}")


def to_json_value(obj: Any, depth: int = 0) -> Any:
    """Reduce ``obj`` to strict-JSON values: non-finite floats become None, arrays lists, others ``str``."""
    if depth > 32:
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_json_value(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_value(v, depth + 1) for v in obj]
    if hasattr(obj, "tolist"):
        return to_json_value(obj.tolist(), depth + 1)
    return str(obj)


# -- server ------------------------------------------------------------------------------------------
def _validate_score_request(request: dict[str, Any]) -> tuple[torch.Tensor, list[str], list[dict[str, Any]] | None]:
    extra = set(request) - {"op", "images", "prompts", "metadata"}
    if extra:
        raise ProtocolError(f"unknown keys in a score request: {', '.join(sorted(map(str, extra)))[:200]}")
    if "images" not in request or "prompts" not in request:
        raise ProtocolError("a score request needs 'images' and 'prompts'")
    array = decode_array(request["images"], "images", ndims=(4, 5))
    batch = array.shape[0]
    prompts = request["prompts"]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ProtocolError("'prompts' must be a list of strings")
    if len(prompts) != batch:
        raise ProtocolError(f"{batch} images but {len(prompts)} prompts")
    if any(len(p) > MAX_PROMPT_CHARS for p in prompts):
        raise ProtocolError(f"a prompt is longer than {MAX_PROMPT_CHARS} characters")
    metadata = request.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, list) or not all(isinstance(m, dict) for m in metadata):
            raise ProtocolError("'metadata' must be null or a list of objects")
        if len(metadata) != batch:
            raise ProtocolError(f"{batch} images but {len(metadata)} metadata objects")
    images = torch.from_numpy(array)
    if images.dtype == torch.float32:
        images = torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)
    return images, prompts, metadata


def handle(reward: Any, request: dict[str, Any], lock: threading.Lock | None = None) -> dict[str, Any]:
    """Answer one decoded request (``describe`` or ``score``).

    Raises:
        ProtocolError: the request is malformed (the caller answers with the error).
        Exception: whatever the reward raises (the caller answers with the error).
    """
    op = request.get("op")
    if op == "describe":
        if set(request) != {"op"}:
            raise ProtocolError("a describe request has no other keys")
        low, high = getattr(reward, "range", (-math.inf, math.inf))
        return {
            "ok": True, "name": str(getattr(reward, "name", "")), "range": [float_to_json(low), float_to_json(high)],
            "higher_is_better": bool(getattr(reward, "higher_is_better", True)),
            "modality": str(getattr(reward, "modality", "image")),
        }
    if op == "score":
        images, prompts, metadata = _validate_score_request(request)
        with lock or threading.Lock():
            out = reward(images, prompts, metadata)
        scores = torch.as_tensor(out.scores).detach().to("cpu", torch.float32).reshape(-1)
        return {
            "ok": True, "scores": encode_array(scores),
            "components": {str(k): encode_array(torch.as_tensor(v).detach().to("cpu", torch.float32).reshape(-1))
                           for k, v in out.components.items()},
            "info": to_json_value(out.info),
        }
    raise ProtocolError(f"unknown op {str(op)[:40]!r} (expected describe, score or close)")


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": " ".join(str(message).split())[:2000]}


def _try_send(sock: socket.socket, obj: dict[str, Any]) -> None:
    try:
        send_message(sock, obj)
    except (OSError, ValueError, TypeError):
        pass


def _drop(sock: socket.socket, message: str, linger_s: float = 1.0, max_drain: int = 1 << 26) -> None:
    """Answer an error, then close gently: unread input is drained for up to ``linger_s`` seconds so that
    the close does not reset the connection before the client has read the answer."""
    _try_send(sock, _error(message))
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(linger_s)
        deadline, drained = time.monotonic() + linger_s, 0
        while drained < max_drain and time.monotonic() < deadline:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass


def _server_handshake(sock: socket.socket, secret: bytes, max_bytes: int) -> bool:
    nonce = secrets.token_hex(_NONCE_HEX // 2)
    send_message(sock, {"type": "challenge", "protocol": PROTOCOL, "nonce": nonce, "max_message_bytes": max_bytes})
    try:
        msg = recv_message(sock, HANDSHAKE_MAX_BYTES)
    except FrameError as exc:
        _drop(sock, f"authentication failed: {exc}")
        return False
    mac, client_nonce = msg.get("mac"), msg.get("nonce")
    if (msg.get("type") != "auth" or not isinstance(mac, str) or not isinstance(client_nonce, str)
            or len(client_nonce) != _NONCE_HEX or not all(c in "0123456789abcdef" for c in client_nonce)):
        _drop(sock, "authentication failed: expected {type: auth, mac, nonce}")
        return False
    if not hmac.compare_digest(mac.encode("ascii", "replace"), _mac(secret, "client", nonce).encode("ascii")):
        _drop(sock, "authentication failed: wrong secret")
        return False
    send_message(sock, {"type": "welcome", "ok": True, "mac": _mac(secret, "server", client_nonce, nonce)})
    return True


def _serve_connection(reward: Any, sock: socket.socket, secret: bytes, max_bytes: int, lock: threading.Lock,
                      handshake_timeout: float | None, on_auth: Any) -> None:
    try:
        sock.settimeout(handshake_timeout)
        if not _server_handshake(sock, secret, max_bytes):
            return
        on_auth()
        sock.settimeout(None)  # the trainer may be idle for minutes between batches
        while True:
            try:
                request = recv_message(sock, max_bytes)
            except EOFError:
                return
            except FrameError as exc:  # framing cannot be trusted any more: answer, then drop this client
                _drop(sock, str(exc))
                return
            if request.get("op") == "close":
                return
            try:
                response = handle(reward, request, lock)
            except ProtocolError as exc:  # a well-framed but wrong request: answer, keep this client
                response = _error(str(exc))
            except Exception as exc:  # the reward failed: report to the client, keep serving
                response = _error(f"{type(exc).__name__}: {exc}")
            try:
                send_message(sock, response)  # encodes before sending anything
            except (ValueError, TypeError) as exc:  # an answer that cannot be encoded as strict JSON
                send_message(sock, _error(f"cannot encode the reward's answer: {exc}"))
    except (OSError, EOFError, FrameError):  # timeouts, resets, broken pipes: drop this client only
        return
    except Exception as exc:  # a bug must cost one client, never the server  # pragma: no cover
        _try_send(sock, _error(f"internal error: {type(exc).__name__}: {exc}"))
    finally:
        try:
            sock.close()
        except OSError:
            pass


def serve(reward: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT, ready: threading.Event | None = None,
          max_connections: int | None = None, *, secret: bytes | None = None,
          max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_clients: int = MAX_CLIENTS,
          handshake_timeout: float | None = HANDSHAKE_TIMEOUT_S) -> None:
    """Serve ``reward`` on ``host:port`` (loopback only) until interrupted.

    Args:
        reward: any object with the reward protocol.
        host, port: loopback address to bind (port 0 picks a free one).
        ready: set once listening, with the bound port as ``ready.port``.
        max_connections: return after this many clients have authenticated and left (tests).
        secret: the shared secret (default :func:`reward_secret`).
        max_message_bytes: the largest request frame accepted after authentication.
        max_clients: clients served at once; more are answered "busy" and closed.
        handshake_timeout: seconds a new client has to authenticate.

    Raises:
        ValueError: ``host`` is not a loopback address.
        OSError: the address cannot be bound.
        RewardSecretError: no usable secret.
    """
    family, sockaddr = loopback_addresses(host, port)[0]
    source = "the caller" if secret is not None else secret_source()
    secret = reward_secret() if secret is None else secret
    lock = threading.Lock()
    state = {"authenticated": 0}
    state_lock = threading.Lock()
    threads: list[threading.Thread] = []

    def on_auth() -> None:
        """Count one more authenticated client."""
        with state_lock:
            state["authenticated"] += 1

    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(sockaddr)
        server.listen(16)
        server.settimeout(0.2)
        bound_host, bound_port = server.getsockname()[:2]
        if ready is not None:
            ready.port = bound_port  # type: ignore[attr-defined]
            ready.set()
        print(f"reward server '{getattr(reward, 'name', '')}' listening on {_show(bound_host, bound_port)}", flush=True)
        print(f"protocol {PROTOCOL}; secret from {source}", flush=True)
        while True:
            threads = [t for t in threads if t.is_alive()]
            with state_lock:
                done = max_connections is not None and state["authenticated"] >= max_connections
            if done:
                break
            try:
                conn, _ = server.accept()
            except (socket.timeout, BlockingIOError, InterruptedError):
                continue
            except OSError:  # e.g. too many open files: keep serving
                continue
            if len(threads) >= max_clients:
                conn.settimeout(1.0)
                _try_send(conn, _error(f"server busy: {max_clients} clients connected"))
                conn.close()
                continue
            thread = threading.Thread(target=_serve_connection, daemon=True, name="reward-client", args=(
                reward, conn, secret, max_message_bytes, lock, handshake_timeout, on_auth))
            try:
                thread.start()
            except RuntimeError:  # cannot start a thread now: refuse this client, keep serving
                conn.close()
                continue
            threads.append(thread)
    for thread in threads:
        thread.join()


# -- client ------------------------------------------------------------------------------------------
class RemoteReward(BaseReward):
    """A reward scored by a reward server on this machine (see ``python -m opgrpo_bench.rewards.server``)."""

    name = "remote"
    modality = "any"
    needs = "a reward server on 127.0.0.1 (python -m opgrpo_bench.rewards.server --reward NAME)"

    def __init__(self, address: str = f"127.0.0.1:{DEFAULT_PORT}", timeout: float | None = None,
                 connect_timeout: float = HANDSHAKE_TIMEOUT_S):
        """Connect and authenticate.

        Args:
            address: ``host:port`` of the server; the host must be a loopback address (``[::1]:port`` for IPv6).
            timeout: seconds to wait for one answer (None: no limit; a large batch may take long).
            connect_timeout: seconds to connect and authenticate.

        Raises:
            ValueError: the address is malformed or not loopback.
            RewardUnavailableError: no server there, not a reward server, or it refused this client's secret.
        """
        host, port = parse_address(address)
        targets = loopback_addresses(host, port)
        secret = reward_secret()
        self.address = _show(host, port)
        self.timeout = timeout
        start = f"start one with `python -m opgrpo_bench.rewards.server --reward NAME --port {port}`"
        sock, last = None, None
        for family, sockaddr in targets:
            candidate = socket.socket(family, socket.SOCK_STREAM)
            candidate.settimeout(connect_timeout)
            try:
                candidate.connect(sockaddr)
                sock = candidate
                break
            except OSError as exc:
                candidate.close()
                last = exc
        if sock is None:
            raise RewardUnavailableError(f"reward 'remote': no reward server at {self.address} "
                                         f"({type(last).__name__}); {start}") from None
        self.sock = sock
        try:
            self.max_message_bytes = self._handshake(secret)
        except (OSError, EOFError, ProtocolError) as exc:
            sock.close()
            raise RewardUnavailableError(f"reward 'remote': the server at {self.address} did not complete the "
                                         f"{PROTOCOL} handshake ({type(exc).__name__}: {exc}); is it an opgrpo-bench "
                                         f"reward server of this version?") from None
        except RewardUnavailableError:
            sock.close()
            raise
        sock.settimeout(timeout)
        self._lock = threading.Lock()
        desc = self._request({"op": "describe"})
        try:
            self.remote_name = str(desc["name"])
            low, high = (float_from_json(x, "range") for x in desc["range"])
            self.range = (low, high)  # type: ignore[misc]
            self.higher_is_better = bool(desc["higher_is_better"])  # type: ignore[misc]
        except (KeyError, TypeError, ValueError) as exc:
            self.close()
            raise RewardUnavailableError(
                f"reward 'remote': malformed describe answer from {self.address} ({exc})") from None

    def _handshake(self, secret: bytes) -> int:
        challenge = recv_message(self.sock, HANDSHAKE_MAX_BYTES)
        if challenge.get("ok") is False:
            raise RewardUnavailableError(f"reward 'remote': the server at {self.address} refused the connection: "
                                         f"{str(challenge.get('error'))[:300]}")
        nonce, limit = challenge.get("nonce"), challenge.get("max_message_bytes")
        if (challenge.get("type") != "challenge" or challenge.get("protocol") != PROTOCOL or not isinstance(nonce, str)
                or len(nonce) != _NONCE_HEX or type(limit) is not int or limit < HANDSHAKE_MAX_BYTES):
            raise ProtocolError(f"expected a {PROTOCOL} challenge")
        client_nonce = secrets.token_hex(_NONCE_HEX // 2)
        send_message(self.sock, {"type": "auth", "mac": _mac(secret, "client", nonce), "nonce": client_nonce})
        reply = recv_message(self.sock, HANDSHAKE_MAX_BYTES)
        if reply.get("ok") is not True:
            raise RewardUnavailableError(
                f"reward 'remote': the server at {self.address} refused this client ({str(reply.get('error'))[:200]}); "
                f"run the server and the client as the same user, or with the same ${SECRET_ENV} (this client "
                f"uses {secret_source()})")
        mac = reply.get("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(
                mac.encode("ascii", "replace"), _mac(secret, "server", client_nonce, nonce).encode("ascii")):
            raise RewardUnavailableError(f"reward 'remote': the server at {self.address} could not prove that it "
                                         f"knows the secret ({secret_source()}); not connecting to it")
        return limit

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            try:
                send_message(self.sock, message)
                response = recv_message(self.sock, max(self.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES))
            except (OSError, EOFError) as exc:
                raise RuntimeError(
                    f"reward server at {self.address}: connection lost ({type(exc).__name__}: {exc})") from None
        if response.get("ok") is not True:
            raise RuntimeError(f"reward server error: {str(response.get('error'))[:2000]}")
        return response

    def _score_chunk(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]] | None
                     ) -> RewardOutput:
        response = self._request({"op": "score", "images": encode_array(images), "prompts": prompts,
                                  "metadata": metadata})
        n = images.shape[0]
        try:
            scores = decode_array(response["scores"], "scores", ndims=(1,), dtypes=("float32",))
            components_raw = response.get("components", {})
            if not isinstance(components_raw, dict):
                raise ProtocolError("'components' must be an object")
            components = {str(k): torch.from_numpy(decode_array(v, f"components.{k}", ndims=(1,), dtypes=("float32",)))
                          for k, v in components_raw.items()}
            info = response.get("info", {})
            if not isinstance(info, dict):
                raise ProtocolError("'info' must be an object")
        except (KeyError, ProtocolError) as exc:
            raise RuntimeError(f"reward server at {self.address}: malformed answer ({exc})") from None
        if scores.shape != (n,) or any(v.shape != (n,) for v in components.values()):
            raise RuntimeError(f"reward server at {self.address}: answer shapes do not match a batch of {n}")
        return RewardOutput(torch.from_numpy(scores), components, info)

    def _chunk_size(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]] | None) -> int:
        per_image = 4 * math.ceil(images[0].numel() * 4 / 3)
        texts = [len(encode_json({"p": p, "m": m})) for p, m in zip(prompts, metadata or [None] * len(prompts))]
        per_sample = per_image + max(texts) + 64
        budget = self.max_message_bytes - 4096
        if per_sample > budget:
            raise ValueError(f"reward 'remote': one sample needs about {per_sample} bytes, more than the server's "
                             f"limit of {self.max_message_bytes}; restart the server with a larger --max-message-mb")
        return max(1, budget // per_sample)

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        """Send the batch (split into frames under the server's size limit) and collect the answer."""
        try:
            meta: list[dict[str, Any]] | None = json.loads(encode_json({"m": metadata}))["m"]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"reward 'remote': metadata must be plain JSON values (no NaN) to cross to the "
                             f"server ({exc})") from None
        if all(not m for m in meta or []):
            meta = None
        step = self._chunk_size(images, prompts, meta)
        outs = [self._score_chunk(images[i : i + step], prompts[i : i + step],
                                  None if meta is None else meta[i : i + step])
                for i in range(0, images.shape[0], step)]
        if len(outs) == 1:
            out = outs[0]
        else:
            keys = outs[0].components.keys()
            components = {k: torch.cat([o.components.get(k, torch.full_like(o.scores, math.nan)) for o in outs])
                          for k in keys}
            info: dict[str, Any] = {}
            for k, v in outs[0].info.items():
                parts = [o.info.get(k) for o in outs]
                lists = all(isinstance(p, list) and len(p) == len(o.scores) for p, o in zip(parts, outs))
                info[k] = [x for p in parts for x in p] if lists else v  # type: ignore[union-attr]
            out = RewardOutput(torch.cat([o.scores for o in outs]), components, info)
        out.info = dict(out.info, server=self.remote_name)
        return out

    def close(self) -> None:
        """Say goodbye and close the connection (idempotent)."""
        lock = getattr(self, "_lock", None) or threading.Lock()
        with lock:
            try:
                send_message(self.sock, {"op": "close"})
            except (OSError, ValueError):
                pass
            try:
                self.sock.close()
            except OSError:
                pass


# -- command line ------------------------------------------------------------------------------------
def json_or_text(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, booleans, lists), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """Reward constructor arguments from ``key=value`` items (:func:`opgrpo_bench.validation.parse_sets`),
    values by :func:`json_or_text`; ValueError for an item that is not ``key=value``."""
    from opgrpo_bench.validation import parse_sets as parse_key_values

    return parse_key_values(items, value=json_or_text)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m opgrpo_bench.rewards.server``: serve a registered reward; returns the exit code (2: user error)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reward", required=True, help="registered reward name")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (127.0.0.1, ::1, localhost)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="reward kwarg key=value")
    parser.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
                        help="largest request accepted, in MiB (clients split larger batches)")
    parser.add_argument("--max-clients", type=int, default=MAX_CLIENTS, help="clients served at once")
    args = parser.parse_args(argv)
    from opgrpo_bench.registry import REWARDS, UnknownNameError

    try:
        max_bytes = int(args.max_message_mb * 2**20)
        if not HANDSHAKE_MAX_BYTES <= max_bytes <= 0xFFFFFFFF:
            raise ValueError(f"--max-message-mb must be between 0.004 and 4095, got {args.max_message_mb}")
        loopback_addresses(args.host, args.port)
        reward_secret()  # fail early, with one line, before loading a model
        reward = REWARDS.get(args.reward)(**parse_sets(args.sets))
    except (UnknownNameError, RewardUnavailableError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        serve(reward, args.host, args.port, max_message_bytes=max_bytes, max_clients=args.max_clients)
    except OSError as exc:
        print(f"error: cannot listen on {_show(args.host, args.port)} ({exc.strerror or exc})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
