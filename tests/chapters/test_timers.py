"""Heartbeat timers (chapter 5 and later)."""

from __future__ import annotations

import math

import pytest

from common.protocol import PING_PACKET, Login, MsgCode, Status, encode_packet
from tests.conftest import (
    CHAPTERS,
    FakeClock,
    ServerClosed,
    assert_closed_by_server,
    feature_modules,
    load_chapter,
    recv_exactly,
    wait_until,
)
from tools.client import login_packet

TIMER_CHAPTERS = [c for c in CHAPTERS if "timers" in load_chapter(c).FEATURES]

# Short intervals so the suite stays fast: check every 0.2 s, kick after 3*0.2+0.2 s.
FAST = {"Sock_WaitTimeEnable": 1, "Sock_MaxWaitTime": 0.2, "Sock_PingGraceTime": 0.2}


chapter_modules = feature_modules("timers", "timers", "connection")


def _conn(connection_module, generation: int = 1):
    conn = connection_module.Connection()
    conn.generation = generation
    return conn


def test_expired_entries_are_taken_at_once_and_rearmed(chapter_modules):
    timers_mod, conn_mod = chapter_modules
    clock = FakeClock(100.0)
    seen = []
    timers = timers_mod.HeartbeatTimers(
        5.0, lambda c, g, now: seen.append(g), clock=clock, start_thread=False
    )
    conns = [_conn(conn_mod, g) for g in range(3)]
    for conn in conns:
        timers.add(conn, conn.generation)
        clock.now += 1
    assert len(timers) == 3
    assert timers.take_expired(clock.now) == []  # 102 < 105: nothing due
    clock.now = 106.5  # the first two are due (105, 106), the third (107) is not
    expired = timers.take_expired(clock.now)
    assert [e[3] for e in expired] == [0, 1]
    assert len(timers) == 3  # re-armed at now + 5
    assert sorted(e[0] for e in timers._entries) == [107.0, 111.5, 111.5]
    timers.close()


def test_no_rearm_in_timeout_kick_mode(chapter_modules):
    timers_mod, conn_mod = chapter_modules
    clock = FakeClock(100.0)
    timers = timers_mod.HeartbeatTimers(
        1.0, lambda *a: None, rearm=False, clock=clock, start_thread=False
    )
    timers.add(_conn(conn_mod), 1)
    clock.now += 2
    assert len(timers.take_expired(clock.now)) == 1
    assert len(timers) == 0
    timers.close()


def test_stale_entry_is_not_rearmed(chapter_modules):
    timers_mod, conn_mod = chapter_modules
    clock = FakeClock(100.0)
    timers = timers_mod.HeartbeatTimers(1.0, lambda *a: None, clock=clock, start_thread=False)
    conn = _conn(conn_mod, 1)
    timers.add(conn, 1)
    conn.generation = 2  # closed and reused without its entry removed
    clock.now += 2
    assert len(timers.take_expired(clock.now)) == 1
    assert len(timers) == 0
    timers.close()


def test_verdict_kicks_silence_only_while_the_server_listens(chapter_modules):
    """Past the timeout with no ping and no byte taken: replies waiting make it a send
    stall; requests still with the workers keep it (the loop may not be reading it, so
    its pings may wait unread: the wait is the server's); with neither it is silence.
    Under a CPU hog a slow reader's logins outlived the timeout on the workers and the
    reader was kicked for silence, not for the stall it was."""
    timers_mod, conn_mod = chapter_modules
    clock = FakeClock(100.0)
    timers = timers_mod.HeartbeatTimers(
        0.25, lambda *a: None, ping_timeout=0.5, clock=clock, start_thread=False
    )
    conn = _conn(conn_mod)
    conn.last_ping = conn.sent_at = clock.now
    assert timers.verdict(conn, clock.now + 0.5) is None  # exactly on the timeout: kept
    late = clock.now + 0.625
    assert timers.verdict(conn, late) == "silence"
    conn.in_flight = 3
    assert timers.verdict(conn, late) is None
    conn.out += b"reply"
    assert timers.verdict(conn, late) == "send_stall"
    conn.in_flight = 0
    assert timers.verdict(conn, late) == "send_stall"
    conn.sent_at = late - 0.25  # it took a byte of them within the timeout: alive
    assert timers.verdict(conn, late) is None
    timers.close()


def test_remove_takes_the_connections_entry_out(chapter_modules):
    timers_mod, conn_mod = chapter_modules
    timers = timers_mod.HeartbeatTimers(
        1.0, lambda *a: None, clock=FakeClock(100.0), start_thread=False
    )
    conns = [_conn(conn_mod, i) for i in range(10)]
    for conn in conns:
        timers.add(conn, conn.generation)
    for conn in conns[::2]:
        timers.remove(conn)
        timers.remove(conn)  # idempotent
    assert len(timers) == 5
    assert {e[2] for e in timers._entries} == set(conns[1::2])
    timers.close()


class Counted(float):
    """A float that counts every comparison made on it: complexity measured in work done,
    not in seconds."""

    comparisons = 0

    def __add__(self, other):
        return Counted(float(self) + float(other))

    def _count(self):
        Counted.comparisons += 1

    def __lt__(self, other):
        self._count()
        return float.__lt__(self, other)

    def __gt__(self, other):
        self._count()
        return float.__gt__(self, other)

    def __le__(self, other):
        self._count()
        return float.__le__(self, other)

    def __ge__(self, other):
        self._count()
        return float.__ge__(self, other)

    def __eq__(self, other):
        self._count()
        return float.__eq__(self, other)

    __hash__ = float.__hash__


def test_adding_and_removing_10000_entries_is_n_log_n(chapter_modules):
    """The original removes a connection's entry with a scan of the whole map: 10000
    closes cost ~50 million comparisons. Ours must stay within a small multiple of
    n log2 n."""
    timers_mod, conn_mod = chapter_modules
    clock = FakeClock(Counted(0.0))
    timers = timers_mod.HeartbeatTimers(1.0, lambda *a: None, clock=clock, start_thread=False)
    n = 10_000
    conns = [_conn(conn_mod, i) for i in range(n)]
    Counted.comparisons = 0
    for i, conn in enumerate(conns):
        clock.now = Counted(float(i % 997))  # many equal deadlines: a real multimap
        timers.add(conn, conn.generation)
    added = Counted.comparisons
    Counted.comparisons = 0
    for conn in reversed(conns):
        timers.remove(conn)
    removed = Counted.comparisons
    bound = 8 * n * math.log2(n)  # ~1.06 million
    print(f"comparisons: add {added}, remove {removed}, bound {bound:.0f}")
    assert len(timers) == 0
    assert 0 < added < bound, added
    assert 0 < removed < bound, removed
    timers.close()


# -- end to end ---------------------------------------------------------------------------


@pytest.mark.features("timers")
def test_idle_client_is_kicked(serve):
    srv = serve(**FAST)
    with srv.raw(timeout=10) as sock:
        sock.sendall(PING_PACKET)
        assert recv_exactly(sock, 8) == PING_PACKET
        assert_closed_by_server(sock)  # within the socket's 10 s timeout
    wait_until(lambda: srv.stats()["kicks"]["silence"] == 1)
    assert srv.stats()["kicks"]["timeout"] == 0
    # Kicked on the timer thread, released by the event loop: counted, and nobody online.
    wait_until(lambda: srv.stats()["closed"] == 1 and srv.stats()["online"] == 0)
    if "processes" not in load_chapter(srv.chapter).FEATURES:  # (07: the loop is a worker's)
        assert srv.server.loop.clients() == []


def _caught_up(srv, clock: FakeClock) -> bool:
    """The monitor has dealt with every deadline up to the fake clock's now: the earliest
    entry left is in the future (or there is none)."""
    entries = list(srv.server.timers._entries)
    return not entries or entries[0][0] > clock.now


def _exchange(sock, request: bytes, n: int) -> bytes | None:
    """Send a request, read its ``n``-byte reply; None when the server closed instead."""
    try:
        sock.sendall(request)
        return recv_exactly(sock, n)
    except (ServerClosed, ConnectionResetError, BrokenPipeError):
        return None


@pytest.mark.features("in-process")  # reaches into the server object
@pytest.mark.features("timers")
def test_pinging_client_survives_many_intervals(serve):
    clock = FakeClock()
    srv = serve(clock=clock, **FAST)
    with srv.raw() as sock:
        for _ in range(25):  # 25 x 0.1 s: 12 check intervals, 3 kick windows
            clock.now += 0.1
            assert _exchange(sock, PING_PACKET, 8) == PING_PACKET
            wait_until(lambda: _caught_up(srv, clock))
        assert srv.stats()["kicks"]["silence"] == 0
        assert srv.stats()["online"] == 1


@pytest.mark.features("timers")
def test_only_pings_count_as_heartbeats(serve):
    """As in the original: a client that only logs in is still silent."""
    clock = FakeClock()
    srv = serve(clock=clock, **FAST)
    with srv.raw(timeout=10) as sock:
        for i in range(40):  # 4 s of the server's clock: far past the 0.8 s timeout
            clock.now += 0.1
            reply = _exchange(sock, login_packet(f"nobody{i}", "x"), 104)
            if reply is None:
                break  # kicked
            assert reply == encode_packet(
                MsgCode.LOGIN, Login(f"nobody{i}", Status.NO_USER.name).encode()
            )
        wait_until(lambda: srv.stats()["kicks"]["silence"] == 1)  # still connected till then


@pytest.mark.features("timers")
def test_timeout_kick_mode_kicks_even_a_pinging_client(serve):
    clock = FakeClock()
    srv = serve(clock=clock, **FAST, Sock_TimeOutKick=1)
    with srv.raw(timeout=10) as sock:
        for _ in range(100):  # pings every 0.05 s of the server's clock
            clock.now += 0.05
            reply = _exchange(sock, PING_PACKET, 8)
            if reply is None:
                break  # kicked
            assert reply == PING_PACKET
        wait_until(lambda: srv.stats()["kicks"]["timeout"] == 1)  # still connected till then
    assert srv.stats()["kicks"]["silence"] == 0


@pytest.mark.features("timers")
def test_closed_connections_leave_the_timer_queue(serve):
    srv = serve(Sock_WaitTimeEnable=1, Sock_MaxWaitTime=60)
    socks = [srv.raw() for _ in range(50)]
    wait_until(lambda: srv.stats()["queues"]["timers"] == 50)
    for sock in socks:
        sock.close()
    wait_until(lambda: srv.stats()["queues"]["timers"] == 0)
    assert srv.stats()["closed"] == 50


@pytest.mark.features("in-process")  # reaches into the server object
@pytest.mark.features("timers")
def test_heartbeat_off_keeps_idle_clients(serve):
    """No heartbeat, no monitor thread: an idle client stays, however long it idles (the
    server's clock is moved on by a day)."""
    clock = FakeClock()
    srv = serve(clock=clock, Sock_WaitTimeEnable=0)
    assert srv.server.timers is None
    with srv.raw() as sock:
        assert _exchange(sock, PING_PACKET, 8) == PING_PACKET
        clock.now += 86_400
        assert _exchange(sock, PING_PACKET, 8) == PING_PACKET
        assert srv.stats()["queues"]["timers"] == 0
        assert srv.stats()["online"] == 1
