"""The asyncio baseline: the same protocol and the same logic, written the way a Python
developer would write it with the standard library, so the chapters have something honest
to be measured against (``python -m tools.bench --compare asyncio 04_sendqueue``).

It is not a chapter and teaches nothing about the original: no connection pool, no send
queue, no heartbeat, no flood detection (``FEATURES`` is empty). It keeps the chapter
contract (``Server(config)``, ``serve_forever()``, ``shutdown()``, ``addresses``,
``stats()``) so the shared test suite runs against it too, and it gets the behaviour the
suite asks for right: replies in request order, every reply delivered after a half-close,
malformed lengths skipped like chapters 1-5.

Design, in asyncio terms:

* one :class:`Connection` (an ``asyncio.Protocol``) per client; ``data_received`` feeds a
  :class:`~common.protocol.PacketParser` and answers every complete packet with
  :meth:`Logic.handle <common.logic.Logic.handle>` and one ``transport.write`` per reply:
  the code a Python developer writes first, and *the* baseline (``--chapter asyncio``);
* register and login hash a password (PBKDF2), which would stall every other client, so
  they run in the loop's default executor (a thread pool of ``ProcMsgRecvWorkThreadCount``
  threads). Replies must stay in request order, so a connection waiting for the executor
  parks the packets that arrive meanwhile and resumes with them when the job is done;
* backpressure comes from asyncio itself: when the transport's write buffer is over its
  high-water mark (``pause_writing``) we stop reading from that client until it drains.

Style ``tuned`` (``--chapter asyncio-tuned`` in the benchmarks) is the same server after
two optimisations a careful developer would find with a profiler: a
``BufferedProtocol`` that reads into one reused buffer (a plain ``Protocol`` gets a fresh
256 KiB ``bytes`` per read, which glibc serves with mmap/munmap until its thresholds adapt,
so a fresh server can run up to three times slower, at random), and one
``transport.write`` per batch of replies instead of one per reply. The benchmarks report
both, so nobody mistakes "faster than naive asyncio" for "faster than asyncio".

``python -m tools.asyncio_server --config FILE [--port N] [--loop auto|asyncio|uvloop]
[--style plain|tuned]`` runs it on its own (uvloop is used when installed and ``--loop``
is ``auto``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from common.config import Config
from common.log import notice
from common.logic import DropReason, Logic, Outcome
from common.protocol import PING, PING_PACKET, MsgCode, Packet, PacketParser
from common.stats import Counters

TITLE = "asyncio baseline"
FEATURES: frozenset[str] = frozenset()

log = logging.getLogger("asyncio_server")

LISTEN_BACKLOG = 511
# Register and login hash a password: too slow for the event loop's thread.
EXPENSIVE = frozenset({MsgCode.REGISTER, MsgCode.LOGIN})
# A client that pipelines this many packets behind a pending register/login stops being
# read until the executor catches up, so parked packets cannot grow without bound.
PARKED_LIMIT = 4096
LOOP_CHOICES = ("auto", "asyncio", "uvloop")
STYLES = ("plain", "tuned")
READ_SIZE = 65536  # bytes per read, as the chapters


def _new_event_loop(kind: str) -> tuple[asyncio.AbstractEventLoop, str]:
    """A fresh loop of the requested kind, and the name of what was actually made."""
    if kind not in LOOP_CHOICES:
        raise ValueError(f"loop must be one of {', '.join(LOOP_CHOICES)}, got {kind!r}")
    if kind in ("auto", "uvloop"):
        try:
            import uvloop  # type: ignore[import-not-found]
        except ImportError:
            if kind == "uvloop":
                raise RuntimeError("--loop uvloop: uvloop is not installed") from None
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


class _Answering:
    """One client's protocol logic, shared by both styles. All methods run on the event
    loop's thread except the executor job."""

    ping_shortcut = False  # the plain style calls the handler for every packet

    def __init__(self, server: Server) -> None:
        self.server = server
        self.logic = server.logic
        self.counts = server.counts
        self.parser = PacketParser()
        self.transport: asyncio.Transport | None = None
        self.parked: deque[Packet] = deque()  # packets that arrived behind a pending job
        self.busy = False  # an executor job for this connection is running
        self.eof = False  # the client half-closed; close once every reply is written
        self.lost = False
        self.write_paused = False
        self.read_paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.server._connections.add(self)
        self.counts["accepted"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.parked.clear()
        self.server._connections.discard(self)
        self.counts["closed"] += 1

    def data_received(self, data: bytes | memoryview) -> None:
        packets: list[Packet] = []
        for event in self.parser.feed(data):
            if isinstance(event, Packet):
                packets.append(event)
            else:
                # Like chapters 1-5 (and the original): the 8 bytes are gone, carry on.
                self.counts["malformed"] += 1
        if not packets:
            return
        self.counts["packets_in"] += len(packets)
        if self.busy:
            self.parked.extend(packets)
            self._update_reading()
        else:
            self._answer(packets, [])

    def eof_received(self) -> bool:
        self.eof = True
        # While a job is pending, True keeps the transport open for writing: the job's
        # completion writes the remaining replies, then closes. Otherwise False makes
        # asyncio close the transport, and close() first writes out whatever is still
        # buffered: no reply is lost after a half-close.
        return self.busy

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

    # -- answering -------------------------------------------------------------------------
    def _answer(self, packets: Sequence[Packet], replies: list[bytes]) -> None:
        """Answer ``packets`` in order, appending to ``replies``; stop at the first
        register/login, hand it to the executor and park the rest behind it."""
        handle = self.logic.handle
        for i, packet in enumerate(packets):
            if packet is PING and self.ping_shortcut:
                replies.append(PING_PACKET)
                continue
            if packet.code in EXPENSIVE:
                self.parked.extend(packets[i + 1 :])
                self._write(replies)
                self._submit(packet)
                return
            self._collect(handle(packet), replies)
        self._write(replies)

    def _collect(self, outcome: Outcome, replies: list[bytes]) -> None:
        if outcome.reply is not None:
            replies.append(outcome.reply)
        else:
            self.counts[f"drops.{outcome.drop}"] += 1

    def _write(self, replies: list[bytes]) -> None:
        # The plain style: one write per reply, as most asyncio code does.
        if replies and not self.lost:
            assert self.transport is not None
            for reply in replies:
                self.transport.write(reply)
            self.counts["replies_out"] += len(replies)

    def _submit(self, packet: Packet) -> None:
        self.busy = True
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self.logic.handle, packet)
        future.add_done_callback(self._job_done)
        self._update_reading()

    def _job_done(self, future: asyncio.Future[Outcome]) -> None:
        self.busy = False
        if self.lost or future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.error("handler failed: %r; closing the connection", exc)
            assert self.transport is not None
            self.transport.abort()
            return
        replies: list[bytes] = []
        self._collect(future.result(), replies)
        parked = list(self.parked)
        self.parked.clear()
        self._answer(parked, replies)
        if not self.busy:
            self._update_reading()
            if self.eof:
                assert self.transport is not None
                self.transport.close()  # after the buffered replies are written

    def _update_reading(self) -> None:
        """Read from the client only while its replies drain and few packets are parked."""
        if self.lost or self.eof or self.transport is None:
            return
        want_paused = self.write_paused or len(self.parked) > PARKED_LIMIT
        if want_paused and not self.read_paused:
            self.transport.pause_reading()
            self.read_paused = True
        elif not want_paused and self.read_paused:
            self.transport.resume_reading()
            self.read_paused = False


class Connection(_Answering, asyncio.Protocol):
    """The plain style: ``data_received`` and one ``transport.write`` per reply."""


class TunedConnection(_Answering, asyncio.BufferedProtocol):
    """The tuned style: reads into one reused buffer, one write per batch of replies, and
    a ping answered without the handler call (the chapters' ``Logic.answer`` does that)."""

    ping_shortcut = True

    def get_buffer(self, sizehint: int) -> memoryview:
        # One buffer for every connection: the loop reads one socket at a time, and the
        # parser copies out whatever it keeps before the next read.
        return self.server._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.server._read_view[:nbytes])

    def _write(self, replies: list[bytes]) -> None:
        if replies and not self.lost:
            assert self.transport is not None
            self.transport.write(b"".join(replies) if len(replies) > 1 else replies[0])
            self.counts["replies_out"] += len(replies)


def open_listening_sockets(host: str, ports: list[int]) -> list[socket.socket]:
    """Bind in ``__init__`` (the chapter contract: ``addresses`` is known before serving).
    ``socket.create_server`` is what an asyncio developer would reach for; it sets
    ``SO_REUSEADDR`` as the chapters' ``listening.py`` does by hand."""
    opened: list[socket.socket] = []
    try:
        for port in ports:
            opened.append(socket.create_server((host, port), backlog=LISTEN_BACKLOG))
            opened[-1].setblocking(False)
            notice(log, "listening on %s:%d", *opened[-1].getsockname()[:2])
    except OSError:
        for sock in opened:
            sock.close()
        raise
    return opened


class Server:
    """The chapter contract on top of asyncio (see GUIDE.md section 3).

    ``loop`` picks the event loop: ``"asyncio"`` (the default, the standard library's),
    ``"uvloop"`` (required) or ``"auto"`` (uvloop when installed)."""

    def __init__(self, config: Config, *, loop: str = "asyncio", style: str = "plain") -> None:
        if style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
        self.config = config
        self.style = style
        self._protocol = Connection if style == "plain" else TunedConnection
        self.loop_kind = loop
        self.loop_name = "?"  # what serve_forever actually runs
        self.workers = config.get_int("ProcMsgRecvWorkThreadCount", minimum=1)
        self.logic = Logic.from_config(config)
        try:
            self.listeners = open_listening_sockets(
                config.get_str("ListenAddress"), config.listen_ports()
            )
        except BaseException:
            self.logic.close()
            raise
        self._addresses = [sock.getsockname()[:2] for sock in self.listeners]
        # Every count changes on the event loop's thread only (executor jobs report back
        # through a done-callback on the loop), so plain ints need no lock: that is the
        # point of an event loop. stats() from another thread copies the dict, which the
        # GIL makes atomic; no key is ever added after this.
        self.counts: dict[str, int] = dict.fromkeys(
            ["accepted", "closed", "packets_in", "replies_out", "malformed"]
            + [f"drops.{reason}" for reason in DropReason],
            0,
        )
        self._connections: set[_Answering] = set()
        self._read_view = memoryview(bytearray(READ_SIZE))
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._stopping = False
        self._serving = False
        self._closed = False
        self._done = threading.Event()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return list(self._addresses)

    def stats(self) -> dict[str, object]:
        counters = Counters()
        for key, value in self.counts.copy().items():
            counters.add(key, value)
        snapshot = counters.snapshot()
        snapshot["online"] = len(self._connections)
        return snapshot

    def serve_forever(self) -> None:
        """Run the event loop in the calling thread until :meth:`shutdown`."""
        with self._lock:
            if self._stopping:
                return
            loop, self.loop_name = _new_event_loop(self.loop_kind)
            self._loop = loop
            self._serving = True
        executor = ThreadPoolExecutor(self.workers, thread_name_prefix="asyncio-worker")
        loop.set_default_executor(executor)
        try:
            loop.run_until_complete(self._main())
        finally:
            # Jobs still running finish (their callbacks land on the stopped loop and are
            # never run); then nothing can touch the loop or the store any more.
            executor.shutdown(wait=True, cancel_futures=True)
            loop.close()
            self._done.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        if self._stopping:
            return
        notice(log, "event loop: %s, %d executor threads", self.loop_name, self.workers)
        servers = [
            await loop.create_server(
                lambda: self._protocol(self), sock=sock, backlog=LISTEN_BACKLOG
            )
            for sock in self.listeners
        ]
        try:
            await self._stop
        finally:
            for srv in servers:
                srv.close()  # closes the listening socket
            # abort() schedules connection_lost; let those callbacks run. Abort again on
            # each pass: a connection accepted just before the close may arrive late.
            for _ in range(100):
                for conn in list(self._connections):
                    if conn.transport is not None:
                        conn.transport.abort()
                if not self._connections:
                    break
                await asyncio.sleep(0)

    def _wake(self) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    def shutdown(self) -> None:
        """Stop serving and release everything; thread-safe and idempotent. Returns once
        the loop has stopped and every socket is closed."""
        with self._lock:
            self._stopping = True
            loop, serving = self._loop, self._serving
            if self._closed:
                return
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:
                pass  # the loop is already closed: serve_forever has returned
        if serving and not self._done.wait(timeout=15):
            log.error("serve_forever did not stop within 15 s")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sock in self.listeners:
            sock.close()
        self.logic.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.asyncio_server``: run the baseline until SIGINT/SIGTERM, with the
    chapters' command line (common.cli) plus ``--loop`` and ``--style``."""
    from common.cli import build_parser, serve

    parser = build_parser(
        "python -m tools.asyncio_server",
        "The asyncio baseline server (same protocol and logic as the chapters), "
        "for benchmarks: python -m tools.bench --chapter asyncio.",
    )
    parser.add_argument(
        "--loop",
        choices=LOOP_CHOICES,
        default="auto",
        help="event loop: uvloop when installed (auto), or force one (default: auto)",
    )
    parser.add_argument(
        "--style",
        choices=STYLES,
        default="plain",
        help="plain: one write per reply (the baseline); tuned: buffered reads, one write "
        "per batch (default: plain)",
    )
    args = parser.parse_args(argv)
    return serve(
        args,
        lambda config: Server(config, loop=args.loop, style=args.style),
        "asyncio baseline",
        TITLE,
    )


if __name__ == "__main__":
    sys.exit(main())
