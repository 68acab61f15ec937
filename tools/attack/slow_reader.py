"""``slow-reader``: pipeline requests and never read a reply (meets chapter 4's
backpressure, and chapter 5's send-stall kick)."""

from __future__ import annotations

import contextlib
import itertools
import selectors
import socket
import time
from dataclasses import dataclass
from typing import ClassVar

from common.protocol import Packet, PacketParser
from tools.client import login_packet, ping_packet

from .base import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    TCP_CLOSE,
    TCP_CLOSE_WAIT,
    Progress,
    Report,
    first_connect,
    resolve_target,
    tcp_state,
)


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
    paced: bool = False  # a ping first in every small group, instead of one burst

    @property
    def requests(self) -> str:
        if self.paced and self.request != "ping":
            return f"{self.request}s and pings"
        return f"{self.request}s"

    def verdict(self) -> str:
        if self.kicked:
            return (
                f"kicked after {self.kicked_after:.2f} s ({self.how}); "
                f"{self.requests_sent} {self.requests} ({self.bytes_sent:,} bytes) sent"
            )
        return f"not kicked: {self.how}"

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("requests sent", f"{self.requests_sent:,} {self.requests}"),
            ("bytes sent", f"{self.bytes_sent:,}"),
            ("replies read at the end", f"{self.replies_read:,}"),
            ("kicked", f"yes, after {self.kicked_after:.2f} s" if self.kicked else "no"),
        ]


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
# Paced: no burst, a group of this many requests at this interval from the start, a ping
# first. Chapter 6 kicks a client after 10 packets in a row each less than 100 ms after
# the previous one; groups of 4 with 150 ms between them stay far from that, even when a
# loaded server reads two groups in one go and sees 8 packets arrive at once.
PACED_GROUP = 4
PACED_INTERVAL = 0.15


def run_slow_reader(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    count: int = 200_000,
    duration: float = 10.0,
    timeout: float = 5.0,
    request: str = "login",
    rcvbuf: int = 1024,
    paced: bool = False,
    progress: Progress | None = None,
) -> SlowReaderReport:
    """One connection with a small receive buffer pipelines ``count`` requests as fast as
    the server takes them, then ``TRICKLE`` more every ``TRICKLE_INTERVAL`` seconds, and
    reads nothing until the server has closed it or ``duration`` is up; then it reads
    what is left, to see the EOF or reset, or every reply if it was never kicked.

    ``paced``: no burst (``count`` is not used); a group of ``PACED_GROUP`` requests, a
    ping and then the others, every ``PACED_INTERVAL`` seconds from the start. This reader
    breaks no other rule: it stays under chapter 6's flood rule and pings, so only the
    send-stall kick can meet it: once its replies wait, the server reads it no more (its
    pings included), and after the heartbeat's timeout without taking a byte it goes."""
    one = _request_bytes(request)
    target = resolve_target(host, port)
    start = time.monotonic()
    deadline = start + duration
    # What one tick sends: one request (a burst is many of them), or a paced group.
    if paced:
        unit = [ping_packet()] + [one] * (PACED_GROUP - 1)
        ticks, interval = 1, PACED_INTERVAL
    else:
        unit, ticks, interval = [one], TRICKLE, TRICKLE_INTERVAL
    unit_bytes = b"".join(unit)
    total = 0 if paced else count * len(unit_bytes)  # bytes to send; grows every tick
    next_progress = 0.0
    chunk = unit_bytes * max(1, 65536 // len(unit_bytes))

    def requests_in(n_bytes: int) -> int:
        """Whole requests in the first ``n_bytes`` of the stream."""
        whole, rest = divmod(n_bytes, len(unit_bytes))
        ends = itertools.accumulate(len(r) for r in unit)
        return whole * len(unit) + sum(end <= rest for end in ends)

    bytes_sent = 0
    how = ""
    kicked_at: float | None = None

    def closed_state() -> str | None:
        state = tcp_state(sock)
        if state == TCP_CLOSE_WAIT:
            return "the server closed the connection: FIN seen without reading"
        if state == TCP_CLOSE:
            return "the server reset the connection: seen without reading"
        return None

    sock = first_connect(target, timeout, rcvbuf)
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
                if progress is not None and now >= next_progress:
                    next_progress = now + 0.25
                    progress(
                        f"slow-reader: {requests_in(bytes_sent):,} requests sent, not kicked yet"
                    )
                if bytes_sent >= total:
                    # The burst is out (or, paced, there is none); keep asking, a little at
                    # a time. Two reasons: a server that took the whole burst before its
                    # buffer filled has nothing more to hold against us until more
                    # replies pile up; and a server that kicked us while its buffer still
                    # held replies for us sends its FIN only after them, which we would
                    # never see without reading, while a request arriving at the closed
                    # socket is answered with a reset.
                    if now < next_trickle:
                        time.sleep(min(next_trickle, deadline) - now)
                        continue
                    total += ticks * len(unit_bytes)
                    next_trickle = now + interval
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
        sent = requests_in(bytes_sent)
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
        paced=paced,
        requests_sent=sent,
        bytes_sent=bytes_sent,
        kicked=kicked_at is not None,
        how=how,
        kicked_after=None if kicked_at is None else kicked_at - opened,
        replies_read=replies,
    )
