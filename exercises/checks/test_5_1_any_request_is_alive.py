"""Exercise 5.1: every answered request is a sign of life (chapter 5).

Chapter 5 keeps the original's rule: only a ping shows that a client is alive, so a
client busy logging in, but not pinging, is kicked for silence. With
``Sock_RequestsAreHeartbeats = 1`` every request the server *answers* counts as well; a
packet it drops (a bad CRC) still does not. Without the key (or with 0) nothing changes.

The server's clock is a fake one that the check moves, 0.1 s per request, with the
heartbeat checked every 0.02 s and a client kicked after 3 x 0.02 + 0.2 = 0.26 s without a
sign of life: 20 requests are 2 s of the server's time, far past the limit.
"""

from __future__ import annotations

import pytest

from common.config import ConfigError
from common.protocol import PING_PACKET, Login, MsgCode, Status, encode_packet
from tools.client import login_packet

from .conftest import FakeClock, ServerClosed, check_config, recv_exactly, wait_until

FAST = {"Sock_WaitTimeEnable": 1, "Sock_MaxWaitTime": 0.02, "Sock_PingGraceTime": 0.2}
STEPS = 20


def caught_up(srv, clock: FakeClock) -> bool:
    """The heartbeat monitor has checked every deadline up to the clock's now."""
    entries = list(srv.server.timers._entries)
    return not entries or entries[0][0] > clock.now


def logins_until_kicked(srv, clock: FakeClock) -> int | None:
    """A login every 0.1 s of the server's clock, each reply awaited; return the step at
    which the server closed the connection instead of replying (None: never)."""
    with srv.raw(timeout=10) as sock:
        for step in range(1, STEPS + 1):
            clock.now += 0.1
            name = f"nobody{step}"
            try:
                sock.sendall(login_packet(name, "x"))
                reply = recv_exactly(sock, 104)
            except (ServerClosed, ConnectionResetError, BrokenPipeError):
                return step
            assert reply == encode_packet(MsgCode.LOGIN, Login(name, Status.NO_USER.name).encode())
            wait_until(lambda: caught_up(srv, clock))
    return None


def test_a_client_that_keeps_logging_in_is_alive(serve):
    clock = FakeClock()
    srv = serve(clock=clock, Sock_RequestsAreHeartbeats=1, **FAST)
    step = logins_until_kicked(srv, clock)
    assert step is None, (
        f"with Sock_RequestsAreHeartbeats = 1, a client sending a login every 0.1 s was kicked "
        f"at {step * 0.1:.1f} s (kicks: {srv.stats()['kicks']}): its answered logins should "
        "count as signs of life"
    )
    assert srv.stats()["kicks"]["silence"] == 0


@pytest.mark.parametrize("overrides", [{}, {"Sock_RequestsAreHeartbeats": 0}], ids=["default", "0"])
def test_without_the_key_only_pings_count(serve, overrides):
    clock = FakeClock()
    srv = serve(clock=clock, **overrides, **FAST)
    step = logins_until_kicked(srv, clock)
    assert step is not None, (
        "without Sock_RequestsAreHeartbeats = 1, a client that only logs in must still be "
        "kicked for silence, as in the chapter"
    )
    wait_until(lambda: srv.stats()["kicks"]["silence"] == 1)


def test_dropped_packets_are_no_sign_of_life(serve):
    """A stream of packets with a bad CRC gets no reply: it must not keep the client."""
    clock = FakeClock()
    srv = serve(clock=clock, Sock_RequestsAreHeartbeats=1, **FAST)
    bad = bytearray(login_packet("mallory", "x"))
    bad[4] ^= 0xFF  # the CRC no longer matches the body
    with srv.raw(timeout=10) as sock:
        sock.sendall(PING_PACKET)  # one ping at the start, then garbage only
        assert recv_exactly(sock, 8) == PING_PACKET
        for step in range(1, STEPS + 1):
            clock.now += 0.1
            try:
                sock.sendall(bytes(bad))
            except (ConnectionResetError, BrokenPipeError):
                break  # kicked
            wait_until(lambda s=step: srv.stats()["drops"]["bad_crc"] >= s or kicked(srv))
            if kicked(srv):
                break
            wait_until(lambda: caught_up(srv, clock))
    wait_until(
        lambda: kicked(srv),
        what="a client sending only packets with a bad CRC should still be kicked for "
        "silence: a dropped packet is no sign of life",
    )


def kicked(srv) -> bool:
    return srv.stats()["kicks"]["silence"] == 1


def test_the_key_is_a_switch(copy):
    try:
        server = copy.Server(check_config(Sock_RequestsAreHeartbeats=2))
    except ConfigError as exc:
        assert "Sock_RequestsAreHeartbeats" in str(exc), f"the error should name the key: {exc}"
        return
    server.shutdown()
    pytest.fail("Sock_RequestsAreHeartbeats = 2 should be a ConfigError (0 or 1)", pytrace=False)
