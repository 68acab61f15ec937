"""The epoll event loop: which descriptor is which connection, and what epoll reported.

C++: ngx_epoll_init, ngx_epoll_process_events, ngx_epoll_oper_event.

These are the loop's mechanics; what the server does on each event (accept, read, write)
is in ``server.py``'s handlers. Later chapters change the handlers and keep this file.

From chapter 4 other threads (workers, the send thread) need the loop to act for them:
:meth:`EventLoop.call_in_loop` runs a function on the loop's thread.
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


# --8<-- [start:eventloop]
class EventLoop:
    """One epoll set, the connections registered in it, and the loop that dispatches.

    ``conns`` maps each registered fd to its :class:`Connection`, listening sockets
    included: their ``rhandler`` is the server's ``on_accept``, as the original's
    listening "connections" have ``ngx_event_accept``. So the loop never asks what kind of
    socket an event is for; it calls the connection's handler.
    """

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
        self._calls: list[tuple[Callable[..., object], tuple[object, ...]]] = []
        self._calls_lock = threading.Lock()  # guards _calls and _thread
        self._thread = 0  # ident of the thread inside run(); 0 when none is

    # --8<-- [start:run]
    def run(self, stopping: Callable[[], bool]) -> None:
        """Poll and dispatch until ``stopping()``. C++: the worker's loop around
        ngx_process_events_and_timers."""
        with self._calls_lock:
            self._thread = threading.get_ident()
        try:
            while not stopping():
                timeout = -1.0
                if self._accept_paused_until:
                    timeout = max(0.0, self._accept_paused_until - self.clock())
                    if timeout == 0.0:
                        self._resume_accepting()
                        timeout = -1.0
                self.process_events(self.epoll.poll(timeout))
        finally:
            with self._calls_lock:
                self._thread = 0
            self._run_calls()  # what other threads asked for before we left

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
        if self._calls:
            self._run_calls()

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

    # --8<-- [start:call_in_loop]
    def call_in_loop(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on the event loop's thread: now, if this is that thread (or no
        loop runs), else right after the loop's current batch of events.

        Why not just call it: a worker that closed a socket itself could free an fd in the
        middle of the loop's batch, and the loop would hand the batch's later events for
        that fd to whichever connection gets the number next.
        """
        with self._calls_lock:
            queued = self._thread not in (0, threading.get_ident())
            if queued:
                self._calls.append((fn, args))
        if queued:
            self.wake()
        else:
            fn(*args)

    def _run_calls(self) -> None:
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for fn, args in calls:
            fn(*args)

    # --8<-- [end:call_in_loop]

    def clients(self) -> list[Connection]:
        """The client connections (not the listeners); safe to call from any thread."""
        return [conn for conn in list(self.conns.values()) if conn.whandler is not None]

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

    def wake(self) -> None:
        """Make a waiting ``poll()`` return now; safe from any thread."""
        os.eventfd_write(self._wake_fd, 1)

    def close(self) -> None:
        self.epoll.close()
        os.close(self._wake_fd)


# --8<-- [end:eventloop]
