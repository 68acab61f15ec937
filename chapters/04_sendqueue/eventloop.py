"""The epoll event loop: which descriptor is which connection, and what epoll reported.

C++: ngx_epoll_init, ngx_epoll_process_events, ngx_epoll_oper_event.

These are the loop's mechanics; what the server does on each event (accept, read, write)
is in ``server.py``'s handlers. Later chapters change the handlers and keep this file.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable

from common.stats import Counters

from .connection import Connection

# Level-triggered (no EPOLLET), as the original: an event repeats while the condition
# holds, so a handler may do one step per event and trust epoll to call it again.
READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP
WRITE_EVENTS = select.EPOLLOUT
# After EMFILE/ENFILE we stop watching the listening sockets for this long (or until a
# connection closes): a level-triggered listener stays readable while accept() fails, so
# without the pause the loop would spin at 100% CPU.
ACCEPT_PAUSE = 0.5


class EventLoop:
    """One epoll set, ``conns`` (fd -> :class:`Connection`, listening sockets included:
    their ``rhandler`` is the server's ``on_accept``), and the loop that dispatches."""

    COUNTERS = ("stale_events",)

    def __init__(
        self,
        listeners: list[Connection],
        counters: Counters,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.epoll = select.epoll()  # C++: ngx_epoll_init (epoll_create)
        self.counters = counters
        self.clock = clock
        self.conns: dict[int, Connection] = {}
        self.listeners = listeners
        for listener in listeners:
            self.watch(listener, select.EPOLLIN)
        # An eventfd the loop also watches: another thread writes to it (wake()) so a
        # poll() that would wait for the next client event returns at once.
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll.register(self._wake_fd, select.EPOLLIN)
        self._closed_in_batch: set[int] = set()
        self._accept_paused_until = 0.0
        self.thread = 0  # ident of the thread inside run(), 0 while none is

    # --8<-- [start:run]
    def run(self, stopping: Callable[[], bool]) -> None:
        """Poll and dispatch until ``stopping()``. C++: the worker's loop around
        ngx_process_events_and_timers."""
        self.thread = threading.get_ident()
        while not stopping():
            timeout = -1.0
            if self._accept_paused_until:
                timeout = max(0.0, self._accept_paused_until - self.clock())
                if timeout == 0.0:
                    self._resume_accepting()
                    timeout = -1.0
            self.process_events(self.epoll.poll(timeout))

    # --8<-- [end:run]

    # --8<-- [start:process_events]
    def process_events(self, events: list[tuple[int, int]]) -> None:
        """Dispatch one batch of ready events. C++: ngx_epoll_process_events.

        Stale events: one batch can hold two events for the same fd, and the first may
        close the connection (a read error, say). The second must then be ignored, even if
        the fd number was already reused by a connection accepted earlier in this batch:
        any event collected before the close is about the old connection. The original
        tells them apart with ``fd == -1`` and an "instance" bit stored in the event's
        pointer; we remember which fds were closed during this batch.
        """
        closed = self._closed_in_batch
        closed.clear()
        conns = self.conns
        for fd, mask in events:
            if fd in closed:
                self.counters.add("stale_events")
                continue
            conn = conns.get(fd)
            if conn is None:
                if fd == self._wake_fd:
                    os.eventfd_read(self._wake_fd)
                continue
            if mask & (select.EPOLLERR | select.EPOLLHUP):
                # As the original: an error or hang-up is handled by the read/write path,
                # which sees the errno (or EOF) and closes.
                mask |= select.EPOLLIN | select.EPOLLOUT
            if mask & (select.EPOLLIN | select.EPOLLRDHUP):
                conn.rhandler(conn)
            if mask & select.EPOLLOUT and not conn.closed and conn.whandler is not None:
                conn.whandler(conn)

    # --8<-- [end:process_events]

    # --8<-- [start:oper]
    def watch(self, conn: Connection, mask: int) -> None:
        """Register ``conn`` for ``mask``. C++: ngx_epoll_oper_event(EPOLL_CTL_ADD)."""
        conn.mask = mask
        self.conns[conn.fd] = conn
        self.epoll.register(conn.fd, mask)

    def set_mask(self, conn: Connection, mask: int) -> None:
        """Change the events epoll reports for ``conn``, if they change.
        C++: ngx_epoll_oper_event(EPOLL_CTL_MOD)."""
        if mask != conn.mask and not conn.closed:
            conn.mask = mask
            self.epoll.modify(conn.fd, mask)

    def forget(self, conn: Connection) -> None:
        """Take ``conn`` out of the loop before its socket is closed. Closing the fd would
        also remove it from the epoll set; we unregister first anyway so a duplicated
        descriptor could never keep delivering events."""
        fd = conn.fd
        self._closed_in_batch.add(fd)
        self.conns.pop(fd, None)
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass
        if self._accept_paused_until:
            self._resume_accepting()  # a descriptor is free again

    # --8<-- [end:oper]

    def clients(self) -> list[Connection]:
        """The client connections (not the listeners); safe to call from any thread."""
        return [conn for conn in list(self.conns.values()) if conn.whandler is not None]

    # --8<-- [start:pause_accepting]
    def pause_accepting(self) -> None:
        """Stop watching the listening sockets for ``ACCEPT_PAUSE`` seconds."""
        already_paused = bool(self._accept_paused_until)
        self._accept_paused_until = self.clock() + ACCEPT_PAUSE
        if not already_paused:
            for listener in self.listeners:
                self.epoll.unregister(listener.fd)

    def _resume_accepting(self) -> None:
        self._accept_paused_until = 0.0
        for listener in self.listeners:
            self.epoll.register(listener.fd, listener.mask)

    # --8<-- [end:pause_accepting]

    def in_loop_thread(self) -> bool:
        """On the loop's thread, or no thread runs the loop (a test driving it by hand)."""
        return self.thread in (0, threading.get_ident())

    def wake(self) -> None:
        """Make a waiting ``poll()`` return now; safe from any thread."""
        os.eventfd_write(self._wake_fd, 1)

    def close(self) -> None:
        self.epoll.close()
        os.close(self._wake_fd)
