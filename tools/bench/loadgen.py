"""The load generator: one client process driving its share of the connections.

Each process runs its own non-blocking epoll loop (so the client scales with processes,
not threads behind one GIL) and keeps exactly ``pipeline`` requests in flight on every
connection: every reply that completes is answered at once by a new request.

Validation is exact and cheap. Every connection knows the byte stream it must receive
(the replies to what it sent, in order), so a whole ``recv`` is checked with one
``startswith`` against that expected stream: no per-reply Python objects on the hot path.
Only when a chunk does not match does the connection switch to a slow path that parses
packets one by one to tell what went wrong: a bad length or CRC, an unexpected code or
content, or a valid reply that belongs to a later request (reordered).
"""

from __future__ import annotations

import errno
import math
import os
import resource
import select
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from common.protocol import (
    BODY_SIZES,
    HEADER_LEN,
    PING_PACKET,
    Login,
    MsgCode,
    Packet,
    PacketParser,
    Register,
    Status,
    crc32,
    encode_packet,
    pack_header,
)

RECV_SIZE = 256 * 1024
# The expected stream of ping-only connections: any reply chunk must be a slice of this.
PINGS = PING_PACKET * (RECV_SIZE // HEADER_LEN + 2)
PINGS_VIEW = memoryview(PINGS)

# Mixed mode: in every 20 requests of a connection, 18 pings, one register (a fresh user)
# and one login (the connection's own user, registered before the clock starts).
MIXED_SCHEDULE = tuple("register" if i == 7 else "login" if i == 13 else "ping" for i in range(20))
MODES = ("ping", "login", "register", "mixed")

# Latency histogram: log-spaced buckets, 32 per doubling (about 2 % wide), from 1 µs.
HIST_PER_OCTAVE = 32
HIST_BUCKETS = 40 * HIST_PER_OCTAVE  # up to 2**40 µs: far beyond any run
READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP
READABLE = READ_EVENTS | select.EPOLLERR | select.EPOLLHUP
EPOLLOUT = select.EPOLLOUT
ERROR_KINDS = ("bad_length", "bad_crc", "bad_code", "wrong_content", "unexpected")


def bucket_of(seconds: float) -> int:
    us = seconds * 1e6
    if us <= 1.0:
        return 0
    return min(int(math.log2(us) * HIST_PER_OCTAVE), HIST_BUCKETS - 1)


def bucket_upper_seconds(index: int) -> float:
    """The upper edge of a bucket (what a percentile reports: never flattering)."""
    return 2 ** ((index + 1) / HIST_PER_OCTAVE) / 1e6


@dataclass
class WorkerSpec:
    """What one client process does. Times are ``time.monotonic()`` values, which on
    Linux is one clock for every process."""

    index: int
    host: str
    port: int
    connections: int
    pipeline: int
    mode: str
    run_id: str
    connect_timeout: float = 10.0
    setup_timeout: float = 60.0
    drain_timeout: float = 5.0


@dataclass
class WorkerResult:
    index: int
    connected: int = 0
    connect_failures: int = 0
    connect_error: str = ""
    setup_failures: int = 0
    replies: int = 0  # replies completed inside the measured window
    replies_total: int = 0
    sent_total: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    reordered: int = 0
    disconnects: int = 0
    unanswered: int = 0  # requests still without a reply when the drain time ran out
    hist: list[int] = field(default_factory=lambda: [0] * HIST_BUCKETS)
    max_latency: float = 0.0
    cpu_seconds: float = 0.0  # user + system CPU of this process in the measured window
    sys_seconds: float = 0.0  # the system (kernel) part of it
    window: float = 0.0  # wall seconds of the measured window as this process saw it

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Stats:
    """Process-wide counters, shared by every connection of the process."""

    __slots__ = (
        "disconnects",
        "errors",
        "hist",
        "inflight",
        "max_latency",
        "recording",
        "replies",
        "reordered",
        "sending",
    )

    def __init__(self) -> None:
        self.recording = False  # inside the measured window
        self.sending = True  # still refilling pipelines (false once the window is over)
        self.replies = 0
        self.inflight = 0
        self.hist = [0] * HIST_BUCKETS
        self.max_latency = 0.0
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.reordered = 0
        self.disconnects = 0

    def record(self, latency: float, n: int) -> None:
        self.replies += n
        self.hist[bucket_of(latency)] += n
        if latency > self.max_latency:
            self.max_latency = latency


# ----------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------


class RequestMaker:
    """Builds a connection's requests and the exact reply each must get."""

    __slots__ = ("kinds", "login_reply", "login_request", "prefix", "seq")

    def __init__(self, mode: str, prefix: str, password: str) -> None:
        self.prefix = prefix  # unique per connection and run
        self.seq = 0
        self.kinds = MIXED_SCHEDULE if mode == "mixed" else (mode,)
        self.login_request = encode_packet(MsgCode.LOGIN, Login(prefix, password).encode())
        self.login_reply = encode_packet(MsgCode.LOGIN, Login(prefix, Status.OK.name).encode())

    def setup(self) -> tuple[bytes, bytes]:
        """Register the connection's own user, which its logins use later."""
        return register_pair(self.prefix, "pw-" + self.prefix)

    def next(self) -> tuple[bytes, bytes]:
        kinds = self.kinds
        kind = kinds[self.seq % len(kinds)]
        self.seq += 1
        if kind == "ping":
            return PING_PACKET, PING_PACKET
        if kind == "login":
            return self.login_request, self.login_reply
        return register_pair(f"{self.prefix}n{self.seq}", "pw")


def register_pair(username: str, password: str) -> tuple[bytes, bytes]:
    request = encode_packet(MsgCode.REGISTER, Register(0, username, password).encode())
    reply = encode_packet(MsgCode.REGISTER, Register(int(Status.OK), username, "OK").encode())
    return request, reply


# ----------------------------------------------------------------------------------------
# Connections
# ----------------------------------------------------------------------------------------


class SlowChecker:
    """Packet-by-packet validation, once a connection's byte stream stopped matching.

    ``pending`` holds ``[expected reply bytes, send time]`` for every request still
    without a reply, oldest first."""

    __slots__ = ("parser", "pending")

    def __init__(self, pending: deque[tuple[bytes, float]]) -> None:
        self.parser = PacketParser()
        self.pending = pending

    def feed(self, data: bytes | memoryview, now: float, stats: Stats) -> int:
        """Classify every reply in ``data``; return how many requests got an answer."""
        answered = 0
        errors = stats.errors
        pending = self.pending
        for event in self.parser.feed(data):
            if not isinstance(event, Packet):
                errors["bad_length"] += 1
                continue
            code, crc, body = event
            raw = pack_header(HEADER_LEN + len(body), code, crc) + body
            if crc != (crc32(body) if body else 0):
                errors["bad_crc"] += 1
            elif code not in BODY_SIZES:
                errors["bad_code"] += 1
            elif len(body) != BODY_SIZES[MsgCode(code)]:
                errors["bad_length"] += 1
            elif pending and raw == pending[0][0]:
                answered += self._answer(0, now, stats)
                continue
            else:
                later = next((i for i, (want, _) in enumerate(pending) if want == raw), None)
                if later is not None:
                    stats.reordered += 1
                    answered += self._answer(later, now, stats)
                    continue
                if pending and pending[0][0][2:4] == raw[2:4]:
                    errors["wrong_content"] += 1  # e.g. a login refused
                else:
                    errors["unexpected"] += 1
                    continue
            # An invalid or wrong reply still answers the oldest request: keep going.
            if pending:
                pending.popleft()
                answered += 1
        return answered

    def _answer(self, index: int, now: float, stats: Stats) -> int:
        _, sent_at = self.pending[index]
        del self.pending[index]
        if stats.recording:
            stats.record(now - sent_at, 1)
        return 1


class Conn:
    """One client connection with ``pipeline`` requests in flight.

    The expected reply stream is ``expect`` (absolute offsets: ``base`` is the offset of
    ``expect[0]``); ``marks`` holds ``(end offset of a request's reply, send time)``.
    Ping-only connections need neither: their expected stream is ``PINGS``, and ``marks``
    holds ``(requests sent so far, send time)`` per batch."""

    __slots__ = (
        "base",
        "boundary",
        "checker",
        "expect",
        "fast",
        "fd",
        "maker",
        "marks",
        "out",
        "pings_only",
        "received",
        "rx",
        "sent",
        "sock",
        "writing",
    )

    def __init__(self, sock: socket.socket, maker: RequestMaker | None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.maker = maker
        self.pings_only = maker is None
        self.fast = self.pings_only  # ping-only and the stream has matched so far
        self.expect = bytearray()
        self.base = 0
        self.boundary = 0  # where the oldest unanswered reply starts (absolute)
        self.rx = 0  # bytes received (absolute)
        self.sent = 0  # requests sent
        self.received = 0  # replies completed
        self.marks: deque[tuple[int, float]] = deque()
        self.out = bytearray()  # bytes the kernel did not take yet
        self.writing = False
        self.checker: SlowChecker | None = None

    @property
    def outstanding(self) -> int:
        return self.sent - self.received

    # -- sending ---------------------------------------------------------------------------
    def send_requests(self, n: int, now: float, stats: Stats, ep: select.epoll) -> None:
        if n <= 0:
            return
        if self.pings_only:
            data: bytes | memoryview = PINGS_VIEW[: n * HEADER_LEN]
            self.sent += n
            if self.checker is None:
                self.marks.append((self.sent, now))
            else:
                self.checker.pending.extend([(PING_PACKET, now)] * n)
        else:
            assert self.maker is not None
            make = self.maker.next
            parts = []
            for _ in range(n):
                request, reply = make()
                parts.append(request)
                self._expect(reply, now)
            data = b"".join(parts)
        stats.inflight += n
        self.write(data, ep)

    def send_setup(self, now: float, stats: Stats, ep: select.epoll) -> None:
        """Register the connection's own user (login and mixed modes, before the clock)."""
        assert self.maker is not None
        request, reply = self.maker.setup()
        self._expect(reply, now)
        stats.inflight += 1
        self.write(request, ep)

    def _expect(self, reply: bytes, now: float) -> None:
        self.sent += 1
        if self.checker is not None:
            self.checker.pending.append((reply, now))
        else:
            self.expect += reply
            self.marks.append((self.base + len(self.expect), now))

    def write(self, data: bytes | memoryview, ep: select.epoll) -> None:
        if self.out:
            self.out += data
            return
        try:
            written = self.sock.send(data)
        except BlockingIOError:
            written = 0
        if written < len(data):
            self.queue(data[written:], ep)

    def queue(self, data: bytes | memoryview, ep: select.epoll) -> None:
        """Keep what the kernel did not take; EPOLLOUT says when to send it."""
        self.out += data
        if not self.writing:
            ep.modify(self.fd, READ_EVENTS | select.EPOLLOUT)
            self.writing = True

    def on_writable(self, ep: select.epoll) -> None:
        try:
            written = self.sock.send(self.out)
        except BlockingIOError:
            return
        del self.out[:written]
        if not self.out:
            ep.modify(self.fd, READ_EVENTS)
            self.writing = False

    # -- receiving -------------------------------------------------------------------------
    def on_data(self, chunk: memoryview, now: float, stats: Stats) -> int:
        """Validate and account one received chunk; return the replies it completed."""
        if self.checker is not None:
            done = self.checker.feed(chunk, now, stats)
            self.received += done
            return done
        n = len(chunk)
        if self.pings_only:
            offset = self.rx % HEADER_LEN
            total = offset + n
            done = total >> 3
            if self.received + done > self.sent or not PINGS.startswith(chunk, offset):
                return self._go_slow(chunk, now, stats)
            self.rx += n
            if done:
                received = self.received
                self.received = end_received = received + done
                marks = self.marks
                recording = stats.recording
                while received < end_received:
                    end, sent_at = marks[0]
                    if end <= end_received:
                        marks.popleft()
                        k = end - received
                        received = end
                    else:
                        k = end_received - received
                        received = end_received
                    if recording:
                        stats.record(now - sent_at, k)
            return done
        offset = self.rx - self.base
        expect = self.expect
        if offset + n > len(expect) or not expect.startswith(chunk, offset):
            return self._go_slow(chunk, now, stats)
        self.rx = rx = self.rx + n
        marks = self.marks
        done = 0
        recording = stats.recording
        while marks and marks[0][0] <= rx:
            self.boundary, sent_at = marks.popleft()
            done += 1
            if recording:
                stats.record(now - sent_at, 1)
        self.received += done
        if self.boundary > self.base + 65536:
            # Forget what has been checked, keeping the stream from a reply boundary.
            del expect[: self.boundary - self.base]
            self.base = self.boundary
        return done

    def _go_slow(self, chunk: memoryview, now: float, stats: Stats) -> int:
        """The stream no longer matches: from the oldest unanswered reply on, parse and
        classify packet by packet for the rest of this connection's life."""
        pending: deque[tuple[bytes, float]] = deque()
        if self.pings_only:
            start = self.received
            for end, sent_at in self.marks:
                pending.extend([(PING_PACKET, sent_at)] * (end - start))
                start = end
            # The bytes of the reply in progress matched so far: they are a ping's head.
            partial = PING_PACKET[: self.rx % HEADER_LEN]
        else:
            begin = self.boundary
            for end, sent_at in self.marks:
                pending.append((bytes(self.expect[begin - self.base : end - self.base]), sent_at))
                begin = end
            partial = bytes(self.expect[self.boundary - self.base : self.rx - self.base])
        self.marks.clear()
        self.expect = bytearray()
        self.fast = False
        self.checker = SlowChecker(pending)
        done = self.checker.feed(partial + bytes(chunk), now, stats)
        self.received += done
        return done


# ----------------------------------------------------------------------------------------
# The client process
# ----------------------------------------------------------------------------------------

# Shared control block (a multiprocessing RawArray of doubles), written by the bench
# process: when to start, how long to warm up and measure, and an abort flag.
CTL_START, CTL_WARMUP, CTL_DURATION, CTL_ABORT = range(4)
CONNECT_BATCH = 256  # connects in flight at once: keep under the server's listen backlog


def cpu_times() -> tuple[float, float]:
    """(user + system, system) CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime


def open_connections(
    host: str, port: int, n: int, timeout: float, ep: select.epoll
) -> tuple[list[socket.socket], int, str]:
    """Open ``n`` non-blocking connections, ``CONNECT_BATCH`` at a time.

    Returns the connected sockets, how many failed and the first error seen."""
    done: list[socket.socket] = []
    failures = 0
    first_error = ""
    deadline = time.monotonic() + timeout
    todo = n
    while todo > 0:
        pending: dict[int, socket.socket] = {}
        for _ in range(min(CONNECT_BATCH, todo)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex((host, port))
            if code not in (0, errno.EINPROGRESS):
                failures += 1
                first_error = first_error or os.strerror(code)
                sock.close()
                continue
            pending[sock.fileno()] = sock
            ep.register(sock.fileno(), select.EPOLLOUT)
        todo -= min(CONNECT_BATCH, todo)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in ep.poll(min(left, 0.5)):
                sock = pending.pop(fd)
                ep.unregister(fd)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    failures += 1
                    first_error = first_error or os.strerror(code)
                    sock.close()
                else:
                    done.append(sock)
        for fd, sock in pending.items():
            ep.unregister(fd)
            sock.close()
            failures += 1
            first_error = first_error or "connect timed out"
    return done, failures, first_error


class LoadGen:
    """The event loop of one client process."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.ep = select.epoll()
        self.stats = Stats()
        self.conns: dict[int, Conn] = {}
        self.lost = 0  # requests without reply on connections the server closed
        self.result = WorkerResult(spec.index)

    def connect(self) -> None:
        spec = self.spec
        socks, failures, error = open_connections(
            spec.host, spec.port, spec.connections, spec.connect_timeout, self.ep
        )
        self.result.connected = len(socks)
        self.result.connect_failures = failures
        self.result.connect_error = error
        for i, sock in enumerate(socks):
            maker = None
            if spec.mode != "ping":
                prefix = f"{spec.run_id}p{spec.index}c{i}"
                maker = RequestMaker(spec.mode, prefix, "pw-" + prefix)
            conn = Conn(sock, maker)
            self.conns[conn.fd] = conn
            self.ep.register(conn.fd, READ_EVENTS)

    def setup(self) -> None:
        """Login and mixed modes: each connection registers the user it logs in as."""
        if self.spec.mode not in ("login", "mixed"):
            return
        now = time.monotonic()
        for conn in list(self.conns.values()):
            conn.send_setup(now, self.stats, self.ep)
        self.pump(now + self.spec.setup_timeout, sending=False, stop_when_idle=True)
        stats = self.stats
        self.result.setup_failures = (
            sum(stats.errors.values()) + stats.reordered + stats.disconnects + stats.inflight
        )
        # The measurement starts from a clean slate.
        self.stats = Stats()
        for conn in self.conns.values():
            conn.marks.clear()
            conn.sent = conn.received = 0

    def pump(
        self,
        until: float,
        *,
        sending: bool,
        stop_when_idle: bool,
        window: tuple[float, float] | None = None,
        progress: Any = None,
        ctl: Any = None,
    ) -> None:
        """The event loop. ``window`` is (start, end) of the measured window; sending
        stops at its end, then the loop drains until every reply is in or ``until``."""
        stats = self.stats
        stats.sending = sending
        hist = stats.hist
        conns_get = self.conns.get
        pings_startswith = PINGS.startswith
        log2 = math.log2
        ep = self.ep
        poll = ep.poll
        monotonic = time.monotonic
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        index = self.spec.index
        w_start, w_end = window if window is not None else (until, until)
        cpu_at_start = (0.0, 0.0)
        opened = False
        closed = False
        next_check = 0.0
        while True:
            now = monotonic()
            if not opened and now >= w_start:
                opened = True
                stats.recording = True
                cpu_at_start = cpu_times()
                w_start = now
            if opened and not closed and now >= w_end:
                closed = True
                stats.recording = False
                stats.sending = False
                self._cpu(cpu_at_start)
                self.result.window = now - w_start
            if now >= until or (stop_when_idle and not stats.sending and stats.inflight <= 0):
                break
            if now >= next_check:
                next_check = now + 0.05
                if progress is not None:
                    progress[index] = stats.replies
                if ctl is not None and ctl[CTL_ABORT]:
                    break
            timeout = (w_start if not opened else w_end if not closed else until) - now
            events = poll(min(max(timeout, 0.0), 0.05))
            now = monotonic()
            recording = stats.recording
            sending = stats.sending
            for fd, mask in events:
                conn = conns_get(fd)
                if conn is None:
                    continue
                if mask & EPOLLOUT and conn.out:
                    try:
                        conn.on_writable(ep)
                    except OSError:
                        self.disconnect(conn)
                        continue
                if not mask & READABLE:
                    continue
                sock = conn.sock
                try:
                    n = sock.recv_into(buf)
                except BlockingIOError:
                    continue
                except OSError:
                    n = 0
                if n == 0:
                    self.disconnect(conn)
                    continue
                chunk = view[:n]
                if conn.fast:
                    # The hot path, inlined (ping-only, stream matching so far): a method
                    # call per reply would cost more than the checking itself.
                    offset = conn.rx & 7
                    done = (offset + n) >> 3
                    received = conn.received
                    upto = received + done
                    if upto <= conn.sent and pings_startswith(chunk, offset):
                        conn.rx += n
                        if not done:
                            continue
                        conn.received = upto
                        marks = conn.marks
                        while received < upto:
                            end, sent_at = marks[0]
                            if end <= upto:
                                marks.popleft()
                                k = end - received
                                received = end
                            else:
                                k = upto - received
                                received = upto
                            if recording:
                                latency = now - sent_at
                                us = latency * 1e6
                                hist[int(log2(us) * HIST_PER_OCTAVE) if us > 1.0 else 0] += k
                                stats.replies += k
                                if latency > stats.max_latency:
                                    stats.max_latency = latency
                        if sending:
                            conn.sent = sent = conn.sent + done
                            marks.append((sent, now))
                            size = done << 3
                            if conn.out:
                                conn.out += PINGS_VIEW[:size]
                                continue
                            try:
                                written = sock.send(PINGS_VIEW[:size])
                            except BlockingIOError:
                                written = 0
                            except OSError:
                                self.disconnect(conn)
                                continue
                            if written < size:
                                conn.queue(PINGS_VIEW[written:size], ep)
                        else:
                            stats.inflight -= done
                        continue
                done = conn.on_data(chunk, now, stats)
                if done:
                    stats.inflight -= done
                    if sending:
                        try:
                            conn.send_requests(done, now, stats, ep)
                        except OSError:
                            self.disconnect(conn)
        if progress is not None:
            progress[index] = stats.replies
        if opened and not closed:  # stopped early (abort)
            self._cpu(cpu_at_start)
            self.result.window = monotonic() - w_start

    def _cpu(self, start: tuple[float, float]) -> None:
        total, system = cpu_times()
        self.result.cpu_seconds = total - start[0]
        self.result.sys_seconds = system - start[1]

    def disconnect(self, conn: Conn) -> None:
        self.stats.disconnects += 1
        outstanding = conn.outstanding
        self.stats.inflight -= outstanding
        self.lost += outstanding
        self.conns.pop(conn.fd, None)
        try:
            self.ep.unregister(conn.fd)
        except OSError:
            pass
        conn.sock.close()

    def run(self, start: float, warmup: float, duration: float, progress: Any, ctl: Any) -> None:
        now = time.monotonic()
        if start > now:
            time.sleep(start - now)
        now = time.monotonic()
        for conn in list(self.conns.values()):
            try:
                conn.send_requests(self.spec.pipeline, now, self.stats, self.ep)
            except OSError:
                self.disconnect(conn)
        w_start = start + warmup
        w_end = w_start + duration
        self.pump(
            w_end + self.spec.drain_timeout,
            sending=True,
            stop_when_idle=True,
            window=(w_start, w_end),
            progress=progress,
            ctl=ctl,
        )

    def finish(self) -> WorkerResult:
        result, stats = self.result, self.stats
        result.replies = stats.replies
        result.errors = dict(stats.errors)
        result.reordered = stats.reordered
        result.disconnects = stats.disconnects
        result.hist = list(stats.hist)
        result.max_latency = stats.max_latency
        result.replies_total = sum(c.received for c in self.conns.values())
        result.sent_total = sum(c.sent for c in self.conns.values())
        result.unanswered = self.lost + sum(c.outstanding for c in self.conns.values())
        for conn in self.conns.values():
            conn.sock.close()
        self.conns.clear()
        self.ep.close()
        return result


def worker_main(spec: WorkerSpec, channel: Any, progress: Any, ctl: Any) -> None:
    """Entry point of a client process (``multiprocessing``, spawn start method).

    Reports ``("ready", index, connected, failures, error)`` once connected (and, in login
    and mixed modes, once each connection has registered its user), waits for the bench
    process to set the start time, runs, and reports ``("result", index, dict)``."""
    gen = LoadGen(spec)
    try:
        gen.connect()
        gen.setup()
        r = gen.result
        channel.put(("ready", spec.index, r.connected, r.connect_failures, r.connect_error))
        deadline = time.monotonic() + 120
        while not ctl[CTL_START] and not ctl[CTL_ABORT]:
            if time.monotonic() > deadline:
                raise TimeoutError("the bench process never gave the start signal")
            time.sleep(0.005)
        if not ctl[CTL_ABORT]:
            gen.run(ctl[CTL_START], ctl[CTL_WARMUP], ctl[CTL_DURATION], progress, ctl)
        channel.put(("result", spec.index, gen.finish().as_dict()))
    except KeyboardInterrupt:
        return  # Ctrl-C reaches the whole process group: the bench process reports it
    except BaseException as exc:  # reported, never a silent dead child
        channel.put(("failed", spec.index, repr(exc)))
        raise


class PythonClients:
    """The Python client: ``len(specs)`` processes (``multiprocessing``, spawn), each
    running :func:`worker_main`; the same interface as ``native.NativeClients``."""

    name = "python"

    def __init__(
        self, specs: list[WorkerSpec], cores: list[set[int] | None], warmup: float, duration: float
    ) -> None:
        import multiprocessing

        from .target import affinity_for_children

        ctx = multiprocessing.get_context("spawn")
        self.channel = ctx.Queue()
        self.counts = ctx.RawArray("q", len(specs))
        self.ctl = ctx.RawArray("d", 4)
        self.warmup, self.duration = warmup, duration
        self.workers = []
        for spec, core in zip(specs, cores, strict=True):
            proc = ctx.Process(
                target=worker_main, args=(spec, self.channel, self.counts, self.ctl), daemon=True
            )
            with affinity_for_children(core):
                proc.start()
            self.workers.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.workers if p.pid is not None]

    def _get(self, deadline: float) -> tuple[Any, ...]:
        """The next message from a client process, failing clearly if they die or stall."""
        import queue

        from .target import BenchError

        while True:
            try:
                return self.channel.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise BenchError("the client processes did not report in time") from None
                dead = [p for p in self.workers if p.exitcode not in (None, 0)]
                if dead:
                    raise BenchError(
                        f"a client process died (exit code {dead[0].exitcode})"
                    ) from None

    def wait_ready(self, deadline: float) -> None:
        from .target import BenchError

        ready = 0
        failures: list[str] = []
        while ready < len(self.workers):
            message = self._get(deadline)
            if message[0] == "ready":
                ready += 1
            else:
                failures.append(str(message[2]))
                ready += 1
        if failures:
            raise BenchError(f"a client process failed: {failures[0]}")

    def start(self, at: float) -> None:
        self.ctl[CTL_WARMUP], self.ctl[CTL_DURATION] = self.warmup, self.duration
        self.ctl[CTL_START] = at

    def replies(self) -> int:
        return sum(self.counts)

    def results(self, deadline: float) -> list[dict[str, Any]]:
        from .target import BenchError

        results: dict[int, dict[str, Any]] = {}
        while len(results) < len(self.workers):
            message = self._get(deadline)
            if message[0] == "result":
                results[message[1]] = message[2]
            elif message[0] == "failed":
                raise BenchError(f"a client process failed: {message[2]}")
        return [results[i] for i in range(len(self.workers))]

    def abort(self) -> None:
        self.ctl[CTL_ABORT] = 1

    def close(self) -> None:
        for proc in self.workers:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        self.channel.close()
        self.channel.join_thread()
