"""Exercise 6.1: a flood rule a flooder cannot pace around (chapter 6).

Chapter 6's rule (the original's) counts packets that arrive closer together than
``Sock_FloodTimeInterval`` and kicks on ``Sock_FloodKickCounter`` of them in a row. A
pause of one interval starts the count again, so bursts of 9 packets with a 100 ms pause
between them (90 packets a second) are never kicked. A token bucket holding
``Sock_FloodKickCounter`` tokens, refilled one per ``Sock_FloodTimeInterval``, allows the
same bursts and the same steady rate, but not more than that rate for long.

The server's clock is a fake one that only the check moves: a gap is exactly the gap the
check says, however long the machine takes.
"""

from __future__ import annotations

from common.protocol import PING_PACKET

from .conftest import FakeClock, ServerClosed, recv_exactly, wait_until

RULE = {
    "Sock_FloodAttackKickEnable": 1,
    "Sock_FloodTimeInterval": 100,  # ms
    "Sock_FloodKickCounter": 10,
}


def bursts(srv, clock: FakeClock, size: int, gap: float, rounds: int) -> int | None:
    """``rounds`` bursts of ``size`` pings (one write each, every pong awaited), with the
    server's clock moved ``gap`` seconds after each. Returns the round in which the
    server closed the connection (None: never)."""
    with srv.raw(timeout=10) as sock:
        for round_ in range(1, rounds + 1):
            try:
                sock.sendall(PING_PACKET * size)
                reply = recv_exactly(sock, 8 * size)
            except (ServerClosed, ConnectionResetError, BrokenPipeError):
                return round_
            assert reply == PING_PACKET * size  # a wrong reply fails, it is no kick
            clock.now += gap
    return None


def flood_kicks(srv) -> int:
    return srv.stats()["kicks"]["flood"]


def test_bursts_paced_at_the_interval_are_kicked(serve):
    clock = FakeClock()
    srv = serve(clock=clock, **RULE)
    kicked_in = bursts(srv, clock, size=9, gap=0.1, rounds=20)
    assert kicked_in is not None, (
        "bursts of 9 pings, 100 ms apart (90 a second, for 2 s) were never kicked: with a "
        "bucket of 10 tokens refilled one per 100 ms, the bucket runs dry in the 2nd burst"
    )
    assert kicked_in == 2, f"expected the kick in the 2nd burst, it came in burst {kicked_in}"
    wait_until(lambda: flood_kicks(srv) == 1)


def test_lockstep_pinger_gets_10_replies_then_is_kicked(serve):
    srv = serve(clock=FakeClock(), **RULE)  # the clock stands still: every gap is 0
    replies = 0
    with srv.raw(timeout=10) as sock:
        for _ in range(50):
            try:
                sock.sendall(PING_PACKET)
                assert recv_exactly(sock, 8) == PING_PACKET
            except (ServerClosed, ConnectionResetError, BrokenPipeError):
                break
            replies += 1
    assert replies == 10, f"a full bucket holds 10 tokens: 10 replies, then the kick ({replies})"
    wait_until(lambda: flood_kicks(srv) == 1)


def test_one_ping_per_interval_is_never_kicked(serve):
    clock = FakeClock()
    srv = serve(clock=clock, **RULE)
    kicked_in = bursts(srv, clock, size=1, gap=0.1, rounds=100)
    assert kicked_in is None, f"one ping every 100 ms was kicked at ping {kicked_in}"
    assert flood_kicks(srv) == 0


def test_full_bursts_with_time_to_refill_are_never_kicked(serve):
    clock = FakeClock()
    srv = serve(clock=clock, **RULE)
    kicked_in = bursts(srv, clock, size=10, gap=1.0, rounds=10)
    assert kicked_in is None, (
        f"bursts of 10 with 1 s between them (the bucket refills in 1 s) were kicked in "
        f"burst {kicked_in}"
    )


def test_an_interval_of_0_never_kicks(serve):
    """Sock_FloodTimeInterval = 0: no packet is too close (in the original too); a bucket
    refilled at once, not a division by zero."""
    srv = serve(clock=FakeClock(), **{**RULE, "Sock_FloodTimeInterval": 0})
    kicked_in = bursts(srv, FakeClock(), size=50, gap=0.0, rounds=5)
    assert kicked_in is None, f"with an interval of 0 the client was kicked in burst {kicked_in}"
