"""Concurrency and event-loop behaviour: chapter 2 and every later chapter."""

from __future__ import annotations

import importlib
import os
import re
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from common.protocol import PING_PACKET
from tests.conftest import (
    ROOT,
    SERVER_MODULES,
    load_chapter,
    recv_exactly,
    reset,
    test_config,
    wait_until,
)

pytestmark = pytest.mark.features("epoll")


def test_200_clients_at_once_each_20_round_trips(serve):
    srv = serve()
    errors: list[BaseException] = []
    start = threading.Barrier(200, timeout=30)

    def client() -> None:
        try:
            with srv.raw(timeout=30) as sock:
                start.wait()  # all 200 connected before anyone talks
                for _ in range(20):
                    sock.sendall(PING_PACKET)
                    assert recv_exactly(sock, 8) == PING_PACKET
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    wait_until(lambda: srv.stats()["closed"] == 200)
    assert srv.stats()["packets_in"] == 200 * 20


def test_stalled_half_sent_client_does_not_delay_others(serve):
    srv = serve()
    with srv.raw() as stalled:
        stalled.sendall(PING_PACKET[:5])  # half a header, then nothing
        wait_until(lambda: srv.stats()["online"] == 1)
        with srv.raw() as other:
            for _ in range(10):
                other.sendall(PING_PACKET)
                assert recv_exactly(other, 8) == PING_PACKET
        # The stalled client is still connected and got nothing.
        stalled.setblocking(False)
        with pytest.raises(BlockingIOError):
            stalled.recv(1)


def test_client_that_stops_reading_does_not_block_others(serve):
    srv = serve()
    hog = srv.raw()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.setblocking(False)
    sent = 0
    burst = PING_PACKET * 4096
    deadline = time.monotonic() + 5
    # Push requests until the pipe is full both ways (the server's replies fill our tiny
    # receive buffer, then the server must stop or queue); never read.
    while time.monotonic() < deadline:
        try:
            sent += hog.send(burst)
        except BlockingIOError:
            break
        except OSError:
            break  # a chapter with a backlog limit may already have kicked us
    assert sent > 0
    with srv.raw() as other:
        for _ in range(50):
            other.sendall(PING_PACKET)
            assert recv_exactly(other, 8) == PING_PACKET
    hog.close()


def test_stale_event_for_a_reused_fd_is_ignored(chapter):
    """One batch: a read event closes fd N, an accept reuses N, then a second (stale) read
    event for N arrives. It must not be delivered to the new connection."""
    module = importlib.import_module(SERVER_MODULES[chapter])
    server = module.Server(test_config())
    host, port = server.addresses[0]
    listen_fd = server.listeners[0].fileno()
    first = socket.create_connection((host, port), timeout=5)
    second = None
    try:
        server.loop.process_events([(listen_fd, 1)])  # accept the first client
        wait_until(lambda: server.stats()["online"] == 1)
        old_fd = max(fd for fd in _client_fds(server))
        reset(first)  # the next read on old_fd fails with ECONNRESET
        second = socket.create_connection((host, port), timeout=5)
        second.sendall(PING_PACKET)  # if the stale event reached it, it would be answered
        server.loop.process_events([(old_fd, 1), (listen_fd, 1), (old_fd, 1)])
        new_fds = list(_client_fds(server))
        assert new_fds == [old_fd], "the new connection should have reused the closed fd"
        assert server.stats()["stale_events"] == 1
        second.setblocking(False)
        with pytest.raises(BlockingIOError):
            second.recv(8)  # not answered: the stale event was dropped
        second.setblocking(True)
        server.loop.process_events([(old_fd, 1)])  # a real event for the new connection
        assert recv_exactly(second, 8) == PING_PACKET
    finally:
        if second is not None:
            second.close()
        server.shutdown()


def _client_fds(server) -> list[int]:
    listener_fds = {s.fileno() for s in server.listeners}
    return [fd for fd in server.loop.conns if fd not in listener_fds]


def test_emfile_is_survived(chapter, tmp_path):
    """With a low RLIMIT_NOFILE the server runs out of descriptors at accept; it logs,
    pauses accepting, and serves the waiting clients once descriptors free up."""
    if chapter not in {p.name for p in (ROOT / "chapters").iterdir()}:
        pytest.skip("subprocess test runs chapters only")
    conf = tmp_path / "emfile.conf"
    conf.write_text(
        textwrap.dedent(
            """\
            ListenPort0 = 0
            worker_connections = 1024
            Sock_RecyConnectionWaitTime = 0.1
            UserDatabase = :memory:
            PasswordHashIterations = 1000
            """
        )
    )
    script = textwrap.dedent(
        f"""\
        import resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
        sys.argv = ["x", "--config", {str(conf)!r}, "--log-level", "notice"]
        from common.cli import main
        sys.exit(main("chapters.{chapter}"))
        """
    )
    env = dict(os.environ, COLUMNS="250", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    clients: list[socket.socket] = []
    reader = _StderrReader(proc)
    try:
        port = reader.port()
        # More clients than the server has descriptors for: the kernel completes every
        # handshake (backlog 511); the server accepts until accept() fails with EMFILE.
        for _ in range(60):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        for sock in clients:
            sock.sendall(PING_PACKET)
        if "pool" in load_chapter(chapter).FEATURES:
            # From chapter 3 the server pauses accepting when out of descriptors, and says
            # so (chapter 2 retries at every poll and only counts the failures).
            wait_until(lambda: "pausing accepts" in "".join(reader.lines))
        # The server is out of descriptors: the accepted clients get their reply, the rest
        # wait in the kernel's accept queue. Collect replies until no more come for 1 s.
        answered: list[socket.socket] = []
        while True:
            pending = [s for s in clients if s not in answered]
            ready, _, _ = select.select(pending, [], [], 1.0)
            if not ready:
                break
            for sock in ready:
                assert recv_exactly(sock, 8) == PING_PACKET
                answered.append(sock)
        assert 0 < len(answered) < len(clients), "expected some clients to wait for a descriptor"
        waiting = [s for s in clients if s not in answered]
        for sock in answered:
            sock.close()
        # Descriptors are free again: every waiting client is accepted and answered.
        for sock in waiting:
            sock.settimeout(10)
            assert recv_exactly(sock, 8) == PING_PACKET
        assert proc.poll() is None, "the server died"
    finally:
        for sock in clients:
            sock.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    err = reader.text()
    if "pool" in load_chapter(chapter).FEATURES:
        assert "Too many open files" in err
    assert "60 connections served" in err  # every client was accepted in the end
    assert "Traceback" not in err
    assert proc.returncode == 0


class _StderrReader:
    """Collects a subprocess's stderr on a thread, so the test can wait for a line with a
    deadline instead of blocking in readline()."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        self._thread = threading.Thread(target=self._pump, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def port(self, timeout: float = 20) -> int:
        pattern = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
        found: list[int] = []

        def seen() -> bool:
            for line in list(self.lines):
                match = pattern.search(line)
                if match:
                    found.append(int(match.group(1)))
                    return True
            return False

        wait_until(seen, timeout=timeout)
        return found[0]

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)
