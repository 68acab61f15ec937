"""The harness of the exercise checks: your copy of a chapter, served in-process.

``python -m tools.exercise check 3.1`` runs ``test_3_1_*.py`` with pytest, with the work
folder on the import path and the copy's package name (``03_pool_ex1``) in the
``EXERCISE_PACKAGE`` environment variable. The ``serve`` fixture starts the copy's
``Server`` on a thread, on a free loopback port, with a small test config (an in-memory
user store, cheap password hashing, short recycling); every server a test starts is shut
down after it. Every wait is bounded: a socket timeout or a deadline polled, never a bare
sleep, so a check that fails says so instead of hanging.
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

from common.config import Config

PACKAGE_ENV = "EXERCISE_PACKAGE"

CONFIG = """
ListenAddress = 127.0.0.1
ListenPortCount = 1
ListenPort0 = 0
worker_connections = 1024
Sock_RecyConnectionWaitTime = 0.2
ProcMsgRecvWorkThreadCount = 4
Sock_WaitTimeEnable = 0
Sock_MaxWaitTime = 20
Sock_TimeOutKick = 0
Sock_FloodAttackKickEnable = 0
UserDatabase = :memory:
PasswordHashIterations = 1000
"""


def check_config(**overrides: object) -> Config:
    return Config.from_text(CONFIG, "<check config>").with_overrides(**overrides)


class FakeClock:
    """A clock that moves only when the check sets ``now`` (chapters 3-6 take ``clock=``):
    timers and flood detection see the time the check says, however loaded the machine."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(what or f"condition not met within {timeout} s")
        time.sleep(0.01)


class ServerClosed(AssertionError):
    """The server closed the connection before the bytes a check waited for."""


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes; the socket's timeout bounds each read."""
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ServerClosed(f"the server closed the connection after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def closed_by_server(sock: socket.socket) -> bool:
    """Read until EOF (or a reset): True when the server closed the connection, False when
    the socket's timeout passed first."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


@pytest.fixture(scope="session")
def package() -> str:
    name = os.environ.get(PACKAGE_ENV)
    if not name:
        pytest.fail(
            f"{PACKAGE_ENV} is not set: run a check with python -m tools.exercise check N.M",
            pytrace=False,
        )
    return name


@pytest.fixture(scope="session")
def copy(package: str) -> ModuleType:
    """Your copy's ``server`` module."""
    return importlib.import_module(f"{package}.server")


class Running:
    """Your copy's ``Server`` running ``serve_forever`` on a thread."""

    def __init__(self, module: ModuleType, config: Config, **options: object) -> None:
        self.server = module.Server(config, **options)
        self.host, self.port = self.server.addresses[0]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def raw(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def stats(self) -> dict:
        return self.server.stats()

    def stop(self) -> None:
        """shutdown(), bounded: on a thread of its own, so a shutdown that hangs fails the
        check instead of hanging it."""
        stopper = threading.Thread(target=self.server.shutdown, name="stopper", daemon=True)
        stopper.start()
        stopper.join(20)
        assert not stopper.is_alive(), "shutdown() did not return within 20 s"
        self.thread.join(5)
        assert not self.thread.is_alive(), "serve_forever() did not return after shutdown()"


@pytest.fixture
def serve(copy: ModuleType) -> Iterator[Callable[..., Running]]:
    """``serve(**config_overrides)``; ``serve(clock=FakeClock(), ...)`` hands the server
    a clock only the check moves. Every server started is shut down after the test."""
    started: list[Running] = []

    def start(clock: Callable[[], float] | None = None, **overrides: object) -> Running:
        options = {} if clock is None else {"clock": clock}
        running = Running(copy, check_config(**overrides), **options)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
