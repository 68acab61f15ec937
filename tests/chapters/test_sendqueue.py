"""Worker pool and send queue (chapter 4 and later)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from common.config import ConfigError
from common.logic import UserStore
from common.protocol import PING_PACKET, Login, MsgCode, Register, Status, encode_packet
from common.stats import Counters
from tests.conftest import (
    assert_closed_by_server,
    feature_modules,
    recv_exactly,
    recv_until_eof,
    reset,
    test_config,
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


class StubSocket:
    """A client socket whose ``send`` does what the test scripts: takes ``n`` bytes, or
    raises. Records what it was given, one entry per call."""

    def __init__(self, *script) -> None:
        self.script = list(script)  # an int (bytes taken, None: all) or an exception
        self.calls: list[bytes] = []

    def fileno(self) -> int:
        return 1000

    def send(self, data) -> int:
        self.calls.append(bytes(data))
        step = self.script.pop(0) if self.script else None
        if isinstance(step, BaseException):
            raise step
        return len(data) if step is None else step


class RecordingServer:
    """The three things the send thread asks of the server, recorded."""

    def __init__(self, finish: bool = False) -> None:
        self.finish = finish
        self.resolved_counts: list[int] = []
        self.resolved_for: list[object] = []
        self.closed: list[tuple[object, str, int | None]] = []

    @staticmethod
    def clock() -> float:
        return 123.5

    def resolved(self, conn, n: int) -> bool:
        self.resolved_counts.append(n)
        self.resolved_for.append(conn)
        return self.finish

    def close_connection(self, conn, why: str, generation=None) -> None:
        self.closed.append((conn, why, generation))


def _send_one_batch(sendqueue_mod, server, replies, done=None) -> Counters:
    """Queue ``replies`` at once, wait until the send thread has dealt with them (every
    reply counted out or dropped, or ``done()``), stop it."""
    counters = Counters(sendqueue_mod.SendQueue.COUNTERS, ["replies_out"])
    queue = sendqueue_mod.SendQueue(100, server, counters)

    def dealt_with() -> bool:
        if done is not None:
            return done()
        return counters.get("replies_out") + counters.get("replies_dropped.stale") == len(replies)

    try:
        queue.put_many(replies)
        wait_until(dealt_with)
    finally:
        queue.close()
    return counters


def _stall_clock(connection_mod) -> bool:
    """The chapter times how long replies wait (``sent_at``, from chapter 5's heartbeat)."""
    return hasattr(connection_mod.Connection, "sent_at")


def test_a_send_refused_before_any_byte_keeps_the_whole_reply(sendqueue_modules):
    """EAGAIN on the first byte: the reply waits whole in ``out`` for EPOLLOUT, and the
    clock starts for the heartbeat's send stall; later replies queue behind it."""
    sendqueue_mod, connection_mod = sendqueue_modules
    sock = StubSocket(BlockingIOError())
    conn = connection_mod.Connection().attach(sock, ("test", 0), print, print)
    server = RecordingServer()
    counters = _send_one_batch(sendqueue_mod, server, [(conn, conn.generation, b"hello")])
    assert bytes(conn.out) == b"hello"
    if _stall_clock(connection_mod):
        assert conn.sent_at == 123.5
    assert server.resolved_counts == [1] and server.closed == []
    assert server.resolved_for == [conn]  # the reply is accounted to its own client
    assert counters.get("replies_out") == 1
    _send_one_batch(sendqueue_mod, server, [(conn, conn.generation, b" world")])
    assert bytes(conn.out) == b"hello world"  # behind the waiting bytes, not sent first
    assert len(sock.calls) == 1


def test_a_partial_send_keeps_the_rest_and_a_whole_one_keeps_nothing(sendqueue_modules):
    sendqueue_mod, connection_mod = sendqueue_modules
    conn = connection_mod.Connection().attach(StubSocket(2), ("test", 0), print, print)
    _send_one_batch(sendqueue_mod, RecordingServer(), [(conn, conn.generation, b"hello")])
    assert bytes(conn.out) == b"llo"
    whole = connection_mod.Connection().attach(StubSocket(), ("test", 0), print, print)
    _send_one_batch(sendqueue_mod, RecordingServer(), [(whole, whole.generation, b"hello")])
    assert bytes(whole.out) == b""
    if _stall_clock(connection_mod):
        assert conn.sent_at == 123.5
        assert whole.sent_at == 0.0  # nothing waits for it: its stall clock never started


def test_one_send_per_client_per_batch_each_in_order(sendqueue_modules):
    sendqueue_mod, connection_mod = sendqueue_modules
    a_sock, b_sock = StubSocket(), StubSocket()
    a = connection_mod.Connection().attach(a_sock, ("a", 1), print, print)
    b = connection_mod.Connection().attach(b_sock, ("b", 2), print, print)
    server = RecordingServer()
    replies = [(a, a.generation, b"a1"), (b, b.generation, b"b1"), (a, a.generation, b"a2")]
    replies += [(a, a.generation, b"a3")]
    counters = _send_one_batch(sendqueue_mod, server, replies)
    assert a_sock.calls == [b"a1a2a3"] and b_sock.calls == [b"b1"]
    assert sorted(server.resolved_counts) == [1, 3]
    assert counters.get("replies_out") == 4


def test_replies_for_a_closed_or_reused_connection_are_dropped(sendqueue_modules):
    sendqueue_mod, connection_mod = sendqueue_modules
    sock = StubSocket()
    conn = connection_mod.Connection().attach(sock, ("test", 0), print, print)
    old = conn.generation
    conn.detach()
    conn.attach(sock, ("test", 0), print, print)  # a new client owns the object now
    server = RecordingServer()
    counters = _send_one_batch(sendqueue_mod, server, [(conn, old, b"x"), (conn, old, b"y")])
    assert sock.calls == [] and server.resolved_counts == []
    assert counters.get("replies_dropped.stale") == 2
    assert counters.get("replies_out") == 0
    closed = connection_mod.Connection().attach(StubSocket(), ("test", 0), print, print)
    closed.closed = True  # closed, not yet detached
    counters = _send_one_batch(sendqueue_mod, server, [(closed, closed.generation, b"z")])
    assert counters.get("replies_dropped.stale") == 1 and closed.sock.calls == []


def test_a_reset_peer_or_a_failing_write_closes_that_client_only(sendqueue_modules, caplog):
    sendqueue_mod, connection_mod = sendqueue_modules
    reset_sock = StubSocket(ConnectionResetError())
    gone = connection_mod.Connection().attach(reset_sock, ("gone", 1), print, print)
    ok_sock = StubSocket()
    ok = connection_mod.Connection().attach(ok_sock, ("ok", 2), print, print)
    server = RecordingServer()
    _send_one_batch(
        sendqueue_mod, server, [(gone, gone.generation, b"x"), (ok, ok.generation, b"y")]
    )
    assert server.closed == [(gone, "send failed", gone.generation)]
    assert bytes(gone.out) == b""  # nothing more to deliver to a reset peer
    assert ok_sock.calls == [b"y"]
    bug_sock = StubSocket(ValueError("a bug"))  # not an OSError: the thread must carry on
    bug = connection_mod.Connection().attach(bug_sock, ("bug", 3), print, print)
    server = RecordingServer()
    replies = [(bug, bug.generation, b"x"), (ok, ok.generation, b"z")]
    _send_one_batch(sendqueue_mod, server, replies, done=lambda: len(ok_sock.calls) == 2)
    assert server.closed == [(bug, "send failed", bug.generation)]
    assert ok_sock.calls == [b"y", b"z"]
    [record] = [r for r in caplog.records if r.exc_info]  # the surprise, logged with its client
    assert record.getMessage() == "send thread: writing to bug:3 failed"
    assert record.exc_info[0] is ValueError


def test_a_half_closed_client_is_closed_once_its_replies_are_delivered(sendqueue_modules):
    sendqueue_mod, connection_mod = sendqueue_modules
    conn = connection_mod.Connection().attach(StubSocket(), ("test", 0), print, print)
    server = RecordingServer(finish=True)  # resolved(): nothing more is owed
    _send_one_batch(sendqueue_mod, server, [(conn, conn.generation, b"x")])
    assert server.closed == [(conn, "peer closed, replies delivered", conn.generation)]


def test_a_producer_waiting_for_room_gives_up_at_close(sendqueue_modules):
    sendqueue_mod, connection_mod = sendqueue_modules
    conn = connection_mod.Connection().attach(StubSocket(), ("test", 0), print, print)
    server = GatedServer()
    counters = Counters(sendqueue_mod.SendQueue.COUNTERS, ["replies_out"])
    queue = sendqueue_mod.SendQueue(1, server, counters)
    closer = threading.Thread(target=queue.close)
    try:
        queue.put_many([(conn, conn.generation, b"1")])
        assert server.entered.wait(10)  # the send thread is held inside the write
        queue.put_many([(conn, conn.generation, b"2")])  # exactly the limit: queued
        assert queue.size == 1 and counters.get("send_queue_full") == 0
        waiter = threading.Thread(target=queue.put_many, args=([(conn, conn.generation, b"3")],))
        waiter.start()
        wait_until(lambda: counters.get("send_queue_full") == 1)
        assert waiter.is_alive()
        closer.start()
        waiter.join(timeout=10)
        assert not waiter.is_alive(), "the producer still waits for room after close()"
    finally:
        server.gate.set()
        if closer.is_alive():
            closer.join(timeout=10)
        else:
            queue.close()
    assert not closer.is_alive()


# -- unit: the worker pool on its own -------------------------------------------------------

worker_modules = feature_modules("sendqueue", "workers", "connection")


class Job:
    """A worker job that records each call (client, generation, packets) and answers
    ``turn`` packets per call (all by default; a dict gives a turn per client). A call
    for a client in ``held`` waits at the gate (once per client), so the test can act
    while a worker is busy with it; a call for ``held_later`` waits at a gate of its own
    (``entered_later``, ``gate_later``)."""

    def __init__(
        self, held=(), turn: int | dict | None = None, fail: object = None, held_later=None
    ) -> None:
        self.calls: list[tuple[str, int, list]] = []
        self.held = set(held)
        self.turn = turn
        self.fail = fail
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.held_later = held_later
        self.entered_later = threading.Event()
        self.gate_later = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, conn, generation: int, packets: list) -> int:
        with self.lock:
            self.calls.append((conn.addr[0], generation, list(packets)))
        if conn.addr[0] in self.held:
            self.held.discard(conn.addr[0])
            self.entered.set()
            assert self.gate.wait(10), "gate never opened"
        elif conn.addr[0] == self.held_later:
            self.held_later = None
            self.entered_later.set()
            assert self.gate_later.wait(10), "the later gate never opened"
        if self.fail in packets:
            raise RuntimeError("a bug in the job")
        turn = self.turn.get(conn.addr[0]) if isinstance(self.turn, dict) else self.turn
        return len(packets) if turn is None else min(turn, len(packets))

    def seen(self, name: str) -> list:
        with self.lock:
            return [(generation, packets) for who, generation, packets in self.calls if who == name]


def _client(connection_mod, name: str):
    conn = connection_mod.Connection()
    conn.addr, conn.generation = (name, 0), 1
    return conn


def test_a_clients_requests_run_in_order_and_others_run_meanwhile(worker_modules):
    workers_mod, connection_mod = worker_modules
    job = Job(held={"a"})
    pool = workers_mod.WorkerPool(2, job)
    a, b = _client(connection_mod, "a"), _client(connection_mod, "b")
    try:
        pool.submit(a, 1, ["a1"])
        assert job.entered.wait(10)  # a worker is busy with a's first request
        pool.submit(a, 1, ["a2"])
        pool.submit(a, 1, ["a3"])
        assert pool.pending == 2
        pool.submit(b, 1, ["b1"])  # the idle worker takes it: b waits for no one
        wait_until(lambda: job.seen("b") == [(1, ["b1"])])
        assert job.seen("a") == [(1, ["a1"])]  # a's next ones wait for its first
        job.gate.set()
        wait_until(lambda: pool.pending == 0 and len(job.calls) == 3)
        assert job.seen("a") == [(1, ["a1"]), (1, ["a2", "a3"])]  # together, in order
    finally:
        job.gate.set()
        pool.close()


def test_a_turn_ends_and_the_rest_goes_first_next_time(worker_modules):
    """A job that gets through one packet per turn: the client's leftovers go first in its
    next turn, and the client goes back in line behind the others; the pending count
    follows every packet that waits."""
    workers_mod, connection_mod = worker_modules
    job = Job(held={"a"}, turn=1)  # one packet per turn
    pool = workers_mod.WorkerPool(1, job)
    a, b = _client(connection_mod, "a"), _client(connection_mod, "b")
    try:
        pool.submit(a, 1, [1, 2, 3])
        assert job.entered.wait(10)
        assert pool.pending == 0  # all three are with the worker
        pool.submit(a, 1, [4])
        pool.submit(b, 1, ["b1", "b2"])
        assert pool.pending == 3
        job.gate.set()
        wait_until(lambda: len(job.calls) == 6)
        assert job.calls == [
            ("a", 1, [1, 2, 3]),
            ("b", 1, ["b1", "b2"]),
            ("a", 1, [2, 3, 4]),
            ("b", 1, ["b2"]),
            ("a", 1, [3, 4]),
            ("a", 1, [4]),
        ]
        wait_until(lambda: pool.pending == 0)
    finally:
        job.gate.set()
        pool.close()


def test_the_pending_count_keeps_other_clients_packets_when_a_turn_ends(worker_modules):
    """A turn that ends with packets left adds them to the pending count, which still
    holds the other clients' packets."""
    workers_mod, connection_mod = worker_modules
    job = Job(held={"a"}, turn={"a": 1}, held_later="b")
    pool = workers_mod.WorkerPool(1, job)
    a, b = _client(connection_mod, "a"), _client(connection_mod, "b")
    try:
        pool.submit(a, 1, [1, 2, 3])
        assert job.entered.wait(10)
        pool.submit(b, 1, ["b1", "b2"])
        assert pool.pending == 2
        job.gate.set()  # a's turn ends after one packet: 2 and 3 wait again, behind b
        assert job.entered_later.wait(10)  # b's turn, held
        assert pool.pending == 2  # a's two, nothing of b's (with the worker)
        job.gate_later.set()
        wait_until(lambda: len(job.calls) == 4 and pool.pending == 0)
        assert job.calls == [
            ("a", 1, [1, 2, 3]),
            ("b", 1, ["b1", "b2"]),
            ("a", 1, [2, 3]),
            ("a", 1, [3]),
        ]
    finally:
        job.gate.set()
        job.gate_later.set()
        pool.close()


def test_a_new_client_on_a_reused_object_does_not_wait_for_the_old_ones_work(worker_modules):
    workers_mod, connection_mod = worker_modules
    job = Job(held={"a"})
    pool = workers_mod.WorkerPool(2, job)
    a = _client(connection_mod, "a")
    try:
        pool.submit(a, 1, ["old1"])
        assert job.entered.wait(10)  # the old client's request is being answered
        pool.submit(a, 1, ["old2"])
        pool.submit(a, 2, ["new1"])  # the object now serves a new client
        wait_until(lambda: (2, ["new1"]) in job.seen("a"))
        job.gate.set()
        wait_until(lambda: len(job.calls) == 3 and pool.pending == 0)
        assert job.seen("a") == [(1, ["old1"]), (2, ["new1"]), (1, ["old2"])]
    finally:
        job.gate.set()
        pool.close()


def test_a_job_that_raises_costs_only_its_own_packets(worker_modules, caplog):
    workers_mod, connection_mod = worker_modules
    job = Job(fail="boom")
    pool = workers_mod.WorkerPool(1, job)  # one worker: it must survive the bug
    a, b = _client(connection_mod, "a"), _client(connection_mod, "b")
    try:
        pool.submit(a, 1, ["boom", "a2"])
        pool.submit(b, 1, ["b1"])
        wait_until(lambda: job.seen("b") == [(1, ["b1"])])
        assert job.seen("a") == [(1, ["boom", "a2"])]  # not run again: counted as done
        assert pool.pending == 0
        pool.submit(a, 1, ["a3"])
        wait_until(lambda: job.seen("a")[-1:] == [(1, ["a3"])])
        [record] = [r for r in caplog.records if r.exc_info]  # logged, naming the client
        assert record.getMessage() == "worker: job failed for a:0"
        assert record.exc_info[0] is RuntimeError
    finally:
        pool.close()


def test_close_lets_a_running_job_finish_and_drops_queued_work(worker_modules):
    workers_mod, connection_mod = worker_modules
    job = Job(held={"a"})
    pool = workers_mod.WorkerPool(1, job)
    a, b = _client(connection_mod, "a"), _client(connection_mod, "b")
    closer = threading.Thread(target=pool.close)
    try:
        pool.submit(a, 1, ["a1"])
        assert job.entered.wait(10)
        pool.submit(b, 1, ["b1"])  # queued behind a's job
        closer.start()
        wait_until(lambda: pool._stopping)
        job.gate.set()
        closer.join(timeout=10)
        assert not closer.is_alive()
        assert job.seen("b") == []
        assert not any(thread.is_alive() for thread in pool._threads)
    finally:
        job.gate.set()
        if not closer.is_alive():
            pool.close()


def test_worker_pool_from_config(worker_modules):
    workers_mod, connection_mod = worker_modules
    pool = workers_mod.WorkerPool.from_config(test_config(ProcMsgRecvWorkThreadCount=3), Job())
    try:
        assert len(pool._threads) == 3 and all(t.is_alive() for t in pool._threads)
    finally:
        pool.close()
    job = Job()
    pool = workers_mod.WorkerPool.from_config(test_config(ProcMsgRecvWorkThreadCount=1), job)
    try:
        assert len(pool._threads) == 1
        pool.submit(_client(connection_mod, "a"), 1, ["a1"])
        wait_until(lambda: job.seen("a") == [(1, ["a1"])])  # the job given is the one run
    finally:
        pool.close()
    with pytest.raises(ConfigError, match="ProcMsgRecvWorkThreadCount"):
        workers_mod.WorkerPool.from_config(test_config(ProcMsgRecvWorkThreadCount=0), Job())


def test_replies_queued_while_the_send_thread_writes_all_go_out_in_order(sendqueue_modules):
    sendqueue_mod, connection_mod = sendqueue_modules
    sock = StubSocket()
    conn = connection_mod.Connection().attach(sock, ("test", 0), print, print)
    server = GatedServer()
    counters = Counters(sendqueue_mod.SendQueue.COUNTERS, ["replies_out"])
    queue = sendqueue_mod.SendQueue(100, server, counters)
    try:
        queue.put_many([(conn, conn.generation, b"1")])
        assert server.entered.wait(10)  # the send thread is held inside the write of "1"
        queue.put_many([(conn, conn.generation, b"2")])
        queue.put_many([(conn, conn.generation, b"3"), (conn, conn.generation, b"4")])
        assert queue.size == 3
        server.gate.set()
        wait_until(lambda: counters.get("replies_out") == 4)
        assert sock.calls == [b"1", b"234"]  # the three queued meanwhile: one send, in order
    finally:
        server.gate.set()
        queue.close()


def test_send_queue_from_config(sendqueue_modules):
    sendqueue_mod, connection_mod = sendqueue_modules
    server = RecordingServer()
    counters = Counters(sendqueue_mod.SendQueue.COUNTERS, ["replies_out"])
    queue = sendqueue_mod.SendQueue.from_config(
        test_config(Sock_SendQueueLimit=1), server, counters
    )
    try:
        assert queue.limit == 1  # the smallest allowed
        sock = StubSocket()
        conn = connection_mod.Connection().attach(sock, ("test", 0), print, print)
        queue.put_many([(conn, conn.generation, b"x")])
        wait_until(lambda: counters.get("replies_out") == 1)  # the counters given
        assert sock.calls == [b"x"] and server.resolved_for == [conn]  # the server given
    finally:
        queue.close()
    with pytest.raises(ConfigError, match="Sock_SendQueueLimit"):
        sendqueue_mod.SendQueue.from_config(test_config(Sock_SendQueueLimit=0), server, counters)


def test_the_send_thread_is_a_named_daemon(sendqueue_modules):
    """Named for its job (a thread that does not stop is named in the error log), and a
    daemon: it never holds the process open."""
    sendqueue_mod, _ = sendqueue_modules
    counters = Counters(sendqueue_mod.SendQueue.COUNTERS, ["replies_out"])
    queue = sendqueue_mod.SendQueue(1, RecordingServer(), counters)
    try:
        assert (queue._thread.name, queue._thread.daemon) == ("send", True)
    finally:
        queue.close()
    assert not queue._thread.is_alive()


def test_worker_threads_are_named_daemons(worker_modules):
    workers_mod, _ = worker_modules
    pool = workers_mod.WorkerPool(2, Job())
    try:
        assert [(t.name, t.daemon) for t in pool._threads] == [
            ("worker-0", True),
            ("worker-1", True),
        ]
    finally:
        pool.close()
