"""Exercise 1.1: a thread per client (chapter 1).

Chapter 1 serves one client at a time: while it waits in one client's ``recv``, a second
client is not even accepted. With a thread per client, every client is served at once.
"""

from __future__ import annotations

import threading

import pytest

from common.protocol import PING_PACKET

from .conftest import closed_by_server, recv_exactly, wait_until

# How long a client waits for its pong. Served on its own thread, it comes back in
# milliseconds; this only bounds the wait when it does not come at all.
REPLY_TIMEOUT = 5.0
# Set by the first test: the second one needs several clients served at once, and would
# only wait out the same timeout again without it.
served_at_once = False


def test_ten_clients_are_served_at_once(serve):
    """Ten clients connect and stay connected; each pings in turn and must get its pong
    while the others are still connected (and idle)."""
    global served_at_once
    srv = serve()
    clients = [srv.raw(timeout=REPLY_TIMEOUT) for _ in range(10)]
    try:
        for number, sock in enumerate(clients, 1):
            sock.sendall(PING_PACKET)
            try:
                reply = recv_exactly(sock, len(PING_PACKET))
            except TimeoutError:
                reply = None
            if reply is None:
                pytest.fail(
                    f"client {number} of 10 got no pong within {REPLY_TIMEOUT:.0f} s while "
                    f"{number - 1} other client(s) stayed connected: the server still serves "
                    "one client at a time (it sits in the first client's recv())",
                    pytrace=False,
                )
            assert reply == PING_PACKET
        served_at_once = True
        wait_until(
            lambda: srv.stats()["online"] == 10,
            what=f"stats()['online'] should count the 10 clients being served, "
            f"it says {srv.stats()['online']}",
        )
    finally:
        for sock in clients:
            sock.close()
    wait_until(
        lambda: srv.stats()["online"] == 0 and srv.stats()["closed"] == 10,
        what="after the 10 clients left, stats() should say online 0 and closed 10, it says "
        f"online {srv.stats()['online']}, closed {srv.stats()['closed']}",
    )


def test_shutdown_ends_every_client_and_its_thread(serve):
    """shutdown() with three idle clients connected: each is closed, every thread the
    server started has ended by the time shutdown() returns."""
    if not served_at_once:
        pytest.skip("needs several clients served at once (the test above)")
    before = set(threading.enumerate())
    srv = serve()
    clients = [srv.raw(timeout=REPLY_TIMEOUT) for _ in range(3)]
    try:
        for sock in clients:  # each one served (so each has its thread by now)
            sock.sendall(PING_PACKET)
            assert recv_exactly(sock, len(PING_PACKET)) == PING_PACKET
        srv.stop()
        left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
        assert not left, f"threads still running after shutdown() returned: {left}"
        for number, sock in enumerate(clients, 1):
            assert closed_by_server(sock), f"client {number} was not closed by shutdown()"
    finally:
        for sock in clients:
            sock.close()
