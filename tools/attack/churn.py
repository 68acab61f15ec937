"""``churn``: connect, ping and disconnect as fast as possible (meets chapter 3's online
limit and storm guard)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import ClassVar

from common.protocol import HEADER_LEN
from tools.client import ping_packet

from .base import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Progress,
    Report,
    connect_to,
    error_counts,
    error_name,
    first_connect,
    peer_closed,
    raise_fd_limit,
    resolve_target,
)


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
            ("connect failed", error_counts(self.connect_errors)),
            ("rate", f"{rate:,.0f} connects/s"),
        ]


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
    raise_fd_limit(hold + 64)
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
        sock = connect_to(target, timeout) if connected_once else first_connect(target, timeout)
        connected_once = True
        return sock

    try:
        for _ in range(hold):
            if time.monotonic() >= deadline:
                break
            try:
                sock = connect()
            except OSError as exc:
                connect_errors[error_name(exc)] = connect_errors.get(error_name(exc), 0) + 1
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
                connect_errors[error_name(exc)] = connect_errors.get(error_name(exc), 0) + 1
                continue
            with sock:
                outcomes[_ping_once(sock)] += 1
        held_still_open = sum(not peer_closed(sock) for sock in held)
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
