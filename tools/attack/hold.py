"""``idle`` and ``slowloris``: hold many connections, note when the server closes each
(both meet chapter 5's silence kick)."""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import ClassVar

from common.protocol import HEADER_LEN, Packet, PacketParser
from tools.client import login_packet

from .base import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Progress,
    Report,
    Target,
    connect_to,
    error_counts,
    error_name,
    first_connect,
    plural,
    raise_fd_limit,
    resolve_target,
    spread,
)


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
                f"none of {plural(self.opened, 'connection')} closed by the server "
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
            ("connect failed", error_counts(self.connect_errors)),
            ("closed by server", str(self.closed)),
            ("closed after", spread(self.close_times)),
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
class _Held:
    sock: socket.socket
    opened_at: float
    parser: PacketParser = field(default_factory=PacketParser)
    offset: int = 0  # next byte of the dribble stream
    closed_at: float | None = None


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
    raise_fd_limit(report.requested + 64)
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
                sock = first_connect(target, timeout) if i == 0 else connect_to(target, timeout)
            except OSError as exc:
                name = error_name(exc)
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
