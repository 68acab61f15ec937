"""Chapter 1 server: open the listening sockets, then serve one client at a time.

The serving loop is deliberately naive: a blocking ``recv`` on the one client being
served means every other client waits in the kernel's accept queue until that client
leaves. Run two clients and watch the second one hang; chapter 2 replaces this loop with
epoll. Starting and stopping (``serve_forever``, ``shutdown`` from any thread) is
``common/lifecycle.py``; this file is the socket code.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket

from common.config import Config
from common.lifecycle import ServerLifecycle
from common.logic import Logic
from common.protocol import PacketParser
from common.stats import Counters

from .listening import close_listening_sockets, open_listening_sockets

log = logging.getLogger("server")

RECV_SIZE = 65536
COUNTERS = ("accepted", "closed")


class Server(ServerLifecycle):
    """The chapter contract: ``Server(config)``, ``serve_forever()``, ``shutdown()``,
    ``addresses`` and ``stats()``."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        with self.building():
            self.logic = self.closes(Logic.from_config(config))
            self.listeners = self.closes(
                open_listening_sockets(config.get_str("ListenAddress"), config.listen_ports()),
                close_listening_sockets,
            )
            # shutdown() from another thread sends a byte here, so select() returns at once.
            self._wake_r, self._wake_w = socket.socketpair()
            self.closes(self._wake_r)
            self.closes(self._wake_w)
        self.counters = Counters(COUNTERS, Logic.COUNTERS)
        self._client: socket.socket | None = None

    def stats(self) -> dict[str, object]:
        snapshot = self.counters.snapshot()
        snapshot["online"] = 1 if self._client is not None else 0
        return snapshot

    # --8<-- [start:serve]
    def _serve(self) -> None:
        """Wait for a listening socket to be readable, accept, serve that client until it
        leaves, repeat. C++: the role of ngx_process_events_and_timers, without epoll."""
        while not self.stopping:
            readable, _, _ = select.select([*self.listeners, self._wake_r], [], [])
            for listener in readable:
                if listener is self._wake_r:
                    return
                try:
                    sock, addr = listener.accept()
                except (BlockingIOError, ConnectionAbortedError):
                    continue  # the client gave up between select() and accept()
                self._serve_client(sock, addr)

    # --8<-- [end:serve]

    # --8<-- [start:serve_client]
    def _serve_client(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        """Serve one client with blocking I/O until it leaves. While we sit in ``recv``
        here, nobody else is served: this is the chapter's lesson."""
        self.counters.add("accepted")
        log.info("accepted %s:%d", *addr)
        sock.setblocking(True)
        parser = PacketParser()  # one per client: a packet may arrive over several reads
        # Published before the stop flag is read: shutdown() sets the flag, then wakes the
        # client published here, so either we see the flag or it sees this client.
        self._client = sock
        try:
            while not self.stopping:
                data = sock.recv(RECV_SIZE)
                if not data:
                    break  # the client closed (or half-closed) its side
                replies = self.logic.answer(parser.feed(data), self.counters)
                if replies:
                    # One send for everything this read produced: a client that pipelines
                    # 500 pings gets its replies in a few large writes, in order.
                    sock.sendall(b"".join(replies))
        except OSError as exc:  # ECONNRESET, EPIPE: the client went away mid-way
            log.info("client %s:%d: %s", addr[0], addr[1], exc.strerror or exc)
        finally:
            self._client = None
            sock.close()
            self.counters.add("closed")
            log.info("closed %s:%d", *addr)

    # --8<-- [end:serve_client]

    def _wake(self) -> None:
        """shutdown() from another thread: wake select(), and the blocking recv() of the
        client being served (a shut-down socket's recv returns b"" at once)."""
        self._wake_w.send(b"x")
        client = self._client
        if client is not None:
            with contextlib.suppress(OSError):  # it may have closed meanwhile
                client.shutdown(socket.SHUT_RDWR)
