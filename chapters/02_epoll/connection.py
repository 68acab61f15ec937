"""One client connection and its handlers.

C++: ngx_connection_s (fd, rhandler/whandler, the receive state, the pending send buffer).
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
    """

    __slots__ = (
        "addr",
        "closed",
        "fd",
        "mask",
        "out",
        "parser",
        "peer_closed",
        "rhandler",
        "sock",
        "whandler",
    )

    def __init__(
        self,
        sock: socket.socket,
        addr: tuple[str, int],
        rhandler: Handler,
        whandler: Handler | None,
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.parser = PacketParser()
        self.rhandler = rhandler  # C++: rhandler
        self.whandler = whandler  # C++: whandler
        self.out = bytearray()  # replies the kernel would not take yet (C++: psendbuf/isendlen)
        self.mask = 0  # the epoll events it is registered for
        self.peer_closed = False  # the client sent FIN; we still owe it the replies in `out`
        self.closed = False

    def finished(self) -> bool:
        """The client half-closed and is owed nothing more: time to close."""
        return self.peer_closed and not self.out


# --8<-- [end:connection]
