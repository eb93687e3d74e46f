"""Out-of-process reward scoring over loopback, for rewards whose dependencies conflict with training.

Start a server in the environment that has the reward's dependencies (it needs this package and the
reward's own packages, nothing of the training stack)::

    python -m opgrpo_bench.rewards.server --reward geneval --port 18085 --set path=/models/m2f

and score from the trainer with the ``remote`` reward::

    REWARDS.get("remote")(address="127.0.0.1:18085")

Transport: :mod:`multiprocessing.connection` with an HMAC handshake (key from ``$OPGRPO_REWARD_AUTHKEY``,
default ``opgrpo-bench``). The server binds loopback addresses only (127.0.0.0/8, ``localhost``,
``::1``) and refuses anything else. Messages carry numpy arrays, never tensors, so the two sides may run
different torch versions. One client is served at a time; batches are scored in arrival order.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import sys
import threading
from multiprocessing.connection import Client, Connection, Listener
from typing import Any, Sequence

import numpy as np
import torch

from opgrpo_bench.rewards.base import BaseReward, RewardOutput, RewardUnavailableError

DEFAULT_PORT = 18085


def authkey() -> bytes:
    return os.environ.get("OPGRPO_REWARD_AUTHKEY", "opgrpo-bench").encode()


def check_loopback(host: str) -> None:
    """Raise ValueError unless ``host`` is a loopback address."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"the reward server listens on loopback only (127.0.0.1, localhost, ::1), not '{host}'")


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def _jsonable(obj: Any) -> Any:
    """Reduce info to plain JSON values so that only builtins and numpy arrays cross the boundary."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def handle(reward: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Answer one request: ``describe`` or ``score``."""
    op = request.get("op")
    if op == "describe":
        return {
            "ok": True, "name": getattr(reward, "name", ""), "range": list(getattr(reward, "range", (-math.inf, math.inf))),
            "higher_is_better": bool(getattr(reward, "higher_is_better", True)),
            "modality": getattr(reward, "modality", "image"),
        }
    if op == "score":
        images = torch.from_numpy(np.asarray(request["images"], dtype=np.float32))
        out = reward(images, list(request["prompts"]), request.get("metadata"))
        return {
            "ok": True, "scores": out.scores.numpy(),
            "components": {k: v.numpy() for k, v in out.components.items()}, "info": _jsonable(out.info),
        }
    return {"ok": False, "error": f"unknown op '{op}'"}


def serve(reward: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT, ready: threading.Event | None = None,
          max_connections: int | None = None) -> None:
    """Serve ``reward`` on ``host:port`` (loopback only) until interrupted or ``max_connections`` were served."""
    check_loopback(host)
    with Listener((host, port), authkey=authkey()) as listener:
        if ready is not None:
            ready.port = listener.address[1]  # type: ignore[attr-defined]
            ready.set()
        print(f"reward server '{getattr(reward, 'name', '')}' listening on {host}:{listener.address[1]}", flush=True)
        served = 0
        while max_connections is None or served < max_connections:
            try:
                conn = listener.accept()
            except (OSError, EOFError):  # failed handshake: keep serving
                continue
            served += 1
            with conn:
                _serve_connection(reward, conn)


def _serve_connection(reward: Any, conn: Connection) -> None:
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request.get("op") == "close":
            return
        try:
            response = handle(reward, request)
        except Exception as exc:  # report to the client, keep serving
            response = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        conn.send(response)


class RemoteReward(BaseReward):
    """A reward scored by a reward server on this machine (see ``python -m opgrpo_bench.rewards.server``)."""

    name = "remote"
    modality = "any"
    needs = "a reward server on 127.0.0.1 (python -m opgrpo_bench.rewards.server --reward NAME)"

    def __init__(self, address: str = f"127.0.0.1:{DEFAULT_PORT}"):
        """Args: address: ``host:port`` of the server; the host must be a loopback address."""
        host, port = parse_address(address)
        check_loopback(host)
        try:
            self.conn = Client((host, port), authkey=authkey())
        except (OSError, EOFError) as exc:
            raise RewardUnavailableError(
                f"reward 'remote': no reward server at {host}:{port} ({type(exc).__name__}); start one with "
                f"`python -m opgrpo_bench.rewards.server --reward NAME --port {port}`"
            ) from None
        self._lock = threading.Lock()
        desc = self._request({"op": "describe"})
        self.remote_name = desc["name"]
        self.range = tuple(desc["range"])  # type: ignore[misc]
        self.higher_is_better = desc["higher_is_better"]  # type: ignore[misc]

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.conn.send(message)
            response = self.conn.recv()
        if not response.get("ok"):
            raise RuntimeError(f"reward server error: {response.get('error')}")
        return response

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        response = self._request({"op": "score", "images": images.numpy(), "prompts": prompts, "metadata": metadata})
        return RewardOutput(
            torch.from_numpy(response["scores"]),
            {k: torch.from_numpy(v) for k, v in response["components"].items()},
            dict(response["info"], server=self.remote_name),
        )

    def close(self) -> None:
        try:
            with self._lock:
                self.conn.send({"op": "close"})
        except OSError:
            pass
        self.conn.close()


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when possible (numbers, booleans, lists), else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got '{item}'")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward", required=True, help="registered reward name")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="reward kwarg key=value")
    args = parser.parse_args(argv)
    from opgrpo_bench.registry import REWARDS, UnknownNameError

    try:
        check_loopback(args.host)
        reward = REWARDS.get(args.reward)(**parse_sets(args.sets))
    except (UnknownNameError, RewardUnavailableError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        serve(reward, args.host, args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
