"""One client connection and its handlers.

C++: ngx_connection_s (fd, rhandler/whandler, the receive state, the pending send buffer,
iCurrsequence).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from common.protocol import PacketParser

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
    """

    __slots__ = (
        "addr",
        "closed",
        "fd",
        "generation",
        "mask",
        "out",
        "parser",
        "peer_closed",
        "rhandler",
        "sock",
        "whandler",
    )

    def __init__(self) -> None:
        self.generation = 0
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
        return self.peer_closed and not self.out


# --8<-- [end:connection]
