"""The chapter contract, stated once: what every chapter's ``Server`` promises.

``Server(config)`` binds at once (port 0 works, ``addresses`` tells the real port);
``serve_forever()`` blocks; ``shutdown()`` may be called from any thread, before, during
or after ``serve_forever()``, and twice, and returns only when every thread the server
started is joined and every socket closed; ``stats()`` has the counters each feature
promises, at 0 before anything happens.
"""

from __future__ import annotations

import importlib
import itertools
import socket
import threading
from collections.abc import Mapping

import pytest

from common.protocol import PING_PACKET
from tests.conftest import (
    CHAPTERS,
    SERVER_MODULES,
    SERVER_OPTIONS,
    FakeClock,
    chapter_config,
    load_chapter,
    recv_exactly,
    wait_until,
)

# The stats() keys each feature adds ("a.b" is stats()["a"]["b"]).
PROMISED: dict[str, set[str]] = {
    "listen": {
        "accepted",
        "closed",
        "online",
        "packets_in",
        "replies_out",
        "malformed",
        "accept_errors.econnaborted",
        "accept_errors.emfile",
        "drops.bad_crc",
        "drops.crc_on_empty",
        "drops.unknown_code",
        "drops.wrong_size",
        "drops.body_on_ping",
        "drops.server_error",
    },
    "epoll": {"stale_events", "half_closed", "waiting_epollout", "unsent_bytes"},
    "pool": {"refused.online_limit", "refused.storm", "pool.total", "pool.free", "pool.recycling"},
    "sendqueue": {
        "queues.receive",
        "queues.send",
        "replies_dropped.stale",
        "send_queue_full",
        "stale_requests",
        "epollout_armed",
    },
    "timers": {"queues.timers", "kicks.silence", "kicks.send_stall", "kicks.timeout"},
    "flood": {"kicks.flood", "kicks.malformed"},
    "processes": {"accept_races", "processes.workers", "processes.respawns", "processes.reloads"},
}
ZERO_AT_START = {"online", "pool.total", "pool.free", "processes.workers"}  # sizes


def flatten(stats: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in stats.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def make_server(chapter: str):
    module = importlib.import_module(SERVER_MODULES[chapter])
    return module.Server(chapter_config(chapter), **SERVER_OPTIONS.get(chapter, {}))


def start(server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_features_are_known_and_cumulative():
    for previous, chapter in itertools.pairwise(CHAPTERS):
        before, now = load_chapter(previous).FEATURES, load_chapter(chapter).FEATURES
        assert before < now, f"{chapter} must have every feature of {previous}, and more"
    for chapter in CHAPTERS:
        assert set(PROMISED) >= load_chapter(chapter).FEATURES


def test_port_zero_binds_at_once_and_addresses_tells_the_port(chapter):
    server = make_server(chapter)
    try:
        [(host, port)] = server.addresses
        assert host == "127.0.0.1" and port > 0
        thread = start(server)
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(PING_PACKET)
            assert recv_exactly(sock, 8) == PING_PACKET
    finally:
        server.shutdown()
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert refused((host, port))


def test_shutdown_before_serve_forever(chapter):
    server = make_server(chapter)
    address = server.addresses[0]
    server.shutdown()
    assert refused(address)
    thread = start(server)  # returns at once: the server was shut down
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_shutdown_twice_and_from_two_threads_at_once(chapter):
    server = make_server(chapter)
    thread = start(server)
    assert server.stats()["accepted"] == 0  # stats() works while serving
    others = [threading.Thread(target=server.shutdown) for _ in range(2)]
    for other in others:
        other.start()
    for other in others:
        other.join(timeout=15)
        assert not other.is_alive()
    thread.join(timeout=15)  # shutdown() returned, so serve_forever() has returned
    assert not thread.is_alive()
    server.shutdown()  # a third time, after everything: a no-op


@pytest.mark.parametrize("chapter", CHAPTERS)  # chapters only: the baseline is a tool
def test_shutdown_joins_every_thread_and_closes_every_client(chapter):
    before = {t.ident for t in threading.enumerate()}
    server = make_server(chapter)
    thread = start(server)
    address = server.addresses[0]
    clients = [socket.create_connection(address, timeout=10) for _ in range(3)]
    if "epoll" in load_chapter(chapter).FEATURES:  # chapter 1 serves one client at a time
        for client in clients:
            client.sendall(PING_PACKET)
            assert recv_exactly(client, 8) == PING_PACKET
    server.shutdown()
    thread.join(timeout=15)
    leftover = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert leftover == []
    for client in clients:
        client.settimeout(10)
        try:
            assert client.recv(1) == b""  # the server closed it
        except ConnectionResetError:
            pass
        client.close()


def test_stats_has_what_each_feature_promises_at_zero(chapter):
    features = load_chapter(chapter).FEATURES
    server = make_server(chapter)
    try:
        stats = flatten(server.stats())
    finally:
        server.shutdown()
    for feature in features:
        for key in PROMISED[feature]:
            assert key in stats, f"{chapter}: stats() lacks {key!r} ({feature})"
            assert isinstance(stats[key], int), key
            if key not in ZERO_AT_START:
                assert stats[key] == 0, f"{chapter}: {key} = {stats[key]} before any client"


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_metadata(name):
    chapter = load_chapter(name)
    assert chapter.TITLE.startswith(f"Chapter {int(name[:2])} ")
    first_line = chapter.__doc__.strip().splitlines()[0]
    assert first_line.startswith(f"Chapter {int(name[:2])}: ")


@pytest.mark.features("pool")
def test_one_injected_clock_drives_every_timer(chapter):
    """``Server(config, clock)`` hands one clock to every timer: the pool's recycle wait,
    from chapter 5 the heartbeat, from chapter 6 flood detection. With a clock that only
    the test moves, the shipped intervals (60 s, 70 s) pass at once, which could not
    happen on the real clock within this test's deadlines."""
    features = load_chapter(chapter).FEATURES
    clock = FakeClock()
    config = chapter_config(
        chapter,
        Sock_RecyConnectionWaitTime=60,
        Sock_WaitTimeEnable=1,
        Sock_MaxWaitTime=20,
        Sock_PingGraceTime=10,
        Sock_FloodAttackKickEnable=1,
        Sock_FloodTimeInterval=100,
        Sock_FloodKickCounter=3,
    )
    server = importlib.import_module(SERVER_MODULES[chapter]).Server(config, clock=clock)
    thread = start(server)
    try:
        address = server.addresses[0]
        if "flood" in features:
            # The clock stands still, so every packet comes "0 ms" after the last one,
            # however slowly the test sends them: the 4th ping is a flood.
            with socket.create_connection(address, timeout=10) as sock:
                for _ in range(3):
                    sock.sendall(PING_PACKET)
                    assert recv_exactly(sock, 8) == PING_PACKET
                sock.sendall(PING_PACKET)
                assert sock.recv(8) == b""  # closed, no reply
            wait_until(lambda: server.stats()["kicks"]["flood"] == 1)
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(PING_PACKET)
            assert recv_exactly(sock, 8) == PING_PACKET
            if "timers" in features:
                clock.now += 3 * 20 + 10 + 20 + 1  # past the kick time and one more check
                wait_until(lambda: server.stats()["kicks"]["silence"] == 1)
                assert sock.recv(8) == b""  # kicked
        wait_until(lambda: server.stats()["pool"]["recycling"] >= 1)
        clock.now += 61  # past the recycle wait: every closed connection is free again
        wait_until(lambda: server.stats()["pool"]["recycling"] == 0)
    finally:
        server.shutdown()
        thread.join(timeout=15)
