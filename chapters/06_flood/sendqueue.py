"""The send queue and the send thread.

C++: CSocekt::msgSend, ServerSendQueueThread, m_semEventSendQueue, m_MsgSendQueue.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from common.config import Config
from common.stats import Counters

from .connection import Connection, Reply

log = logging.getLogger("sendqueue")


class SendTarget(Protocol):
    """What the send thread needs from the server (kept narrow so this file reads alone)."""

    def arm_epollout(self, conn: Connection) -> None: ...  # call with conn.lock held

    def resolved(self, conn: Connection, n: int) -> None: ...  # call with conn.lock held

    def close_connection(
        self, conn: Connection, why: str, generation: int | None = None
    ) -> None: ...


# --8<-- [start:sendqueue]
class SendQueue:
    """Replies from the workers, written by one send thread.

    * :meth:`put_many` (C++: msgSend) queues replies and posts the semaphore once per
      batch (the original posts once per reply). When the whole queue already holds ``limit`` replies the new ones are dropped
      and counted (C++: the 50000 check): a server under attack must not grow without bound.
    * The send thread (C++: ServerSendQueueThread) waits on the semaphore, takes *the
      whole queue* at once, drops replies whose generation is stale, and writes each
      connection's replies with one ``send``. On a partial write or ``EAGAIN`` it keeps the
      rest on the connection and arms ``EPOLLOUT``; the event loop's ``on_writable``
      finishes it.
    * While a connection waits for ``EPOLLOUT``, further replies join its pending output
      and count as its *backlog*: replies the client has failed to take. Past
      ``backlog_limit`` the client is kicked. The original instead counts every reply
      queued inside the server, which kicks well-behaved clients that pipeline a burst
      (reference bug 4).
    """

    COUNTERS = (
        "replies_dropped.queue_full",
        "replies_dropped.stale",
        "replies_dropped.kicked",
        "kicks.send_backlog",
    )

    def __init__(
        self, limit: int, backlog_limit: int, target: SendTarget, counters: Counters
    ) -> None:
        self.limit = limit
        self.backlog_limit = backlog_limit
        self._target = target
        self._counters = counters
        self._lock = threading.Lock()
        self._queue: list[Reply] = []
        self._semaphore = threading.Semaphore(0)  # C++: sem_t m_semEventSendQueue
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="send", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: Config, target: SendTarget, counters: Counters) -> SendQueue:
        return cls(
            config.get_int("Sock_SendQueueLimit", minimum=1),
            config.get_int("Sock_SendBacklogLimit", minimum=1),
            target,
            counters,
        )

    def put_many(self, replies: list[Reply]) -> None:
        """C++: msgSend, once for a whole batch of replies."""
        with self._lock:
            was_empty = not self._queue
            room = self.limit - len(self._queue)
            dropped = replies[room:] if room < len(replies) else []
            self._queue += replies[: max(room, 0)] if dropped else replies
            # One post per batch, and none while the queue is non-empty: the post that
            # made it non-empty has not been consumed yet, and the send thread takes the
            # whole queue when it is.
            post = was_empty and bool(self._queue)
        if post:
            self._semaphore.release()
        if dropped:
            self._counters.add("replies_dropped.queue_full", len(dropped))
            for conn, generation, _ in dropped:
                self.settle(conn, generation, 1)

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._queue)

    def _run(self) -> None:
        while True:
            self._semaphore.acquire()
            if self._stopping:
                return
            with self._lock:
                batch, self._queue = self._queue, []
            if not batch:
                continue  # an earlier wake-up already took these replies
            # Group by (connection, generation), keeping each group's replies in order:
            # one send per client per wake-up instead of one per reply.
            groups: dict[tuple[Connection, int], list[bytes]] = {}
            for conn, generation, data in batch:
                chunks = groups.get((conn, generation))
                if chunks is None:
                    groups[(conn, generation)] = [data]
                else:
                    chunks.append(data)
            for (conn, generation), chunks in groups.items():
                self._write(conn, generation, chunks)

    def _write(self, conn: Connection, generation: int, chunks: list[bytes]) -> None:
        n = len(chunks)
        kick = finish = False
        with conn.lock:
            if conn.closed or conn.generation != generation:
                self._counters.add("replies_dropped.stale", n)  # closed meanwhile
                return
            data = chunks[0] if n == 1 else b"".join(chunks)
            if conn.waiting:
                # Kernel buffer still full: queue behind what is pending (the original
                # skips such connections and rescans them on every wake-up).
                conn.out += data
                conn.backlog += n
                kick = conn.backlog > self.backlog_limit
            else:
                try:
                    sent = conn.sock.send(data)  # type: ignore[union-attr]
                except BlockingIOError:
                    sent = 0
                except OSError:
                    sent = -1  # reset by the peer: the event loop sees the error and closes
                if 0 <= sent < len(data):
                    conn.out += memoryview(data)[sent:]
                    conn.waiting = True
                    conn.backlog = 0
                    self._target.arm_epollout(conn)
            if not kick:
                self._target.resolved(conn, n)
                finish = conn.finished()
        if kick:
            self._counters.add("kicks.send_backlog")
            self._counters.add("replies_dropped.kicked", n)
            log.warning("%s:%d does not take its replies: kicked", *conn.addr)
            self._target.close_connection(conn, "send backlog", generation)
            return
        self._counters.add("replies_out", n)
        if finish:
            self._target.close_connection(conn, "peer closed, replies delivered", generation)

    def settle(self, conn: Connection, generation: int, n: int) -> None:
        """``n`` requests of ``conn`` were resolved without a reply reaching this queue
        (dropped by the logic or by the queue limit). A client that half-closed is closed
        once nothing is owed to it any more."""
        with conn.lock:
            if conn.closed or conn.generation != generation:
                return
            self._target.resolved(conn, n)
            finish = conn.finished()
        if finish:
            self._target.close_connection(conn, "peer closed, replies delivered", generation)

    def close(self, timeout: float = 10.0) -> None:
        """Stop and join the send thread; queued replies are dropped."""
        self._stopping = True
        self._semaphore.release()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the send thread did not stop within %.0f s", timeout)
        with self._lock:
            self._queue.clear()


# --8<-- [end:sendqueue]
