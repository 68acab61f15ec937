"""Flood detection and malformed-header closing (chapter 6)."""

from __future__ import annotations

import pytest

from common.config import ConfigError
from common.protocol import PING_PACKET, MsgCode, crc32, encode_packet, pack_header
from tests.conftest import (
    CHAPTERS,
    FakeClock,
    ServerClosed,
    assert_closed_by_server,
    feature_modules,
    load_chapter,
    recv_exactly,
    test_config,
    wait_until,
)

FLOOD_CHAPTERS = [c for c in CHAPTERS if "flood" in load_chapter(c).FEATURES]
ORIGINAL = {
    "Sock_FloodAttackKickEnable": 1,
    "Sock_FloodTimeInterval": 100,
    "Sock_FloodKickCounter": 10,
}

pytestmark = pytest.mark.features("flood")


def _lockstep(sock, limit: int, clock: FakeClock | None = None, gap: float = 0.0) -> int:
    """Ping, wait for the reply, repeat; return how many replies came before the server
    closed. With ``clock``, each ping comes ``gap`` seconds of the server's clock after
    the one before, whatever the real time between them (a loaded machine included)."""
    replies = 0
    for _ in range(limit):
        if clock is not None:
            clock.now += gap
        try:
            sock.sendall(PING_PACKET)
            reply = recv_exactly(sock, 8)
        except (ServerClosed, ConnectionResetError, BrokenPipeError):
            break  # the server closed: kicked
        assert reply == PING_PACKET  # a wrong reply is a failure, not a kick
        replies += 1
    return replies


def test_lockstep_pinger_gets_10_replies_then_eof(serve):
    srv = serve(clock=FakeClock(), **ORIGINAL)  # the clock stands still: every gap is 0
    with srv.raw() as sock:
        assert _lockstep(sock, 50) == 10
        assert_closed_by_server(sock)
    wait_until(lambda: srv.stats()["kicks"]["flood"] == 1)


def test_pinger_slower_than_the_interval_is_never_kicked(serve):
    clock = FakeClock()
    srv = serve(
        clock=clock,
        Sock_FloodAttackKickEnable=1,
        Sock_FloodTimeInterval=30,
        Sock_FloodKickCounter=3,
    )
    with srv.raw() as sock:
        assert _lockstep(sock, 12, clock, gap=0.031) == 12
    assert srv.stats()["kicks"]["flood"] == 0


def test_bursts_shorter_than_the_count_with_gaps_are_never_kicked(serve):
    clock = FakeClock()
    srv = serve(
        clock=clock,
        Sock_FloodAttackKickEnable=1,
        Sock_FloodTimeInterval=125,
        Sock_FloodKickCounter=5,
    )
    with srv.raw() as sock:
        for _ in range(4):
            sock.sendall(PING_PACKET * 5)  # 5 packets: the count reaches 4, not 5
            assert recv_exactly(sock, 40) == PING_PACKET * 5
            clock.now += 0.125  # exactly the interval (exact in binary): not "too close"
    assert srv.stats()["kicks"]["flood"] == 0


def test_bad_crc_packets_count_towards_the_flood(serve):
    srv = serve(
        clock=FakeClock(),
        Sock_FloodAttackKickEnable=1,
        Sock_FloodTimeInterval=1000,
        Sock_FloodKickCounter=3,
    )
    body = b"x" * 96
    bad = pack_header(8 + len(body), MsgCode.LOGIN, crc32(body) ^ 1) + body
    with srv.raw() as sock:
        sock.sendall(bad * 3 + PING_PACKET)  # 4 packets at one instant: the 4th makes count 3
        assert_closed_by_server(sock)
    # Only the bad packets can have pushed the count to 3 before the ping arrived.
    wait_until(lambda: srv.stats()["kicks"]["flood"] == 1)


def test_flood_detection_off_by_config(serve):
    srv = serve(Sock_FloodAttackKickEnable=0)
    with srv.raw() as sock:
        assert _lockstep(sock, 50) == 50
    assert srv.stats()["kicks"]["flood"] == 0


@pytest.mark.parametrize("length", [0, 7, 29001, 65535])
def test_malformed_header_closes_the_connection(serve, length):
    srv = serve()
    with srv.raw() as sock:
        sock.sendall(PING_PACKET)
        assert recv_exactly(sock, 8) == PING_PACKET
        sock.sendall(pack_header(length, 0, 0) + PING_PACKET * 5)
        assert_closed_by_server(sock)  # no reply to the pings after the bad header
    wait_until(lambda: srv.stats()["kicks"]["malformed"] == 1)
    with srv.raw() as other:  # the server itself is fine
        other.sendall(encode_packet(MsgCode.PING))
        assert recv_exactly(other, 8) == PING_PACKET


# -- unit ---------------------------------------------------------------------------------


flood_modules = feature_modules("flood", "flood", "connection")


def test_detector_counts_consecutive_close_packets(flood_modules):
    flood_mod, conn_mod = flood_modules
    detector = flood_mod.FloodDetector(0.1, 3)
    conn = conn_mod.Connection()
    t = 50.0
    verdicts = []
    for gap in [0, 0.05, 0.05, 0.2, 0.01, 0.01, 0.01]:
        t += gap
        verdicts.append(detector.check(conn, t))
    # first packet: count 0; two close ones: 1, 2; a gap resets to 0; then 1, 2, 3 -> kick
    assert verdicts == [False, False, False, False, False, False, True]


def test_a_gap_of_exactly_the_interval_is_not_too_close(flood_modules):
    """ "Closer than the interval" counts; a packet exactly one interval after the one
    before does not, and starts the count again (0.125 is exact in binary)."""
    flood_mod, conn_mod = flood_modules
    detector = flood_mod.FloodDetector(0.125, 2)
    conn = conn_mod.Connection()
    t = 100.0
    assert not detector.check(conn, t)
    for _ in range(10):  # a client pinging on the interval itself, never kicked
        t += 0.125
        assert not detector.check(conn, t)
    assert not detector.check(conn, t + 0.0625)  # one close packet: count 1 of 2
    assert detector.check(conn, t + 0.0625)  # and a second: kicked


def test_a_kick_count_of_one_kicks_the_first_close_packet(flood_modules):
    flood_mod, conn_mod = flood_modules
    detector = flood_mod.FloodDetector(0.125, 1)
    conn = conn_mod.Connection()
    assert not detector.check(conn, 100.0)  # a first packet is never close to anything
    assert detector.check(conn, 100.0)


def test_detector_from_config(flood_modules):
    flood_mod, _ = flood_modules
    assert flood_mod.FloodDetector.from_config(test_config(Sock_FloodAttackKickEnable=0)) is None
    detector = flood_mod.FloodDetector.from_config(test_config(**ORIGINAL))
    assert (detector.interval, detector.kick_count) == (0.1, 10)  # milliseconds in the file
    edge = test_config(
        Sock_FloodAttackKickEnable=1, Sock_FloodTimeInterval=0, Sock_FloodKickCounter=1
    )
    detector = flood_mod.FloodDetector.from_config(edge)
    assert (detector.interval, detector.kick_count) == (0.0, 1)  # the smallest values allowed
    for bad in ({"Sock_FloodTimeInterval": -1}, {"Sock_FloodKickCounter": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            flood_mod.FloodDetector.from_config(test_config(**ORIGINAL | bad))
