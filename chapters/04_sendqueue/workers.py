"""The worker pool: threads that run the business logic off the event loop.

C++: CThreadPool (Create, ThreadFunc, inMsgRecvQueueAndSignal, Call, StopAll).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from common.config import Config
from common.protocol import Packet

from .connection import Connection, Reply

log = logging.getLogger("workers")

# What a worker does with one client's packets (C++: CLogicSocket::threadRecvProcFunc):
# answers them in order until done or past the deadline (a monotonic time), and returns
# the replies and how many packets it got through.
Job = Callable[[Connection, int, list[Packet], float], tuple[list[Reply], int]]
# Where a worker hands its batch of replies (the send queue's put_many).
Deliver = Callable[[list[Reply]], None]


# How long a worker stays with one client before it lets the others have a turn. Pings
# take microseconds, a login with the shipped hash cost a few hundred ms: without a
# turn, a client that pipelines 500 logins would hold a worker for minutes while
# everyone queued behind it waits.
TURN = 0.005


# --8<-- [start:workers]
class Inbox:
    """The packets of one client (one connection *generation*) waiting for a worker.

    Per generation, not per connection object: when an object is reused, the new client
    gets a fresh inbox and never waits behind work still running for the old one."""

    __slots__ = ("conn", "generation", "packets", "scheduled")

    def __init__(self, conn: Connection, generation: int) -> None:
        self.conn = conn
        self.generation = generation
        self.packets: list[Packet] = []
        self.scheduled = False  # in the ready queue or being run by a worker


class WorkerPool:
    """``count`` threads waiting on a condition variable over the receive queue.

    The original's receive queue holds single messages and any idle worker takes the next
    one, so two requests of one client can run on two workers at once and their replies
    leave in completion order (reference bug 3). Ours queues *clients*: each has an
    :class:`Inbox` of packets in arrival order, and an inbox is in the ready queue (or
    being run) at most once. A worker takes an inbox with everything in it and runs it in
    order, so one client's replies are produced in request order, while different clients
    still run on different workers in parallel.

    To keep hand-offs cheap under load (every wake-up of a thread is a futex call and a
    trip through the GIL), a worker takes several ready inboxes at once (its fair share of
    the queue) and hands all their replies to the send queue in one call; and a sleeping
    worker is woken only when no other worker is already on its way to the ready queue.
    A woken worker that leaves work behind wakes the next one, so a long login on one
    worker never holds up a client that another worker could serve.
    """

    def __init__(
        self,
        count: int,
        job: Job,
        deliver: Deliver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.count = count
        self.clock = clock
        self._job = job
        self._deliver = deliver
        self._cond = threading.Condition()
        self._ready: deque[Inbox] = deque()
        self._pending = 0  # packets waiting in inboxes: the "receive queue size"
        self._idle = 0  # workers waiting on the condition
        self._waking = 0  # workers notified and not yet back at the ready queue
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, name=f"worker-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    @classmethod
    def from_config(
        cls, config: Config, job: Job, deliver: Deliver, clock: Callable[[], float] = time.monotonic
    ) -> WorkerPool:
        return cls(config.get_int("ProcMsgRecvWorkThreadCount", minimum=1), job, deliver, clock)

    def submit(self, batch: list[tuple[Connection, int, list[Packet]]]) -> None:
        """Queue what one ``epoll.poll()`` batch read: ``(connection, generation, packets)``
        per read, in one go (one lock, at most one wake-up). C++: inMsgRecvQueueAndSignal."""
        with self._cond:
            for conn, generation, packets in batch:
                inbox = conn.inbox
                if inbox is None or inbox.generation != generation:
                    inbox = conn.inbox = Inbox(conn, generation)  # a new client on this object
                inbox.packets += packets
                self._pending += len(packets)
                if not inbox.scheduled:
                    inbox.scheduled = True
                    self._ready.append(inbox)
            if self._ready:
                self._wake_one()

    def _wake_one(self) -> None:
        """Notify a sleeping worker unless one is already on its way (lock held)."""
        if self._idle > self._waking and self._waking == 0:
            self._waking += 1
            self._cond.notify()

    def _take(self) -> list[tuple[Inbox, list[Packet]]] | None:
        with self._cond:
            while not self._ready and not self._stopping:
                self._idle += 1
                self._cond.wait()
                self._idle -= 1
                self._waking = max(0, self._waking - 1)
            if self._stopping:
                return None
            share = max(1, len(self._ready) // self.count)
            taken = []
            for _ in range(share):
                inbox = self._ready.popleft()
                packets, inbox.packets = inbox.packets, []
                self._pending -= len(packets)
                taken.append((inbox, packets))
            if self._ready:
                self._wake_one()  # work left behind: pass it on
            return taken

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            replies: list[Reply] = []
            leftovers: list[list[Packet]] = []
            for inbox, packets in taken:
                done = len(packets)
                try:
                    answered, done = self._job(
                        inbox.conn, inbox.generation, packets, self.clock() + TURN
                    )
                    replies += answered
                except Exception:  # a bug in the logic must not kill the worker
                    log.exception("worker: job failed for %s:%d", *inbox.conn.addr)
                leftovers.append(packets[done:])
            if replies:
                self._deliver(replies)
            with self._cond:
                for (inbox, _), rest in zip(taken, leftovers, strict=True):
                    if rest:  # its turn is over: the rest goes first next time, in order
                        inbox.packets[:0] = rest
                        self._pending += len(rest)
                    if inbox.packets:  # more to do: back in line, behind the others
                        self._ready.append(inbox)
                    else:
                        inbox.scheduled = False

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending

    def close(self, timeout: float = 10.0) -> None:
        """Stop and join every worker. C++: CThreadPool::StopAll. A worker in the middle of
        a job finishes it first; queued work is dropped."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                log.error("%s did not stop within %.0f s", thread.name, timeout)


# --8<-- [end:workers]
