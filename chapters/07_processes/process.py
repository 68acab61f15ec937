"""A worker process: its life after ``fork``, the thread that listens to the master, and
how it drains. C++ (nginx): ngx_worker_process_cycle, ngx_channel_handler.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection as Channel
from typing import TYPE_CHECKING, NoReturn

from common.log import log_as
from common.platform import set_title

if TYPE_CHECKING:
    from .server import Worker

log = logging.getLogger("process")

TERM_GRACE = 3.0  # after "t", seconds to deliver the replies owed; then close anyway
Make = Callable[[], "Worker"]  # builds the worker's server, in the child


# --8<-- [start:child]
def run_worker(make: Make, channel: Channel, keep: list[int], name: str, grace: float) -> NoReturn:
    """The child's whole life after ``fork``. It never returns into the parent's code (the
    command line's, a test runner's): ``os._exit`` runs none of the parent's exit handlers
    and flushes none of its buffers a second time."""
    code = 1
    try:
        gc.freeze()  # never collect the parent's objects here: their descriptors are not ours
        for fd in map(int, os.listdir("/proc/self/fd")):  # its clients' sockets, say
            if fd not in (0, 1, 2, channel.fileno(), *keep):
                with contextlib.suppress(OSError):
                    os.close(fd)
        for signum in (signal.SIGINT, signal.SIGHUP):  # Ctrl-C reaches the whole group: the
            signal.signal(signum, signal.SIG_IGN)  # master decides, and it alone reloads
        for signum in (signal.SIGTERM, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_DFL)  # not the parent's handlers (yet)
        set_title(name)
        log_as(name)
        code = _serve(make, channel, grace)
    except BaseException:
        log.exception("%s failed", name)
    finally:
        os._exit(code)


def _serve(make: Make, channel: Channel, grace: float) -> int:
    try:
        worker = make()  # its threads start now: after the fork, in this process only
    except Exception as exc:  # a config value, the store, a port: say why, and go
        channel.send({"error": str(exc)})
        return 2
    signal.signal(signal.SIGTERM, lambda *_: drain(worker, "term"))  # as nginx's workers
    signal.signal(signal.SIGQUIT, lambda *_: drain(worker, "quit"))
    lock = threading.Lock()  # two threads report on one channel
    threading.Thread(target=_control, args=(worker, channel, lock, grace), daemon=True).start()
    channel.send({"stats": worker.stats()})  # "ready"
    try:
        worker.serve_forever()
    finally:
        worker.shutdown()
        with lock, contextlib.suppress(OSError):
            channel.send({"stats": worker.stats()})  # the final count
    return 0


# --8<-- [end:child]


# --8<-- [start:control]
def _control(worker: Worker, channel: Channel, lock: threading.Lock, grace: float) -> None:
    """Answer the master. C++ (nginx): ngx_channel_handler. ``"s"``: send ``stats()``.
    ``"q"``: drain gently, for ``grace`` seconds at most; then as ``"t"`` (also
    sent when the master is gone): drain for ``TERM_GRACE``, then stop as it is."""
    deadline, then, gone = math.inf, "t", False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            command = then
        elif gone or not channel.poll(min(left, 3600.0)):
            time.sleep(left if gone else 0)
            continue
        else:
            try:
                command = channel.recv()
            except (EOFError, OSError):
                command, gone = "t", True
        if command == "s":
            with lock, contextlib.suppress(OSError):
                channel.send({"stats": worker.stats()})
        elif command == "q" and not worker.draining:
            drain(worker, "quit")
            deadline = time.monotonic() + grace
        elif command == "t" and worker.draining != "term":
            drain(worker, "term")
            deadline, then = time.monotonic() + TERM_GRACE, "stop"
        elif command == "stop":
            log.warning("replies still owed after %.0f s: closing anyway", TERM_GRACE)
            worker.shutdown()
            return


def drain(worker: Worker, how: str) -> None:
    log.info("draining (%s)", how)
    worker.draining = how
    worker.loop.wake()


# --8<-- [end:control]


# --8<-- [start:drained]
def drained(worker: Worker) -> bool:
    """The worker loop's condition once draining, checked before each poll (on the loop's
    thread, then): accept no one; for ``"term"`` also read no more requests, as if every
    client had half-closed (chapter 2's path delivers the replies owed, then closes).
    True when no client is left."""
    if not worker.draining:
        return False
    loop = worker.loop
    if loop.listeners:  # C++ (nginx): ngx_close_listening_sockets
        listening, loop.listeners = loop.listeners, []
        for conn in listening:
            loop.forget(conn)  # out of *our* epoll set first: the forked copies stay open
            conn.sock.close()
    if worker.draining == "term":
        for conn in loop.clients():
            with conn.lock:
                finish = not conn.peer_closed and not conn.out and not conn.in_flight
                conn.peer_closed = True
                worker._update_mask(conn)  # EPOLLIN off: no request is taken in any more
            if finish:
                worker.close_connection(conn, "shutting down")
    return not loop.clients()


# --8<-- [end:drained]
