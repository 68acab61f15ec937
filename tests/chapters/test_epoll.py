"""Concurrency and event-loop behaviour: chapter 2 and every later chapter."""

from __future__ import annotations

import importlib
import socket
import threading
import time

import pytest

from common.protocol import PING_PACKET
from tests.conftest import (
    SERVER_MODULES,
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


@pytest.mark.features("in-process")  # reaches into the server object
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
