"""The server: the event loop's handlers, and the wiring of the chapter's parts.

What this chapter adds to the one before is in ``__init__.py``; each part it adds is a
module of its own (the C++ names are in the docstrings).
"""

from __future__ import annotations

import contextlib
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
from .workers import WorkerPool

log = logging.getLogger("server")

RECV_SIZE = 65536
COUNTERS = ("accepted", "closed", "accept_errors.econnaborted", "accept_errors.emfile")
# Requests of a client read but not answered before we stop reading it (the original's
# receive queue has no bound). A worker's turn with one client, in seconds: without turns
# a client that pipelines 500 logins (a few hundred ms each) holds a worker for minutes.
RECV_WINDOW = 1024
TURN = 0.005


class Server(ServerLifecycle):
    """The chapter contract: ``Server(config)``, ``serve_forever()``, ``shutdown()``,
    ``addresses`` and ``stats()``. ``clock`` is the one time source of every timer."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        require_epoll()
        super().__init__()
        self.clock = clock
        self.counters = Counters(
            COUNTERS,
            ("half_closed",),
            ConnectionPool.COUNTERS,
            ("stale_requests", "epollout_armed"),
            SendQueue.COUNTERS,
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
            # Released in reverse: workers stop, then the send thread, then connections close.
            self.sendqueue = self.closes(SendQueue.from_config(config, self, self.counters))
            self.workers = self.closes(WorkerPool.from_config(config, self.run_logic))

    def stats(self) -> dict[str, object]:
        snapshot = self.counters.snapshot()
        clients = self.loop.clients()
        snapshot["online"] = self.pool.in_use
        snapshot["waiting_epollout"] = sum(1 for c in clients if c.out)
        snapshot["unsent_bytes"] = sum(len(c.out) for c in clients)
        snapshot["queues"] = {"receive": self.workers.pending, "send": self.sendqueue.size}
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
        except OSError as exc:
            self._accept_failed(exc)
            return
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
        self.counters.add("accepted")
        log.info("accepted %s:%d", *addr)

    # --8<-- [end:on_accept]

    def _accept_failed(self, exc: OSError) -> None:
        """accept(2) documents its errors (ECONNABORTED, EMFILE, ENOBUFS, EPROTO ...) as
        conditions to retry: count, try again later, never stop the server."""
        self.counters.add(f"accept_errors.{errno.errorcode.get(exc.errno, '?').lower()}")
        log.debug("accept: %s", exc.strerror or exc)
        if exc.errno in (errno.EMFILE, errno.ENFILE):  # out of descriptors: see ACCEPT_PAUSE
            log.error("accept: %s; pausing accepts", exc.strerror)
            self.loop.pause_accepting()

    # --8<-- [start:on_readable]
    def on_readable(self, conn: Connection) -> None:
        """Read once, hand the packets to the workers. C++: ngx_read_request_handler."""
        if conn.closed:  # another thread closed it, and shut the socket down to tell us
            self._release(conn)
            return
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
        packets = self.logic.packets(conn.parser.feed(data), self.counters)
        if packets:
            with conn.lock:
                conn.in_flight += len(packets)
                self._update_mask(conn)
            self.workers.submit(conn, conn.generation, packets)

    def run_logic(self, conn: Connection, generation: int, packets: list[Packet]) -> int:
        """Worker thread: answer one client's packets in order for one ``TURN``; return how
        many. C++: CLogicSocket::threadRecvProcFunc (with its iCurrsequence check)."""
        if conn.generation != generation:  # the client left while its requests waited
            self.counters.add("stale_requests", len(packets))
            return len(packets)
        replies: list[Reply] = []
        unanswered = done = 0
        deadline = self.clock() + TURN
        for packet in packets:
            if done and self.clock() > deadline:
                break
            outcome = self.logic.handle(packet)
            if outcome.reply is not None:
                replies.append((conn, generation, outcome.reply))
            else:
                self.counters.add(f"drops.{outcome.drop}")
                unanswered += 1
            done += 1
        if unanswered:  # dropped requests are resolved here, not by the send thread
            with conn.lock:
                stale = conn.closed or conn.generation != generation
                finish = not stale and self.resolved(conn, unanswered)
            if finish:
                self.close_connection(conn, "peer closed, replies delivered", generation)
        if replies:
            self.sendqueue.put_many(replies)
        return done

    # --8<-- [end:on_readable]

    # --8<-- [start:send]
    def resolved(self, conn: Connection, n: int) -> bool:
        """``n`` requests of ``conn`` were answered or dropped (any thread, ``conn.lock``
        held); True when a half-closed client is owed nothing more."""
        conn.in_flight -= n
        self._update_mask(conn)
        return conn.finished()

    def on_writable(self, conn: Connection) -> None:
        """Finish what the send thread could not write. C++: ngx_write_request_handler."""
        with conn.lock:
            if conn.closed:
                return
            try:
                sent = conn.sock.send(conn.out)
            except BlockingIOError:
                return
            except OSError:
                sent = -1
            else:
                del conn.out[:sent]
                self._update_mask(conn)
            finish = conn.finished()
        if sent < 0:
            self.close_connection(conn, "send failed")
        elif finish:
            self.close_connection(conn, "peer closed, replies delivered")

    def _update_mask(self, conn: Connection) -> None:
        """Ask epoll for what the connection's state needs: EPOLLOUT while replies wait
        (level-triggered EPOLLOUT on a drained socket would fire on every poll), EPOLLIN
        unless the client sent its FIN or its replies wait. Not reading a client whose
        replies pile up is backpressure: it is slowed to the pace it reads at, and costs
        at most one read's worth of replies instead of growing ``out`` without bound."""
        reading = not (conn.peer_closed or conn.out or conn.in_flight >= RECV_WINDOW)
        if conn.out and not conn.mask & WRITE_EVENTS:
            self.counters.add("epollout_armed")
        self.loop.set_mask(
            conn, (READ_EVENTS if reading else 0) | (WRITE_EVENTS if conn.out else 0)
        )

    # --8<-- [end:send]

    def _on_peer_closed(self, conn: Connection) -> None:
        """recv() returned 0: the client sent FIN. It may be a half-close
        (``shutdown(SHUT_WR)``) and the client still reads: the replies it is owed are
        delivered first (the original drops them: reference bug 5)."""
        with conn.lock:
            conn.peer_closed = True
            self._update_mask(conn)
            finish = conn.finished()
        if finish:
            self.close_connection(conn, "peer closed")
        else:
            self.counters.add("half_closed")  # replies still owed: deliver, then close

    # --8<-- [start:close_connection]
    def close_connection(self, conn: Connection, why: str, generation: int | None = None) -> None:
        """Close a client connection, from any thread, at most once; a stale ``generation``
        does nothing. C++: zdClosesocketProc. Another thread only shuts the socket down: the
        loop, woken by EPOLLHUP, releases it (closing the fd could reuse it mid-batch)."""
        with conn.lock:
            if conn.closed or (generation is not None and generation != conn.generation):
                return
            conn.closed = True
            log.info("closed %s:%d (%s)", conn.addr[0], conn.addr[1], why)
            if not self.loop.in_loop_thread():
                with contextlib.suppress(OSError):  # ENOTCONN: reset, the loop knows already
                    conn.sock.shutdown(socket.SHUT_RDWR)
                return
        self._release(conn)

    def _release(self, conn: Connection) -> None:
        self.loop.forget(conn)
        conn.sock.close()
        self.counters.add("closed")
        self.pool.retire(conn)  # new generation; reusable after the recycle wait

    # --8<-- [end:close_connection]

    def _close_everything(self) -> None:
        for conn in self.loop.clients():
            conn.closed = True
            self._release(conn)
