"""Shared test setup: offline, quiet, deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (the trainer's ``num_threads=1``), then restore the count: code
    that runs outside the trainer (samplers, rewards) then sees the same thread count as inside it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_LOOPBACK = ("localhost", "::1", "0:0:0:0:0:0:0:1")


def _is_local(host: object) -> bool:
    return not isinstance(host, str) or host in _LOOPBACK or host.startswith("127.")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list:
    """Refuse every name lookup and socket connection that leaves this machine, in this process; yields
    the list of the hosts that were tried. A test asserts it stays empty: the code failed without reaching
    for the network (rather than "failed within N seconds", which a loaded machine can break)."""
    import socket

    tried: list = []
    real_getaddrinfo, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, \
        socket.socket.connect_ex

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
        if not _is_local(host):
            tried.append(host)
            raise socket.gaierror(f"test: network refused ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else None  # AF_UNIX paths are local
        if not _is_local(host):
            tried.append(host)
            raise OSError(f"test: network refused ({host})")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        host = address[0] if isinstance(address, tuple) else None
        if not _is_local(host):
            tried.append(host)
            return 111  # ECONNREFUSED
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield tried
