"""Idle connections held open beside the load: what they cost the server and whether it
still answers them.

The bench process opens them (non-blocking, a batch at a time), pings each once so the
server has really accepted it and built its state, and keeps them quiet during the run,
except with ``--heartbeat``: then a thread pings each one every ``Sock_MaxWaitTime / 2``
seconds, as a well-behaved client would, so the heartbeat check must not kick them.
"""

from __future__ import annotations

import random
import select
import socket
import threading
import time

from common.protocol import HEADER_LEN, PING_PACKET

from .loadgen import PINGS, open_connections


class IdleConnections:
    def __init__(self, host: str, port: int, count: int) -> None:
        self.host, self.port, self.count = host, port, count
        self.ep = select.epoll()
        self.socks: dict[int, socket.socket] = {}
        self.rx: dict[int, int] = {}  # bytes received per connection
        self.failures = 0
        self.error = ""
        self.closed_by_server = 0
        self.bad_replies = 0
        self.keepalive_pings = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self, timeout: float = 60.0) -> int:
        socks, self.failures, self.error = open_connections(
            self.host, self.port, self.count, timeout, self.ep
        )
        for sock in socks:
            self.socks[sock.fileno()] = sock
            self.rx[sock.fileno()] = 0
            self.ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        return len(socks)

    def ping(self, fds: list[int], timeout: float) -> int:
        """Ping each of ``fds`` once; return how many answered within ``timeout``."""
        expected = {}
        for fd in fds:
            sock = self.socks.get(fd)
            if sock is None:
                continue
            try:
                sock.send(PING_PACKET)
            except OSError:
                self._lost(fd)
                continue
            expected[fd] = self.rx[fd] + HEADER_LEN
        deadline = time.monotonic() + timeout
        waiting = set(expected)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in self.ep.poll(min(left, 0.2)):
                self._readable(fd)
                if fd in waiting and self.rx.get(fd, 0) >= expected[fd]:
                    waiting.discard(fd)
            waiting &= set(self.socks)
        return sum(1 for fd in expected if fd in self.socks and self.rx[fd] >= expected[fd])

    def ping_all(self, timeout: float = 30.0) -> int:
        return self.ping(list(self.socks), timeout)

    def sample_check(self, size: int = 100, timeout: float = 2.0) -> tuple[int, int]:
        """Ping a random sample of the idle connections: (answered within 2 s, sample)."""
        fds = random.sample(list(self.socks), min(size, len(self.socks)))
        return self.ping(fds, timeout), len(fds)

    def _readable(self, fd: int) -> None:
        sock = self.socks.get(fd)
        if sock is None:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost(fd)
            return
        if not PINGS.startswith(data, self.rx[fd] % HEADER_LEN):
            self.bad_replies += 1
        self.rx[fd] += len(data)

    def _lost(self, fd: int) -> None:
        sock = self.socks.pop(fd, None)
        if sock is None:
            return
        self.closed_by_server += 1
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        sock.close()

    # -- during the run ----------------------------------------------------------------------
    def start(self, ping_interval: float | None) -> None:
        """Watch for closes (and ping every ``ping_interval`` s when given) on a thread."""
        self._thread = threading.Thread(
            target=self._keep, args=(ping_interval,), name="idle-connections", daemon=True
        )
        self._thread.start()

    def _keep(self, ping_interval: float | None) -> None:
        next_ping = time.monotonic() + (ping_interval or 0)
        while not self._stop.is_set():
            for fd, _ in self.ep.poll(0.2):
                self._readable(fd)
            if ping_interval and time.monotonic() >= next_ping:
                next_ping += ping_interval
                for fd, sock in list(self.socks.items()):
                    try:
                        sock.send(PING_PACKET)
                        self.keepalive_pings += 1
                    except OSError:
                        self._lost(fd)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def close(self) -> None:
        self.stop()
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()
        self.ep.close()

    @property
    def open_count(self) -> int:
        return len(self.socks)
