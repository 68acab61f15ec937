"""Chapter 3 server: the epoll loop of chapter 2, with connections from a pool.

Builds on chapter 2; adds the connection pool (C++: ngx_get_connection,
ngx_free_connection, inRecyConnectQueue, ServerRecyConnectionThread) and the two limits
the original enforces at accept: the online-user limit and the connect/disconnect storm
guard.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time

from common.config import Config
from common.logic import DropReason, Logic
from common.platform import require_epoll
from common.protocol import Packet
from common.stats import Counters

from .connection import Connection
from .listening import close_listening_sockets, open_listening_sockets
from .pool import ConnectionPool

log = logging.getLogger("server")

RECV_SIZE = 65536
# Level-triggered (no EPOLLET), as the original: an event repeats while the condition
# holds, so a handler may do one step per event and trust epoll to call it again.
READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP
WRITE_EVENTS = select.EPOLLOUT
# After EMFILE/ENFILE we stop watching the listening sockets for this long (or until a
# connection closes): a level-triggered listener stays readable while accept() fails, so
# without the pause the loop would spin at 100% CPU.
ACCEPT_PAUSE = 0.5


class Server:
    """The chapter contract: ``Server(config)``, ``serve_forever()``, ``shutdown()``,
    ``addresses`` and ``stats()`` (see GUIDE.md section 3)."""

    def __init__(self, config: Config) -> None:
        require_epoll()
        self.config = config
        self.logic = Logic.from_config(config)
        try:
            self.listeners = open_listening_sockets(
                config.get_str("ListenAddress"), config.listen_ports()
            )
        except BaseException:
            self.logic.close()
            raise
        # C++: ngx_epoll_init (epoll_create, then one listening "connection" per socket
        # whose rhandler is ngx_event_accept).
        self.epoll = select.epoll()
        self.worker_connections = config.get_int("worker_connections", minimum=1)
        self.pool = ConnectionPool(
            self.worker_connections, config.get_float("Sock_RecyConnectionWaitTime", minimum=0)
        )
        # fd -> (connection, its generation when registered), listeners included. epoll
        # hands back only the fd; the generation recorded beside it is our version of the
        # original's pointer-plus-instance-bit in epoll_event.data.ptr.
        self.conns: dict[int, tuple[Connection, int]] = {}
        self.online = 0  # C++: m_onlineUserCount
        for listener in self.listeners:
            conn = Connection()
            conn.attach(listener, listener.getsockname()[:2], self.on_accept, None)
            self.conns[conn.fd] = (conn, conn.generation)
            self.epoll.register(conn.fd, select.EPOLLIN)
        # An eventfd the loop also watches: shutdown() from another thread writes to it
        # so the loop wakes at once instead of at the next client event.
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll.register(self._wake_fd, select.EPOLLIN)
        self._lock = threading.Lock()
        self._stopping = False
        self._serving = False
        self._done = threading.Event()
        self._closed = False
        self._closed_in_batch: set[int] = set()
        self._accept_paused_until = 0.0
        self.counters = Counters(
            ["accepted", "closed", "packets_in", "replies_out", "malformed", "stale_events"]
            + [f"drops.{reason}" for reason in DropReason]
            + ["accept_errors.econnaborted", "accept_errors.emfile"]
            + ["refused.online_limit", "refused.storm"]
        )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs actually bound (so port 0 in a test tells the real port)."""
        return [sock.getsockname()[:2] for sock in self.listeners]

    def stats(self) -> dict[str, object]:
        snapshot = self.counters.snapshot()
        clients = [c for c, _ in list(self.conns.values()) if c.whandler is not None]
        snapshot["online"] = self.online
        snapshot["waiting_epollout"] = sum(1 for c in clients if c.out)
        snapshot["pool"] = {
            "total": self.pool.total,
            "free": self.pool.free,
            "recycling": self.pool.recycling,
        }
        return snapshot

    # --8<-- [start:serve_forever]
    def serve_forever(self) -> None:
        """C++: the worker's loop around ngx_process_events_and_timers."""
        with self._lock:
            if self._stopping:
                self._done.set()
                return
            self._serving = True
        try:
            while not self._stopping:
                timeout = -1.0
                if self._accept_paused_until:
                    timeout = max(0.0, self._accept_paused_until - time.monotonic())
                    if timeout == 0.0:
                        self._resume_accepting()
                        timeout = -1.0
                self.process_events(self.epoll.poll(timeout))
        finally:
            self._close_everything()
            self._done.set()

    # --8<-- [end:serve_forever]

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
            entry = conns.get(fd)
            if entry is None:
                if fd == self._wake_fd:
                    os.eventfd_read(self._wake_fd)
                continue
            conn, generation = entry
            if conn.generation != generation:
                self.counters.add("stale_events")  # the object was retired since
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

    # --8<-- [start:on_accept]
    def on_accept(self, listener: Connection) -> None:
        """Accept one connection. C++: ngx_event_accept.

        One accept per readiness event is enough with level triggering: if more clients
        wait in the accept queue the listening socket is still readable, so the next
        ``epoll.poll()`` reports it again. Accepting one at a time also interleaves new
        clients fairly with the traffic of the existing ones.
        """
        try:
            sock, addr = listener.sock.accept()
        except BlockingIOError:
            return  # another event already took it (EAGAIN)
        except ConnectionAbortedError:
            self.counters.add("accept_errors.econnaborted")  # the client gave up in the queue
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.counters.add("accept_errors.emfile")
                log.error("accept: %s; pausing accepts for %.1f s", exc.strerror, ACCEPT_PAUSE)
                self._pause_accepting()
                return
            raise
        refusal = self._refusal()
        if refusal is not None:
            # As the original: the TCP handshake is done, so the client sees a connect that
            # succeeds and is closed at once. (Counted first: once closed, the client can
            # look at the counters before we would have counted.)
            self.counters.add(f"refused.{refusal}")
            sock.close()
            log.info("refused %s:%d (%s)", addr[0], addr[1], refusal)
            return
        sock.setblocking(False)
        conn = self.pool.acquire()
        conn.attach(sock, addr, self.on_readable, self.on_writable)
        self.conns[conn.fd] = (conn, conn.generation)
        self.epoll.register(conn.fd, READ_EVENTS)
        self.online += 1
        self.counters.add("accepted")
        log.info("accepted %s:%d", *addr)

    # --8<-- [end:on_accept]

    # --8<-- [start:refusal]
    def _refusal(self) -> str | None:
        """Why a just-accepted client must be closed at once, if it must.

        * ``online_limit``: ``worker_connections`` clients are already online.
        * ``storm``: the pool has grown past 5 x ``worker_connections`` objects while fewer
          than ``worker_connections`` are free: clients connect and disconnect so fast that
          closed connections pile up in the recycle queue. Without this guard every
          connect would allocate a new object for the whole recycle wait.
        """
        if self.online >= self.worker_connections:
            return "online_limit"
        if (
            self.pool.total > 5 * self.worker_connections
            and self.pool.free < self.worker_connections
        ):
            return "storm"
        return None

    # --8<-- [end:refusal]

    # --8<-- [start:on_readable]
    def on_readable(self, conn: Connection) -> None:
        """Read once, answer everything that read completed. C++: ngx_read_request_handler."""
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:  # ECONNRESET and friends: the client is gone
            self.close_connection(conn, exc.strerror or "error")
            return
        if not data:
            self._on_peer_closed(conn)
            return
        replies = self._handle(conn.parser.feed(data))
        if replies:
            self.send(conn, b"".join(replies))

    # --8<-- [end:on_readable]

    # --8<-- [start:handle]
    def _handle(self, events: list) -> list[bytes]:
        """Run the logic on every complete packet; return the replies in request order."""
        replies: list[bytes] = []
        handle = self.logic.handle
        packets = 0
        for event in events:
            if type(event) is not Packet:
                # C++ mirror: a malformed length is skipped (8 bytes dropped), the
                # connection kept. Chapter 6 closes the connection instead.
                self.counters.add("malformed")
                log.info("malformed header (length %d): skipped", event.length)
                continue
            packets += 1
            outcome = handle(event)
            if outcome.reply is not None:
                replies.append(outcome.reply)
            else:
                self.counters.add(f"drops.{outcome.drop}")
        # Counted once per read, not per packet: this loop is the hot path.
        self.counters.add("packets_in", packets)
        self.counters.add("replies_out", len(replies))
        return replies

    # --8<-- [end:handle]

    # --8<-- [start:send]
    def send(self, conn: Connection, data: bytes) -> None:
        """Write directly; keep what the kernel would not take and let EPOLLOUT finish it.

        While replies are pending we also stop reading from this client (backpressure):
        a client that never reads then costs at most one read's worth of replies, instead
        of growing ``conn.out`` without bound. Chapter 4 replaces this with the original's
        send queue and its backlog kick.
        """
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # EPIPE / ECONNRESET: the client reset; nothing to deliver
            self.close_connection(conn, exc.strerror or "error")
            return
        if sent < len(data):
            conn.out += memoryview(data)[sent:]
            self.epoll.modify(conn.fd, WRITE_EVENTS)

    def on_writable(self, conn: Connection) -> None:
        """Continue a partial write. C++: ngx_write_request_handler."""
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.close_connection(conn, exc.strerror or "error")
            return
        del conn.out[:sent]
        if conn.out:
            return  # still full: level-triggered EPOLLOUT will call us again
        if conn.peer_closed:
            self.close_connection(conn, "peer closed, replies delivered")
        else:
            self.epoll.modify(conn.fd, READ_EVENTS)  # drained: stop asking for EPOLLOUT

    # --8<-- [end:send]

    def _on_peer_closed(self, conn: Connection) -> None:
        """recv() returned 0: the client sent FIN. If replies are still pending it may be a
        half-close (``shutdown(SHUT_WR)``) and the client still reads: deliver them first
        (the original drops them: reference bug 5)."""
        if conn.out:
            conn.peer_closed = True
            self.epoll.modify(conn.fd, WRITE_EVENTS)
        else:
            self.close_connection(conn, "peer closed")

    # --8<-- [start:close_connection]
    def close_connection(self, conn: Connection, why: str) -> None:
        """Close a client connection. C++: ngx_close_connection / zdClosesocketProc.

        Closing the fd also removes it from the epoll set; we unregister first anyway so a
        duplicated descriptor could never keep delivering events.
        """
        if conn.closed:
            return
        conn.closed = True
        fd = conn.fd
        self._closed_in_batch.add(fd)
        self.conns.pop(fd, None)
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass
        conn.sock.close()
        self.online -= 1
        self.counters.add("closed")
        log.info("closed %s:%d (%s)", conn.addr[0], conn.addr[1], why)
        self.pool.retire(conn)  # new generation; reusable after the recycle wait
        if self._accept_paused_until:
            self._resume_accepting()  # a descriptor is free again

    # --8<-- [end:close_connection]

    def _pause_accepting(self) -> None:
        already_paused = bool(self._accept_paused_until)
        self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE
        if already_paused:
            return
        for listener in self.listeners:
            self.epoll.unregister(listener.fileno())

    def _resume_accepting(self) -> None:
        self._accept_paused_until = 0.0
        for listener in self.listeners:
            self.epoll.register(listener.fileno(), select.EPOLLIN)

    def _close_everything(self) -> None:
        for conn, _ in list(self.conns.values()):
            if conn.whandler is not None:
                self.close_connection(conn, "server shutting down")

    # --8<-- [start:shutdown]
    def shutdown(self) -> None:
        """Stop serving and release everything; safe from any thread, idempotent. Returns
        once ``serve_forever`` has returned and every socket is closed."""
        with self._lock:
            self._stopping = True
            serving = self._serving
            if self._closed:
                return
        os.eventfd_write(self._wake_fd, 1)
        if serving and not self._done.wait(timeout=10):
            log.error("serve_forever did not stop within 10 s")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not serving:
            self._close_everything()
        close_listening_sockets(self.listeners)
        self.epoll.close()
        os.close(self._wake_fd)
        self.pool.close()
        self.logic.close()

    # --8<-- [end:shutdown]
