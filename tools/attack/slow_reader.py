"""``slow-reader``: pipeline requests and never read a reply (meets chapter 4's
send-backlog kick)."""

from __future__ import annotations

import contextlib
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
