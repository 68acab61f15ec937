"""One client connection and its handlers.

C++: ngx_connection_s (fd, rhandler/whandler, the receive state, the pending send buffer,
iCurrsequence, iThrowsendCount, iSendCount, the per-connection logic mutex, lastPingTime).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from common.protocol import PacketParser

Handler = Callable[["Connection"], None]


# --8<-- [start:connection]
class Connection:
    """Everything the server knows about one client.

    The handlers are attributes, as in the original (``c->rhandler = ngx_read_request_handler``):
    the loop calls ``conn.rhandler(conn)`` on a readable event without knowing what kind of
    socket it is, which is how a listening socket and a client socket share one loop.

    Objects live in the pool and are reused: :meth:`attach` gives one to a new client,
    :meth:`detach` takes it back. ``generation`` (C++: iCurrsequence) changes on both, so a
    reference that recorded ``(conn, generation)`` can tell when it has gone stale.

    From this chapter on, three threads touch a connection (the event loop, a worker, the
    send thread). ``lock`` guards the socket and the send-side fields (``out``,
    ``waiting``, ``backlog``, ``in_flight``, ``reading_paused``, ``closed``, ``mask``); the
    worker pool's own
    lock guards ``inbox``.
    """

    __slots__ = (
        "addr",
        "backlog",
        "closed",
        "fd",
        "generation",
        "in_flight",
        "inbox",
        "last_ping",
        "lock",
        "mask",
        "out",
        "parser",
        "peer_closed",
        "reading_paused",
        "rhandler",
        "sock",
        "timer_entry",
        "waiting",
        "whandler",
    )

    def __init__(self) -> None:
        self.generation = 0
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.fd = -1
        self.addr = ("", 0)
        self.parser = PacketParser()
        self.rhandler: Handler | None = None  # C++: rhandler
        self.whandler: Handler | None = None  # C++: whandler
        self.out = bytearray()  # replies the kernel would not take yet (C++: psendbuf/isendlen)
        self.waiting = False  # kernel buffer full, EPOLLOUT armed (C++: iThrowsendCount > 0)
        self.backlog = 0  # replies queued behind `out` while waiting (cf. C++: iSendCount)
        self.in_flight = 0  # requests handed to the workers and not yet answered or dropped
        self.reading_paused = False  # too many requests in flight: EPOLLIN is off for now
        self.inbox: object = None  # the current client's packets waiting for a worker
        self.mask = 0  # the epoll events currently registered
        self.peer_closed = False  # the client sent FIN; we still owe it its replies
        self.closed = True
        self.last_ping = 0.0  # monotonic time of the last valid ping (C++: lastPingTime)
        self.timer_entry: object = None  # this client's entry in the heartbeat queue

    def attach(
        self,
        sock: socket.socket,
        addr: tuple[str, int],
        rhandler: Handler,
        whandler: Handler | None,
    ) -> None:
        """Start serving a new client with this object. C++: ngx_connection_s::GetOneToUse."""
        with self.lock:
            self.generation += 1
            self.sock = sock
            self.fd = sock.fileno()
            self.addr = addr
            self.parser = PacketParser()
            self.rhandler = rhandler
            self.whandler = whandler
            self.out = bytearray()
            self.waiting = False
            self.backlog = 0
            self.in_flight = 0
            self.reading_paused = False
            self.mask = 0
            self.peer_closed = False
            self.closed = False

    def finished(self) -> bool:
        """The client half-closed and is owed nothing more: time to close (call with
        ``lock`` held)."""
        return self.peer_closed and self.in_flight == 0 and not self.waiting

    def detach(self) -> None:
        """Forget the client; the object may be reused later. C++: PutOneToFree."""
        with self.lock:
            self.generation += 1
            self.sock = None
            self.fd = -1
            self.out = bytearray()
            self.waiting = False
            self.closed = True


# --8<-- [end:connection]
