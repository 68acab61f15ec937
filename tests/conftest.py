"""The harness every test uses: find the chapters, run a server in-process, stop it.

Chapters are found on disk and imported with ``importlib`` (``chapters.04_sendqueue`` is
not a valid ``import`` name). A test asks for a running server with the ``serve`` fixture
and states the features it needs with ``@pytest.mark.features(...)``; chapters without
them are skipped visibly (``-ra`` prints why).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import mmap
import os
import queue
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from common.config import Config
from tools.chapters import discover
from tools.client import Client

ROOT = Path(__file__).resolve().parent.parent
CHAPTER_DIR = ROOT / "chapters"
CHAPTERS = [chapter.name for chapter in discover(ROOT)]
# Where each target's Server lives. The asyncio baseline of the benchmarks (no chapter
# features) joins the shared protocol tests when it exists.
SERVER_MODULES = {name: f"chapters.{name}.server" for name in CHAPTERS}
SERVER_OPTIONS: dict[str, dict[str, str]] = {}
if (ROOT / "tools" / "asyncio_server.py").exists():
    # Both styles of the benchmarks' baseline: plain (one write per reply) and tuned.
    SERVER_MODULES["asyncio"] = "tools.asyncio_server"
    SERVER_MODULES["asyncio-tuned"] = "tools.asyncio_server"
    SERVER_OPTIONS["asyncio"] = {"style": "plain"}
    SERVER_OPTIONS["asyncio-tuned"] = {"style": "tuned"}
TARGETS = list(SERVER_MODULES)

# Test defaults: any free port on loopback, an in-memory user store with cheap hashing, and
# short intervals so nothing waits on the shipped config's 150-second recycle time.
TEST_CONFIG = """
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


def test_config(**overrides: object) -> Config:
    return Config.from_text(TEST_CONFIG, "<test config>").with_overrides(**overrides)


test_config.__test__ = False  # type: ignore[attr-defined]  # not a test, despite the name

# Chapter 7 runs its workers as processes: the shared suite runs it with two, and their
# user store must be a file (one per server, as :memory: is one per server elsewhere).
PROCESS_OVERRIDES = {"WorkerProcesses": 2}
_STORES = tempfile.mkdtemp(prefix="pynginx-tests-")
atexit.register(shutil.rmtree, _STORES, ignore_errors=True)


def chapter_config(chapter: str, **overrides: object) -> Config:
    """``test_config(**overrides)``, plus for a chapter with worker processes two workers
    and a fresh user store file (unless the test sets those keys itself)."""
    if chapter in CHAPTERS and "processes" in load_chapter(chapter).FEATURES:
        store = tempfile.mkstemp(suffix=".sqlite3", dir=_STORES)
        os.close(store[0])
        overrides = {**PROCESS_OVERRIDES, "UserDatabase": store[1], **overrides}
    return test_config(**overrides)


def load_chapter(name: str) -> ModuleType:
    """The chapter package (TITLE, FEATURES …); for the baseline, its server module."""
    if name in CHAPTERS:
        return importlib.import_module(f"chapters.{name}")
    return importlib.import_module(SERVER_MODULES[name])


class FakeClock:
    """A clock that moves only when the test sets ``now``: timers, recycling and flood
    detection take their time from it instead of sleeping. A number set as ``now`` lives in
    shared memory (an anonymous shared mapping), so the worker processes chapter 7 forks
    read the time the test sets; any other object (a counting float) stays in-process."""

    def __init__(self, now: float = 1000.0) -> None:
        self._shared = mmap.mmap(-1, 8)  # MAP_SHARED: a forked child sees every write
        self._other: object = None
        self.now = now

    @property
    def now(self) -> float:
        if self._other is not None:
            return self._other  # type: ignore[return-value]
        return struct.unpack("d", self._shared[:8])[0]

    @now.setter
    def now(self, value: float) -> None:
        if type(value) in (int, float):
            self._shared[:8] = struct.pack("d", value)
            self._other = None
        else:
            self._other = value

    def __call__(self) -> float:
        return self.now


def feature_modules(feature: str, *modules: str) -> Callable[..., tuple[ModuleType, ...]]:
    """A fixture over every chapter with ``feature``: the chapter's ``modules`` (e.g.
    ``"timers", "connection"``), for unit tests of one subsystem. Each test that uses it is
    marked ``unit``: ``-m unit -k 07_processes`` selects the unit tests of chapter 7 alone
    (what ``make mutate`` runs against chapter 7's modules, see tools/mutate.py)."""
    names = [name for name in CHAPTERS if feature in load_chapter(name).FEATURES]
    params = [pytest.param(name, marks=pytest.mark.unit) for name in names] or [
        pytest.param(None, marks=pytest.mark.skip(reason=f"no {feature}"))
    ]

    @pytest.fixture(params=params)
    def fixture(request: pytest.FixtureRequest) -> tuple[ModuleType, ...]:
        return tuple(importlib.import_module(f"chapters.{request.param}.{m}") for m in modules)

    return fixture


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds. Polling with a
    deadline (never a bare sleep) is how tests synchronise with server threads."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


class RunningServer:
    """A chapter's ``Server`` running ``serve_forever`` on a thread, on an ephemeral port."""

    def __init__(self, chapter: str, config: Config, **options: object) -> None:
        self.chapter = chapter
        module = importlib.import_module(SERVER_MODULES[chapter])
        self.server = module.Server(config, **SERVER_OPTIONS.get(chapter, {}), **options)
        self.host, self.port = self.server.addresses[0]
        self.thread = threading.Thread(
            target=self.server.serve_forever, name=f"serve-{chapter}", daemon=True
        )
        self.thread.start()

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.host, self.port, timeout=timeout)

    def raw(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def stats(self) -> dict:
        return self.server.stats()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "serve_forever did not return after shutdown()"


@pytest.fixture(params=TARGETS)
def chapter(request: pytest.FixtureRequest) -> str:
    name = request.param
    needed = set()
    for marker in request.node.iter_markers("features"):
        needed.update(marker.args)
    have = load_chapter(name).FEATURES
    # "in-process": the test reaches into the server object (its store, its loop), which
    # with worker processes lives in the children (chapter 7): skipped there, visibly.
    have = have if "processes" in have else have | {"in-process"}
    missing = needed - have
    if missing:
        pytest.skip(f"{name} lacks {', '.join(sorted(missing))}")
    return name


def in_process(chapters: list[str]) -> list[object]:
    """``chapters`` as parameters, the ones with worker processes skipped (as the
    ``in-process`` feature does for tests that take the ``chapter`` fixture)."""
    return [
        pytest.param(name, marks=pytest.mark.skip(reason=f"{name} lacks in-process"))
        if "processes" in load_chapter(name).FEATURES
        else name
        for name in chapters
    ]


@pytest.fixture
def serve(chapter: str) -> Iterator[Callable[..., RunningServer]]:
    """``serve(**config_overrides)`` starts the parametrised chapter; all are stopped after.
    ``serve(clock=FakeClock(), ...)`` hands the chapter a clock only the test moves."""
    started: list[RunningServer] = []

    def start(clock: Callable[[], float] | None = None, **overrides: object) -> RunningServer:
        options = {} if clock is None else {"clock": clock}
        running = RunningServer(chapter, chapter_config(chapter, **overrides), **options)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


# -- chapters in a subprocess, as a reader runs them --------------------------------------

START_TIMEOUT = 30  # a cold start imports rich; a loaded 2-core box can take seconds
STOP_TIMEOUT = 20
ENV = {
    **os.environ,
    "COLUMNS": "250",  # rich must not wrap the lines we look for
    "PYTHONIOENCODING": "utf-8",
    "PYTHONUNBUFFERED": "1",
    "NO_COLOR": "1",
    "PYTHONPATH": str(ROOT),
}
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


class Proc:
    """A subprocess whose stderr is read line by line on a thread, so the test can wait
    for a line with a deadline instead of blocking on a pipe."""

    def __init__(self, args: list[str]) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,  # a Ctrl-C on pytest does not reach it twice
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self._queue.put(line)
        self._queue.put(None)  # EOF

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern.pattern!r}; stderr: {self.text}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"exited ({self.popen.poll()}) before {pattern.pattern!r}; stderr: {self.text}"
                )
            self.lines.append(line)
            match = pattern.search(line)
            if match:
                return match

    def finish(self, timeout: float) -> int:
        """Wait for exit and for the whole of stderr; return the exit code."""
        code = self.popen.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=STOP_TIMEOUT)
        self._reader.join(timeout=STOP_TIMEOUT)  # EOF once the process is gone
        if self.popen.stderr is not None:
            self.popen.stderr.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Skips summarised by reason (one line each), not listed one per test: most are a
    chapter without the feature a test needs, which is expected and visible here."""
    reports = terminalreporter.stats.get("skipped", [])
    if not reports:
        return
    reasons: dict[str, int] = {}
    for report in reports:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else "skipped"
        reason = reason.removeprefix("Skipped: ")
        if " lacks " in reason:  # "02_epoll lacks sendqueue" -> by the missing feature
            reason = "a chapter lacks " + reason.partition(" lacks ")[2]
        reasons[reason] = reasons.get(reason, 0) + 1
    terminalreporter.section(f"{len(reports)} skipped, by reason", sep="-")
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{count:5d}  {reason}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "features(*names): chapter features the test needs")
    config.addinivalue_line("markers", "unit: a test of one chapter module on its own")


# -- socket helpers ----------------------------------------------------------------------


class ServerClosed(AssertionError):
    """``recv_exactly`` met EOF: the server closed the connection before the bytes came.
    A test that expects a kick catches this (and resets), never AssertionError as such:
    a wrong reply must fail the test, not pass as a kick."""


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes (fails on EOF first); the socket's timeout bounds each read."""
    chunks = bytearray()
    while len(chunks) < n:
        data = sock.recv(n - len(chunks))
        if not data:
            raise ServerClosed(f"EOF after {len(chunks)} of {n} bytes")
        chunks += data
    return bytes(chunks)


def recv_until_eof(sock: socket.socket, limit: int = 64 * 1024 * 1024) -> bytes:
    """Everything until the server closes; a reset counts as a close."""
    chunks = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while len(chunks) < limit:
            data = sock.recv(65536)
            if not data:
                break
            chunks += data
    return bytes(chunks)


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def assert_closed_by_server(sock: socket.socket) -> None:
    """The server closed this connection: a read returns EOF (or a reset)."""
    try:
        data = sock.recv(65536)
        while data:
            data = sock.recv(65536)
    except ConnectionResetError:
        pass
