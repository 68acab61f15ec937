"""Worker pool and send queue (chapter 4 and later)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from common.logic import UserStore
from common.protocol import PING_PACKET, Login, MsgCode, Register, Status, encode_packet
from common.stats import Counters
from tests.conftest import (
    assert_closed_by_server,
    feature_modules,
    recv_exactly,
    recv_until_eof,
    reset,
    wait_until,
)
from tools.client import login_packet, register_packet

pytestmark = pytest.mark.features("sendqueue")


def login_reply(status: Status, username: str) -> bytes:
    return encode_packet(MsgCode.LOGIN, Login(username, status.name).encode())


def register_reply(status: Status, username: str) -> bytes:
    return encode_packet(MsgCode.REGISTER, Register(int(status), username, status.name).encode())


class GatedStore(UserStore):
    """A user store whose register() blocks until the test opens the gate: a login that
    takes as long as the test wants, without measuring any duration."""

    def __init__(self) -> None:
        super().__init__(":memory:", iterations=1000)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def register(self, username: str, password: str) -> Status:
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise AssertionError("gate never opened")
        return super().register(username, password)


def _mixed_stream(n: int) -> tuple[bytes, bytes]:
    """n requests, mostly pings, every 97th a login for a distinct unknown user (cheap: no
    hash), so the replies' order is visible in the bytes."""
    requests, replies = [], []
    for i in range(n):
        if i % 97 == 0:
            name = f"u{i}"
            requests.append(login_packet(name, "x"))
            replies.append(login_reply(Status.NO_USER, name))
        else:
            requests.append(PING_PACKET)
            replies.append(PING_PACKET)
    return b"".join(requests), b"".join(replies)


def test_slow_reader_with_tiny_buffer_gets_everything_in_order(serve):
    """A client that keeps reading, however slowly, is never kicked: it gets every reply,
    in order, though its replies waited for EPOLLOUT many times (shipped limits)."""
    srv = serve(Sock_SendBufferSize=4096)
    request, want = _mixed_stream(20000)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.settimeout(30)
    sock.connect((srv.host, srv.port))
    sender = threading.Thread(target=sock.sendall, args=(request,), daemon=True)
    sender.start()
    got = bytearray()
    try:
        while len(got) < len(want):
            chunk = sock.recv(512)  # small reads: the reader is slower than the server
            assert chunk, f"server closed after {len(got)} of {len(want)} bytes"
            got += chunk
        assert srv.stats()["closed"] == 0
    finally:
        sender.join(timeout=30)
        sock.close()
    assert bytes(got) == want
    assert srv.stats()["epollout_armed"] > 0


def test_fast_pipelining_reader_with_small_send_buffer_is_never_kicked(serve):
    """The case that kicked well-behaved clients: replies land while the kernel buffer is
    full (the client reads only once the server has had to arm EPOLLOUT), then the client
    reads as fast as it can. Logins pipelined by the thousand: every reply, no kick."""
    srv = serve(Sock_SendBufferSize=4096)
    names = [f"nobody{i}" for i in range(3000)]
    request = b"".join(login_packet(name, "x") for name in names)
    want = b"".join(login_reply(Status.NO_USER, name) for name in names)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.settimeout(30)
    sock.connect((srv.host, srv.port))
    sender = threading.Thread(target=sock.sendall, args=(request,), daemon=True)
    try:
        sender.start()
        wait_until(lambda: srv.stats()["epollout_armed"] > 0)  # its replies wait for it
        assert recv_exactly(sock, len(want)) == want
        assert srv.stats()["closed"] == 0
    finally:
        sender.join(timeout=30)
        sock.close()


def _fill_until_blocked(hog: socket.socket, give_up: float = 20.0) -> None:
    """Send pings without reading until the server stops reading us: our sends block
    for a whole second (the kernel buffers on both sides are full)."""
    import time

    hog.setblocking(False)
    burst = PING_PACKET * 8192
    pending = memoryview(burst)
    deadline = time.monotonic() + give_up
    blocked_since = None
    while time.monotonic() < deadline:
        try:
            sent = hog.send(pending)  # keep the stream whole: a cut packet is malformed
            pending = pending[sent:] or memoryview(burst)
            blocked_since = None
        except BlockingIOError:
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > 1.0:
                return
            threading.Event().wait(0.01)
    raise AssertionError("the server kept reading a client that never reads")


def test_client_that_never_reads_is_throttled_with_bounded_memory(serve):
    """Backpressure: a client that never reads gets its requests read no more once its
    replies wait, so what the server holds for it stays bounded, and others are served."""
    srv = serve()
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    hog.settimeout(30)
    hog.connect((srv.host, srv.port))
    try:
        _fill_until_blocked(hog)
        with srv.raw() as other:
            for _ in range(100):
                other.sendall(PING_PACKET)
                assert recv_exactly(other, 8) == PING_PACKET
            # The hog's sends block once the server stops reading it: its replies wait,
            # or (on a starved machine, before the workers have answered) its receive
            # window is full; either way its replies end up waiting for it.
            wait_until(lambda: srv.stats()["waiting_epollout"] == 1)
            stats = srv.stats()
        # At most a receive window of requests, plus what one 64 KiB read parsed.
        assert stats["unsent_bytes"] <= (1024 + 65536 // 8) * 8
        assert stats["queues"]["receive"] <= 1024 + 65536 // 8
        assert stats["online"] == 2 and stats["closed"] == 0  # throttled, not kicked
    finally:
        hog.close()


@pytest.mark.parametrize("n", [500, 2000, 4000])
def test_pipelined_burst_from_a_reading_client_is_never_kicked(serve, n):
    """Reference bugs 3 and 4: all replies, in order, and no kick."""
    srv = serve()
    request, want = _mixed_stream(n)
    with srv.raw(timeout=30) as sock:
        sock.sendall(request)
        assert recv_exactly(sock, len(want)) == want
        assert srv.stats()["closed"] == 0


@pytest.mark.features("in-process")  # reaches into the server object
def test_reply_for_a_closed_connection_never_reaches_the_new_owner(serve):
    srv = serve(worker_connections=1, Sock_RecyConnectionWaitTime=0)
    store = GatedStore()
    srv.server.logic.store = store
    old = srv.raw()
    old.sendall(register_packet("zed", "pw"))
    assert store.entered.wait(10)  # a worker is inside register() for the old client
    reset(old)
    wait_until(lambda: srv.stats()["closed"] == 1)
    wait_until(lambda: srv.stats()["pool"]["free"] == 1)
    with srv.raw() as new:
        new.sendall(PING_PACKET)
        assert recv_exactly(new, 8) == PING_PACKET
        assert srv.stats()["pool"]["total"] == 1  # the new client has the old object
        store.gate.set()  # now the old client's reply is produced...
        wait_until(lambda: srv.stats()["replies_dropped"]["stale"] == 1)
        new.sendall(PING_PACKET)  # ...and dropped: the next bytes are our ping's reply
        assert recv_exactly(new, 8) == PING_PACKET


@pytest.mark.features("in-process")  # reaches into the server object
def test_pings_are_answered_while_a_login_is_being_processed(serve):
    """The point of the chapter: a slow request no longer stalls other clients. The
    ordering is asserted, not durations: B's pings all come back while A's register is
    still held inside the logic."""
    srv = serve()
    store = GatedStore()
    srv.server.logic.store = store
    with srv.raw() as a, srv.raw() as b:
        a.sendall(register_packet("slow", "pw"))
        assert store.entered.wait(10)
        for _ in range(20):
            b.sendall(PING_PACKET)
            assert recv_exactly(b, 8) == PING_PACKET
        assert not store.gate.is_set()  # A's request was still in progress throughout
        store.gate.set()
        assert recv_exactly(a, 108) == register_reply(Status.OK, "slow")


@pytest.mark.features("in-process")  # reaches into the server object
def test_half_close_while_a_request_is_with_the_workers(serve):
    """Reference bug 5 with replies produced on another thread: FIN arrives while the
    register is still running; the reply is still delivered before the close."""
    srv = serve()
    store = GatedStore()
    srv.server.logic.store = store
    with srv.raw() as sock:
        sock.sendall(PING_PACKET * 3 + register_packet("hc", "pw") + PING_PACKET)
        assert store.entered.wait(10)
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: srv.stats()["half_closed"] == 1)  # the server saw the FIN
        store.gate.set()
        want = PING_PACKET * 3 + register_reply(Status.OK, "hc") + PING_PACKET
        assert recv_until_eof(sock) == want


def test_tiny_send_queue_loses_nothing(serve):
    """The send queue is bounded (``Sock_SendQueueLimit``), but a full queue makes the
    workers wait instead of dropping replies, as the original does past 50000."""
    srv = serve(Sock_SendQueueLimit=1, ProcMsgRecvWorkThreadCount=2)
    socks = [srv.raw(timeout=30) for _ in range(4)]
    try:
        for sock in socks:
            sock.sendall(PING_PACKET * 2000)
            sock.shutdown(socket.SHUT_WR)
        for sock in socks:
            assert recv_until_eof(sock) == PING_PACKET * 2000
    finally:
        for sock in socks:
            sock.close()


def test_counters_lose_no_updates_under_concurrency(serve):
    srv = serve()
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with srv.raw(timeout=30) as sock:
                sock.sendall(PING_PACKET * 500)
                assert recv_exactly(sock, 8 * 500) == PING_PACKET * 500
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    # The send thread counts a reply just after writing it, so the last count may land a
    # moment after the client has the bytes: wait for it, then check it is exact.
    wait_until(lambda: srv.stats()["replies_out"] >= 20 * 500)
    stats = srv.stats()
    assert stats["packets_in"] == 20 * 500
    assert stats["replies_out"] == 20 * 500


def test_shutdown_under_load_leaves_no_thread_running(serve):
    before = {t.ident for t in threading.enumerate()}
    srv = serve()
    stop_clients = threading.Event()

    def pump() -> None:
        try:
            with srv.raw(timeout=5) as sock:
                while not stop_clients.is_set():
                    sock.sendall(PING_PACKET * 100 + login_packet("x", "y"))
        except OSError:
            pass  # the server went away: expected

    pumps = [threading.Thread(target=pump, daemon=True) for _ in range(8)]
    for t in pumps:
        t.start()
    wait_until(lambda: srv.stats()["packets_in"] > 5000)
    srv.stop()
    stop_clients.set()
    for t in pumps:
        t.join(timeout=10)
    leftover = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert leftover == []


@pytest.mark.features("timers")
def test_client_that_stops_reading_is_kicked_by_the_heartbeat(serve):
    """From chapter 5: a client whose replies wait and that takes no byte of them for the
    heartbeat's timeout is kicked as ``send_stall`` (its pings wait unread behind them),
    and sees the connection closed."""
    srv = serve(Sock_WaitTimeEnable=1, Sock_MaxWaitTime=0.2, Sock_PingGraceTime=0.2)
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    hog.settimeout(30)
    hog.connect((srv.host, srv.port))
    try:
        hog.setblocking(False)
        pace = threading.Event()

        def kicked() -> bool:
            try:
                hog.send(PING_PACKET * 1024)  # keep the replies coming; never read
            except BlockingIOError:
                pace.wait(0.01)
            except OSError:
                pass  # reset: the kick already happened
            return srv.stats()["kicks"]["send_stall"] == 1

        wait_until(kicked, timeout=20)
        hog.setblocking(True)
        assert_closed_by_server(hog)
        assert srv.stats()["kicks"]["silence"] == 0
    finally:
        hog.close()


class SlowStore(UserStore):
    """Each register takes 50 ms, like a real password hash (work inside the server, not a
    sleep used to synchronise the test); ``done`` counts the registers finished."""

    def __init__(self) -> None:
        super().__init__(":memory:", iterations=1000)
        self.pace = threading.Event()
        self.done = 0

    def register(self, username: str, password: str) -> Status:
        self.pace.wait(0.05)
        status = super().register(username, password)
        self.done += 1
        return status


@pytest.mark.features("in-process")  # reaches into the server object
def test_a_client_pipelining_slow_requests_does_not_starve_others(serve):
    """One worker, one client with 40 slow registers queued: another client's ping is
    answered after at most one more of them (the greedy client's turn), not after all 40.
    Counted in registers finished between the ping's arrival and its answer, not in time."""
    srv = serve(ProcMsgRecvWorkThreadCount=1)
    store = srv.server.logic.store = SlowStore()
    marks: dict[str, int] = {}
    submit, handle = srv.server.workers.submit, srv.server.logic.handle

    def submit_watched(conn, generation, packets):
        if any(p.code == MsgCode.PING for p in packets):
            marks.setdefault("ping arrived", store.done)
        submit(conn, generation, packets)

    def handle_watched(packet):
        if packet.code == MsgCode.PING:
            marks.setdefault("ping answered", store.done)
        return handle(packet)

    srv.server.workers.submit = submit_watched
    srv.server.logic.handle = handle_watched
    with srv.raw(timeout=30) as greedy, srv.raw(timeout=30) as other:
        greedy.sendall(b"".join(register_packet(f"g{i}", "pw") for i in range(40)))
        assert recv_exactly(greedy, 108) == register_reply(Status.OK, "g0")
        other.sendall(PING_PACKET)
        assert recv_exactly(other, 8) == PING_PACKET
        assert marks["ping answered"] - marks["ping arrived"] <= 1
        assert marks["ping answered"] < 40  # the greedy client still had work queued
        rest = recv_exactly(greedy, 39 * 108)
        assert rest == b"".join(register_reply(Status.OK, f"g{i}") for i in range(1, 40))


@pytest.mark.features("in-process")  # reaches into the server object
def test_no_request_waits_behind_another_clients_while_a_worker_is_idle(serve):
    """Four workers, three of them held inside registers that cannot finish yet: the
    fourth answers every other client's requests. (A worker that took several clients at
    once could hold pings behind a register while another worker sat idle.)"""
    srv = serve(ProcMsgRecvWorkThreadCount=4)
    store = srv.server.logic.store = GatedStore()
    inside = threading.Semaphore(0)
    register = store.register

    def register_counted(username: str, password: str) -> Status:
        inside.release()
        return register(username, password)

    store.register = register_counted
    holders = [srv.raw(timeout=30) for _ in range(3)]
    pingers = [srv.raw(timeout=30) for _ in range(30)]
    try:
        for i, sock in enumerate(holders):
            sock.sendall(register_packet(f"held{i}", "pw"))
        for _ in holders:
            assert inside.acquire(timeout=10)  # three workers are now held
        for sock in pingers:
            sock.sendall(PING_PACKET * 3)
        for sock in pingers:
            assert recv_exactly(sock, 24) == PING_PACKET * 3
        assert not store.gate.is_set()  # all answered while the three were still held
        store.gate.set()
        for i, sock in enumerate(holders):
            assert recv_exactly(sock, 108) == register_reply(Status.OK, f"held{i}")
    finally:
        store.gate.set()
        for sock in holders + pingers:
            sock.close()


# -- unit: the send queue on its own -------------------------------------------------------

sendqueue_modules = feature_modules("sendqueue", "sendqueue", "connection")


class GatedServer:
    """The two calls the send thread makes on the server; ``resolved`` waits at a gate,
    so the send thread is held inside a write for as long as the test wants."""

    clock = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.closed: list[str] = []

    def resolved(self, conn, n: int) -> bool:
        self.entered.set()
        assert self.gate.wait(10), "gate never opened"
        return False

    def close_connection(self, conn, why: str, generation=None) -> None:
        self.closed.append(why)


def test_full_send_queue_makes_the_producer_wait_then_delivers_in_order(sendqueue_modules):
    sendqueue_mod, connection_mod = sendqueue_modules
    ours, theirs = socket.socketpair()
    theirs.settimeout(10)
    conn = connection_mod.Connection().attach(ours, ("test", 0), print, print)
    gen = conn.generation
    server = GatedServer()
    counters = Counters(sendqueue_mod.SendQueue.COUNTERS, ["replies_out"])
    queue = sendqueue_mod.SendQueue(2, server, counters)
    try:
        queue.put_many([(conn, gen, b"1")])
        assert server.entered.wait(10)  # the send thread wrote "1" and is held
        queue.put_many([(conn, gen, b"2"), (conn, gen, b"3")])  # the queue is full
        waiter = threading.Thread(target=queue.put_many, args=([(conn, gen, b"4")],))
        waiter.start()
        wait_until(lambda: counters.get("send_queue_full") == 1)
        assert queue.size == 2 and waiter.is_alive()  # it waits: nothing was dropped
        server.gate.set()
        waiter.join(timeout=10)
        assert not waiter.is_alive()
        assert recv_exactly(theirs, 4) == b"1234"
        assert server.closed == []
    finally:
        server.gate.set()
        queue.close()
        ours.close()
        theirs.close()
