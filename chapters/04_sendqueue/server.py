"""Chapter 4 server: the event loop reads, worker threads think, a send thread writes.

Builds on chapter 3; adds the worker pool (C++: CThreadPool) and the send queue with its
semaphore-driven send thread (C++: msgSend, ServerSendQueueThread). The event loop no
longer runs the logic: it parses and hands packets to the workers, so an expensive login
stalls one worker, not every client.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
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
from .sendqueue import Reply, SendQueue
from .workers import WorkerPool

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
# Requests one client may have with the workers and the send queue before we stop reading
# from it until half of them are answered. Without it a client that sends faster than the
# workers answer grows the receive queue without bound (the original's is unbounded).
RECV_WINDOW = 1024


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
        self._loop_thread = 0  # ident of the thread running serve_forever
        self._close_requests: list[tuple[Connection, str]] = []  # from other threads
        self._to_submit: list[tuple[Connection, int, list[Packet]]] = []  # read this batch
        self._batch_packets = 0
        self.counters = Counters(
            ["accepted", "closed", "packets_in", "replies_out", "malformed", "stale_events"]
            + [f"drops.{reason}" for reason in DropReason]
            + ["accept_errors.econnaborted", "accept_errors.emfile"]
            + ["refused.online_limit", "refused.storm"]
            + ["replies_dropped.queue_full", "replies_dropped.stale", "stale_requests"]
            + ["kicks.send_backlog", "epollout_armed", "half_closed", "reading_paused"]
            + ["replies_dropped.kicked"]
        )
        self.sendqueue = SendQueue(
            config.get_int("Sock_SendQueueLimit", minimum=1),
            config.get_int("Sock_SendBacklogLimit", minimum=1),
            self,
            self.counters,
        )
        self.send_buffer_size = config.get_int("Sock_SendBufferSize", minimum=0)
        self.workers = WorkerPool(
            config.get_int("ProcMsgRecvWorkThreadCount", minimum=1),
            self.run_logic,
            self.sendqueue.put_many,
        )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs actually bound (so port 0 in a test tells the real port)."""
        return [sock.getsockname()[:2] for sock in self.listeners]

    def stats(self) -> dict[str, object]:
        snapshot = self.counters.snapshot()
        clients = [c for c, _ in list(self.conns.values()) if c.whandler is not None]
        snapshot["online"] = self.online
        snapshot["waiting_epollout"] = sum(1 for c in clients if c.waiting)
        snapshot["queues"] = {"receive": self.workers.pending, "send": self.sendqueue.size}
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
            self._loop_thread = threading.get_ident()
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
                    self._close_requested()
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
        if self._to_submit:
            # Everything this batch read goes to the workers in one hand-off.
            self.workers.submit(self._to_submit)
            self._to_submit = []
            self.counters.add("packets_in", self._batch_packets)
            self._batch_packets = 0
        if self._close_requests:
            self._close_requested()

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
        if self.send_buffer_size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_size)
        conn = self.pool.acquire()
        conn.attach(sock, addr, self.on_readable, self.on_writable)
        self.conns[conn.fd] = (conn, conn.generation)
        conn.mask = READ_EVENTS
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
        """Read once and hand every complete packet to the workers; no logic here any more.
        C++: ngx_read_request_handler + ngx_wait_request_handler_proc_plast."""
        if conn.closed:
            return  # a close requested by another thread is on its way
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
        packets = []
        for event in conn.parser.feed(data):
            if isinstance(event, Packet):
                packets.append(event)
            else:
                # C++ mirror: a malformed length is skipped (8 bytes dropped), the
                # connection kept. Chapter 6 closes the connection instead.
                self.counters.add("malformed")
                log.info("malformed header (length %d): skipped", event.length)
        if packets:
            self._batch_packets += len(packets)
            with conn.lock:
                conn.in_flight += len(packets)
                if conn.in_flight >= RECV_WINDOW and not conn.reading_paused:
                    conn.reading_paused = True
                    self._set_mask(conn, conn.mask & ~READ_EVENTS)
                    self.counters.add("reading_paused")
            self._to_submit.append((conn, conn.generation, packets))

    # --8<-- [end:on_readable]

    # --8<-- [start:run_logic]
    def run_logic(
        self, conn: Connection, generation: int, packets: list[Packet], deadline: float
    ) -> tuple[list[Reply], int]:
        """Run on a worker thread: validate and answer one client's packets, in order, until
        done or past ``deadline`` (then the worker lets other clients have a turn).
        C++: CLogicSocket::threadRecvProcFunc (with its iCurrsequence check)."""
        replies: list[Reply] = []
        unanswered = 0
        done = 0
        for packet in packets:
            if conn.generation != generation:
                # The client left while its requests waited: don't do its work.
                self.counters.add("stale_requests", len(packets) - done)
                done = len(packets)
                break
            if done and time.monotonic() > deadline:
                break
            outcome = self.logic.handle(packet)
            if outcome.reply is not None:
                replies.append((conn, generation, outcome.reply))
            else:
                self.counters.add(f"drops.{outcome.drop}")
                unanswered += 1
            done += 1
        if unanswered:
            self.sendqueue.settle(conn, generation, unanswered)
        return replies, done

    # --8<-- [end:run_logic]

    # --8<-- [start:send]
    def arm_epollout(self, conn: Connection) -> None:
        """Ask for EPOLLOUT: the send thread found the kernel buffer full. Called with
        ``conn.lock`` held, from any thread (epoll_ctl itself is thread-safe).
        C++: ngx_epoll_oper_event(fd, EPOLL_CTL_MOD, EPOLLOUT, 0, conn)."""
        self.counters.add("epollout_armed")
        self._set_mask(conn, conn.mask | WRITE_EVENTS)

    def resolved(self, conn: Connection, n: int) -> None:
        """``n`` requests of ``conn`` were answered (or dropped); read from it again once
        it is back under half its window. Called with ``conn.lock`` held, from any thread."""
        conn.in_flight -= n
        if conn.reading_paused and conn.in_flight <= RECV_WINDOW // 2:
            conn.reading_paused = False
            if not conn.peer_closed:
                self._set_mask(conn, conn.mask | READ_EVENTS)

    def on_writable(self, conn: Connection) -> None:
        """Finish what the send thread could not write. C++: ngx_write_request_handler.

        Once the pending output is gone we drop EPOLLOUT again: level-triggered EPOLLOUT
        on an idle socket would fire on every poll. (The original also posts the send
        thread's semaphore here, because replies it skipped are still in its queue; ours
        queued them behind ``conn.out`` already, so nothing is left to wake it for.)
        """
        finish = error = False
        with conn.lock:
            if conn.closed or not conn.waiting:
                return
            try:
                sent = conn.sock.send(conn.out)
            except BlockingIOError:
                return
            except OSError:
                sent, error = 0, True
            if not error:
                del conn.out[:sent]
                if not conn.out:
                    conn.waiting = False
                    conn.backlog = 0
                    self._set_mask(conn, conn.mask & ~WRITE_EVENTS)
                    finish = conn.finished()
        if error:
            self.close_connection(conn, "send failed")
        elif finish:
            self.close_connection(conn, "peer closed, replies delivered")

    def _set_mask(self, conn: Connection, mask: int) -> None:
        """Change the events epoll reports for ``conn`` (``conn.lock`` held)."""
        if mask != conn.mask and not conn.closed:
            conn.mask = mask
            self.epoll.modify(conn.fd, mask)

    # --8<-- [end:send]

    def _on_peer_closed(self, conn: Connection) -> None:
        """recv() returned 0: the client sent FIN. It may be a half-close
        (``shutdown(SHUT_WR)``) and the client still reads: requests still with the workers
        or replies still pending are delivered first (the original drops them: reference
        bug 5). We stop asking for EPOLLIN, which would now fire on every poll."""
        with conn.lock:
            conn.peer_closed = True
            self._set_mask(conn, conn.mask & ~READ_EVENTS)
            finish = conn.finished()
        if finish:
            self.close_connection(conn, "peer closed")
        else:
            self.counters.add("half_closed")  # replies still owed: deliver, then close

    # --8<-- [start:close_connection]
    def close_connection(self, conn: Connection, why: str, generation: int | None = None) -> None:
        """Close a client connection, from any thread, at most once. C++: zdClosesocketProc.

        ``generation``, when given, is the generation the caller saw: if the connection
        was closed (and perhaps reused) since, this is a stale request and does nothing.
        Marking ``closed`` under the lock stops the send thread at once; the socket itself
        is closed by the event-loop thread (other threads queue the request and wake it),
        so an fd is never closed and reused behind the loop's back in the middle of a batch.
        """
        with conn.lock:
            if conn.closed or (generation is not None and generation != conn.generation):
                return
            conn.closed = True
        if threading.get_ident() == self._loop_thread or not self._serving:
            self._release(conn, why)
        else:
            with self._lock:
                self._close_requests.append((conn, why))
            os.eventfd_write(self._wake_fd, 1)

    def _close_requested(self) -> None:
        with self._lock:
            requests, self._close_requests = self._close_requests, []
        for conn, why in requests:
            self._release(conn, why)

    def _release(self, conn: Connection, why: str) -> None:
        """Event-loop thread only: close the socket and retire the object."""
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
        self.pool.retire(conn)  # new generation: queued work and replies for it are stale
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
        self._close_requested()
        for conn, _ in list(self.conns.values()):
            if conn.whandler is not None:
                with conn.lock:
                    already = conn.closed
                    conn.closed = True
                if not already:
                    self._release(conn, "server shutting down")

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
        # Workers first (they feed the send queue), then the send thread, then the pool.
        self.workers.stop()
        self.sendqueue.stop()
        close_listening_sockets(self.listeners)
        self.epoll.close()
        os.close(self._wake_fd)
        self.pool.close()
        self.logic.close()

    # --8<-- [end:shutdown]
