"""The send queue and the send thread.

C++: CSocekt::msgSend, ServerSendQueueThread, m_semEventSendQueue, m_MsgSendQueue.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from common.config import Config
from common.lifecycle import join_thread
from common.stats import Counters

from .connection import Connection, Reply

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("sendqueue")


class SendQueue:
    """Replies from the workers, written by one send thread.

    * :meth:`put_many` (C++: msgSend) queues replies; with ``limit`` queued, the worker
      waits for room (the original drops replies past 50000, well-behaved clients' too).
    * The send thread (C++: ServerSendQueueThread) wakes on the semaphore, takes the whole
      queue, drops stale replies and writes each client's replies with one ``send``. What
      the kernel will not take waits in ``conn.out`` for EPOLLOUT (the loop's
      ``on_writable``); later replies queue behind it, in order. A client that leaves its
      replies untaken is not kicked (the original kicks at 400 queued, well-behaved
      clients too: reference bug 4): the server stops reading its requests instead.
    """

    COUNTERS = ("replies_dropped.stale", "send_queue_full")

    def __init__(self, limit: int, server: Server, counters: Counters) -> None:
        self.limit = limit
        self._server = server  # for resolved() and close_connection()
        self._counters = counters
        self._room = threading.Condition()  # guards _queue; notified when it is emptied
        self._queue: list[Reply] = []
        self._semaphore = threading.Semaphore(0)  # C++: sem_t m_semEventSendQueue
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="send", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: Config, server: Server, counters: Counters) -> SendQueue:
        return cls(config.get_int("Sock_SendQueueLimit", minimum=1), server, counters)

    # --8<-- [start:sendqueue]
    def put_many(self, replies: list[Reply]) -> None:
        """C++: msgSend, once for a whole batch of replies."""
        with self._room:
            if len(self._queue) >= self.limit:
                self._counters.add("send_queue_full")
                while len(self._queue) >= self.limit and not self._stopping:
                    self._room.wait()
            post = not self._queue  # it takes the whole queue: one post wakes it for all
            self._queue += replies
        if post:
            self._semaphore.release()

    @property
    def size(self) -> int:
        return len(self._queue)  # for stats(): one read, no lock needed

    def _run(self) -> None:
        while True:
            self._semaphore.acquire()
            if self._stopping:
                return
            with self._room:
                batch, self._queue = self._queue, []
                self._room.notify_all()
            # Group by (connection, generation), each group's replies in order: one send
            # per client per wake-up instead of one per reply.
            groups: dict[tuple[Connection, int], list[bytes]] = {}
            for conn, generation, data in batch:
                groups.setdefault((conn, generation), []).append(data)
            for (conn, generation), chunks in groups.items():
                try:
                    self._write(conn, generation, chunks)
                except Exception:  # one client's surprise must not end every reply
                    log.exception("send thread: writing to %s:%d failed", *conn.addr)
                    self._server.close_connection(conn, "send failed", generation)

    def _write(self, conn: Connection, generation: int, chunks: list[bytes]) -> None:
        failed = False
        with conn.lock:
            if conn.closed or conn.generation != generation:
                self._counters.add("replies_dropped.stale", len(chunks))  # closed meanwhile
                return
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if conn.out:
                conn.out += data  # the kernel is still full: queue behind, in order
            else:
                try:
                    sent = conn.sock.send(data)  # type: ignore[union-attr]
                except BlockingIOError:
                    sent = 0
                except OSError:  # reset by the peer: nothing more to deliver
                    sent, failed = len(data), True
                conn.out += memoryview(data)[sent:]
                if conn.out:
                    conn.sent_at = self._server.clock()  # its replies start to wait
            finish = self._server.resolved(conn, len(chunks))
        self._counters.add("replies_out", len(chunks))
        if failed:
            self._server.close_connection(conn, "send failed", generation)
        elif finish:
            self._server.close_connection(conn, "peer closed, replies delivered", generation)
        # --8<-- [end:sendqueue]

    def close(self) -> None:
        """Stop and join the send thread; queued replies are dropped."""
        with self._room:
            self._stopping = True
            self._room.notify_all()  # a worker waiting for room gives up
        self._semaphore.release()
        join_thread(self._thread)
