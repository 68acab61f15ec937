"""The connection pool with delayed recycling.

C++: CSocekt::initconnection, ngx_get_connection, ngx_free_connection,
inRecyConnectQueue, ServerRecyConnectionThread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from common.config import Config
from common.lifecycle import join_thread

from .connection import Connection

log = logging.getLogger("pool")

# C++: ServerRecyConnectionThread sleeps 200 ms between scans of the recycle queue.
RECYCLE_SCAN_INTERVAL = 0.2


# --8<-- [start:pool]
class ConnectionPool:
    """Connection objects created up front, handed out, retired, and reused.

    * :meth:`acquire` (C++: ngx_get_connection) takes a free object, or creates one when
      the free list is empty (the pool grows; it never shrinks).
    * :meth:`retire` (C++: inRecyConnectQueue) parks a closed connection in the recycle
      queue for ``recycle_wait`` seconds: other threads (later chapters: workers, the send
      thread, the timer thread) may still hold a reference, and the wait plus the
      generation number keep them from acting on an object that a new client now owns.
    * :meth:`recycle_due` (the body of C++: ServerRecyConnectionThread) moves the retired
      connections whose wait is over back to the free list. A thread runs it every 200 ms;
      tests call it directly with a fake clock.
    * There is no immediate return to the free list (C++: ngx_free_connection): every
      close goes through :meth:`retire`, and :meth:`close` frees everything at shutdown.
    * :meth:`refusal` applies the two limits the original checks at accept.
    """

    COUNTERS = ("refused.online_limit", "refused.storm")

    def __init__(
        self,
        size: int,
        recycle_wait: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        start_thread: bool = True,
    ) -> None:
        self.size = size
        self.recycle_wait = recycle_wait
        self.clock = clock
        self._lock = threading.Condition()
        self._all = [Connection() for _ in range(size)]
        self._free = deque(self._all)
        self._recycling: deque[tuple[float, Connection]] = deque()  # (reusable at, conn)
        self._stopping = False
        self._thread: threading.Thread | None = None
        if start_thread:
            self._thread = threading.Thread(target=self._recycler, name="recycler", daemon=True)
            self._thread.start()

    @classmethod
    def from_config(
        cls, config: Config, clock: Callable[[], float] = time.monotonic
    ) -> ConnectionPool:
        return cls(
            config.get_int("worker_connections", minimum=1),
            config.get_float("Sock_RecyConnectionWaitTime", minimum=0),
            clock,
        )

    def acquire(self) -> Connection:
        with self._lock:
            if self._free:
                return self._free.popleft()
            conn = Connection()
            self._all.append(conn)
            return conn

    # --8<-- [start:reuse]
    def retire(self, conn: Connection) -> None:
        conn.detach()  # bumps the generation: every recorded reference is now stale
        with self._lock:
            self._recycling.append((self.clock() + self.recycle_wait, conn))

    def recycle_due(self) -> int:
        """Return every retired connection whose wait is over to the free list."""
        now = self.clock()
        moved = 0
        with self._lock:
            # Retired in time order with one fixed wait, so the due ones are at the front.
            while self._recycling and self._recycling[0][0] <= now:
                self._free.append(self._recycling.popleft()[1])
                moved += 1
        return moved

    # --8<-- [end:reuse]

    def _recycler(self) -> None:
        while True:
            with self._lock:
                if not self._stopping:
                    self._lock.wait(timeout=RECYCLE_SCAN_INTERVAL)
                if self._stopping:
                    return
            self.recycle_due()

    def close(self) -> None:
        """Stop the recycler thread and free everything at once."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
            self._free.extend(conn for _, conn in self._recycling)
            self._recycling.clear()
        if self._thread is not None:
            join_thread(self._thread)

    # --8<-- [start:refusal]
    def refusal(self) -> str | None:
        """Why a just-accepted client must be closed at once, if it must.

        * ``online_limit``: ``size`` (``worker_connections``) clients are already online.
        * ``storm``: the pool has grown past 5 x ``size`` objects while fewer than ``size``
          are free: clients connect and disconnect so fast that closed connections pile
          up in the recycle queue. Without this guard every connect would allocate a new
          object for the whole recycle wait.
        """
        with self._lock:
            total, free = len(self._all), len(self._free)
            in_use = total - free - len(self._recycling)
        if in_use >= self.size:
            return "online_limit"
        if total > 5 * self.size and free < self.size:
            return "storm"
        return None

    # --8<-- [end:refusal]

    # -- counters for stats() ----------------------------------------------------------------
    @property
    def in_use(self) -> int:
        """Objects handed out and not retired: the clients online (C++: m_onlineUserCount)."""
        with self._lock:
            return len(self._all) - len(self._free) - len(self._recycling)

    @property
    def total(self) -> int:
        with self._lock:
            return len(self._all)

    @property
    def free(self) -> int:
        with self._lock:
            return len(self._free)

    @property
    def recycling(self) -> int:
        with self._lock:
            return len(self._recycling)


# --8<-- [end:pool]
