"""Heartbeat timers (chapter 5 and later)."""

from __future__ import annotations

import logging
import math
import threading
import time

import pytest

from common.config import ConfigError
from common.protocol import PING_PACKET, Login, MsgCode, Status, encode_packet
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


def test_an_entry_due_exactly_now_is_taken(chapter_modules):
    """A deadline equal to the clock's now has come: it is taken, not left for later."""
    timers_mod, conn_mod = chapter_modules
    clock = FakeClock(100.0)
    timers = timers_mod.HeartbeatTimers(0.125, lambda *a: None, clock=clock, start_thread=False)
    first, second, later = (_conn(conn_mod, g) for g in (1, 2, 3))
    timers.add(first, 1)
    timers.add(second, 2)  # two entries due at the same instant, 100.125
    clock.now = 100.0625
    timers.add(later, 3)  # due at 100.1875
    assert timers.take_expired(100.125 - 2**-20) == []  # just before: nothing
    expired = timers.take_expired(100.125)
    assert [(e[0], e[2]) for e in expired] == [(100.125, first), (100.125, second)]
    # Re-armed one interval after the check, each connection holding its new entry.
    assert first.timer_entry[0] == second.timer_entry[0] == 100.25
    assert later.timer_entry[0] == 100.1875
    assert sorted(e[0] for e in timers._entries) == [100.1875, 100.25, 100.25]
    timers.close()


def test_a_taken_entry_that_is_not_rearmed_leaves_its_connection(chapter_modules):
    """Each connection holds the entry it has in the queue, and none once it has none:
    after an expiry in timeout-kick mode (or of a stale entry) it holds nothing."""
    timers_mod, conn_mod = chapter_modules
    clock = FakeClock(100.0)
    for rearm in (False, True):
        timers = timers_mod.HeartbeatTimers(
            0.125, lambda *a: None, rearm=rearm, clock=clock, start_thread=False
        )
        conn, stale = _conn(conn_mod, 1), _conn(conn_mod, 1)
        timers.add(conn, 1)
        timers.add(stale, 1)
        stale.generation = 2  # closed and reused since
        assert len(timers.take_expired(clock.now + 0.125)) == 2
        assert stale.timer_entry is None
        assert (conn.timer_entry is None) == (not rearm)
        assert list(timers._entries) == ([conn.timer_entry] if rearm else [])
        timers.close()
        assert len(timers) == 0  # close empties the queue


def test_verdict_at_the_edge_of_the_ping_timeout(chapter_modules):
    """A client is alive up to exactly ``ping_timeout`` after its last ping, or after the
    kernel last took replies waiting for it, whichever is later; silent once past it, and
    a send stall if replies wait for it."""
    timers_mod, conn_mod = chapter_modules
    timers = timers_mod.HeartbeatTimers(
        0.25, lambda *a: None, ping_timeout=0.75, clock=FakeClock(100.0), start_thread=False
    )
    conn = _conn(conn_mod)
    conn.last_ping = 100.0
    assert timers.verdict(conn, 100.75) is None
    assert timers.verdict(conn, 100.875) == "silence"
    conn.out += b"waiting"
    assert timers.verdict(conn, 100.875) == "send_stall"
    conn.sent_at = 100.5  # the kernel took some of its replies after its last ping
    assert timers.verdict(conn, 101.25) is None
    assert timers.verdict(conn, 101.375) == "send_stall"
    conn.last_ping, conn.sent_at = 101.0, 0.0  # and the other way round
    assert timers.verdict(conn, 101.75) is None
    no_rearm = timers_mod.HeartbeatTimers(0.25, lambda *a: None, rearm=False, start_thread=False)
    assert no_rearm.verdict(conn, 101.0) == "timeout"  # at its first check, whatever it did
    timers.close()
    no_rearm.close()


def test_timers_from_config(chapter_modules):
    timers_mod, conn_mod = chapter_modules
    kick = lambda *a: None  # noqa: E731
    assert timers_mod.HeartbeatTimers.from_config(test_config(), kick) is None  # heartbeat off
    clock = FakeClock(100.0)
    config = test_config(Sock_WaitTimeEnable=1, Sock_MaxWaitTime=0.25, Sock_PingGraceTime=0.5)
    timers = timers_mod.HeartbeatTimers.from_config(config, kick, clock)
    try:
        assert (timers.interval, timers.ping_timeout, timers.rearm) == (0.25, 1.25, True)
        assert timers.clock is clock
    finally:
        timers.close()
    edge = test_config(
        Sock_WaitTimeEnable=1, Sock_MaxWaitTime=0.001, Sock_PingGraceTime=0, Sock_TimeOutKick=1
    )
    kicks = Kicks()
    timers = timers_mod.HeartbeatTimers.from_config(edge, kicks, clock)
    try:
        assert (timers.interval, timers.ping_timeout, timers.rearm) == (0.001, 0.003, False)
        conn = _conn(conn_mod)
        timers.add(conn, 1)
        clock.now += 0.125
        wait_until(lambda: kicks.seen, timeout=10)  # the kick given is the one called
        assert kicks.seen == [(conn, 1, "timeout")]
    finally:
        timers.close()
    for bad in ({"Sock_MaxWaitTime": 0.0009}, {"Sock_PingGraceTime": -0.5}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            timers_mod.HeartbeatTimers.from_config(test_config(Sock_WaitTimeEnable=1, **bad), kick)


class Kicks:
    """``on_kick`` for a monitor thread: records (connection, generation, why), and can be
    waited on with a deadline. ``fail_first`` makes its first call raise."""

    def __init__(self, fail_first: bool = False) -> None:
        self.seen: list[tuple[object, int, str]] = []
        self.fail_first = fail_first
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, conn, generation: int, why: str) -> None:
        with self.lock:
            self.calls += 1
            if self.fail_first and self.calls == 1:
                raise RuntimeError("a kick that fails")
            self.seen.append((conn, generation, why))


class WatchedClock(FakeClock):
    """A fake clock that tells when another thread has read it: the monitor reads the clock
    with its lock held, just before it waits, so once it has, a call that takes the lock
    runs while the monitor waits."""

    def __init__(self, now: float) -> None:
        super().__init__(now)
        self.read_by_other = threading.Event()
        self.reads = 0  # by other threads
        self.test_thread = threading.get_ident()

    def __call__(self) -> float:
        if threading.get_ident() != self.test_thread:
            self.reads += 1
            self.read_by_other.set()
        return self.now


def _long_sleeping_monitor(chapter_modules, monkeypatch):
    """A running monitor whose longest sleep (MAX_SLEEP) is far past any test's deadline,
    on a watched clock, kicking at the first check: only a wake-up can make it kick."""
    timers_mod, conn_mod = chapter_modules
    monkeypatch.setattr(timers_mod, "MAX_SLEEP", 60.0)
    clock = WatchedClock(100.0)
    kicks = Kicks()
    timers = timers_mod.HeartbeatTimers(0.125, kicks, rearm=False, clock=clock)
    return conn_mod, clock, kicks, timers


def test_the_monitor_wakes_for_a_deadline_earlier_than_it_waits_for(chapter_modules, monkeypatch):
    """The monitor, asleep on an empty queue, is woken by an entry added meanwhile: the
    kick comes at that entry's deadline, not at the end of the long sleep."""
    conn_mod, clock, kicks, timers = _long_sleeping_monitor(chapter_modules, monkeypatch)
    try:
        assert clock.read_by_other.wait(10)  # the monitor found the queue empty and sleeps
        conn = _conn(conn_mod)
        timers.add(conn, 1)  # due at 100.125
        clock.now = 100.125  # exactly on the deadline
        wait_until(lambda: kicks.seen, timeout=10)
        assert kicks.seen == [(conn, 1, "timeout")]
    finally:
        timers.close()


def test_the_monitor_judges_every_entry_due_at_once(chapter_modules, caplog):
    """Four entries due at the same instant: a stale one (its connection closed since), a
    client that pinged, one whose kick raises, one silent; the monitor goes through all of
    them: the silent ones are kicked, whatever happened to the ones before."""
    timers_mod, conn_mod = chapter_modules
    caplog.set_level(logging.ERROR, logger="timers")
    clock = FakeClock(100.0)
    kicks = Kicks(fail_first=True)
    timers = timers_mod.HeartbeatTimers(0.125, kicks, ping_timeout=0.25, clock=clock)
    try:
        stale, pinged, failing, silent = (_conn(conn_mod) for _ in range(4))
        for conn in (stale, pinged, failing, silent):
            timers.add(conn, 1)  # all due at 100.125, judged in this order
            conn.last_ping = 99.75
        stale.generation = 2
        pinged.last_ping = 100.0
        clock.now = 100.125
        wait_until(lambda: kicks.seen, timeout=10)  # the first call (failing's) raised
        assert kicks.calls == 2
        assert kicks.seen == [(silent, 1, "silence")]
        [record] = [r for r in caplog.records if r.exc_info]  # the failed kick, logged
        assert (record.name, record.getMessage()) == ("timers", "heartbeat kick failed")
        assert record.exc_info[0] is RuntimeError
        assert len(timers) == 3  # the live ones re-armed, the stale one dropped
    finally:
        timers.close()


def test_the_monitor_wakes_on_its_own_when_a_deadline_comes(chapter_modules, monkeypatch):
    """Nothing notifies the monitor when time passes: it sleeps until the earliest
    deadline (at most MAX_SLEEP), then takes what is due."""
    conn_mod, clock, kicks, timers = _long_sleeping_monitor(chapter_modules, monkeypatch)
    try:
        conn = _conn(conn_mod)
        timers.add(conn, 1)  # due at 100.125
        clock.read_by_other.clear()
        assert clock.read_by_other.wait(10)  # the monitor has seen the entry: it sleeps
        clock.now = 100.125  # no call on the timers: only its own wake-up can notice
        wait_until(lambda: kicks.seen, timeout=10)
        assert kicks.seen == [(conn, 1, "timeout")]
    finally:
        timers.close()


def test_the_monitor_sleeps_while_nothing_is_due(chapter_modules, monkeypatch):
    """With one entry far in the future the monitor reads the clock, sleeps, and reads it
    again only when woken: it does not spin."""
    timers_mod, conn_mod = chapter_modules
    monkeypatch.setattr(timers_mod, "MAX_SLEEP", 60.0)
    clock = WatchedClock(100.0)
    timers = timers_mod.HeartbeatTimers(1000.0, Kicks(), clock=clock)
    try:
        timers.add(_conn(conn_mod), 1)
        clock.read_by_other.clear()
        assert clock.read_by_other.wait(10)
        clock.reads = 0
        time.sleep(0.2)  # a spinning monitor reads the clock thousands of times meanwhile
        assert clock.reads <= 1
    finally:
        timers.close()


def test_a_client_found_alive_is_checked_again_and_kicked_once_silent(chapter_modules):
    """Each check re-arms the entry one interval later, for the same client: a client
    alive at its first two checks and silent since is kicked at the third."""
    timers_mod, conn_mod = chapter_modules
    clock = FakeClock(100.0)
    kicks = Kicks()
    timers = timers_mod.HeartbeatTimers(0.125, kicks, ping_timeout=0.25, clock=clock)
    try:
        conn = _conn(conn_mod)
        conn.last_ping = 100.0
        timers.add(conn, 1)
        for check in (100.125, 100.25):  # 0.125 and 0.25 s after its ping: alive
            clock.now = check
            wait_until(lambda: conn.timer_entry is not None and conn.timer_entry[0] > clock.now)
            assert kicks.seen == []
        clock.now = 100.375  # 0.375 s: silent too long
        wait_until(lambda: kicks.seen, timeout=10)
        assert kicks.seen == [(conn, 1, "silence")]
    finally:
        timers.close()


def test_the_monitor_thread_is_a_named_daemon(chapter_modules):
    """Named for its job (a thread that does not stop is named in the error log), and a
    daemon: it never holds the process open."""
    timers_mod, _ = chapter_modules
    timers = timers_mod.HeartbeatTimers(1.0, Kicks())
    try:
        assert (timers._thread.name, timers._thread.daemon) == ("timers", True)
    finally:
        timers.close()
    assert not timers._thread.is_alive()


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
