"""Listening sockets.

C++: CSocekt::ngx_open_listening_sockets, ngx_close_listening_sockets.
"""

from __future__ import annotations

import logging
import socket

from common.log import notice

log = logging.getLogger("listen")

# C++: NGX_LISTEN_BACKLOG. The kernel caps it at net.core.somaxconn anyway.
LISTEN_BACKLOG = 511


# --8<-- [start:open]
def open_listening_sockets(
    host: str, ports: list[int], *, reuse_port: bool = False, listen: bool = True
) -> list[socket.socket]:
    """Open one non-blocking TCP listening socket per port.

    ``SO_REUSEADDR`` lets a restarted server bind again while old connections sit in
    TIME_WAIT. Non-blocking because in every chapter readiness is decided by a poll (select
    here, epoll later): ``accept`` must never block the one thread that does the waiting.
    On any failure the sockets already opened are closed before the error propagates.
    ``reuse_port`` (chapter 7): a socket per worker process; ``listen=False``: bind only.
    """
    opened: list[socket.socket] = []
    try:
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            opened.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setblocking(False)
            sock.bind((host, port))
            if listen:
                sock.listen(LISTEN_BACKLOG)
                notice(log, "listening on %s:%d", *sock.getsockname()[:2])
    except OSError:
        for sock in opened:
            sock.close()
        raise
    return opened


# --8<-- [end:open]


def close_listening_sockets(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
