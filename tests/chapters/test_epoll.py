"""Concurrency and event-loop behaviour: chapter 2 and every later chapter."""

from __future__ import annotations

import importlib
import select
import socket
import threading
import time

import pytest

from common.protocol import PING_PACKET
from common.stats import Counters
from tests.conftest import (
    SERVER_MODULES,
    FakeClock,
    feature_modules,
    recv_exactly,
    reset,
    test_config,
    wait_until,
)

pytestmark = pytest.mark.features("epoll")


def test_200_clients_at_once_each_20_round_trips(serve):
    srv = serve()
    errors: list[BaseException] = []
    start = threading.Barrier(200, timeout=30)

    def client() -> None:
        try:
            with srv.raw(timeout=30) as sock:
                start.wait()  # all 200 connected before anyone talks
                for _ in range(20):
                    sock.sendall(PING_PACKET)
                    assert recv_exactly(sock, 8) == PING_PACKET
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    wait_until(lambda: srv.stats()["closed"] == 200)
    assert srv.stats()["packets_in"] == 200 * 20


def test_stalled_half_sent_client_does_not_delay_others(serve):
    srv = serve()
    with srv.raw() as stalled:
        stalled.sendall(PING_PACKET[:5])  # half a header, then nothing
        wait_until(lambda: srv.stats()["online"] == 1)
        with srv.raw() as other:
            for _ in range(10):
                other.sendall(PING_PACKET)
                assert recv_exactly(other, 8) == PING_PACKET
        # The stalled client is still connected and got nothing.
        stalled.setblocking(False)
        with pytest.raises(BlockingIOError):
            stalled.recv(1)


def test_client_that_stops_reading_does_not_block_others(serve):
    srv = serve()
    hog = srv.raw()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.setblocking(False)
    sent = 0
    burst = PING_PACKET * 4096
    deadline = time.monotonic() + 5
    # Push requests until the pipe is full both ways (the server's replies fill our tiny
    # receive buffer, then the server must stop or queue); never read.
    while time.monotonic() < deadline:
        try:
            sent += hog.send(burst)
        except BlockingIOError:
            break
        except OSError:
            break  # a chapter with a backlog limit may already have kicked us
    assert sent > 0
    with srv.raw() as other:
        for _ in range(50):
            other.sendall(PING_PACKET)
            assert recv_exactly(other, 8) == PING_PACKET
    hog.close()


@pytest.mark.features("in-process")  # reaches into the server object
def test_stale_event_for_a_reused_fd_is_ignored(chapter):
    """One batch: a read event closes fd N, an accept reuses N, then a second (stale) read
    event for N arrives. It must not be delivered to the new connection."""
    module = importlib.import_module(SERVER_MODULES[chapter])
    server = module.Server(test_config())
    host, port = server.addresses[0]
    listen_fd = server.listeners[0].fileno()
    first = socket.create_connection((host, port), timeout=5)
    second = None
    try:
        server.loop.process_events([(listen_fd, 1)])  # accept the first client
        wait_until(lambda: server.stats()["online"] == 1)
        old_fd = max(fd for fd in _client_fds(server))
        reset(first)  # the next read on old_fd fails with ECONNRESET
        second = socket.create_connection((host, port), timeout=5)
        second.sendall(PING_PACKET)  # if the stale event reached it, it would be answered
        server.loop.process_events([(old_fd, 1), (listen_fd, 1), (old_fd, 1)])
        new_fds = list(_client_fds(server))
        assert new_fds == [old_fd], "the new connection should have reused the closed fd"
        assert server.stats()["stale_events"] == 1
        second.setblocking(False)
        with pytest.raises(BlockingIOError):
            second.recv(8)  # not answered: the stale event was dropped
        second.setblocking(True)
        server.loop.process_events([(old_fd, 1)])  # a real event for the new connection
        assert recv_exactly(second, 8) == PING_PACKET
    finally:
        if second is not None:
            second.close()
        server.shutdown()


def _client_fds(server) -> list[int]:
    listener_fds = {s.fileno() for s in server.listeners}
    return [fd for fd in server.loop.conns if fd not in listener_fds]


# -- unit: the event loop on its own -------------------------------------------------------

loop_modules = feature_modules("epoll", "eventloop", "connection")
IN, OUT = select.EPOLLIN, select.EPOLLOUT


class Handlers:
    """``rhandler``/``whandler`` that record each call as (name, addr); ``on_read`` runs
    inside the read handler (to close the connection, say)."""

    def __init__(self, on_read=None) -> None:
        self.calls: list[tuple[str, object]] = []
        self.on_read = on_read

    def read(self, conn) -> None:
        self.calls.append(("read", conn.addr))
        if self.on_read is not None:
            self.on_read(conn)

    def write(self, conn) -> None:
        self.calls.append(("write", conn.addr))


def _connection(connection_mod, sock, addr, rhandler, whandler):
    """A client connection, in the chapter's style (chapter 2 builds one per client;
    from chapter 3 on the pool's objects are attached)."""
    if hasattr(connection_mod.Connection, "attach"):
        return connection_mod.Connection().attach(sock, addr, rhandler, whandler)
    return connection_mod.Connection(sock, addr, rhandler, whandler)


@pytest.fixture
def loop_and_pair(loop_modules):
    """An event loop without listeners, and a connected socket pair: ``ours`` would be the
    server's end."""
    eventloop_mod, connection_mod = loop_modules
    loop = eventloop_mod.EventLoop([], Counters(eventloop_mod.EventLoop.COUNTERS))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(10)
    yield loop, connection_mod, ours, theirs
    loop.close()
    ours.close()
    theirs.close()


def test_each_event_goes_to_its_handler(loop_and_pair):
    loop, connection_mod, ours, _ = loop_and_pair
    handlers = Handlers()
    conn = _connection(connection_mod, ours, ("c", 1), handlers.read, handlers.write)
    loop.watch(conn, IN)
    for mask, expected in [
        (IN, ["read"]),
        (select.EPOLLRDHUP, ["read"]),  # the peer's FIN: the read path sees EOF
        (OUT, ["write"]),
        (IN | OUT, ["read", "write"]),
        (select.EPOLLERR, ["read", "write"]),  # an error: both paths, which see the errno
        (select.EPOLLHUP, ["read", "write"]),
    ]:
        handlers.calls.clear()
        loop.process_events([(conn.fd, mask)])
        assert [name for name, _ in handlers.calls] == expected, mask
    handlers.calls.clear()
    loop.process_events([(12345, IN)])  # a descriptor the loop does not know: ignored
    assert handlers.calls == []


def test_no_write_event_for_a_listener_or_a_connection_the_read_closed(loop_and_pair):
    loop, connection_mod, ours, theirs = loop_and_pair
    handlers = Handlers(on_read=lambda conn: setattr(conn, "closed", True))
    conn = _connection(connection_mod, ours, ("c", 1), handlers.read, handlers.write)
    loop.watch(conn, IN | OUT)
    loop.process_events([(conn.fd, IN | OUT)])
    assert handlers.calls == [("read", ("c", 1))]
    listener_handlers = Handlers()
    listener = _connection(connection_mod, theirs, ("l", 2), listener_handlers.read, None)
    loop.watch(listener, IN)
    loop.process_events([(listener.fd, IN | OUT | select.EPOLLERR)])
    assert listener_handlers.calls == [("read", ("l", 2))]
    assert loop.clients() == [conn]  # a listener is not a client


def test_an_event_for_a_connection_closed_earlier_in_the_batch_is_stale(loop_and_pair):
    """Two events for one descriptor in one batch, the first closes it, a new client gets
    the same descriptor number: the second event is about the old client, never delivered
    to the new one; the next batch's events are the new client's."""
    loop, connection_mod, ours, _ = loop_and_pair
    new_handlers = Handlers()
    replacement = {}

    def close_and_reuse(conn) -> None:
        loop.forget(conn)
        replacement["conn"] = new = _connection(
            connection_mod, ours, ("new", 2), new_handlers.read, new_handlers.write
        )
        loop.watch(new, IN)  # same socket, so the same descriptor number

    old_handlers = Handlers(on_read=close_and_reuse)
    old = _connection(connection_mod, ours, ("old", 1), old_handlers.read, old_handlers.write)
    loop.watch(old, IN)
    fd = old.fd
    loop.process_events([(fd, IN), (fd, IN | OUT)])
    assert old_handlers.calls == [("read", ("old", 1))]
    assert new_handlers.calls == []
    assert loop.counters.get("stale_events") == 1
    loop.process_events([(fd, IN)])  # a new batch: this event is the new client's
    assert new_handlers.calls == [("read", ("new", 2))]
    assert loop.conns == {fd: replacement["conn"]}


def test_a_skipped_event_does_not_cost_the_rest_of_the_batch(loop_and_pair):
    """A stale event, the wake-up's event and an event for an unknown descriptor are each
    skipped alone: the events after them in the batch are still delivered."""
    loop, connection_mod, ours, theirs = loop_and_pair
    handlers = Handlers()
    conn = _connection(connection_mod, ours, ("c", 1), handlers.read, handlers.write)
    loop.watch(conn, IN)
    gone_handlers = Handlers(on_read=loop.forget)
    gone = _connection(connection_mod, theirs, ("gone", 2), gone_handlers.read, print)
    loop.watch(gone, IN)
    loop.process_events([(gone.fd, IN), (gone.fd, IN), (conn.fd, IN)])  # the 2nd is stale
    assert handlers.calls == [("read", ("c", 1))]
    loop.wake()
    [(wake_fd, _)] = loop.epoll.poll(1)
    for skipped in (wake_fd, 12345):
        handlers.calls.clear()
        loop.process_events([(skipped, IN), (conn.fd, IN)])
        assert handlers.calls == [("read", ("c", 1))], skipped


def test_watch_set_mask_and_forget_steer_what_epoll_reports(loop_and_pair):
    loop, connection_mod, ours, theirs = loop_and_pair
    handlers = Handlers()
    conn = _connection(connection_mod, ours, ("c", 1), handlers.read, handlers.write)
    loop.watch(conn, IN)
    assert loop.epoll.poll(0) == []  # nothing to read, and writability not asked for
    loop.set_mask(conn, IN | OUT)
    assert conn.mask == IN | OUT
    assert loop.epoll.poll(0) == [(conn.fd, OUT)]
    theirs.sendall(b"x")
    assert loop.epoll.poll(0) == [(conn.fd, IN | OUT)]
    loop.set_mask(conn, IN)
    assert loop.epoll.poll(0) == [(conn.fd, IN)]
    conn.closed = True
    loop.set_mask(conn, IN | OUT)  # a closed connection's mask is left alone
    assert conn.mask == IN and loop.epoll.poll(0) == [(conn.fd, IN)]
    loop.forget(conn)
    loop.forget(conn)  # twice: nothing to take out the second time, no error
    assert loop.epoll.poll(0) == [] and loop.conns == {} and loop.clients() == []


def test_set_mask_leaves_epoll_alone_when_the_mask_does_not_change(loop_and_pair):
    loop, connection_mod, ours, _ = loop_and_pair
    conn = _connection(connection_mod, ours, ("c", 1), print, print)
    loop.watch(conn, IN)
    loop.epoll.unregister(conn.fd)  # so a modify() would raise
    loop.set_mask(conn, IN)  # the same mask: no system call
    with pytest.raises(FileNotFoundError):
        loop.set_mask(conn, IN | OUT)


def test_wake_makes_a_waiting_loop_look_at_its_condition(loop_and_pair):
    loop, *_ = loop_and_pair
    checked, stop = threading.Event(), threading.Event()

    def stopping() -> bool:
        checked.set()
        return stop.is_set()

    runner = threading.Thread(target=loop.run, args=(stopping,), daemon=True)
    runner.start()
    assert checked.wait(10)  # it has looked once, and polls (or is about to) with no timeout
    stop.set()
    loop.wake()  # only this ends its wait: no client, no timeout
    runner.join(timeout=10)
    assert not runner.is_alive()


def test_an_idle_loop_sleeps_until_something_happens(loop_and_pair):
    """With no event and no pause, the loop waits in epoll with no timeout: over more
    than a second it looks at its condition once, before its first wait, and never again
    until it is woken (an idle server costs no CPU)."""
    loop, *_ = loop_and_pair
    looks = []
    runner = threading.Thread(target=loop.run, args=(lambda: looks.append(1) or len(looks) > 1,))
    runner.daemon = True
    runner.start()
    try:
        wait_until(lambda: looks)
        time.sleep(1.2)  # a loop polling with a timeout of a second would have looked again
        assert len(looks) == 1
    finally:
        loop.wake()
        runner.join(timeout=10)
    assert not runner.is_alive()


def test_a_wake_up_is_consumed(loop_and_pair):
    loop, *_ = loop_and_pair
    loop.wake()
    loop.wake()  # two before the loop looks: one wake-up
    events = loop.epoll.poll(1)
    assert len(events) == 1
    loop.process_events(events)
    assert loop.epoll.poll(0) == []  # nothing left: the loop sleeps again


def test_in_loop_thread(loop_and_pair):
    loop, connection_mod, ours, theirs = loop_and_pair
    if not hasattr(loop, "in_loop_thread"):
        pytest.skip("this chapter's loop runs every handler itself")
    assert loop.in_loop_thread()  # no thread runs it: a test driving it by hand
    seen = []
    stop = threading.Event()

    def read(conn) -> None:
        seen.append(loop.in_loop_thread())
        ours.recv(1)
        stop.set()

    conn = _connection(connection_mod, ours, ("c", 1), read, print)
    loop.watch(conn, IN)
    runner = threading.Thread(target=loop.run, args=(stop.is_set,), daemon=True)
    runner.start()
    wait_until(lambda: loop.thread != 0)
    assert not loop.in_loop_thread()  # the test's thread, while another runs the loop
    theirs.sendall(b"x")
    runner.join(timeout=10)
    assert not runner.is_alive() and seen == [True]


# The accept pause arrived with the pool (chapter 3): a listener that stays readable
# while accept() fails with EMFILE is left out of the epoll set for ACCEPT_PAUSE seconds.
pause_modules = feature_modules("pool", "eventloop", "connection")


@pytest.fixture
def paused_loop(pause_modules):
    """A loop watching one listener with a client waiting in its accept queue."""
    eventloop_mod, connection_mod = pause_modules
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    client = socket.create_connection(server.getsockname()[:2], timeout=10)
    accepts = Handlers()
    listener = connection_mod.Connection().attach(server, ("l", 0), accepts.read, None)
    clock = FakeClock(100.0)
    loop = eventloop_mod.EventLoop([listener], Counters(eventloop_mod.EventLoop.COUNTERS), clock)
    yield eventloop_mod, connection_mod, loop, listener, accepts, clock
    loop.close()
    client.close()
    server.close()


def test_a_paused_listener_is_not_watched_until_the_pause_is_over(paused_loop):
    """Paused at 100.0 and again at 100.25: the listener is out of the epoll set until
    100.75. The running loop wakes on its own to look at the clock (nothing else happens),
    and watches the listener again once the pause is over, to the bit."""
    eventloop_mod, _, loop, listener, accepts, clock = paused_loop
    assert loop.epoll.poll(0) == [(listener.fd, IN)]  # a client waits to be accepted
    loop.pause_accepting()  # at 100.0: until 100.5
    assert eventloop_mod.ACCEPT_PAUSE == 0.5
    assert loop.epoll.poll(0) == []
    clock.now = 100.25
    loop.pause_accepting()  # again while paused: until 100.75, no error
    clock.now = 100.5
    looks = []

    def stopping() -> bool:
        looks.append(clock.now)
        return bool(accepts.calls)

    runner = threading.Thread(target=loop.run, args=(stopping,), daemon=True)
    runner.start()
    try:
        wait_until(lambda: len(looks) >= 3, timeout=10)  # it woke twice without any event
        assert accepts.calls == []  # still paused at 100.5
        clock.now = 100.75  # the pause ends exactly now
        runner.join(timeout=10)
        assert not runner.is_alive()
        assert accepts.calls[:1] == [("read", ("l", 0))]
    finally:
        accepts.calls.append(("stop", None))
        loop.wake()
        runner.join(timeout=10)


def test_after_a_pause_the_loop_sleeps_until_something_happens(pause_modules):
    """Once the pause is over and the listener is watched again, an idle loop waits in
    epoll with no timeout again, as before the pause."""
    eventloop_mod, connection_mod = pause_modules
    server = socket.create_server(("127.0.0.1", 0))  # nobody connects to it
    clock = FakeClock(100.0)
    listener = connection_mod.Connection().attach(server, ("l", 0), print, None)
    loop = eventloop_mod.EventLoop([listener], Counters(eventloop_mod.EventLoop.COUNTERS), clock)
    looks = []
    runner = threading.Thread(target=loop.run, args=(lambda: looks.append(1) or len(looks) > 1,))
    runner.daemon = True
    try:
        loop.pause_accepting()
        clock.now = 100.5  # the pause is over at the loop's first look
        runner.start()
        wait_until(lambda: looks)
        time.sleep(1.2)  # a loop polling with a timeout of a second would have looked again
        assert len(looks) == 1
    finally:
        loop.wake()
        if runner.ident is not None:
            runner.join(timeout=10)
        loop.close()
        server.close()
    assert not runner.is_alive()


def test_a_closed_connection_ends_the_pause_at_once(paused_loop):
    _, connection_mod, loop, listener, _, _ = paused_loop
    a, b = socket.socketpair()
    try:
        conn = connection_mod.Connection().attach(a, ("c", 1), print, print)
        loop.watch(conn, IN)
        loop.pause_accepting()
        assert loop.epoll.poll(0) == []
        loop.forget(conn)  # a descriptor is free again: accepting may work now
        assert loop.epoll.poll(0) == [(listener.fd, IN)]
        loop.pause_accepting()  # and a pause after that pauses again
        assert loop.epoll.poll(0) == []
    finally:
        a.close()
        b.close()
