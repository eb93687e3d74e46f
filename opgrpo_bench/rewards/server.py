"""Out-of-process reward scoring over HTTP, for rewards whose dependencies conflict with training.

Start a server in the environment that has the reward's dependencies (it needs this package and the
reward's own packages, nothing of the training stack)::

    python -m opgrpo_bench.rewards.server --reward geneval --port 18085 --set path=/models/m2f

and score from the trainer with the ``remote`` reward::

    REWARDS.get("remote")(address="127.0.0.1:18085")

or from anything that speaks HTTP (protocol ``opgrpo-reward/2``; docs/REWARDS.md has a 10-line client)::

    curl -H "Authorization: Bearer $OPGRPO_REWARD_SECRET" --data-binary @batch.safetensors \\
         http://127.0.0.1:18085/score

Endpoints:

- ``GET /health`` (no token): ``{"status": "ok", "protocol": ...}``; with ``?challenge=HEX`` (16-128 hex
  digits) it adds ``"proof": HMAC-SHA256(token, "opgrpo-reward/2 server " + HEX)`` so that a client can
  check that the server knows the token before it sends the token (a process squatting on the port
  learns nothing);
- ``GET /describe`` (token): ``{"name", "range", "higher_is_better", "modality", "max_body_bytes", ...}``;
- ``POST /score`` (token): the body is a safetensors file holding one tensor ``images`` (uint8 or float32,
  ``[B, C, H, W]`` or ``[B, F, C, H, W]``) and, in its ``__metadata__``, ``prompts`` (a JSON list of B
  strings) and optionally ``metadata`` (a JSON list of B objects, or ``null``); the answer is JSON
  ``{"scores": [B], "components": {name: [B]}, "info": {...}}``, where a non-finite number is the string
  ``"nan"``, ``"inf"`` or ``"-inf"``.

Every error is a JSON ``{"error": "one line"}`` with a 4xx/5xx status: 400 malformed request or body,
401 missing or wrong token, 404/405 unknown path or method, 408 a client too slow to send its request,
411/413 no or too large Content-Length, 500 the reward raised, 501 chunked bodies, 503 server full.

Safety: nothing received is unpickled or executed (the body's safetensors header is parsed as strict JSON
and checked: one tensor, dtype, shape, exact byte count, before any array is built). The token is
compared in constant time, before any body is read. Connections are served by an asyncio loop: a
connection that has not yet presented a token costs no thread and is closed first when the connection
limit is reached, so idle or slow clients cannot lock real ones out. Every read has a timeout; bodies
must arrive at 1 MiB/s or faster. Authenticated requests are decoded and scored by a bounded thread pool;
the reward itself runs one batch at a time, in arrival order. The server binds loopback addresses only,
unless ``allow_remote`` (``--allow-remote``) is given explicitly; it then serves TLS when given a
certificate; otherwise the command line warns that the token and images travel in clear.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import http.client
import ipaddress
import json
import math
import os
import secrets
import socket
import ssl
import stat
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch

from opgrpo_bench.rewards.base import BaseReward, RewardOutput, RewardUnavailableError
from opgrpo_bench.storage import cache_root

DEFAULT_PORT = 18085
PROTOCOL = "opgrpo-reward/2"
SECRET_ENV = "OPGRPO_REWARD_SECRET"
KEY_FILE_NAME = "reward-server.key"
MIN_SECRET_CHARS = 16
DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024
MIN_BODY_BYTES = 64 * 1024
MAX_BODY_BYTES_LIMIT = 1 << 40  # 1 TiB: a sanity bound for --max-body-mb, far above any batch
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_IDLE_TIMEOUT_S = 60.0
DEFAULT_CLIENT_TIMEOUT_S = 600.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64
WORKERS = 2
MIN_BODY_RATE = 1 << 20  # bytes/s a client must at least send its body at
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 64
MAX_DIM = 1 << 20
MAX_PROMPT_CHARS = 100_000
MAX_SAFETENSORS_HEADER = 64 * 1024 * 1024
DTYPES = {"U8": np.dtype("u1"), "F32": np.dtype("<f4")}
SCORE_CHUNK_OVERHEAD = 4096  # safetensors header framing, JSON punctuation and alignment, with room

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 411: "Length Required", 413: "Content Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}


class ProtocolError(ValueError):
    """A request that breaks the wire format (bad header, body, dtype, shape, sizes or types)."""


class RewardSecretError(RewardUnavailableError):
    """The token is missing, too short, not printable ASCII, or its key file is unsafe; the message is one line."""


class RemoteAddressError(RewardUnavailableError, ValueError):
    """A malformed reward-server address, a bad port, or a non-loopback host without ``allow_remote``."""


class RewardServerError(RewardUnavailableError):
    """The reward server could not be reached, did not answer in time, dropped the connection or reported
    an error; the message is one line (the CLI prints it as ``error: ...`` and exits with code 2).
    ``status`` is the HTTP status of an error answer (None when there was no answer)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Dropped(RewardServerError):
    """The connection failed or was dropped before a whole answer came (the client tries once more)."""


# -- token -------------------------------------------------------------------------------------------
def secret_path() -> Path:
    """Where the per-user key file lives: ``cache_root() / "reward-server.key"``."""
    return cache_root() / KEY_FILE_NAME


def secret_source(token_file: str | os.PathLike[str] | None = None) -> str:
    """A short description of where :func:`reward_secret` takes the token from (for messages)."""
    if token_file is not None:
        return f"token file {token_file}"
    return f"${SECRET_ENV}" if os.environ.get(SECRET_ENV) else f"key file {secret_path()}"


def _check_token(token: bytes, where: str) -> bytes:
    if len(token) < MIN_SECRET_CHARS:
        raise RewardSecretError(f"{where} holds {len(token)} characters; use at least {MIN_SECRET_CHARS} (e.g. "
                                f"`python -c 'import secrets; print(secrets.token_hex(32))'`)")
    if not all(0x21 <= b <= 0x7E for b in token):  # it travels in an HTTP header
        raise RewardSecretError(f"{where} must be printable ASCII without spaces (it is sent as a bearer token)")
    return token


def reward_secret(token_file: str | os.PathLike[str] | None = None) -> bytes:
    """The bearer token shared by the reward server and its clients.

    ``token_file`` when given (a 0600 file of this user), else ``$OPGRPO_REWARD_SECRET`` when set, else
    the content of the key file (:func:`secret_path`), which is created with 32 random bytes (hex) and
    mode 0600 on first use. A key file that is not a regular file owned by this user, or that others can
    read or write, is refused. The token is at least 16 printable ASCII characters without spaces.

    Raises:
        RewardSecretError: one line saying what is wrong and how to fix it.
    """
    if token_file is not None:
        try:
            return _read_key_file(Path(token_file))
        except FileNotFoundError:
            raise RewardSecretError(f"the token file {token_file} does not exist") from None
    env = os.environ.get(SECRET_ENV)
    if env:
        return _check_token(env.encode("utf-8"), f"${SECRET_ENV}")
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
    return _check_token(data, f"the reward-server key file {path}")


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


def server_proof(token: bytes, challenge: str) -> str:
    """What ``GET /health?challenge=HEX`` answers: HMAC-SHA256(token, "opgrpo-reward/2 server " + HEX), hex."""
    return hmac.new(token, f"{PROTOCOL} server {challenge}".encode("ascii"), hashlib.sha256).hexdigest()


# -- addresses ---------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_loopback(host: str) -> None:
    """Raise :class:`RemoteAddressError` (a ValueError) unless ``host`` is a loopback address or ``localhost``."""
    if not is_loopback(host):
        raise RemoteAddressError(f"the reward server is reached on loopback only (127.0.0.1, localhost, ::1), not "
                                 f"'{host}'; pass allow_remote=True (server: --allow-remote) to use another host")


def loopback_addresses(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    """(family, sockaddr) of ``host:port``, IPv4 first; :class:`RemoteAddressError` unless all are loopback."""
    check_loopback(host)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RemoteAddressError(f"cannot resolve '{host}' ({getattr(exc, 'strerror', None) or exc})") from None
    out: list[tuple[int, tuple[Any, ...]]] = []
    for family, _, _, _, sockaddr in infos:
        if not ipaddress.ip_address(sockaddr[0]).is_loopback:
            raise RemoteAddressError(f"'{host}' resolves to {sockaddr[0]}, which is not a loopback address")
        if (family, sockaddr) not in out:
            out.append((family, sockaddr))
    out.sort(key=lambda item: item[0] != socket.AF_INET)
    if not out:
        raise RemoteAddressError(f"'{host}' resolves to no address")
    return out


def check_port(port: Any, what: str = "port") -> int:
    """``port`` as an int in [0, 65535]; :class:`RemoteAddressError` otherwise."""
    if type(port) is not int or not 0 <= port <= 65535:
        raise RemoteAddressError(f"{what} must be an integer between 0 and 65535, got {str(port)[:40]}")
    return port


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` or ``::1:port`` for IPv6; an empty host is 127.0.0.1) -> (host, port)."""
    return parse_url(address)[1:]


def parse_url(address: str) -> tuple[str, str, int]:
    """``[http://|https://]host:port[/]`` -> (scheme, host, port); :class:`RemoteAddressError` when malformed."""
    if not isinstance(address, str) or not address or any(c.isspace() for c in address):
        raise RemoteAddressError(f"expected host:port or http(s)://host:port, got {str(address)[:80]!r}")
    scheme, rest = "http", address
    if "://" in address:
        scheme, rest = address.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise RemoteAddressError(f"the reward server speaks http or https, not '{scheme}' ('{address}')")
        rest = rest.rstrip("/")
        if "/" in rest or "?" in rest or "@" in rest:
            raise RemoteAddressError(f"expected http(s)://host:port with no path, got '{address}'")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not port.isascii() or len(port) > 6:
        raise RemoteAddressError(f"expected host:port (e.g. 127.0.0.1:{DEFAULT_PORT}), got '{address}'")
    number = int(port)
    if not 1 <= number <= 65535:
        raise RemoteAddressError(f"port {number} is out of range (1-65535) in '{address}'")
    if host.startswith("[") != host.endswith("]"):
        raise RemoteAddressError(f"unbalanced brackets in '{address}'")
    return scheme, (host.strip("[]") or "127.0.0.1"), number


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- values ------------------------------------------------------------------------------------------
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


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"non-standard JSON constant {name}")


def decode_json(data: bytes | str, what: str) -> Any:
    """Strict JSON (no NaN/Infinity); :class:`ProtocolError` naming ``what`` otherwise."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, parse_constant=_reject_constant)
    except ProtocolError as exc:
        raise ProtocolError(f"{what}: {exc}") from None
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not JSON ({exc.msg} at char {exc.pos})") from None
    except RecursionError:
        raise ProtocolError(f"{what} is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ProtocolError(f"{what}: {' '.join(str(exc).split())[:200]}") from None


def encode_json(obj: Any) -> bytes:
    """Strict, compact JSON bytes (ValueError for NaN/inf, TypeError for non-JSON values)."""
    return json.dumps(obj, allow_nan=False, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# -- the body: safetensors ---------------------------------------------------------------------------
def encode_batch(images: np.ndarray | torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]] | None = None) -> bytes:
    """A ``POST /score`` body: a safetensors file with ``images`` (uint8 kept, anything else as float32) and
    ``prompts`` / ``metadata`` as JSON strings in its ``__metadata__``."""
    from safetensors.numpy import save

    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        images = (images if images.dtype == torch.uint8 else images.to(torch.float32)).numpy()
    array = np.ascontiguousarray(images, dtype=np.uint8 if images.dtype == np.uint8 else np.float32)
    meta = {"prompts": encode_json(list(prompts)).decode("ascii")}
    if metadata is not None:
        meta["metadata"] = encode_json(list(metadata)).decode("ascii")
    return save({"images": array}, metadata=meta)


def decode_batch(body: bytes) -> tuple[np.ndarray, list[str], list[dict[str, Any]] | None]:
    """Validate and decode :func:`encode_batch`'s format; :class:`ProtocolError` names what is wrong.

    Checks: an 8-byte little-endian header length within the body; a strict-JSON header object with
    exactly one tensor, ``images``, of dtype U8 or F32, a shape of 4 or 5 integers in [1, 2^20] and data
    offsets ``[0, nbytes]`` that end exactly at the end of the body; ``prompts`` a JSON list of B strings
    (each at most 100,000 characters); ``metadata`` absent, ``null`` or a JSON list of B objects.
    Returns a writable native-endian array.
    """
    if len(body) < 8:
        raise ProtocolError("the body is not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", body[:8])
    if n > min(len(body) - 8, MAX_SAFETENSORS_HEADER):
        raise ProtocolError("the body is not a safetensors file (its header length runs past the body)")
    header = decode_json(body[8 : 8 + n], "the safetensors header")
    if not isinstance(header, dict):
        raise ProtocolError("the safetensors header must be a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ProtocolError("__metadata__ must map names to strings")
    if set(header) != {"images"}:
        raise ProtocolError(f"the body must hold exactly one tensor, 'images', got {sorted(header)[:5]}")
    spec = header["images"]
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise ProtocolError("'images' must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in DTYPES:
        raise ProtocolError(f"'images' dtype must be U8 or F32, got {str(dtype)[:40]!r}")
    if (not isinstance(shape, list) or len(shape) not in (4, 5)
            or not all(type(d) is int and 1 <= d <= MAX_DIM for d in shape)):
        raise ProtocolError(f"'images' shape must be a list of 4 or 5 integers in [1, {MAX_DIM}], got {str(shape)[:80]}")
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    data = memoryview(body)[8 + n :]
    if offsets != [0, nbytes] or len(data) != nbytes:
        raise ProtocolError(f"'images' of shape {shape} {dtype} needs {nbytes} bytes at data_offsets [0, {nbytes}]; "
                            f"the body has {len(data)} after the header and says {str(offsets)[:60]}")
    batch = shape[0]
    if "prompts" not in meta:
        raise ProtocolError("__metadata__ needs 'prompts' (a JSON list of strings)")
    prompts = decode_json(meta["prompts"], "'prompts'")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ProtocolError("'prompts' must be a JSON list of strings")
    if len(prompts) != batch:
        raise ProtocolError(f"{batch} images but {len(prompts)} prompts")
    if any(len(p) > MAX_PROMPT_CHARS for p in prompts):
        raise ProtocolError(f"a prompt is longer than {MAX_PROMPT_CHARS} characters")
    unknown = set(meta) - {"prompts", "metadata"}
    if unknown:
        raise ProtocolError(f"unknown __metadata__ keys: {', '.join(sorted(unknown))[:200]}")
    metadata = decode_json(meta["metadata"], "'metadata'") if "metadata" in meta else None
    if metadata is not None:
        if not isinstance(metadata, list) or not all(isinstance(m, dict) for m in metadata):
            raise ProtocolError("'metadata' must be null or a JSON list of objects")
        if len(metadata) != batch:
            raise ProtocolError(f"{batch} images but {len(metadata)} metadata objects")
    array = np.frombuffer(bytearray(data), dtype=DTYPES[dtype]).reshape(shape)
    return array.astype(DTYPES[dtype].newbyteorder("="), copy=False), prompts, metadata


# -- scoring (runs on the worker pool) -------------------------------------------------------------
def describe(reward: Any, max_body_bytes: int) -> dict[str, Any]:
    """The ``GET /describe`` answer."""
    low, high = getattr(reward, "range", (-math.inf, math.inf))
    return {"protocol": PROTOCOL, "name": str(getattr(reward, "name", "")),
            "range": [float_to_json(low), float_to_json(high)],
            "higher_is_better": bool(getattr(reward, "higher_is_better", True)),
            "modality": str(getattr(reward, "modality", "image")), "max_body_bytes": max_body_bytes}


def score_body(reward: Any, body: bytes, lock: threading.Lock) -> tuple[int, dict[str, Any]]:
    """(status, JSON answer) for a ``POST /score`` body: 200, 400 (malformed body) or 500 (the reward raised)."""
    try:
        array, prompts, metadata = decode_batch(body)
    except ProtocolError as exc:
        return 400, {"error": str(exc)}
    images = torch.from_numpy(array)
    if images.dtype == torch.float32:
        images = torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)
    try:
        with lock:
            out = reward(images, prompts, metadata)
        scores = torch.as_tensor(out.scores).detach().to("cpu", torch.float32).reshape(-1)
        answer = {
            "scores": [float_to_json(x) for x in scores.tolist()],
            "components": {str(k): [float_to_json(x) for x in torch.as_tensor(v).detach().to("cpu", torch.float32)
                                    .reshape(-1).tolist()] for k, v in out.components.items()},
            "info": to_json_value(out.info),
        }
        encode_json(answer)  # fails here, on the worker, rather than while answering
    except Exception as exc:  # the reward failed: report to the client, keep serving
        return 500, {"error": f"{type(exc).__name__}: {exc}"}
    return 200, answer


# -- server ------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    since: float
    task: asyncio.Task[Any] | None = None
    trusted: bool = False  # presented the token for the request in progress: never evicted


class _HttpError(Exception):
    def __init__(self, status: int, message: str, unread: int = 0, close: bool = True,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        # a refused body left unread cannot be skipped reliably: such a connection always closes
        self.status, self.unread, self.close, self.headers = status, unread, close or unread > 0, headers or {}


@dataclass
class ServerConfig:
    """Limits and options of a :class:`RewardServer` (the command line's flags)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    read_timeout: float = DEFAULT_READ_TIMEOUT_S
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    workers: int = WORKERS
    allow_remote: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None


class RewardServer:
    """Serves one reward over HTTP (see the module docstring) on an asyncio loop in a background thread.

    Example::

        with RewardServer(reward, port=0) as server:
            RemoteReward(address=server.address)(images, prompts)
    """

    def __init__(self, reward: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 token: bytes | None = None, config: ServerConfig | None = None, **limits: Any):
        """Check the address and the token (nothing is bound yet).

        Args:
            reward: any object with the reward protocol.
            host, port: address to bind (port 0 picks a free one); loopback only unless ``allow_remote``.
            token: the bearer token (default :func:`reward_secret`).
            config: limits; keyword arguments (``max_body_bytes=...``) override its fields.

        Raises:
            RemoteAddressError: a bad port, or a non-loopback host without ``allow_remote``.
            RewardSecretError: no usable token.
        """
        self.config = ServerConfig(**{**(config.__dict__ if config else {}), **limits})
        check_port(port)
        # a loopback name is bound at one address (IPv4 first): "localhost" on port 0 would otherwise get
        # a different free port for each of its addresses
        self._bind_host = host if self.config.allow_remote else loopback_addresses(host, port)[0][1][0]
        self.reward, self.host, self.requested_port = reward, host, port
        self.token = _check_token(token, "the token") if token is not None else reward_secret()
        self.tls = self._tls_context()
        self.port = port
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.config.workers), thread_name_prefix="reward-score")
        self._conns: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._inflight: asyncio.Semaphore | None = None

    def _tls_context(self) -> ssl.SSLContext | None:
        cert, key = self.config.tls_cert, self.config.tls_key
        if cert is None and key is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            if cert is None:
                raise ValueError("--tls-key needs --tls-cert")
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise RemoteAddressError(f"cannot load the TLS certificate/key ({cert}, {key}): "
                                     f"{getattr(exc, 'strerror', None) or exc}") from None
        return context

    @property
    def scheme(self) -> str:
        """``https`` when serving TLS, else ``http``."""
        return "https" if self.tls else "http"

    @property
    def address(self) -> str:
        """The URL clients use, e.g. ``http://127.0.0.1:18085`` (valid once started)."""
        return f"{self.scheme}://{_show(self.host, self.port)}"

    @property
    def plaintext_remote(self) -> bool:
        """Whether the token and images would cross a network in clear (non-loopback, no TLS)."""
        return not is_loopback(self.host) and self.tls is None

    # -- lifecycle
    @staticmethod
    def _on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Network errors of single clients (a failed TLS handshake, a reset) are theirs: no log, no traceback."""
        exc = context.get("exception")
        if isinstance(exc, (OSError, ssl.SSLError, asyncio.IncompleteReadError)):
            return
        print(f"reward server: {' '.join(str(context.get('message', '')).split())}: {exc!r}", file=sys.stderr,
              flush=True)

    async def _start(self) -> None:
        asyncio.get_running_loop().set_exception_handler(self._on_loop_error)
        self._stopped = asyncio.Event()
        self._inflight = asyncio.Semaphore(max(1, self.config.workers))
        self._server = await asyncio.start_server(
            self._on_connection, self._bind_host, self.requested_port, limit=MAX_HEAD_BYTES, backlog=128,
            ssl=self.tls, ssl_handshake_timeout=self.config.read_timeout if self.tls else None,
            reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _run(self, ready: threading.Event | None = None) -> None:
        await self._start()
        if ready is not None:
            ready.set()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [c.task for c in self._conns if c.task is not None]
        for conn in list(self._conns):
            conn.writer.transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 5)
            except (TimeoutError, asyncio.CancelledError):
                pass

    def start(self) -> "RewardServer":
        """Listen and serve on a background thread; returns once listening (``self.port`` is then bound).

        Raises:
            OSError: the address cannot be bound.
        """
        ready, failure = threading.Event(), []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._run(ready))
            except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="reward-server")
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def serve_forever(self, on_listening: Any = None) -> None:
        """Listen and serve on this thread until :meth:`stop` or Ctrl-C (``on_listening()`` once bound)."""

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self._start()
            if on_listening is not None:
                on_listening()
            assert self._stopped is not None
            try:
                await self._stopped.wait()
            finally:
                await self._shutdown()

        asyncio.run(main())

    def stop(self) -> None:
        """Stop serving (idempotent); open connections are closed."""
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopped.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "RewardServer":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- connections
    def _admit(self, conn: _Connection) -> bool:
        """Room for one more connection: evicts the longest-waiting one that has not shown a token, if needed."""
        if len(self._conns) >= self.config.max_connections:
            untrusted = [c for c in self._conns if not c.trusted]
            if not untrusted:
                return False
            victim = min(untrusted, key=lambda c: c.since)
            victim.writer.transport.abort()
            if victim.task is not None:
                victim.task.cancel()
            self._conns.discard(victim)
        self._conns.add(conn)
        return True

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        conn = _Connection(writer=writer, since=loop.time(), task=asyncio.current_task())
        try:
            if not self._admit(conn):
                await self._respond(writer, 503, {"error": f"server busy: {self.config.max_connections} requests in "
                                                  f"progress; try again"}, close=True)
                return
            first = True
            while True:
                conn.trusted, conn.since = False, loop.time()
                keep = await self._one_request(reader, writer, conn, first)
                first = False
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, OSError, ssl.SSLError):
            return
        except asyncio.CancelledError:  # evicted or shutting down
            return
        except Exception as exc:  # a bug must cost one client, never the server  # pragma: no cover
            try:
                await self._respond(writer, 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}, close=True)
            except Exception:  # noqa: BLE001
                pass
        finally:
            self._conns.discard(conn)
            writer.close()

    async def _read_head(self, reader: asyncio.StreamReader, first: bool) -> bytes | None:
        """The request head up to the blank line; None when the client went away or stayed idle."""
        wait = self.config.read_timeout if first else self.config.idle_timeout
        try:
            start = await asyncio.wait_for(reader.readexactly(1), wait)
        except (asyncio.IncompleteReadError, TimeoutError):
            return None
        try:
            rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.config.read_timeout)
        except TimeoutError:
            raise _HttpError(408, f"the request head did not arrive within {self.config.read_timeout:g} s") from None
        except asyncio.LimitOverrunError:
            raise _HttpError(431, f"the request head is longer than {MAX_HEAD_BYTES} bytes") from None
        except asyncio.IncompleteReadError:
            return None
        return start + rest

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection,
                           first: bool) -> bool:
        """Read, answer one request; whether the connection stays open."""
        try:
            head = await self._read_head(reader, first)
            if head is None:
                return False
            method, path, query, headers, keep = self._parse_head(head)
            status, answer, keep = await self._route(reader, writer, conn, method, path, query, headers, keep)
        except _HttpError as err:
            extra = dict(err.headers)
            await self._respond(writer, err.status, {"error": " ".join(str(err).split())[:2000]},
                                close=err.close, headers=extra)
            if err.unread:
                await self._drain(reader, err.unread)
            return not err.close
        await self._respond(writer, status, answer, close=not keep)
        return keep

    def _parse_head(self, head: bytes) -> tuple[str, str, dict[str, list[str]], dict[str, str], bool]:
        lines = head.lstrip(b"\r\n")[:-4].split(b"\r\n")
        if len(lines) > MAX_HEADERS + 1:
            raise _HttpError(431, f"more than {MAX_HEADERS} header lines")
        parts = lines[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[0].isalpha():
            raise _HttpError(400, "malformed request line (expected METHOD /path HTTP/1.1)")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _HttpError(505, f"HTTP/1.0 or HTTP/1.1 expected, got {version[:20]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name.strip() != name or b" " in name or b"\t" in name:
                raise _HttpError(400, "malformed header line")
            key, text = name.decode("latin-1").lower(), value.strip().decode("latin-1")
            if key in headers and key in ("content-length", "authorization", "host", "transfer-encoding"):
                raise _HttpError(400, f"duplicate {key} header")
            headers[key] = text
        connection = headers.get("connection", "").lower()
        keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        parsed = urlsplit(target)
        try:
            query = parse_qs(parsed.query, max_num_fields=8)
        except ValueError:
            raise _HttpError(400, "too many query fields") from None
        return method, parsed.path, query, headers, keep

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("latin-1"), self.token)

    async def _route(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection,
                     method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], keep: bool
                     ) -> tuple[int, dict[str, Any], bool]:
        allowed = {"/health": "GET", "/describe": "GET", "/score": "POST"}
        if path not in allowed:
            raise _HttpError(404, f"no such endpoint '{path[:80]}' (GET /health, GET /describe, POST /score)",
                             unread=self._length(headers, allow_missing=True), close=not keep)
        if method != allowed[path]:
            raise _HttpError(405, f"{path} takes {allowed[path]}, not {method[:10]}", headers={"Allow": allowed[path]},
                             unread=self._length(headers, allow_missing=True), close=not keep)
        if "transfer-encoding" in headers:
            raise _HttpError(501, "chunked bodies are not supported; send a Content-Length")
        if path == "/health":
            answer: dict[str, Any] = {"status": "ok", "protocol": PROTOCOL}
            challenge = (query.get("challenge") or [""])[0]
            if challenge:
                if not (16 <= len(challenge) <= 128 and all(c in "0123456789abcdef" for c in challenge)):
                    raise _HttpError(400, "challenge must be 16-128 lowercase hex digits", close=not keep)
                answer["proof"] = server_proof(self.token, challenge)
            return 200, answer, keep and not self._length(headers, allow_missing=True)
        # a client that asked for 100-continue has not sent the body it would have sent: nothing to drain
        waiting = headers.get("expect", "").lower() == "100-continue"
        if not self._authorized(headers):
            raise _HttpError(401, "missing or wrong bearer token (send 'Authorization: Bearer TOKEN'; the server "
                             f"uses ${SECRET_ENV} or its key file)", headers={"WWW-Authenticate": 'Bearer realm="reward"'},
                             unread=0 if waiting else self._length(headers, allow_missing=True), close=waiting)
        conn.trusted = True
        if path == "/describe":
            return 200, describe(self.reward, self.config.max_body_bytes), keep
        length = self._length(headers)
        if length > self.config.max_body_bytes:
            raise _HttpError(413, f"a body of {length} bytes exceeds the server's limit of {self.config.max_body_bytes} "
                             f"bytes; send smaller batches (GET /describe gives max_body_bytes)", unread=0 if waiting else length)
        assert self._inflight is not None
        async with self._inflight:
            if waiting:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await asyncio.wait_for(writer.drain(), self.config.read_timeout)
            body = await self._read_body(reader, length)
            loop = asyncio.get_running_loop()
            status, answer = await loop.run_in_executor(self._pool, score_body, self.reward, body, self._lock)
        return status, answer, keep

    @staticmethod
    def _length(headers: dict[str, str], allow_missing: bool = False) -> int:
        value = headers.get("content-length")
        if value is None:
            if allow_missing:
                return 0
            raise _HttpError(411, "POST /score needs a Content-Length header")
        if not value.isdigit() or not value.isascii() or len(value) > 15:
            raise _HttpError(400, f"bad Content-Length {value[:20]!r}")
        return int(value)

    async def _read_body(self, reader: asyncio.StreamReader, length: int) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.read_timeout + length / MIN_BODY_RATE
        buf = bytearray()
        while len(buf) < length:
            remaining = min(deadline - loop.time(), self.config.read_timeout)
            if remaining <= 0:
                raise _HttpError(408, f"the body did not arrive in time ({len(buf)} of {length} bytes)")
            try:
                chunk = await asyncio.wait_for(reader.read(min(length - len(buf), 1 << 20)), remaining)
            except TimeoutError:
                raise _HttpError(408, f"no body bytes for {remaining:.3g} s ({len(buf)} of {length} bytes)") from None
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(buf), length)
            buf += chunk
        return bytes(buf)

    async def _drain(self, reader: asyncio.StreamReader, unread: int, linger_s: float = 2.0) -> None:
        """Discard (part of) a body we refused, so that closing does not reset the connection before the
        client has read the answer."""
        loop = asyncio.get_running_loop()
        deadline, left = loop.time() + linger_s, min(unread, 4 * self.config.max_body_bytes, 1 << 28)
        try:
            while left > 0 and loop.time() < deadline:
                chunk = await asyncio.wait_for(reader.read(min(left, 1 << 20)), deadline - loop.time())
                if not chunk:
                    return
                left -= len(chunk)
        except (TimeoutError, ConnectionError, OSError):
            pass

    async def _respond(self, writer: asyncio.StreamWriter, status: int, answer: dict[str, Any], close: bool,
                       headers: dict[str, str] | None = None) -> None:
        try:
            body = encode_json(answer)
        except (TypeError, ValueError) as exc:
            status, body = 500, encode_json({"error": f"cannot encode the reward's answer: {exc}"})
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "Content-Type: application/json",
                 f"Content-Length: {len(body)}", f"Connection: {'close' if close else 'keep-alive'}",
                 f"X-Reward-Protocol: {PROTOCOL}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await asyncio.wait_for(writer.drain(), self.config.read_timeout)


def serve(reward: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT, ready: threading.Event | None = None,
          *, token: bytes | None = None, **limits: Any) -> None:
    """Serve ``reward`` on ``host:port`` on this thread until interrupted (``ready.port`` and ``ready.set()``
    once listening). Keyword arguments are :class:`ServerConfig` fields.

    Raises:
        RemoteAddressError: a bad port, or a non-loopback host without ``allow_remote``.
        OSError: the address cannot be bound.
        RewardSecretError: no usable token.
    """
    server = RewardServer(reward, host, port, token=token, **limits)

    def listening() -> None:
        if ready is not None:
            ready.port = server.port  # type: ignore[attr-defined]
            ready.server = server  # type: ignore[attr-defined]
            ready.set()

    server.serve_forever(listening)


# -- client ------------------------------------------------------------------------------------------
class RemoteReward(BaseReward):
    """A reward scored by a reward server (see ``python -m opgrpo_bench.rewards.server``), over HTTP."""

    name = "remote"
    modality = "any"
    needs = "a reward server on 127.0.0.1 (python -m opgrpo_bench.rewards.server --reward NAME)"

    def __init__(self, address: str = f"127.0.0.1:{DEFAULT_PORT}", timeout: float = DEFAULT_CLIENT_TIMEOUT_S,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S, allow_remote: bool = False,
                 token_file: str | None = None, ca_file: str | None = None):
        """Check the address, that the server knows the token (before sending it), and ask what it scores.

        Args:
            address: ``host:port`` or ``http(s)://host:port``; the host must be a loopback address unless
                ``allow_remote`` (``[::1]:port`` for IPv6).
            timeout: seconds one request may take in all, answer included (a large batch may take long).
            connect_timeout: seconds to connect and to get the server's first answers.
            allow_remote: allow a non-loopback host (use https there: the token travels with every request).
            token_file: read the token from this 0600 file instead of ``$OPGRPO_REWARD_SECRET`` / the key file.
            ca_file: CA bundle to check an https server's certificate with (default: the system's).

        Raises:
            RemoteAddressError: the address is malformed, the port bad, or the host not loopback (a ValueError).
            RewardServerError: no server there, not a reward server, or it does not know the token.
        """
        for value, what in ((timeout, "timeout"), (connect_timeout, "connect_timeout")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e7:
                raise RemoteAddressError(f"reward 'remote': {what} must be a positive number of seconds, got {value!r}")
        self.scheme, self.host, self.port = parse_url(address)
        if self.scheme == "https" or allow_remote:
            self._connect_host = self.host
            if not allow_remote:
                loopback_addresses(self.host, self.port)
        else:
            _, sockaddr = loopback_addresses(self.host, self.port)[0]
            self._connect_host = sockaddr[0]  # connect where we checked, not where a second lookup says
        self.address = f"{self.scheme}://{_show(self.host, self.port)}"
        self.timeout, self.connect_timeout = float(timeout), float(connect_timeout)
        self.tls = ssl.create_default_context(cafile=ca_file) if self.scheme == "https" else None
        self._token = reward_secret(token_file)
        self._token_source = secret_source(token_file)
        self._lock = threading.Lock()
        self._verify_server()
        desc = self._request("GET", "/describe", timeout=self.connect_timeout)
        try:
            self.remote_name = str(desc["name"])
            low, high = (float_from_json(x, "range") for x in desc["range"])
            self.range = (low, high)  # type: ignore[misc]
            self.higher_is_better = bool(desc["higher_is_better"])  # type: ignore[misc]
            self.max_body_bytes = int(desc["max_body_bytes"])
            if self.max_body_bytes < MIN_BODY_BYTES:
                raise ValueError(f"max_body_bytes {self.max_body_bytes} is below {MIN_BODY_BYTES}")
        except (KeyError, TypeError, ValueError) as exc:
            raise RewardServerError(f"reward 'remote': malformed describe answer from {self.address} "
                                    f"({' '.join(str(exc).split())[:200]})") from None

    def _start_hint(self) -> str:
        return f"start one with `python -m opgrpo_bench.rewards.server --reward NAME --port {self.port}`"

    def _verify_server(self) -> None:
        challenge = secrets.token_hex(32)
        try:
            answer = self._request("GET", f"/health?challenge={challenge}", timeout=self.connect_timeout, auth=False)
        except RewardServerError as err:
            if err.status is None:
                raise
            answer = {}  # an HTTP server, but not ours
        proof = answer.get("proof")
        if answer.get("protocol") != PROTOCOL or not isinstance(proof, str):
            raise RewardServerError(f"reward 'remote': the server at {self.address} does not speak {PROTOCOL}; is it "
                                    f"an opgrpo-bench reward server of this version?")
        if not hmac.compare_digest(proof.encode("ascii", "replace"), server_proof(self._token, challenge).encode()):
            raise RewardServerError(
                f"reward 'remote': the server at {self.address} does not know this client's token "
                f"({self._token_source}); not sending it. Run the server and the client as the same user, or with the "
                f"same ${SECRET_ENV}")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection(self._connect_host, self.port, timeout=timeout, context=self.tls)
        return http.client.HTTPConnection(self._connect_host, self.port, timeout=timeout)

    def _request(self, method: str, path: str, body: bytes | None = None, timeout: float | None = None,
                 auth: bool = True) -> dict[str, Any]:
        """One request on a fresh connection, bounded by ``timeout`` in all; the JSON answer of a 200.

        Raises:
            RewardServerError: one line for every failure (connection, timeout, HTTP error, malformed answer).
        """
        limit = self.timeout if timeout is None else timeout
        what = f"reward 'remote': {method} {path.split('?')[0]} to {self.address}"
        headers = {"Host": _show(self.host, self.port), "Accept": "application/json"}
        if auth:
            headers["Authorization"] = "Bearer " + self._token.decode("ascii")
        if body is not None:
            headers["Content-Type"] = "application/vnd.safetensors"
        for attempt in range(2):
            try:
                status, raw = self._exchange(method, path, body, headers, limit, what)
                break
            except _Dropped:
                # the server closes connections that wait (idle, or crowded out by clients without a token);
                # every request here is idempotent, so one fresh try is safe
                if attempt:
                    raise
        try:
            answer = decode_json(raw, "the answer") if raw else {}
        except ProtocolError as exc:
            answer = {"error": f"malformed answer ({exc})"} if status == 200 else {"error": raw[:200].decode("latin-1")}
        if not isinstance(answer, dict):
            answer = {"error": "the answer is not a JSON object"} if status == 200 else {}
        if status != 200 or "error" in answer:
            message = " ".join(str(answer.get("error") or raw[:200].decode("latin-1")).split())[:2000]
            hint = ""
            if status == 401:
                hint = (f"; run the server and the client as the same user, or with the same ${SECRET_ENV} (this "
                        f"client uses {self._token_source})")
            raise RewardServerError(f"{what}: HTTP {status}: {message}{hint}", status=status)
        return answer

    def _exchange(self, method: str, path: str, body: bytes | None, headers: dict[str, str], limit: float,
                  what: str) -> tuple[int, bytes]:
        """(status, body) of one request on a fresh connection, all of it within ``limit`` seconds."""
        conn = self._connection(limit)
        expired = threading.Event()

        def expire() -> None:  # bounds the whole exchange, not only each read: a server that trickles is cut off
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(limit, expire)
        timer.daemon = True
        with self._lock:
            timer.start()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                raw = response.read(1 << 28)
                status = response.status
            except ConnectionRefusedError:
                raise RewardServerError(f"{what}: no reward server there (connection refused); "
                                        f"{self._start_hint()}") from None
            except (OSError, http.client.HTTPException) as exc:
                if expired.is_set() or isinstance(exc, TimeoutError):
                    raise RewardServerError(f"{what}: no answer within {limit:g} s (raise timeout= if batches are "
                                            f"slow)") from None
                raise _Dropped(f"{what}: the connection failed or was dropped ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:200]})") from None
            finally:
                timer.cancel()
                conn.close()
        if expired.is_set():  # a cut-off answer can still parse as a short, complete one
            raise RewardServerError(f"{what}: no answer within {limit:g} s (raise timeout= if batches are slow)")
        return status, raw

    def _chunk_size(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]] | None) -> int:
        itemsize = 1 if images.dtype == torch.uint8 else 4
        per_image = images[0].numel() * itemsize
        texts = [len(encode_json([p])) + (len(encode_json([m])) if metadata is not None else 0)
                 for p, m in zip(prompts, metadata or [None] * len(prompts))]
        per_sample = per_image + 2 * max(texts)  # JSON inside JSON: quotes may be escaped once more
        budget = self.max_body_bytes - SCORE_CHUNK_OVERHEAD
        if per_sample > budget:
            raise RewardServerError(f"reward 'remote': one sample needs about {per_sample} bytes, more than the "
                                    f"server's limit of {self.max_body_bytes}; restart the server with a larger "
                                    f"--max-body-mb")
        return max(1, budget // per_sample)

    def _score_chunk(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]] | None
                     ) -> RewardOutput:
        answer = self._request("POST", "/score", body=encode_batch(images, prompts, metadata))
        n = images.shape[0]
        try:
            scores = torch.tensor([float_from_json(x, "scores") for x in answer["scores"]], dtype=torch.float32)
            components_raw = answer.get("components", {})
            if not isinstance(components_raw, dict):
                raise ProtocolError("'components' must be an object")
            components = {str(k): torch.tensor([float_from_json(x, f"components.{k}") for x in v], dtype=torch.float32)
                          for k, v in components_raw.items()}
            info = answer.get("info", {})
            if not isinstance(info, dict):
                raise ProtocolError("'info' must be an object")
        except (KeyError, TypeError, ProtocolError) as exc:
            raise RewardServerError(f"reward 'remote': malformed answer from {self.address} ({exc})") from None
        if scores.shape != (n,) or any(v.shape != (n,) for v in components.values()):
            raise RewardServerError(f"reward 'remote': the answer from {self.address} does not match a batch of {n}")
        return RewardOutput(scores, components, info)

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        """Send the batch (split into bodies under the server's size limit) and collect the answer."""
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
        """Nothing to release: every request uses its own connection (kept for callers that close rewards)."""


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


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line and exit code 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        print(f"error: {' '.join(message.split())} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _positive(value: float, flag: str, low: float, high: float) -> float:
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{flag} must be a number between {low:g} and {high:g}, got {value:g}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m opgrpo_bench.rewards.server``: serve a registered reward; returns the exit code (2: user error)."""
    parser = _Parser(prog="python -m opgrpo_bench.rewards.server", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reward", required=True, help="registered reward name")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind: loopback (127.0.0.1, ::1, localhost) unless --allow-remote")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="reward kwarg key=value")
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / 2**20,
                        help="largest request body accepted, in MiB (clients split larger batches)")
    parser.add_argument("--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT_S,
                        help="seconds a client has to send a request head, and between body chunks")
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                        help="seconds an open connection may wait between requests")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                        help="connections at once (those without a token are closed first when full)")
    parser.add_argument("--workers", type=int, default=WORKERS, help="threads that decode and score requests")
    parser.add_argument("--token-file", default=None, help=f"read the token from this 0600 file (default: "
                        f"${SECRET_ENV}, else the key file {KEY_FILE_NAME} in the user cache folder)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host (use --tls-cert/--tls-key there)")
    parser.add_argument("--tls-cert", default=None, help="PEM certificate (chain) to serve https")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    args = parser.parse_args(argv)
    from opgrpo_bench.registry import REWARDS, UnknownNameError

    try:
        max_body = _positive(args.max_body_mb, "--max-body-mb", MIN_BODY_BYTES / 2**20, MAX_BODY_BYTES_LIMIT / 2**20)
        config = ServerConfig(
            max_body_bytes=int(max_body * 2**20),
            read_timeout=_positive(args.read_timeout, "--read-timeout", 0.01, 86400),
            idle_timeout=_positive(args.idle_timeout, "--idle-timeout", 0.01, 86400),
            max_connections=int(_positive(args.max_connections, "--max-connections", 1, 10_000)),
            workers=int(_positive(args.workers, "--workers", 1, 256)), allow_remote=args.allow_remote,
            tls_cert=args.tls_cert, tls_key=args.tls_key)
        token = reward_secret(args.token_file)  # fail early, with one line, before loading a model
        server = RewardServer(None, args.host, args.port, token=token, config=config)
        reward = REWARDS.get(args.reward)(**parse_sets(args.sets))
    except (UnknownNameError, RewardUnavailableError, ValueError, TypeError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    server.reward = reward
    source = secret_source(args.token_file)

    def listening() -> None:
        print(f"reward server '{getattr(reward, 'name', '')}' listening on {server.address}", flush=True)
        print(f"protocol {PROTOCOL}; token from {source}; body limit {config.max_body_bytes} bytes", flush=True)
        if server.plaintext_remote:
            print(f"warning: serving plain HTTP on {args.host}, beyond loopback: the bearer token and the images "
                  f"cross the network unencrypted; pass --tls-cert and --tls-key", file=sys.stderr, flush=True)

    try:
        server.serve_forever(listening)
    except OSError as exc:
        print(f"error: cannot listen on {_show(args.host, args.port)} ({exc.strerror or exc})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
