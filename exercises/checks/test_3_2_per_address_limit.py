"""Exercise 3.2: a limit per client address (chapter 3).

``Sock_MaxConnPerAddress = N`` (0, the default: no limit): a client whose address already
holds N connections is refused at accept, as the pool's limits are (the connect succeeds,
the server closes it at once), and counted as ``refused.per_address``. Every address on
127.0.0.0/8 is this machine on Linux, so the check can be two clients at once: 127.0.0.1
and 127.0.0.2.
"""

from __future__ import annotations

import socket

import pytest

from common.config import ConfigError
from common.protocol import PING_PACKET

from .conftest import ServerClosed, check_config, closed_by_server, recv_exactly, wait_until


def dealt_with(srv) -> int:
    """Connections the server has accepted or refused so far."""
    stats = srv.stats()
    return stats["accepted"] + sum(stats["refused"].values())


def connect(srv, source: str = "127.0.0.1") -> socket.socket:
    """Connect from ``source`` and wait until the server accepted or refused us."""
    before = dealt_with(srv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect((srv.host, srv.port))
    wait_until(lambda: dealt_with(srv) > before, what="the server never took the connection")
    return sock


def was_refused(srv, sock: socket.socket, before: int) -> bool:
    """Whether the server refused ``sock`` (it closed it), from the counter: the server
    has dealt with ``sock`` already (see connect), so no waiting for a close that may
    never come."""
    if refused(srv) == before:
        return False
    assert closed_by_server(sock), "refused.per_address was counted but the client not closed"
    return True


def served(sock: socket.socket) -> bool:
    """The server answers a ping on this connection (False: it closed it instead)."""
    try:
        sock.sendall(PING_PACKET)
        return recv_exactly(sock, len(PING_PACKET)) == PING_PACKET
    except (ServerClosed, ConnectionResetError, BrokenPipeError):
        return False


def refused(srv) -> int:
    return srv.stats()["refused"].get("per_address", 0)


def test_the_third_connection_of_an_address_is_refused(serve):
    srv = serve(Sock_MaxConnPerAddress=2)
    first, second = connect(srv), connect(srv)
    try:
        assert served(first) and served(second), "the first two connections must be served"
        with connect(srv) as third:
            gone = was_refused(srv, third, 0)
            assert gone, (
                "with Sock_MaxConnPerAddress = 2, a third connection from 127.0.0.1 should be "
                "refused (closed at once, counted as refused.per_address); it was accepted"
            )
    finally:
        first.close()
        second.close()


def test_a_place_is_free_again_once_a_connection_closes(serve):
    """Closing gives the address its place back, and a refused connection never took one:
    five rounds of (2 served, 1 refused, all closed) end as they began."""
    srv = serve(Sock_MaxConnPerAddress=2)
    for round_ in range(1, 6):
        first, second = connect(srv), connect(srv)
        with first, second:
            assert served(first) and served(second), (
                f"round {round_}: two connections should be served again once the previous "
                "ones closed; does closing a connection lower its address's count?"
            )
            with connect(srv) as third:
                gone = was_refused(srv, third, round_ - 1)
                assert gone, f"round {round_}: the third connection was accepted, not refused"
        wait_until(
            lambda: srv.stats()["online"] == 0,
            what=f"round {round_}: the server never saw the clients leave",
        )
    assert refused(srv) == 5


def test_the_limit_is_per_address(serve):
    srv = serve(Sock_MaxConnPerAddress=1)
    with connect(srv, "127.0.0.1") as one, connect(srv, "127.0.0.2") as two:
        assert served(one)
        assert served(two), (
            "a client from 127.0.0.2 should be served while 127.0.0.1 holds its one "
            "connection: the limit counts each address on its own"
        )
        with connect(srv, "127.0.0.2") as again:
            gone = was_refused(srv, again, 0)
            assert gone, "127.0.0.2's second connection was accepted, not refused"
    assert refused(srv) == 1


def test_no_limit_by_default(serve):
    srv = serve()
    clients = [connect(srv) for _ in range(20)]
    try:
        assert all(served(sock) for sock in clients), "without the key, nothing is refused"
        assert refused(srv) == 0
    finally:
        for sock in clients:
            sock.close()


def test_a_negative_limit_is_a_config_error(copy):
    try:
        server = copy.Server(check_config(Sock_MaxConnPerAddress=-1))
    except ConfigError as exc:
        assert "Sock_MaxConnPerAddress" in str(exc), f"the error should name the key: {exc}"
        return
    server.shutdown()
    pytest.fail("Sock_MaxConnPerAddress = -1 should be a ConfigError", pytrace=False)
