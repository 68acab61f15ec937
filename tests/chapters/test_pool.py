"""The connection pool (chapter 3 and later): generations, recycling, limits, dashboard."""

from __future__ import annotations

import re
import socket

import pytest
from rich.console import Console

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
