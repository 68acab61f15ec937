"""Chapter 1 server: open the listening sockets, then serve one client at a time.

Deliberately naive: while a blocking ``recv`` waits on the client being served, every
other client waits in the kernel's accept queue. Chapter 2 replaces this with epoll.
(Starting and stopping from any thread is ``common/lifecycle.py``.)
"""

from __future__ import annotations

import contextlib
import errno
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
COUNTERS = ("accepted", "closed", "accept_errors.econnaborted", "accept_errors.emfile")


class Server(ServerLifecycle):
    """The chapter contract: ``Server(config)``, ``serve_forever()``, ``shutdown()``,
    ``addresses`` and ``stats()``."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.counters = Counters(
            COUNTERS,
            Logic.COUNTERS,
        )
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
                except BlockingIOError:
                    continue  # the client gave up between select() and accept()
                except OSError as exc:
                    self._accept_failed(exc)
                    continue
                self._serve_client(sock, addr)

    # --8<-- [end:serve]

    def _accept_failed(self, exc: OSError) -> None:
        """accept(2) documents its errors (ECONNABORTED, EMFILE, ENOBUFS, EPROTO ...) as
        conditions to retry: count, try again later, never stop the server."""
        self.counters.add(f"accept_errors.{errno.errorcode.get(exc.errno, '?').lower()}")
        log.debug("accept: %s", exc.strerror or exc)

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
        """shutdown(), from another thread: wake select() and the served client's recv()."""
        self._wake_w.send(b"x")
        client = self._client
        if client is not None:
            with contextlib.suppress(OSError):  # it may have closed meanwhile
                client.shutdown(socket.SHUT_RDWR)
