"""Starting and stopping a server: the plumbing every chapter's ``Server`` shares.

C++: no single counterpart. The original's worker runs its loop until a signal kills the
process, and an error anywhere calls ``exit()``. A teaching server needs more: the tests
start and stop dozens of servers in one process, and Ctrl-C must leave nothing behind.
So ``shutdown()`` may be called from any thread, at any time (before, during or after
``serve_forever()``, and twice), and returns only when the serving thread has left its
loop and every resource has been released.

It lives here so that a chapter's ``server.py`` is the socket code it teaches. A chapter
subclasses :class:`ServerLifecycle`, opens its resources inside ``with self.building():``
registering each with :meth:`~ServerLifecycle.closes`, and implements two methods:
``_serve()`` (loop until :attr:`~ServerLifecycle.stopping`) and ``_wake()`` (make that
loop notice, from another thread).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

log = logging.getLogger("server")

T = TypeVar("T")

# How long shutdown() waits for a thread to stop before it carries on anyway (and says
# so): a stuck handler must not hang Ctrl-C forever.
STOP_TIMEOUT = 10.0


def join_thread(thread: threading.Thread, timeout: float = STOP_TIMEOUT) -> None:
    """Join ``thread``; log an error if it is still running after ``timeout`` seconds."""
    thread.join(timeout)
    if thread.is_alive():
        log.error("thread %s did not stop within %.0f s", thread.name, timeout)


class ServerLifecycle:
    """``serve_forever()``, ``shutdown()`` and ``addresses`` for a chapter's ``Server``.

    Resources are released in the reverse order of their registration (an
    :class:`contextlib.ExitStack`), so a chapter creates them in dependency order and the
    shutdown order follows: the threads that feed a queue stop before the thread that
    drains it, the connections close before the pool and the epoll set they live in.
    """

    listeners: list[socket.socket]  # set by the chapter; ``addresses`` reads it

    def __init__(self) -> None:
        self._resources = contextlib.ExitStack()
        self._flags = threading.Lock()  # guards _stopping and _serving
        self._stopping = False
        self._serving = False
        self._done = threading.Event()  # the serving thread has left its loop
        self._shutdown_lock = threading.Lock()  # one shutdown at a time; later calls wait
        self._released = False

    # -- building ------------------------------------------------------------------------
    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Wrap the body of ``__init__``: if opening anything fails (the port is taken,
        say), what was already opened is released again before the error propagates."""
        try:
            yield
        except BaseException:
            self._resources.close()
            raise

    def closes(self, resource: T, close: Callable[[T], Any] | None = None) -> T:
        """Release ``resource`` at shutdown, with ``close(resource)`` or else its own
        ``close()``; returns it, so a line both opens and registers. ``None`` (a subsystem
        the config switches off) is returned as it is."""
        if resource is None:
            return resource
        if close is None:
            self._resources.callback(resource.close)  # type: ignore[attr-defined]
        else:
            self._resources.callback(close, resource)
        return resource

    def at_shutdown(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` at shutdown, in its place in the reverse order."""
        self._resources.callback(callback)

    # -- the contract ----------------------------------------------------------------------
    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs actually bound (so port 0 in a test tells the real port)."""
        return [sock.getsockname()[:2] for sock in self.listeners]

    @property
    def stopping(self) -> bool:
        """True once ``shutdown()`` was called: the serving loop's condition to leave."""
        return self._stopping

    # --8<-- [start:shutdown]
    def serve_forever(self) -> None:
        """Serve until ``shutdown()``; returns at once if it was already called."""
        with self._flags:
            if self._stopping:
                return
            self._serving = True
        try:
            self._serve()
        finally:
            self._done.set()

    def shutdown(self) -> None:
        """Stop serving and release everything; safe from any thread, idempotent. Returns
        once ``serve_forever`` has returned and every resource is released."""
        with self._shutdown_lock:
            if self._released:
                return
            with self._flags:
                self._stopping = True
                serving = self._serving
            if serving:
                self._wake()
                if not self._done.wait(STOP_TIMEOUT):
                    log.error("serve_forever did not stop within %.0f s", STOP_TIMEOUT)
            self._released = True
            self._resources.close()

    # --8<-- [end:shutdown]

    # -- what a chapter implements ---------------------------------------------------------
    def _serve(self) -> None:
        """Serve clients until :attr:`stopping` is true."""
        raise NotImplementedError

    def _wake(self) -> None:
        """Called by ``shutdown()`` from another thread: make ``_serve`` notice, now."""
        raise NotImplementedError
