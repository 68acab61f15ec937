"""``garbage``: a header announcing an impossible length (meets chapter 6's malformed close)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from common.protocol import HEADER_LEN, PKG_MAX_ACCEPTED, Packet, PacketParser, pack_header
from tools.client import ping_packet

from .base import DEFAULT_HOST, DEFAULT_PORT, Report, first_connect, resolve_target


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
    sock = first_connect(target, timeout)
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
