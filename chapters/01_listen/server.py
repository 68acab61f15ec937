"""Chapter 1 server: open the listening sockets, then serve one client at a time.

This is the first chapter: everything else builds on it. The serving loop is deliberately
naive: a blocking ``recv`` on the one client being served means every other client waits
in the kernel's accept queue until that client leaves. Run two clients and watch the
second one hang; chapter 2 replaces this loop with epoll.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading

from common.config import Config
from common.logic import DropReason, Logic
from common.protocol import Packet, PacketParser
from common.stats import Counters

from .listening import close_listening_sockets, open_listening_sockets

log = logging.getLogger("server")

RECV_SIZE = 65536


class Server:
    """The chapter contract: ``Server(config)``, ``serve_forever()``, ``shutdown()``,
    ``addresses`` and ``stats()`` (see GUIDE.md section 3)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.logic = Logic.from_config(config)
        try:
            self.listeners = open_listening_sockets(
                config.get_str("ListenAddress"), config.listen_ports()
            )
        except BaseException:
            self.logic.close()
            raise
        # Self-pipe: shutdown() writes a byte so the select() below returns at once.
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self._stopping = False
        self._serving = False
        self._done = threading.Event()
        self._client: socket.socket | None = None
        self._closed = False
        self.counters = Counters(
            ["accepted", "closed", "packets_in", "replies_out", "malformed"]
            + [f"drops.{reason}" for reason in DropReason]
        )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs actually bound (so port 0 in a test tells the real port)."""
        return [sock.getsockname()[:2] for sock in self.listeners]

    def stats(self) -> dict[str, object]:
        snapshot = self.counters.snapshot()
        snapshot["online"] = 1 if self._client is not None else 0
        return snapshot

    # --8<-- [start:serve_forever]
    def serve_forever(self) -> None:
        """Wait for a listening socket to be readable, accept, serve that client until it
        leaves, repeat. C++: the role of ngx_process_events_and_timers, without epoll."""
        with self._lock:
            if self._stopping:
                self._done.set()
                return
            self._serving = True
        try:
            while True:
                readable, _, _ = select.select([*self.listeners, self._wake_r], [], [])
                if self._wake_r in readable:
                    return
                for listener in readable:
                    try:
                        sock, addr = listener.accept()
                    except (BlockingIOError, ConnectionAbortedError):
                        continue  # the client gave up between select() and accept()
                    self._serve_client(sock, addr)
                    if self._stopping:
                        return
        finally:
            self._done.set()

    # --8<-- [end:serve_forever]

    # --8<-- [start:serve_client]
    def _serve_client(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        """Serve one client with blocking I/O until it disconnects. While we sit in
        ``recv`` here, nobody else is served: this is the chapter's lesson."""
        self.counters.add("accepted")
        log.info("accepted %s:%d", *addr)
        sock.setblocking(True)
        parser = PacketParser()
        with self._lock:
            self._client = sock
            stopping = self._stopping
        try:
            while not stopping:
                data = sock.recv(RECV_SIZE)
                if not data:
                    break  # the client closed (or half-closed) its side
                replies = self._handle(parser.feed(data))
                if replies:
                    # One send for everything this read produced: a client that pipelines
                    # 500 pings gets its replies in a few large writes, in order.
                    sock.sendall(b"".join(replies))
        except OSError as exc:  # ECONNRESET, EPIPE: the client went away mid-way
            log.info("client %s:%d: %s", addr[0], addr[1], exc.strerror or exc)
        finally:
            with self._lock:
                self._client = None
            sock.close()
            self.counters.add("closed")
            log.info("closed %s:%d", *addr)

    # --8<-- [end:serve_client]

    # --8<-- [start:handle]
    def _handle(self, events: list) -> list[bytes]:
        """Run the logic on every complete packet; return the replies in request order."""
        replies: list[bytes] = []
        handle = self.logic.handle
        packets = 0
        for event in events:
            if type(event) is not Packet:
                # C++ mirror: a malformed length is skipped (8 bytes dropped), the
                # connection kept. Chapter 6 closes the connection instead.
                self.counters.add("malformed")
                log.info("malformed header (length %d): skipped", event.length)
                continue
            packets += 1
            outcome = handle(event)
            if outcome.reply is not None:
                replies.append(outcome.reply)
            else:
                self.counters.add(f"drops.{outcome.drop}")
        # Counted once per read, not per packet: this loop is the hot path.
        self.counters.add("packets_in", packets)
        self.counters.add("replies_out", len(replies))
        return replies

    # --8<-- [end:handle]

    # --8<-- [start:shutdown]
    def shutdown(self) -> None:
        """Stop serving and release everything; safe from any thread, idempotent. Returns
        once ``serve_forever`` has returned and every socket is closed."""
        with self._lock:
            self._stopping = True
            serving = self._serving
            client = self._client
            if self._closed:
                return
        os.write(self._wake_w, b"x")
        if client is not None:
            try:
                # Wakes the blocking recv() in serve_forever's thread: it returns b"".
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if serving and not self._done.wait(timeout=10):
            log.error("serve_forever did not stop within 10 s")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        close_listening_sockets(self.listeners)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.logic.close()

    # --8<-- [end:shutdown]
