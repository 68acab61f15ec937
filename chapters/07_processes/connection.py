"""One client connection and its handlers.

C++: ngx_connection_s (fd, rhandler/whandler, the receive state, the pending send buffer,
iCurrsequence, the per-connection logic mutex, lastPingTime, FloodkickLastTime,
FloodAttackCount).
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from common.protocol import PacketParser

if TYPE_CHECKING:
    from .timers import Entry
    from .workers import Inbox

Handler = Callable[["Connection"], None]


# --8<-- [start:connection]
class Connection:
    """Everything the event loop knows about one client.

    The handlers are attributes, as in the original (``c->rhandler = ngx_read_request_handler``):
    the loop calls ``conn.rhandler(conn)`` on a readable event without knowing what kind of
    socket it is, which is how a listening socket and a client socket share one loop.

    Objects live in the pool and are reused: :meth:`attach` gives one to a new client,
    :meth:`detach` takes it back. ``generation`` (C++: iCurrsequence) changes on both, so a
    reference that recorded ``(conn, generation)`` can tell when it has gone stale.

    Three threads touch a connection from chapter 4 on (loop, worker, send thread): ``lock``
    guards its socket writes and shared fields. ``attach``/``detach`` need none: ``closed``
    is set under it before a release, so no lock holder still uses a detached client.
    """

    __slots__ = (
        "addr",
        "closed",
        "fd",
        "flood_count",
        "flood_last",
        "generation",
        "in_flight",
        "inbox",
        "last_ping",
        "lock",
        "mask",
        "out",
        "parser",
        "peer_closed",
        "rhandler",
        "sent_at",
        "sock",
        "timer_entry",
        "whandler",
    )

    def __init__(self) -> None:
        self.generation = 0
        self.lock = threading.Lock()
        self.inbox: Inbox | None = None  # its packets waiting for a worker (workers.py)
        self.sock: socket.socket | None = None
        self.fd = -1
        self.addr = ("", 0)
        self.rhandler: Handler | None = None  # C++: rhandler
        self.whandler: Handler | None = None  # C++: whandler
        self._reset()
        self.closed = True

    # --8<-- [start:attach]
    def attach(
        self,
        sock: socket.socket,
        addr: tuple[str, int],
        rhandler: Handler,
        whandler: Handler | None,
    ) -> Connection:
        """Start serving a new client with this object. C++: the set-up in
        ngx_get_connection (``iCurrsequence++``). Returns the connection."""
        self.generation += 1
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.rhandler = rhandler
        self.whandler = whandler
        self._reset()
        return self

    def _reset(self) -> None:
        """Every per-client field, set here once: a fresh parser (half a packet from the
        previous client must not prefix the new one's bytes), no output, no flags."""
        self.parser = PacketParser()
        self.out = bytearray()  # replies the kernel would not take yet (C++: psendbuf/isendlen)
        self.mask = 0  # the epoll events it is registered for
        self.in_flight = 0  # requests read and not yet answered (written or dropped)
        self.last_ping = 0.0  # clock time of its last valid ping (C++: lastPingTime)
        self.sent_at = 0.0  # clock time the kernel last took its waiting replies
        self.timer_entry: Entry | None = None  # its entry in the heartbeat queue
        self.flood_last = -math.inf  # arrival of its previous packet (C++: FloodkickLastTime)
        self.flood_count = 0  # consecutive too-close packets (C++: FloodAttackCount)
        self.peer_closed = False  # the client sent FIN; we still owe it the replies in `out`
        self.closed = False

    def detach(self) -> None:
        """Forget the client; the object may be reused later. C++: the retirement half of
        ngx_free_connection (``iCurrsequence++``)."""
        self.generation += 1
        self.sock = None
        self.fd = -1
        self.out = bytearray()
        self.closed = True

    # --8<-- [end:attach]

    def finished(self) -> bool:
        """The client half-closed and is owed nothing more: time to close."""
        return self.peer_closed and not self.out and self.in_flight == 0


# --8<-- [end:connection]

# A reply on its way: connection, the generation it is for (stale: dropped), bytes.
Reply = tuple[Connection, int, bytes]
