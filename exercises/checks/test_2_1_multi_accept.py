"""Exercise 2.1: accept every waiting client at once (chapter 2).

Chapter 2 accepts one client per readiness event of the listening socket. With
``Sock_MultiAccept = 1`` one event must accept every client waiting in the accept queue,
and stop when the queue is empty (``accept`` raises ``BlockingIOError``: EAGAIN).

These tests call ``on_accept`` directly, once, on a server that is built but not serving:
what one readiness event does is then exact, whatever the timing.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from common.config import ConfigError
from common.protocol import PING_PACKET

from .conftest import check_config, recv_exactly, wait_until

WAITING = 10


def accept_queue_length(port: int) -> int:
    """Connections waiting in the accept queue of the loopback listener on ``port``: for a
    listening socket, Linux shows that count as ``rx_queue`` in /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == "0A" and int(local.split(":")[1], 16) == port:  # 0A: LISTEN
            return int(queues.split(":")[1], 16)
    raise AssertionError(f"no listening socket on port {port}")


def one_event(server) -> None:
    """What the loop does for one readiness event of the listener: one on_accept call,
    which must return (bounded: a loop that does not stop at EAGAIN spins forever)."""
    listener = server.loop.listeners[0]
    thread = threading.Thread(target=server.on_accept, args=(listener,), daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        pytest.fail(
            "on_accept did not return within 5 s: does the loop stop when accept() raises "
            "BlockingIOError (the queue is empty)?",
            pytrace=False,
        )


def built(copy, **overrides):
    """A server built (listening) but not serving, and WAITING clients in its queue."""
    server = copy.Server(check_config(**overrides))
    host, port = server.addresses[0]
    clients = [socket.create_connection((host, port), timeout=5) for _ in range(WAITING)]
    wait_until(lambda: accept_queue_length(port) == WAITING, what="clients never queued")
    return server, clients


@pytest.mark.parametrize("overrides", [{}, {"Sock_MultiAccept": 0}], ids=["default", "off"])
def test_by_default_one_event_accepts_one_client(copy, overrides):
    server, clients = built(copy, **overrides)
    try:
        one_event(server)
        accepted = server.stats()["accepted"]
        assert accepted == 1, (
            f"without Sock_MultiAccept = 1, one event must accept one client, as the "
            f"chapter does; it accepted {accepted}"
        )
    finally:
        server.shutdown()
        for sock in clients:
            sock.close()


def test_multi_accept_takes_the_whole_queue_in_one_event(copy):
    server, clients = built(copy, Sock_MultiAccept=1)
    try:
        one_event(server)
        accepted = server.stats()["accepted"]
        assert accepted == WAITING, (
            f"with Sock_MultiAccept = 1, one event should accept all {WAITING} waiting "
            f"clients; it accepted {accepted}"
        )
        one_event(server)  # the queue is empty now: returns, accepts nothing
        assert server.stats()["accepted"] == WAITING
    finally:
        server.shutdown()
        for sock in clients:
            sock.close()


def test_multi_accept_must_be_0_or_1(copy):
    try:
        server = copy.Server(check_config(Sock_MultiAccept=2))
    except ConfigError as exc:
        assert "Sock_MultiAccept" in str(exc), f"the error should name the key: {exc}"
        return
    server.shutdown()
    pytest.fail(
        "Sock_MultiAccept = 2 should be a ConfigError (the key is a 0/1 switch)", pytrace=False
    )


def test_every_client_is_served_with_multi_accept(serve):
    srv = serve(Sock_MultiAccept=1)
    clients = [srv.raw(timeout=5) for _ in range(20)]
    try:
        for sock in clients:
            sock.sendall(PING_PACKET)
        for sock in clients:
            assert recv_exactly(sock, len(PING_PACKET)) == PING_PACKET
    finally:
        for sock in clients:
            sock.close()
