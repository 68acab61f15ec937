"""``flood``: ping back-to-back on one connection (meets chapter 6's flood kick)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from tools.client import Client, ServerClosed, ping_packet

from .base import DEFAULT_HOST, DEFAULT_PORT, Report, connect_errors, n_replies, resolve_target


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
                f"kicked after {n_replies(self.replies)} "
                f"({self.closed_by} on request "
                f"{self.closed_on_request}) in {self.elapsed:.2f} s"
            )
        if self.timed_out:
            return (
                f"no reply to request {self.closed_on_request} within the timeout, "
                f"after {n_replies(self.replies)}"
            )
        return f"not kicked: {n_replies(self.replies)} in {self.elapsed:.2f} s"

    def rows(self) -> list[tuple[str, str]]:
        rate = self.replies / self.elapsed if self.elapsed > 0 else 0.0
        return [
            ("pings sent", str(self.requests)),
            ("replies", str(self.replies)),
            ("rate", f"{rate:,.0f} replies/s"),
            ("closed by server", f"yes ({self.closed_by})" if self.kicked else "no"),
        ]


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
    with connect_errors(target, timeout):
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
