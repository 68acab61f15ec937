"""Chapter 5 server: chapter 4's pipeline, plus heartbeat timers that reap silent clients.

Builds on chapter 4; adds the heartbeat timer queue and its monitor thread (``timers.py``;
C++: AddToTimerQueue, ServerTimerQueueMonitorThread, procPingTimeOutChecking). A client
must ping at least every ``3 * Sock_MaxWaitTime + Sock_PingGraceTime`` seconds or be kicked.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable

from common.config import Config
from common.lifecycle import ServerLifecycle
from common.logic import Logic
from common.platform import require_epoll
from common.protocol import Packet
from common.stats import Counters

from .connection import Connection, Reply
from .eventloop import READ_EVENTS, WRITE_EVENTS, EventLoop
from .listening import close_listening_sockets, open_listening_sockets
from .pool import ConnectionPool
from .sendqueue import SendQueue
from .timers import HeartbeatTimers
from .workers import WorkerPool

log = logging.getLogger("server")

RECV_SIZE = 65536
COUNTERS = ("accepted", "closed", "accept_errors.econnaborted", "accept_errors.emfile")
THREAD_COUNTERS = ("stale_requests", "epollout_armed", "half_closed", "reading_paused")
# Requests one client may have with the workers and the send queue before we stop reading
# from it until half of them are answered. Without it a client that sends faster than the
# workers answer grows the receive queue without bound (the original's is unbounded).
RECV_WINDOW = 1024


class Server(ServerLifecycle):
    """The chapter contract: ``Server(config)``, ``serve_forever()``, ``shutdown()``,
    ``addresses`` and ``stats()``. ``clock`` is the one time source of every timer."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        require_epoll()
        super().__init__()
        self.clock = clock
        self.counters = Counters(
            COUNTERS,
            ConnectionPool.COUNTERS,
            THREAD_COUNTERS,
            SendQueue.COUNTERS,
            HeartbeatTimers.COUNTERS,
            EventLoop.COUNTERS,
            Logic.COUNTERS,
        )
        # SO_SNDBUF for every client (0: the kernel's default). Shrink it to watch
        # partial writes and EPOLLOUT at work.
        self.send_buffer_size = config.get_int("Sock_SendBufferSize", minimum=0)
        with self.building():
            self.logic = self.closes(Logic.from_config(config))
            self.listeners = self.closes(
                open_listening_sockets(config.get_str("ListenAddress"), config.listen_ports()),
                close_listening_sockets,
            )
            self.pool = self.closes(ConnectionPool.from_config(config, clock))
            # C++: ngx_epoll_init: one listening "connection" per socket, rhandler = accept.
            listening = [
                Connection().attach(s, s.getsockname()[:2], self.on_accept, None)
                for s in self.listeners
            ]
            self.loop = self.closes(EventLoop(listening, self.counters, clock))
            self.at_shutdown(self._close_everything)
            # Released in reverse: the workers (which feed the send queue) stop first, then
            # the send thread, and only then are the connections closed.
            self.sendqueue = self.closes(SendQueue.from_config(config, self, self.counters))
            self.workers = self.closes(
                WorkerPool.from_config(config, self.run_logic, self.sendqueue.put_many, clock)
            )
            self.timers = self.closes(HeartbeatTimers.from_config(config, self._kick, clock))

    def stats(self) -> dict[str, object]:
        snapshot = self.counters.snapshot()
        clients = self.loop.clients()
        snapshot["online"] = self.pool.in_use
        snapshot["waiting_epollout"] = sum(1 for c in clients if c.waiting)
        snapshot["queues"] = {
            "receive": self.workers.pending,
            "send": self.sendqueue.size,
            "timers": len(self.timers) if self.timers is not None else 0,
        }
        snapshot["pool"] = {
            "total": self.pool.total,
            "free": self.pool.free,
            "recycling": self.pool.recycling,
        }
        return snapshot

    def _serve(self) -> None:
        self.loop.run(lambda: self.stopping)

    def _wake(self) -> None:
        self.loop.wake()

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
                log.error("accept: %s; pausing accepts", exc.strerror)
                self.loop.pause_accepting()
                return
            raise
        refusal = self.pool.refusal()
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
        conn = self.pool.acquire().attach(sock, addr, self.on_readable, self.on_writable)
        self.loop.watch(conn, READ_EVENTS)
        conn.last_ping = self.clock()
        if self.timers is not None:
            self.timers.add(conn, conn.generation)  # C++: AddToTimerQueue
        self.counters.add("accepted")
        log.info("accepted %s:%d", *addr)

    # --8<-- [end:on_accept]

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
            if not isinstance(event, Packet):
                # As the original: a malformed length is skipped (8 bytes dropped), the
                # connection kept. Chapter 6 closes the connection instead.
                self.counters.add("malformed")
                log.info("malformed header (length %d): skipped", event.length)
                continue
            packets.append(event)
        if packets:
            self.counters.add("packets_in", len(packets))
            with conn.lock:
                conn.in_flight += len(packets)
                if conn.in_flight >= RECV_WINDOW and not conn.reading_paused:
                    conn.reading_paused = True
                    self.loop.set_mask(conn, conn.mask & ~READ_EVENTS)
                    self.counters.add("reading_paused")
            self.workers.submit([(conn, conn.generation, packets)])

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
        pinged = False
        for packet in packets:
            if conn.generation != generation:
                # The client left while its requests waited: don't do its work.
                self.counters.add("stale_requests", len(packets) - done)
                done = len(packets)
                break
            if done and self.clock() > deadline:
                break
            outcome = self.logic.handle(packet)
            if outcome.reply is not None:
                replies.append((conn, generation, outcome.reply))
            else:
                self.counters.add(f"drops.{outcome.drop}")
                unanswered += 1
            pinged = pinged or outcome.is_ping
            done += 1
        if pinged:
            self._pinged(conn, generation)
        if unanswered:
            self.sendqueue.settle(conn, generation, unanswered)
        return replies, done

    # --8<-- [end:run_logic]

    # --8<-- [start:heartbeat]
    def _pinged(self, conn: Connection, generation: int) -> None:
        """A worker answered a valid ping: the client is alive. C++: _HandlePing sets
        lastPingTime. Checked under the lock, so a worker that still runs a departed
        client's ping can never refresh the next client of the same object."""
        with conn.lock:
            if conn.generation == generation:
                conn.last_ping = self.clock()

    def _kick(self, conn: Connection, generation: int, why: str) -> None:
        """Timer thread: the heartbeat check says this client must go (``silence`` or
        ``timeout``)."""
        self.counters.add(f"kicks.{why}")
        log.info("%s:%d heartbeat %s: kicked", conn.addr[0], conn.addr[1], why)
        self.close_connection(conn, f"heartbeat: {why}", generation)

    # --8<-- [end:heartbeat]

    # --8<-- [start:send]
    def arm_epollout(self, conn: Connection) -> None:
        """Ask for EPOLLOUT: the send thread found the kernel buffer full. Called with
        ``conn.lock`` held, from any thread (epoll_ctl itself is thread-safe).
        C++: ngx_epoll_oper_event(fd, EPOLL_CTL_MOD, EPOLLOUT, 0, conn)."""
        self.counters.add("epollout_armed")
        self.loop.set_mask(conn, conn.mask | WRITE_EVENTS)

    def resolved(self, conn: Connection, n: int) -> None:
        """``n`` requests of ``conn`` were answered (or dropped); read from it again once
        it is back under half its window. Called with ``conn.lock`` held, from any thread."""
        conn.in_flight -= n
        if conn.reading_paused and conn.in_flight <= RECV_WINDOW // 2:
            conn.reading_paused = False
            if not conn.peer_closed:
                self.loop.set_mask(conn, conn.mask | READ_EVENTS)

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
                    self.loop.set_mask(conn, conn.mask & ~WRITE_EVENTS)
                    finish = conn.finished()
        if error:
            self.close_connection(conn, "send failed")
        elif finish:
            self.close_connection(conn, "peer closed, replies delivered")

    # --8<-- [end:send]

    def _on_peer_closed(self, conn: Connection) -> None:
        """recv() returned 0: the client sent FIN. It may be a half-close
        (``shutdown(SHUT_WR)``) and the client still reads: requests still with the workers
        or replies still pending are delivered first (the original drops them: reference
        bug 5). We stop asking for EPOLLIN, which would now fire on every poll."""
        with conn.lock:
            conn.peer_closed = True
            self.loop.set_mask(conn, conn.mask & ~READ_EVENTS)
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
        is closed on the event loop's thread (``call_in_loop``).
        """
        with conn.lock:
            if conn.closed or (generation is not None and generation != conn.generation):
                return
            conn.closed = True
        self.loop.call_in_loop(self._release, conn, why)

    def _release(self, conn: Connection, why: str) -> None:
        """Event loop's thread: close the socket and retire the object."""
        if self.timers is not None:
            self.timers.remove(conn)  # C++: DeleteFromTimerQueue
        self.loop.forget(conn)
        conn.sock.close()
        self.counters.add("closed")
        log.info("closed %s:%d (%s)", conn.addr[0], conn.addr[1], why)
        self.pool.retire(conn)  # new generation: queued work and replies for it are stale

    # --8<-- [end:close_connection]

    def _close_everything(self) -> None:
        for conn in self.loop.clients():
            self.close_connection(conn, "server shutting down")
