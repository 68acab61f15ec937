"""The connection pool (chapter 3 and later): generations, recycling, limits, dashboard."""

from __future__ import annotations

import re
import socket
import time

import pytest
from rich.console import Console

from common.config import ConfigError
from common.dashboard import render
from common.protocol import PING_PACKET
from tests.conftest import (
    CHAPTERS,
    FakeClock,
    assert_closed_by_server,
    feature_modules,
    load_chapter,
    recv_exactly,
    reset,
    test_config,
    wait_until,
)

POOL_CHAPTERS = [c for c in CHAPTERS if "pool" in load_chapter(c).FEATURES]


pool_modules = feature_modules("pool", "pool")


@pytest.fixture
def pool_module(pool_modules):
    return pool_modules[0]


def test_generation_changes_on_hand_out_and_retire(pool_module):
    pool = pool_module.ConnectionPool(2, recycle_wait=5, clock=FakeClock(), start_thread=False)
    conn = pool.acquire()
    a, b = socket.socketpair()
    try:
        before = conn.generation
        conn.attach(a, ("127.0.0.1", 1), lambda c: None, lambda c: None)
        recorded = conn.generation
        assert recorded != before
        pool.retire(conn)
        assert conn.generation != recorded, "a reference recorded before retire must look stale"
    finally:
        a.close()
        b.close()
        pool.close()


def test_retired_connection_waits_then_returns_to_free_list(pool_module):
    clock = FakeClock()
    pool = pool_module.ConnectionPool(1, recycle_wait=5, clock=clock, start_thread=False)
    conn = pool.acquire()
    assert (pool.total, pool.free, pool.recycling) == (1, 0, 0)
    pool.retire(conn)
    assert (pool.free, pool.recycling) == (0, 1)
    clock.now += 4.9
    assert pool.recycle_due() == 0
    other = pool.acquire()  # the retired object is not handed out: the pool grows
    assert other is not conn and pool.total == 2
    clock.now += 0.2
    assert pool.recycle_due() == 1
    assert pool.acquire() is conn
    pool.close()


def test_close_frees_everything_at_once(pool_module):
    pool = pool_module.ConnectionPool(3, recycle_wait=3600, clock=FakeClock(), start_thread=True)
    conns = [pool.acquire() for _ in range(3)]
    for conn in conns:
        pool.retire(conn)
    assert pool.recycling == 3
    pool.close()
    assert pool.recycling == 0 and pool.free == 3


@pytest.mark.features("pool")
def test_recycler_thread_returns_connections(serve):
    srv = serve(Sock_RecyConnectionWaitTime=0.2)
    with srv.raw() as sock:
        sock.sendall(PING_PACKET)
        assert recv_exactly(sock, 8) == PING_PACKET
    wait_until(lambda: srv.stats()["closed"] == 1)
    wait_until(lambda: srv.stats()["pool"]["recycling"] == 0)
    assert srv.stats()["pool"]["free"] == srv.stats()["pool"]["total"]


@pytest.mark.features("pool")
def test_online_limit_closes_extra_clients_at_accept(serve):
    srv = serve(worker_connections=3, WorkerProcesses=1)  # (chapter 7: a limit per worker)
    held = [srv.raw() for _ in range(3)]
    try:
        for sock in held:
            sock.sendall(PING_PACKET)
            assert recv_exactly(sock, 8) == PING_PACKET
        extra = srv.raw()
        assert_closed_by_server(extra)
        extra.close()
        wait_until(lambda: srv.stats()["refused"]["online_limit"] == 1)
        held.pop().close()  # a slot frees as soon as a client leaves
        wait_until(lambda: srv.stats()["online"] == 2)
        with srv.raw() as again:
            again.sendall(PING_PACKET)
            assert recv_exactly(again, 8) == PING_PACKET
    finally:
        for sock in held:
            sock.close()


@pytest.mark.features("pool")
def test_storm_guard_refuses_when_recycle_queue_floods(serve):
    # One pool (chapter 7: one worker process; each would have a pool of its own).
    srv = serve(worker_connections=2, Sock_RecyConnectionWaitTime=3600, WorkerProcesses=1)
    refused_before = 0
    for _ in range(30):
        with srv.raw() as sock:
            try:
                sock.sendall(PING_PACKET)
                data = sock.recv(8)
            except ConnectionResetError:
                data = b""
            if data != PING_PACKET:
                refused_before += 1
        wait_until(lambda: srv.stats()["online"] == 0)
    stats = srv.stats()
    # The pool grew to 5 x 2 + 1 objects, all waiting in the recycle queue; from then on
    # every new client is refused by the storm guard.
    assert stats["pool"]["total"] == 11, stats
    assert stats["refused"]["storm"] == 30 - 11, stats
    assert refused_before == 30 - 11, stats
    assert stats["accepted"] == 11, stats


@pytest.mark.features("pool")
def test_reused_object_never_gets_the_old_clients_replies(serve):
    srv = serve(worker_connections=1, Sock_RecyConnectionWaitTime=0, WorkerProcesses=1)
    old = srv.raw()
    old.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    old.sendall(PING_PACKET * 5000)  # many replies owed, never read
    reset(old)
    wait_until(lambda: srv.stats()["closed"] == 1)
    wait_until(lambda: srv.stats()["pool"]["free"] == 1)
    with srv.raw() as new:
        new.sendall(PING_PACKET)
        assert recv_exactly(new, 8) == PING_PACKET
        new.sendall(PING_PACKET)
        assert recv_exactly(new, 8) == PING_PACKET
        new.setblocking(False)
        with pytest.raises(BlockingIOError):
            new.recv(1)  # nothing else owed to us
    assert srv.stats()["pool"]["total"] == 1, "the same object should have been reused"


@pytest.mark.features("pool")
def test_dashboard_renders_pool_counters(serve):
    srv = serve(WorkerProcesses=1)  # one pool of 1024 (chapter 7: one per worker process)
    with srv.raw() as sock:
        sock.sendall(PING_PACKET)
        assert recv_exactly(sock, 8) == PING_PACKET
        console = Console(record=True, width=100)
        console.print(render(srv.stats(), "test", limit=1024))
    text = console.export_text()
    for row in ("╭─ Pool", "in use", "recycling", "free", "╭─ Defences", "none fired yet"):
        assert row in text
    assert re.search(r"│ total\s+1024 ", text)  # the configured pool size
    assert re.search(r"│ online\s+1/1024 ", text)


# -- unit: recycling and refusal at their edges --------------------------------------------


def test_a_connection_whose_wait_ends_exactly_now_is_recycled(pool_module):
    clock = FakeClock(100.0)
    pool = pool_module.ConnectionPool(2, recycle_wait=0.125, clock=clock, start_thread=False)
    conn = pool.acquire()
    pool.retire(conn)
    clock.now = 100.125 - 2**-20
    assert pool.recycle_due() == 0
    clock.now = 100.125  # its wait is over, to the bit
    assert pool.recycle_due() == 1
    assert (pool.free, pool.recycling) == (2, 0)
    pool.close()


def test_one_scan_recycles_every_due_connection_and_only_those(pool_module):
    clock = FakeClock(100.0)
    pool = pool_module.ConnectionPool(3, recycle_wait=0.25, clock=clock, start_thread=False)
    first, second, third = (pool.acquire() for _ in range(3))
    pool.retire(first)
    pool.retire(second)  # two due at the same instant, 100.25
    clock.now = 100.125
    pool.retire(third)  # due at 100.375
    clock.now = 100.25
    assert pool.recycle_due() == 2
    assert (pool.free, pool.recycling, pool.in_use) == (2, 1, 0)
    assert {pool.acquire(), pool.acquire()} == {first, second}
    assert pool.recycle_due() == 0
    clock.now = 100.375
    assert pool.recycle_due() == 1
    assert pool.acquire() is third and pool.total == 3  # the pool never had to grow
    pool.close()


def test_the_online_limit_refuses_the_client_past_worker_connections(pool_module):
    pool = pool_module.ConnectionPool(2, recycle_wait=5, clock=FakeClock(), start_thread=False)
    assert pool.refusal() is None
    pool.acquire()
    assert pool.refusal() is None  # one online of two: room for this one
    held = pool.acquire()
    assert pool.in_use == 2
    assert pool.refusal() == "online_limit"
    pool.retire(held)  # a client that left no longer counts, recycled or not
    assert pool.in_use == 1
    assert pool.refusal() is None
    pool.close()


def test_the_storm_guard_at_its_edges(pool_module):
    """Refused as a storm once the pool has grown past 5 x size objects while fewer than
    size are free; not at exactly 5 x size, nor with exactly size free."""
    clock = FakeClock(100.0)
    pool = pool_module.ConnectionPool(2, recycle_wait=1.0, clock=clock, start_thread=False)

    def churn(n: int) -> None:  # n clients that connect and leave at once
        for _ in range(n):
            pool.retire(pool.acquire())

    churn(10)
    assert (pool.total, pool.free, pool.in_use) == (10, 0, 0)
    assert pool.refusal() is None  # 10 objects: not past 5 x 2
    churn(1)
    assert pool.total == 11
    assert pool.refusal() == "storm"  # 11 objects, none free
    clock.now = 101.0  # every retired one is free again
    assert pool.recycle_due() == 11
    assert pool.refusal() is None
    pool.close()

    for free, refused in ((1, "storm"), (2, None)):
        clock.now = 200.0
        pool = pool_module.ConnectionPool(2, recycle_wait=1.0, clock=clock, start_thread=False)
        churn(free)
        clock.now = 200.5
        churn(11 - free)  # 11 objects: `free` of them due at 201.0, the rest at 201.5
        clock.now = 201.0
        pool.recycle_due()
        assert (pool.total, pool.free, pool.in_use) == (11, free, 0)
        assert pool.refusal() == refused, free
        pool.close()


def test_the_recycler_thread_returns_due_connections(pool_module):
    clock = FakeClock(100.0)
    pool = pool_module.ConnectionPool(2, recycle_wait=0.125, clock=clock, start_thread=True)
    try:
        for conn in [pool.acquire(), pool.acquire()]:
            pool.retire(conn)
        clock.now = 100.125
        wait_until(lambda: pool.free == 2, timeout=10)  # it scans every 0.2 s on its own
        assert pool.recycling == 0
    finally:
        pool.close()
    assert not pool._thread.is_alive()


class CountedClock(FakeClock):
    """A fake clock that counts how often it is read."""

    reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def test_pool_from_config(pool_module):
    clock = FakeClock(100.0)
    pool = pool_module.ConnectionPool.from_config(
        test_config(worker_connections=3, Sock_RecyConnectionWaitTime=3600), clock
    )
    try:
        assert (pool.size, pool.total, pool.free, pool.recycle_wait) == (3, 3, 3, 3600)
        pool.retire(pool.acquire())
        clock.now = 3700.0  # an hour on the clock given (seconds on any other): over
        wait_until(lambda: pool.free == 3, timeout=10)  # and its own recycler returns it
    finally:
        pool.close()
    pool = pool_module.ConnectionPool.from_config(
        test_config(worker_connections=1, Sock_RecyConnectionWaitTime=0)
    )
    try:
        assert (pool.size, pool.recycle_wait) == (1, 0.0)  # the smallest values allowed
    finally:
        pool.close()
    for bad in ({"worker_connections": 0}, {"Sock_RecyConnectionWaitTime": -0.5}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            pool_module.ConnectionPool.from_config(test_config(**bad))


def test_the_recycler_sleeps_between_scans(pool_module):
    """The recycler scans every RECYCLE_SCAN_INTERVAL (0.2 s): it reads the clock once per
    scan, and does not spin in between."""
    clock = CountedClock(100.0)
    pool = pool_module.ConnectionPool(1, recycle_wait=5, clock=clock, start_thread=True)
    try:
        time.sleep(0.3)  # a scan or two; a spinning recycler reads the clock thousands of times
        assert clock.reads <= 5
    finally:
        pool.close()


def test_the_recycler_thread_is_a_named_daemon(pool_module):
    """Named for its job (a thread that does not stop is named in the error log), and a
    daemon: it never holds the process open."""
    pool = pool_module.ConnectionPool(1, recycle_wait=5, clock=FakeClock(), start_thread=True)
    try:
        assert (pool._thread.name, pool._thread.daemon) == ("recycler", True)
    finally:
        pool.close()
    assert not pool._thread.is_alive()


# -- unit: the connection object ----------------------------------------------------------

connection_modules = feature_modules("pool", "connection")
FRESH = {
    "out": bytearray(),
    "mask": 0,
    "peer_closed": False,
    "closed": False,
    "in_flight": 0,
    "last_ping": 0.0,
    "sent_at": 0.0,
    "timer_entry": None,
    "flood_last": float("-inf"),
    "flood_count": 0,
}


def test_a_pooled_object_starts_afresh_for_each_client(connection_modules):
    """Nothing of one client survives into the next one's use of the object: not half a
    packet in the parser, not unsent replies, not its heartbeat or flood history; and the
    generation moves on at every hand-out and every retirement."""
    (connection_mod,) = connection_modules
    conn = connection_mod.Connection()
    assert (conn.generation, conn.closed, conn.sock, conn.fd) == (0, True, None, -1)
    a, b = socket.socketpair()
    try:
        assert conn.attach(a, ("first", 1), print, None) is conn
        assert (conn.generation, conn.sock, conn.fd, conn.addr) == (1, a, a.fileno(), ("first", 1))
        assert (conn.rhandler, conn.whandler, conn.closed) == (print, None, False)
        assert list(conn.parser.feed(PING_PACKET[:5])) == []  # half a header, buffered
        for name, value in [("out", bytearray(b"owed")), ("mask", 5), ("peer_closed", True)]:
            setattr(conn, name, value)
        for name, value in [("in_flight", 3), ("last_ping", 7.0), ("sent_at", 8.0)]:
            if hasattr(connection_mod.Connection, name):
                setattr(conn, name, value)
        for name, value in [("timer_entry", (1.0,)), ("flood_last", 9.0), ("flood_count", 4)]:
            if hasattr(connection_mod.Connection, name):
                setattr(conn, name, value)
        conn.detach()
        assert (conn.generation, conn.sock, conn.fd, conn.out, conn.closed) == (
            2,
            None,
            -1,
            bytearray(),
            True,
        )
        conn.attach(b, ("second", 2), print, print)
        assert conn.generation == 3
        for name, value in FRESH.items():
            if hasattr(connection_mod.Connection, name):
                assert getattr(conn, name) == value, name
        assert len(list(conn.parser.feed(PING_PACKET))) == 1  # a whole ping, nothing before it
    finally:
        a.close()
        b.close()


def test_a_half_closed_client_is_finished_once_owed_nothing(connection_modules):
    (connection_mod,) = connection_modules
    a, b = socket.socketpair()
    try:
        conn = connection_mod.Connection().attach(a, ("c", 1), print, print)
        assert not conn.finished()  # it has not half-closed
        conn.peer_closed = True
        assert conn.finished()
        conn.out += b"owed"
        assert not conn.finished()  # replies wait for it
        conn.out.clear()
        if hasattr(connection_mod.Connection, "in_flight"):
            conn.in_flight = 1
            assert not conn.finished()  # a request of its is still with the workers
            conn.in_flight = 0
            assert conn.finished()
    finally:
        a.close()
        b.close()
