"""Attack tools: ``python -m tools.attack flood|garbage|slowloris|slow-reader|churn|idle``.

Each tool misbehaves in one way that one of the server's defences is built to stop, so a
reader can run a chapter with ``--dashboard`` in one terminal, an attack in another, and
watch the defence fire (or, in an earlier chapter, watch it missing):

==============  ============================================  ==========================
tool            what it does                                  the defence it meets
==============  ============================================  ==========================
``flood``       pings back-to-back on one connection          flood kick (chapter 6)
``garbage``     a header with an impossible length            malformed close (ch. 6)
``slowloris``   partial packets, a byte now and then          silence kick (chapter 5)
``slow-reader`` pipelines requests and never reads a reply    backlog kick (chapter 4)
``churn``       connects and disconnects as fast as it can    online limit (chapter 3)
``idle``        connects and sends nothing                    silence kick (chapter 5)
==============  ============================================  ==========================

Every tool is bounded in count and in time, and refuses any target that is not a loopback
address: these are for watching your own server on your own machine, nothing else. Each
``run_*`` function returns a report dataclass (the tests assert on it); the command line
prints the same report as a small rich table and a one-line verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import selectors
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from rich.console import Console
from rich.table import Table

from common.protocol import HEADER_LEN, PKG_MAX_ACCEPTED, Packet, PacketParser, pack_header
from tools.client import Client, ServerClosed, login_packet, ping_packet

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5678

# Linux's TCP states as TCP_INFO reports them (include/net/tcp_states.h).
_TCP_CLOSE = 7
_TCP_CLOSE_WAIT = 8


class NotLoopback(ValueError):
    """The target is not a loopback address; the tools never send anything to it."""


class AttackError(RuntimeError):
    """The attack could not run at all (connection refused, no reply to connect …)."""


# ----------------------------------------------------------------------------------------
# Targets: loopback only
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked target: ``ip`` is a loopback address literal, so nothing re-resolves it."""

    host: str
    ip: str
    port: int

    def __str__(self) -> str:
        return _host_port(self.host, self.port)


def _host_port(host: str, port: int) -> str:
    host = host.removeprefix("[").removesuffix("]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The address to connect to if ``ip`` is loopback, else None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip) if ip.is_loopback else None


def resolve_target(host: str, port: int) -> Target:
    """Accept 127.0.0.0/8, ::1 and ``localhost`` (only if every address it resolves to is
    loopback); raise :class:`NotLoopback` for anything else.

    Other host names are refused without being looked up: a name could resolve to
    loopback today and to someone else's machine tomorrow, and asking a DNS server about
    it is already talking to the network.
    """
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    name = host.strip()
    try:
        ip = ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        ip = None
    if ip is not None:
        literal = _loopback(ip)
        if literal is None:
            raise NotLoopback(
                f"refusing to attack {host}: not a loopback address "
                "(the attack tools only target 127.0.0.0/8, ::1 or localhost)"
            )
        return Target(host, literal, port)
    if name.lower().rstrip(".") != "localhost":
        raise NotLoopback(
            f"refusing to attack {host!r}: only loopback addresses (127.0.0.0/8, ::1) "
            "or 'localhost' are allowed, and other names are not looked up"
        )
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NotLoopback(f"refusing {host!r}: it does not resolve ({exc.strerror})") from None
    addresses = [ipaddress.ip_address(info[4][0].partition("%")[0]) for info in infos]
    outside = [str(a) for a in addresses if _loopback(a) is None]
    if outside or not addresses:
        raise NotLoopback(
            f"refusing {host!r}: it resolves to {', '.join(outside) or 'nothing'}, "
            "which is not loopback"
        )
    literals = [_loopback(a) for a in addresses]
    # The chapters bind 127.0.0.1 by default: prefer it when localhost has both families.
    ip_text = "127.0.0.1" if "127.0.0.1" in literals else str(literals[0])
    return Target(host, ip_text, port)


def _connect(target: Target, timeout: float, rcvbuf: int | None = None) -> socket.socket:
    family = socket.AF_INET6 if ":" in target.ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if rcvbuf is not None:
            # Before connect(), so the window the server sees is small from the handshake on.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect((target.ip, target.port))
    except BaseException:
        sock.close()
        raise
    return sock


def _first_connect(target: Target, timeout: float, rcvbuf: int | None = None) -> socket.socket:
    """The first connection of an attack: failing here means there is nothing to attack."""
    with _connect_errors(target, timeout):
        return _connect(target, timeout, rcvbuf)


@contextlib.contextmanager
def _connect_errors(target: Target, timeout: float) -> Iterator[None]:
    """Turn a failed connect into one :class:`AttackError` sentence (no traceback)."""
    try:
        yield
    except ConnectionRefusedError:
        raise AttackError(
            f"cannot connect to {target}: connection refused (is the server running?)"
        ) from None
    except TimeoutError:
        raise AttackError(f"cannot connect to {target}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise AttackError(f"cannot connect to {target}: {exc.strerror or exc}") from None


def _tcp_state(sock: socket.socket) -> int | None:
    """The kernel's TCP state of ``sock`` (Linux), or None where TCP_INFO does not exist.

    This sees a server's close (FIN: CLOSE_WAIT, reset: CLOSE) without reading from the
    socket, which a slow reader must never do.
    """
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, option, 8)[0]
    except OSError:
        return None


def _peer_closed(sock: socket.socket) -> bool:
    """True if the server has closed ``sock`` (EOF or reset waiting); consumes nothing."""
    # Non-blocking first: on a socket with a timeout, Python waits for data before recv().
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _raise_fd_limit(wanted: int) -> None:
    """Let one process hold ``wanted`` sockets if the hard limit allows (10k idle
    connections need more than the usual soft limit of 1024)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _replies(n: int) -> str:
    return f"{n:,} reply" if n == 1 else f"{n:,} replies"


def _errors(errors: dict[str, int]) -> str:
    if not errors:
        return "0"
    return ", ".join(f"{n:,} ({reason})" for reason, n in sorted(errors.items()))


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return (
        f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f} s"
        " (min / median / max)"
    )


# ----------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------


@dataclass
class Report:
    """What every tool reports: where it went and how long it took; subclasses add the
    rest, a ``verdict()`` line and the ``rows()`` of the printed table."""

    tool: ClassVar[str] = ""
    host: str
    port: int
    elapsed: float

    def verdict(self) -> str:
        raise NotImplementedError

    def rows(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def table(self) -> Table:
        title = f"{self.tool} -> {_host_port(self.host, self.port)}"
        table = Table(title=title, show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        for name, value in self.rows():
            table.add_row(name, value)
        table.add_row("elapsed", f"{self.elapsed:.2f} s")
        return table


@dataclass
class FloodReport(Report):
    tool: ClassVar[str] = "flood"
    requests: int  # pings sent
    replies: int
    kicked: bool
    closed_by: str | None  # "EOF" or "reset" when the server closed the connection
    closed_on_request: int | None  # the request whose reply never came
    timed_out: bool

    def verdict(self) -> str:
        if self.kicked:
            return (
                f"kicked after {_replies(self.replies)} "
                f"({self.closed_by} on request "
                f"{self.closed_on_request}) in {self.elapsed:.2f} s"
            )
        if self.timed_out:
            return (
                f"no reply to request {self.closed_on_request} within the timeout, "
                f"after {_replies(self.replies)}"
            )
        return f"not kicked: {_replies(self.replies)} in {self.elapsed:.2f} s"

    def rows(self) -> list[tuple[str, str]]:
        rate = self.replies / self.elapsed if self.elapsed > 0 else 0.0
        return [
            ("pings sent", str(self.requests)),
            ("replies", str(self.replies)),
            ("rate", f"{rate:,.0f} replies/s"),
            ("closed by server", f"yes ({self.closed_by})" if self.kicked else "no"),
        ]


@dataclass
class GarbageReport(Report):
    tool: ClassVar[str] = "garbage"
    length: int  # the malformed header's pkgLen
    pings: int  # pings sent after it
    replies: int
    closed: bool
    closed_by: str | None
    timed_out: bool

    def verdict(self) -> str:
        if self.closed:
            return (
                f"closed by the server after the malformed header (length {self.length}): "
                f"{self.replies} of {self.pings} pings answered"
            )
        if self.replies == self.pings:
            return (
                f"header (length {self.length}) skipped: all {self.pings} pings after it "
                "answered, connection kept open"
            )
        return (
            f"neither closed nor answered: {self.replies} of {self.pings} pings answered "
            "before the timeout"
        )

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("malformed header", f"pkgLen {self.length}"),
            ("pings after it", str(self.pings)),
            ("replies", str(self.replies)),
            ("closed by server", f"yes ({self.closed_by})" if self.closed else "no"),
        ]


@dataclass
class HoldReport(Report):
    """Shared by ``idle`` and ``slowloris``: many connections held open, and which of them
    the server closed, when (seconds after each connected)."""

    requested: int
    opened: int = 0
    close_times: list[float] = field(default_factory=list)
    connect_errors: dict[str, int] = field(default_factory=dict)  # reason -> count
    bytes_sent: int = 0
    replies: int = 0

    @property
    def connect_failed(self) -> int:
        return sum(self.connect_errors.values())

    @property
    def closed(self) -> int:
        return len(self.close_times)

    @property
    def still_open(self) -> int:
        return self.opened - self.closed

    def verdict(self) -> str:
        if not self.close_times:
            return (
                f"none of {_plural(self.opened, 'connection')} closed by the server "
                f"in {self.elapsed:.1f} s"
            )
        return (
            f"{self.closed} of {self.opened} connections closed by the server, "
            f"{min(self.close_times):.2f}-{max(self.close_times):.2f} s after connecting; "
            f"{self.still_open} still open after {self.elapsed:.1f} s"
        )

    def rows(self) -> list[tuple[str, str]]:
        rows = [
            ("connections", f"{self.opened} opened of {self.requested}"),
            ("connect failed", _errors(self.connect_errors)),
            ("closed by server", str(self.closed)),
            ("closed after", _spread(self.close_times)),
            ("still open", str(self.still_open)),
        ]
        if self.tool == "slowloris":
            rows += [("bytes sent", str(self.bytes_sent)), ("replies", str(self.replies))]
        return rows


@dataclass
class IdleReport(HoldReport):
    tool: ClassVar[str] = "idle"


@dataclass
class SlowlorisReport(HoldReport):
    tool: ClassVar[str] = "slowloris"


@dataclass
class SlowReaderReport(Report):
    tool: ClassVar[str] = "slow-reader"
    request: str  # "ping" or "login"
    requests_sent: int  # whole requests the kernel took
    bytes_sent: int
    kicked: bool
    how: str  # how the close showed itself, or why the run ended
    kicked_after: float | None  # seconds after connecting
    replies_read: int

    def verdict(self) -> str:
        if self.kicked:
            return (
                f"kicked after {self.kicked_after:.2f} s ({self.how}); "
                f"{self.requests_sent} {self.request}s ({self.bytes_sent:,} bytes) sent"
            )
        return f"not kicked: {self.how}"

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("requests sent", f"{self.requests_sent:,} {self.request}s"),
            ("bytes sent", f"{self.bytes_sent:,}"),
            ("replies read at the end", f"{self.replies_read:,}"),
            ("kicked", f"yes, after {self.kicked_after:.2f} s" if self.kicked else "no"),
        ]


@dataclass
class ChurnReport(Report):
    tool: ClassVar[str] = "churn"
    cycles: int  # connect/ping/close cycles attempted
    accepted: int  # answered the ping: the server took the connection
    closed_at_accept: int  # EOF or reset before any reply
    no_answer: int  # neither reply nor close within the timeout
    hold: int
    held_answered: int  # of the held connections, how many the server served
    held_still_open: int  # of those, how many were still open at the end
    connect_errors: dict[str, int] = field(default_factory=dict)  # reason -> count

    @property
    def connect_failed(self) -> int:
        return sum(self.connect_errors.values())

    def verdict(self) -> str:
        rate = self.cycles / self.elapsed if self.elapsed > 0 else 0.0
        line = (
            f"{self.accepted} of {self.cycles} connects served, {self.closed_at_accept} "
            f"closed right after accept ({rate:,.0f} connects/s)"
        )
        if self.no_answer:
            line += f", {self.no_answer} never answered"
        return line

    def rows(self) -> list[tuple[str, str]]:
        rate = self.cycles / self.elapsed if self.elapsed > 0 else 0.0
        rows = []
        if self.hold:
            rows.append(
                (
                    "held open",
                    f"{self.held_answered} of {self.hold} served, "
                    f"{self.held_still_open} still open",
                )
            )
        return [
            *rows,
            ("connect cycles", str(self.cycles)),
            ("served (ping answered)", str(self.accepted)),
            ("closed at accept", str(self.closed_at_accept)),
            ("no answer", str(self.no_answer)),
            ("connect failed", _errors(self.connect_errors)),
            ("rate", f"{rate:,.0f} connects/s"),
        ]


# ----------------------------------------------------------------------------------------
# flood
# ----------------------------------------------------------------------------------------


def run_flood(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    count: int = 500,
    duration: float = 10.0,
    timeout: float = 5.0,
) -> FloodReport:
    """Ping in lock-step with no pause (send, read the reply, send again) on one
    connection until the server closes it, ``count`` pings or ``duration`` seconds."""
    target = resolve_target(host, port)
    start = time.monotonic()
    deadline = start + duration
    replies = 0
    closed_by: str | None = None
    timed_out = False
    request = 0
    with _connect_errors(target, timeout):
        client = Client(target.ip, target.port, timeout=timeout)
    with client:
        while request < count and time.monotonic() < deadline:
            request += 1
            try:
                client.request(ping_packet())
            except ServerClosed:
                closed_by = "EOF"
                break
            except (ConnectionResetError, BrokenPipeError):
                closed_by = "reset"
                break
            except TimeoutError:
                timed_out = True
                break
            replies += 1
    return FloodReport(
        host=host,
        port=port,
        elapsed=time.monotonic() - start,
        requests=request,
        replies=replies,
        kicked=closed_by is not None,
        closed_by=closed_by,
        closed_on_request=request if closed_by or timed_out else None,
        timed_out=timed_out,
    )


# ----------------------------------------------------------------------------------------
# garbage
# ----------------------------------------------------------------------------------------


def malformed(length: int) -> bool:
    return length < HEADER_LEN or length > PKG_MAX_ACCEPTED


def run_garbage(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    length: int = 7,
    count: int = 5,
    duration: float = 10.0,
    timeout: float = 5.0,
) -> GarbageReport:
    """Send a header announcing an impossible length, then ``count`` pings, in one write;
    read replies until all arrive, the server closes, or the time is up."""
    if not malformed(length) or length > 0xFFFF:
        raise ValueError(f"length {length} is not malformed (use 0-7 or 29001-65535)")
    target = resolve_target(host, port)
    start = time.monotonic()
    deadline = start + duration
    replies = 0
    closed_by: str | None = None
    timed_out = False
    sock = _first_connect(target, timeout)
    with sock:
        parser = PacketParser()
        try:
            sock.sendall(pack_header(length, 0, 0) + ping_packet() * count)
            while replies < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                sock.settimeout(min(timeout, remaining))
                data = sock.recv(65536)
                if not data:
                    closed_by = "EOF"
                    break
                replies += sum(isinstance(e, Packet) for e in parser.feed(data))
        except (ConnectionResetError, BrokenPipeError):
            closed_by = "reset"
        except TimeoutError:
            timed_out = True
    return GarbageReport(
        host=host,
        port=port,
        elapsed=time.monotonic() - start,
        length=length,
        pings=count,
        replies=replies,
        closed=closed_by is not None,
        closed_by=closed_by,
        timed_out=timed_out,
    )


# ----------------------------------------------------------------------------------------
# idle and slowloris: hold many connections, note when the server closes each
# ----------------------------------------------------------------------------------------


@dataclass
class _Held:
    sock: socket.socket
    opened_at: float
    parser: PacketParser = field(default_factory=PacketParser)
    offset: int = 0  # next byte of the dribble stream
    closed_at: float | None = None


Progress = Callable[[str], None]


def _error_name(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _hold(
    report: HoldReport,
    target: Target,
    duration: float,
    timeout: float,
    progress: Progress | None,
    stream: bytes = b"",
    first: int = 0,
    interval: float = 0.0,
) -> HoldReport:
    """Open ``report.requested`` connections; each sends ``stream[:first]`` at once, then
    one more byte of ``stream`` (repeated) every ``interval`` s if ``interval`` > 0. Note
    when the server closes each, until all are closed or ``duration`` ends."""
    _raise_fd_limit(report.requested + 64)
    start = time.monotonic()
    deadline = start + duration
    held: list[_Held] = []
    selector = selectors.DefaultSelector()
    next_progress = 0.0

    def close(entry: _Held, now: float) -> None:
        if entry.closed_at is None:
            entry.closed_at = now
            report.close_times.append(now - entry.opened_at)
            selector.unregister(entry.sock)

    def send(entry: _Held, n: int) -> None:
        chunk = bytes(stream[(entry.offset + i) % len(stream)] for i in range(n))
        try:
            sent = entry.sock.send(chunk)
        except BlockingIOError:
            return
        except OSError:
            close(entry, time.monotonic())
            return
        entry.offset += sent
        report.bytes_sent += sent

    def poll(wait: float) -> None:
        nonlocal next_progress
        for key, _ in selector.select(wait):
            entry: _Held = key.data
            try:
                data = entry.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                close(entry, time.monotonic())
            else:
                report.replies += sum(isinstance(e, Packet) for e in entry.parser.feed(data))
        now = time.monotonic()
        if progress is not None and now >= next_progress:
            next_progress = now + 0.25
            progress(
                f"{report.tool}: {len(held) - report.closed} held open, {report.closed} closed "
                f"by the server, {deadline - now:.0f} s left"
            )

    try:
        for i in range(report.requested):
            if time.monotonic() >= deadline:
                break
            try:
                sock = _first_connect(target, timeout) if i == 0 else _connect(target, timeout)
            except OSError as exc:
                name = _error_name(exc)
                report.connect_errors[name] = report.connect_errors.get(name, 0) + 1
                continue
            sock.setblocking(False)
            entry = _Held(sock, time.monotonic())
            held.append(entry)
            selector.register(sock, selectors.EVENT_READ, entry)
            if first:
                send(entry, first)
            # Note closes while the rest are still connecting, so a close at accept shows
            # up as such rather than after the last connect.
            poll(0)
        report.opened = len(held)
        next_dribble = time.monotonic() + interval
        while report.closed < report.opened:
            now = time.monotonic()
            if now >= deadline:
                break
            if interval > 0 and now >= next_dribble:
                for entry in held:
                    if entry.closed_at is None:
                        send(entry, 1)
                next_dribble = now + interval
            wake = min(deadline, now + 0.25)
            if interval > 0:
                wake = min(wake, next_dribble)
            poll(max(0.0, wake - now))
    finally:
        selector.close()
        for entry in held:
            entry.sock.close()
    report.opened = len(held)
    report.elapsed = time.monotonic() - start
    return report


def run_idle(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    count: int = 10,
    duration: float = 80.0,
    timeout: float = 5.0,
    progress: Progress | None = None,
) -> IdleReport:
    """Open ``count`` connections that send nothing; report which the server closes, and
    how long after connecting, within ``duration`` seconds."""
    target = resolve_target(host, port)
    report = IdleReport(host=host, port=port, elapsed=0.0, requested=count)
    _hold(report, target, duration, timeout, progress)
    return report


def run_slowloris(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    count: int = 10,
    duration: float = 80.0,
    timeout: float = 5.0,
    interval: float = 2.0,
    progress: Progress | None = None,
) -> SlowlorisReport:
    """Open ``count`` connections; each sends half a header of a login request, then one
    more byte every ``interval`` seconds (0: nothing more), and never pings. Report which
    the server closes, and when, within ``duration`` seconds."""
    target = resolve_target(host, port)
    report = SlowlorisReport(host=host, port=port, elapsed=0.0, requested=count)
    stream = login_packet("slowloris", "slowloris")
    _hold(report, target, duration, timeout, progress, stream, HEADER_LEN // 2, interval)
    return report


# ----------------------------------------------------------------------------------------
# slow-reader
# ----------------------------------------------------------------------------------------


def _request_bytes(kind: str) -> bytes:
    if kind == "ping":
        return ping_packet()
    if kind == "login":
        # An unknown user: the server answers NO_USER without hashing a password, so the
        # 104-byte replies pile up fast and cost the server little to produce.
        return login_packet("slowreader", "x")
    raise ValueError(f"request must be 'ping' or 'login', got {kind!r}")


# After the burst, the slow reader sends this many more requests at this interval.
TRICKLE = 100
TRICKLE_INTERVAL = 0.1


def run_slow_reader(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    count: int = 200_000,
    duration: float = 10.0,
    timeout: float = 5.0,
    request: str = "login",
    rcvbuf: int = 1024,
) -> SlowReaderReport:
    """One connection with a small receive buffer pipelines ``count`` requests as fast as
    the server takes them, then ``TRICKLE`` more every ``TRICKLE_INTERVAL`` seconds, and
    reads nothing until the server
    has closed it or ``duration`` is up; then it reads what is left, to see the EOF or
    reset, or every reply if it was never kicked."""
    one = _request_bytes(request)
    target = resolve_target(host, port)
    start = time.monotonic()
    deadline = start + duration
    total = count * len(one)  # bytes to send; grows by one request per trickle tick
    chunk = one * max(1, 65536 // len(one))
    bytes_sent = 0
    how = ""
    kicked_at: float | None = None

    def closed_state() -> str | None:
        state = _tcp_state(sock)
        if state == _TCP_CLOSE_WAIT:
            return "the server closed the connection: FIN seen without reading"
        if state == _TCP_CLOSE:
            return "the server reset the connection: seen without reading"
        return None

    sock = _first_connect(target, timeout, rcvbuf)
    with sock:
        opened = time.monotonic()
        next_trickle = 0.0
        sock.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_WRITE)
            while kicked_at is None:
                now = time.monotonic()
                if now >= deadline:
                    break
                if reason := closed_state():
                    how, kicked_at = reason, now
                    break
                if bytes_sent >= total:
                    # The burst is out; keep asking, a little at a time. Two reasons: a
                    # server that took the whole burst before its buffer filled has
                    # nothing more to hold against us until more replies pile up; and a
                    # server that kicked us while its buffer still held replies for us
                    # sends its FIN only after them, which we would never see without
                    # reading, while a request arriving at the closed socket is answered
                    # with a reset.
                    if now < next_trickle:
                        time.sleep(min(next_trickle, deadline) - now)
                        continue
                    total += TRICKLE * len(one)
                    next_trickle = now + TRICKLE_INTERVAL
                if not selector.select(min(0.05, deadline - now)):
                    continue
                pos = bytes_sent % len(chunk)
                piece = memoryview(chunk)[pos : pos + min(len(chunk) - pos, total - bytes_sent)]
                try:
                    bytes_sent += sock.send(piece)
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError) as exc:
                    how = f"{exc.strerror or exc} on send"
                    kicked_at = time.monotonic()
        # Finally read: the replies still buffered, then EOF or a reset if kicked.
        sent = bytes_sent // len(one)
        parser = PacketParser()
        replies = 0
        # The attack is over: a big buffer now, or megabytes of replies crawl through a
        # window of a couple of kilobytes.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        read_deadline = time.monotonic() + max(timeout, duration)
        ending = ""
        try:
            while kicked_at is not None or replies < sent:
                remaining = read_deadline - time.monotonic()
                if remaining <= 0:
                    ending = "gave up"
                    break
                sock.settimeout(min(timeout, remaining))
                data = sock.recv(262144)
                if not data:
                    ending = "EOF on read"
                    break
                replies += sum(isinstance(e, Packet) for e in parser.feed(data))
        except ConnectionResetError:
            ending = "connection reset on read"
        except TimeoutError:
            ending = "timeout"
        if kicked_at is None and ending in ("EOF on read", "connection reset on read"):
            how, kicked_at = ending, time.monotonic()
        elif kicked_at is None:
            how = (
                f"all {replies:,} replies read at the end"
                if replies == sent
                else f"{replies:,} of {sent:,} replies read, then "
                + ("no more in time" if ending == "gave up" else f"nothing for {timeout:g} s")
            )
    return SlowReaderReport(
        host=host,
        port=port,
        elapsed=time.monotonic() - start,
        request=request,
        requests_sent=sent,
        bytes_sent=bytes_sent,
        kicked=kicked_at is not None,
        how=how,
        kicked_after=None if kicked_at is None else kicked_at - opened,
        replies_read=replies,
    )


# ----------------------------------------------------------------------------------------
# churn
# ----------------------------------------------------------------------------------------


def _ping_once(sock: socket.socket) -> str:
    """'served', 'closed' (EOF or reset before a reply) or 'no answer' (timeout)."""
    try:
        sock.sendall(ping_packet())
        got = b""
        while len(got) < HEADER_LEN:
            data = sock.recv(HEADER_LEN - len(got))
            if not data:
                return "closed"
            got += data
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return "closed"
    except TimeoutError:
        return "no answer"
    return "served"


def run_churn(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    count: int = 1000,
    duration: float = 30.0,
    timeout: float = 5.0,
    hold: int = 0,
    progress: Progress | None = None,
) -> ChurnReport:
    """Optionally open ``hold`` connections and keep them (to fill the server's pool),
    then connect, ping, disconnect, ``count`` times as fast as possible. A connection the
    server closes right after accept shows as EOF (or a reset) instead of a reply."""
    target = resolve_target(host, port)
    _raise_fd_limit(hold + 64)
    start = time.monotonic()
    deadline = start + duration
    outcomes = {"served": 0, "closed": 0, "no answer": 0}
    connect_errors: dict[str, int] = {}
    held: list[socket.socket] = []
    held_answered = 0
    cycles = 0
    connected_once = False

    def connect() -> socket.socket:
        nonlocal connected_once
        sock = _connect(target, timeout) if connected_once else _first_connect(target, timeout)
        connected_once = True
        return sock

    try:
        for _ in range(hold):
            if time.monotonic() >= deadline:
                break
            try:
                sock = connect()
            except OSError as exc:
                connect_errors[_error_name(exc)] = connect_errors.get(_error_name(exc), 0) + 1
                continue
            held.append(sock)
            held_answered += _ping_once(sock) == "served"
        next_progress = 0.0
        while cycles < count and (now := time.monotonic()) < deadline:
            if progress is not None and now >= next_progress:
                next_progress = now + 0.25
                progress(
                    f"churn: {cycles:,} of {count:,} cycles, {outcomes['served']:,} served, "
                    f"{outcomes['closed']:,} closed at accept"
                )
            cycles += 1
            try:
                sock = connect()
            except OSError as exc:
                connect_errors[_error_name(exc)] = connect_errors.get(_error_name(exc), 0) + 1
                continue
            with sock:
                outcomes[_ping_once(sock)] += 1
        held_still_open = sum(not _peer_closed(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()
    return ChurnReport(
        host=host,
        port=port,
        elapsed=time.monotonic() - start,
        cycles=cycles,
        accepted=outcomes["served"],
        closed_at_accept=outcomes["closed"],
        no_answer=outcomes["no answer"],
        hold=hold,
        held_answered=held_answered,
        held_still_open=held_still_open,
        connect_errors=connect_errors,
    )


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be 1-65535, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, got {text}")
    return value


def _malformed_length(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 0xFFFF or not malformed(value):
        raise argparse.ArgumentTypeError(
            f"{value} is not a malformed length: use 0-{HEADER_LEN - 1} or "
            f"{PKG_MAX_ACCEPTED + 1}-65535"
        )
    return value


@dataclass(frozen=True)
class _Tool:
    help: str
    run: Callable[..., Report]
    count: int
    count_help: str
    duration: float


TOOLS: dict[str, _Tool] = {
    "flood": _Tool(
        "ping back-to-back on one connection (meets chapter 6's flood kick)",
        run_flood,
        500,
        "pings to send",
        10.0,
    ),
    "garbage": _Tool(
        "send a header with an impossible length, then pings (chapter 6 closes the "
        "connection; chapters 1-5 skip the 8 bytes and answer the pings)",
        run_garbage,
        5,
        "pings to send after the malformed header",
        10.0,
    ),
    "slowloris": _Tool(
        "hold connections that send half a packet and then a byte now and then, never "
        "a ping (meets chapter 5's silence kick; the shipped config kicks after "
        "3*20+10 = 70 s)",
        run_slowloris,
        10,
        "connections to open",
        80.0,
    ),
    "slow-reader": _Tool(
        "pipeline requests on one connection and never read a reply (meets chapter 4's "
        "send-backlog kick; in chapter 6 the flood kick gets there first unless "
        "Sock_FloodAttackKickEnable = 0)",
        run_slow_reader,
        200_000,
        "requests to send",
        10.0,
    ),
    "churn": _Tool(
        "connect, ping and disconnect as fast as possible (meets chapter 3's online "
        "limit and storm guard; use --hold to fill the pool first)",
        run_churn,
        1000,
        "connect/disconnect cycles",
        30.0,
    ),
    "idle": _Tool(
        "open connections and send nothing (meets chapter 5's silence kick; the "
        "shipped config kicks after 3*20+10 = 70 s)",
        run_idle,
        10,
        "connections to open",
        80.0,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.attack",
        description="Misbehave against a chapter server running on this machine, to watch "
        "its defences fire (run the server with --dashboard). Loopback targets only; "
        "every tool stops by itself after --count or --duration.",
    )
    subparsers = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    for name, tool in TOOLS.items():
        sub = subparsers.add_parser(
            name, help=tool.help, description=tool.help[0].upper() + tool.help[1:] + "."
        )
        sub.add_argument(
            "--host",
            default=DEFAULT_HOST,
            help="server address: 127.0.0.0/8, ::1 or localhost only (default: %(default)s)",
        )
        sub.add_argument(
            "--port", type=_port, default=DEFAULT_PORT, help="server port (default: %(default)s)"
        )
        sub.add_argument(
            "--count",
            type=_positive_int,
            default=tool.count,
            help=f"{tool.count_help} (default: %(default)s)",
        )
        sub.add_argument(
            "--duration",
            type=_positive_float,
            default=tool.duration,
            metavar="SECONDS",
            help="stop after this long at the latest (default: %(default)s)",
        )
        sub.add_argument(
            "--timeout",
            type=_positive_float,
            default=5.0,
            metavar="SECONDS",
            help="wait this long for a connect or a reply (default: %(default)s)",
        )
        if name == "garbage":
            sub.add_argument(
                "--length",
                type=_malformed_length,
                default=7,
                help="the header's pkgLen: 0-7 or 29001-65535 (default: %(default)s)",
            )
        elif name == "slowloris":
            sub.add_argument(
                "--interval",
                type=_non_negative_float,
                default=2.0,
                metavar="SECONDS",
                help="send one more byte every this many seconds; 0: nothing after the "
                "half header (default: %(default)s)",
            )
        elif name == "slow-reader":
            sub.add_argument(
                "--request",
                choices=["login", "ping"],
                default="login",
                help="what to pipeline: logins (104-byte replies) fill the server's "
                "buffers 13 times faster than pings (default: %(default)s)",
            )
            sub.add_argument(
                "--rcvbuf",
                type=_positive_int,
                default=1024,
                metavar="BYTES",
                help="our SO_RCVBUF, small so the replies back up fast (default: %(default)s)",
            )
        elif name == "churn":
            sub.add_argument(
                "--hold",
                type=_non_negative_int,
                default=0,
                metavar="N",
                help="connections to open first and keep open, to fill the server's pool "
                "(default: %(default)s)",
            )
    return parser


_EXTRA_OPTIONS = ("length", "interval", "request", "rcvbuf", "hold")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tool = TOOLS[args.tool]
    err = Console(stderr=True)
    extra = {name: getattr(args, name) for name in _EXTRA_OPTIONS if hasattr(args, name)}

    def fail(message: str, code: int) -> int:
        err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        return code

    try:
        # Checked before anything else, so a refused target never sees a packet.
        resolve_target(args.host, args.port)
        start = f"{args.tool} -> {_host_port(args.host, args.port)} (up to {args.duration:g} s)"
        with _status(err, start) as progress:
            if progress is not None and args.tool in _PROGRESS_TOOLS:
                extra["progress"] = progress
            report = tool.run(
                args.host,
                args.port,
                count=args.count,
                duration=args.duration,
                timeout=args.timeout,
                **extra,
            )
    except NotLoopback as exc:
        return fail(str(exc), 2)
    except AttackError as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except OSError as exc:
        return fail(f"{args.tool}: {_error_name(exc)}", 1)
    console = Console()
    console.print(report.table())
    console.print(f"[bold]{report.tool}:[/] {report.verdict()}", highlight=False, soft_wrap=True)
    return 0


# The long-running tools report progress on the spinner line while they run.
_PROGRESS_TOOLS = frozenset({"idle", "slowloris", "churn"})


@contextlib.contextmanager
def _status(console: Console, message: str) -> Iterator[Progress | None]:
    """A spinner while an attack runs, on a terminal only; yields its update function."""
    if console.is_terminal:
        with console.status(message) as status:
            yield lambda text: status.update(text)
    else:
        yield None


if __name__ == "__main__":
    sys.exit(main())
