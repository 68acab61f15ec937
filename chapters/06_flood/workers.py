"""The worker pool: threads that run the business logic off the event loop.

C++: CThreadPool (Create, ThreadFunc, inMsgRecvQueueAndSignal, StopAll).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from common.config import Config
from common.lifecycle import join_thread
from common.protocol import Packet

from .connection import Connection

log = logging.getLogger("workers")

# What a worker runs for one client's packets (C++: CLogicSocket::threadRecvProcFunc): it
# answers them in order, as many as its turn allows, and says how many it got through.
Job = Callable[[Connection, int, list[Packet]], int]


class Inbox:
    """The packets of one client (one connection *generation*: a reused object's new
    client never waits behind the old one's work) waiting for a worker."""

    __slots__ = ("conn", "generation", "packets", "scheduled")

    def __init__(self, conn: Connection, generation: int) -> None:
        self.conn = conn
        self.generation = generation
        self.packets: list[Packet] = []
        self.scheduled = False  # in the ready queue, or being run by a worker


class WorkerPool:
    """``count`` threads taking ready clients from a queue.

    The original queues single messages, so two requests of one client can run on two
    workers at once and their replies leave in completion order (reference bug 3). Ours
    queues *clients*: an :class:`Inbox` is in the queue (or being run) at most once, so a
    client's requests are answered in order while clients run in parallel, and no
    request waits behind another client's while a worker is idle.
    """

    def __init__(self, count: int, job: Job) -> None:
        self._job = job
        self._lock = threading.Lock()  # guards the inboxes and _pending
        self._ready: queue.SimpleQueue[Inbox | None] = queue.SimpleQueue()
        self._pending = 0  # packets waiting in inboxes: the "receive queue size"
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, name=f"worker-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    @classmethod
    def from_config(cls, config: Config, job: Job) -> WorkerPool:
        return cls(config.get_int("ProcMsgRecvWorkThreadCount", minimum=1), job)

    # --8<-- [start:schedule]
    def submit(self, conn: Connection, generation: int, packets: list[Packet]) -> None:
        """Queue what one read of ``conn`` parsed. C++: inMsgRecvQueueAndSignal."""
        with self._lock:
            inbox = conn.inbox
            if inbox is None or inbox.generation != generation:
                inbox = conn.inbox = Inbox(conn, generation)
            inbox.packets += packets
            self._pending += len(packets)
            if inbox.scheduled:
                return  # already in line, or being run: the worker will see these too
            inbox.scheduled = True
        self._ready.put(inbox)

    def _run(self) -> None:
        """C++: CThreadPool::ThreadFunc."""
        while (inbox := self._ready.get()) is not None and not self._stopping:
            with self._lock:
                packets, inbox.packets = inbox.packets, []
                self._pending -= len(packets)
            done = len(packets)
            try:
                done = self._job(inbox.conn, inbox.generation, packets)
            except Exception:  # a bug in the job must not kill the worker
                log.exception("worker: job failed for %s:%d", *inbox.conn.addr)
            with self._lock:
                if done < len(packets):  # its turn is over: the rest goes first next time
                    inbox.packets[:0] = packets[done:]
                    self._pending += len(packets) - done
                again = inbox.scheduled = bool(inbox.packets)
            if again:
                self._ready.put(inbox)  # more to do: back in line, behind the others
        # --8<-- [end:schedule]

    @property
    def pending(self) -> int:
        return self._pending  # for stats(): one int read, no lock needed

    def close(self) -> None:
        """Stop and join every worker. C++: CThreadPool::StopAll. A worker in the middle of
        a job finishes it first; queued work is dropped."""
        self._stopping = True
        for _ in self._threads:
            self._ready.put(None)  # one wake-up per worker
        for thread in self._threads:
            join_thread(thread)
