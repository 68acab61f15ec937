"""Worker processes and their master: fork them, replace one that dies, reload, drain.

C++ (nginx): ngx_master_process_cycle, ngx_spawn_process, ngx_reap_children,
ngx_worker_process_cycle, ngx_channel_handler. The course server's master forks its
workers too, but never replaces one (reference bug 1).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Channel
from multiprocessing.connection import Pipe
from typing import TYPE_CHECKING, Any, NoReturn

from common.config import Config, ConfigError
from common.lifecycle import ServerLifecycle
from common.log import log_as, notice
from common.platform import set_title

from .listening import close_listening_sockets, open_listening_sockets

if TYPE_CHECKING:
    from .server import Worker

log = logging.getLogger("master")

START_TIMEOUT = 10.0  # a new worker says it serves (or why it cannot) within this
STOP_TIMEOUT = 6.0  # after "t", then SIGKILL
GAUGES = {"online", "waiting_epollout", "unsent_bytes", "queues", "pool"}  # sizes, not counts
EXITED = "worker %d (pid %d) exited (%s): %d clients, %d requests in, %d replies out"
TERM_GRACE = 3.0  # with the master gone: seconds a worker has to deliver the replies owed


@dataclass(eq=False)
class Child:
    """One worker process, as the master sees it."""

    slot: int  # 1 .. WorkerProcesses: a replacement takes the dead worker's slot
    pid: int
    pidfd: int  # readable once the process has exited
    channel: Channel
    generation: int  # the config it runs: 0, then one more per reload
    state: str = "starting"  # "serving", "draining"
    asked: int = 0  # "s" sent, not answered yet
    report: dict[str, Any] = field(default_factory=dict)  # its last stats()


# --8<-- [start:master]
class Master(ServerLifecycle):
    """The chapter contract, kept by a process that serves no client: it opens the listening
    sockets, forks ``WorkerProcesses`` children that each run a :class:`~.server.Worker` on
    them (with ``clock``), supervises them in ``serve_forever()``, stops them at shutdown."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.config, self.clock = config, clock
        self.reuse_port = config.get_bool("ListenReusePort")
        self.children: dict[int, Child] = {}  # by pidfd
        self.generation, self.counts = 0, {"respawns": 0, "reloads": 0}
        self._retired: dict[str, Any] = {}  # what the workers that exited had counted
        self._lock = threading.RLock()  # children, their channels, the counts
        self._asked: list[tuple[str, Config | None]] = []  # reloads and quits, for the loop
        with self.building():
            host, listen = config.get_str("ListenAddress"), not self.reuse_port
            # With ListenReusePort the master only holds the port: each worker listens.
            opened = open_listening_sockets(
                host, config.listen_ports(), reuse_port=not listen, listen=listen
            )
            self.listeners = self.closes(opened, close_listening_sockets)
            self.bound = self.addresses  # (a quit closes the sockets: what they were)
            self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.at_shutdown(lambda: os.close(self._wake_fd))
            self.at_shutdown(self._stop_all)
            self._start(config, 0)  # C++ (nginx): ngx_start_worker_processes

    def _serve(self) -> None:
        """C++ (nginx): ngx_master_process_cycle. Sleep in ``poll()`` on each worker's pidfd
        (readable once it exits: nginx's SIGCHLD as a descriptor, so any thread can wait) and
        on a wake-up eventfd; reap, replace, reload and quit here, on this one thread."""
        while not self.stopping and self.children:
            poller = select.poll()
            for fd in [self._wake_fd, *self.children]:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll():
                if fd in self.children:
                    self._reap(self.children[fd])
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._wake_fd)
            while self._asked:
                what, config = self._asked.pop(0)
                self._reload(config) if what == "reload" else self._stop_accepting("q")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # closed: shut down already
            os.eventfd_write(self._wake_fd, 1)

    def reload(self, config: Config | None = None) -> None:
        """SIGHUP: workers on ``config`` (default: the file read again) start, then the old
        ones drain. Any thread: the master's loop carries it out."""
        self._asked.append(("reload", config))
        self._wake()

    def quit(self) -> None:
        """SIGQUIT: the workers stop accepting and serve their clients until they leave;
        then ``serve_forever()`` returns."""
        self._asked.append(("quit", None))
        self._wake()

    # --8<-- [end:master]

    # --8<-- [start:spawn]
    def _start(self, config: Config, generation: int) -> None:
        started: list[Child] = []
        try:
            for slot in range(1, check(config) + 1):
                started.append(self._spawn(slot, config, generation))
        except ConfigError:  # one could not start: the others go too
            self._tell(started, "t")
            raise

    def _spawn(self, slot: int, config: Config, generation: int) -> Child:
        """Fork one worker; return once it serves. C++ (nginx): ngx_spawn_process."""
        ours, theirs = Pipe()
        with self._lock:
            pid = os.fork()  # the worker's threads start after this, in the child only
            if pid == 0:
                self._worker(slot, config, theirs)  # never returns
            theirs.close()
            child = Child(slot, pid, os.pidfd_open(pid), ours, generation)
            self.children[child.pidfd] = child
            ready = ours.recv() if ours.poll(START_TIMEOUT) else {"error": "no answer"}
            if "error" in ready:
                child.state = "failed"
                os.kill(pid, signal.SIGKILL)
                self._reap(child)
                raise ConfigError(f"worker {slot}", None, ready["error"])
            child.state, child.report = "serving", ready["stats"]
        notice(log, "worker %d serves (pid %d, generation %d)", slot, pid, generation)
        return child

    # --8<-- [end:spawn]

    # --8<-- [start:reap]
    def _reap(self, child: Child) -> None:
        """A worker exited: collect its status (no zombie), keep what it counted, replace
        it unless it was told to go. C++ (nginx): ngx_reap_children."""
        with self._lock:
            _, status = os.waitpid(child.pid, 0)
            with contextlib.suppress(EOFError, OSError):
                while child.channel.poll(0):  # its final count, unless it was killed
                    child.report = child.channel.recv().get("stats", child.report)
            del self.children[child.pidfd]
            os.close(child.pidfd)
            child.channel.close()
            _add(self._retired, {k: v for k, v in child.report.items() if k not in GAUGES})
        code = os.waitstatus_to_exitcode(status)
        how = f"code {code}" if code >= 0 else signal.Signals(-code).name
        lost = child.state == "serving" and not self.stopping
        counts = [child.report.get(k, 0) for k in ("accepted", "packets_in", "replies_out")]
        (log.warning if lost else log.info)(EXITED, child.slot, child.pid, how, *counts)
        if lost:
            try:
                self._spawn(child.slot, self.config, self.generation)
                self.counts["respawns"] += 1
            except (ConfigError, OSError) as exc:  # its config or store broke since
                log.error("cannot replace worker %d (a reload may): %s", child.slot, exc)

    # --8<-- [end:reap]

    # --8<-- [start:reload]
    def _reload(self, config: Config | None) -> None:
        """C++ (nginx): ngx_reconfigure. The new workers first; only once they serve do
        the old ones drain. A config that fails leaves the old workers serving."""
        if self.listeners[0].fileno() < 0:  # quitting: too late to reload (nginx agrees)
            return
        try:
            config = config or Config.load(self.config.source)
            self._start(config, self.generation + 1)
        except (ConfigError, OSError) as exc:
            log.error("reload failed, the workers go on with the old config: %s", exc)
            return
        with self._lock:
            old = [c for c in self.children.values() if c.generation == self.generation]
            self._tell(old, "q")
            self.config, self.generation = config, self.generation + 1
            self.counts["reloads"] += 1
        notice(log, "reloaded: generation %d serves, the old workers drain", self.generation)

    def _stop_accepting(self, command: str) -> None:
        close_listening_sockets(self.listeners)  # a new client is refused, not queued for no one
        with self._lock:
            self._tell(list(self.children.values()), command)

    def _tell(self, children: list[Child], command: str) -> None:
        for child in children:
            child.state = "draining"  # not replaced when it exits
            with contextlib.suppress(OSError):
                child.channel.send(command)

    def _stop_all(self) -> None:
        """``"t"`` to every worker; SIGKILL for any still there after ``STOP_TIMEOUT``."""
        self._stop_accepting("t")
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in list(self.children.values()):
            with contextlib.suppress(OSError):
                left = max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select([child.pidfd], [], [], left)
                if not ready:
                    log.error("worker %d (pid %d) did not stop: SIGKILL", child.slot, child.pid)
                    os.kill(child.pid, signal.SIGKILL)
            self._reap(child)

    # --8<-- [end:reload]

    # --8<-- [start:stats]
    def stats(self) -> dict[str, object]:
        """The workers' ``stats()`` added up (with what the exited ones had counted), a row
        per worker under ``"workers"``, the master's counts under ``"processes"``."""
        total: dict[str, Any] = {}
        with self._lock:
            children = sorted(self.children.values(), key=lambda c: (c.generation, c.slot))
            for child in children:
                with contextlib.suppress(OSError, EOFError):
                    child.channel.send("s")
                    child.asked += 1
                    while child.asked and child.channel.poll(2.0):  # late answers too
                        child.report = child.channel.recv()["stats"]
                        child.asked -= 1
                _add(total, child.report)
            _add(total, self._retired)
            total["processes"] = {"workers": len(children), **self.counts}
        fields = ("slot", "pid", "generation", "state")
        total["workers"] = [{f: getattr(c, f) for f in fields} | c.report for c in children]
        return total

    # --8<-- [end:stats]

    # --8<-- [start:child]
    def _worker(self, slot: int, config: Config, channel: Channel) -> NoReturn:
        """The child's life after ``fork``; it never returns into the parent's code (the command
        line's, a test runner's), and ``os._exit`` runs none of the parent's exit handlers."""
        from .server import Worker  # (server.py imports this module)

        code, name = 1, f"worker {slot}"
        try:
            gc.freeze()  # never collect the parent's objects here: their descriptors are not ours
            keep = [] if self.reuse_port else [sock.fileno() for sock in self.listeners]
            for fd in map(int, os.listdir("/proc/self/fd")):  # the parent's clients, say
                if fd not in (0, 1, 2, channel.fileno(), *keep):
                    with contextlib.suppress(OSError):
                        os.close(fd)
            # Orders come by the channel: a signal to the process group is the master's.
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(signum, signal.SIG_IGN)
            set_title(name)
            log_as(name)
            try:
                listeners = self.listeners
                if self.reuse_port:  # a listening socket of its own, on the master's port
                    ports = [port for _, port in self.bound]
                    listeners = open_listening_sockets(self.bound[0][0], ports, reuse_port=True)
                worker = Worker(config, listeners, self.clock)  # its threads start: here only
            except Exception as exc:  # a config value, the store, a port: say why, and go
                channel.send({"error": str(exc)})
                os._exit(2)
            lock = threading.Lock()  # two threads report on one channel
            threading.Thread(target=_control, args=(worker, channel, lock), daemon=True).start()
            channel.send({"stats": worker.stats()})  # "ready"
            worker.serve_forever()
            worker.shutdown()
            with lock, contextlib.suppress(OSError):  # (unless the master is gone)
                channel.send({"stats": worker.stats()})  # the final count
            code = 0
        except BaseException:
            log.exception("%s failed", name)
        finally:
            os._exit(code)

    # --8<-- [end:child]


def check(config: Config) -> int:
    """What no worker can check alone; returns ``WorkerProcesses``."""
    count = config.get_int("WorkerProcesses", minimum=1)
    if count > 1 and config.get_path("UserDatabase") == ":memory:":
        why = f"UserDatabase = :memory: is one store per process: with WorkerProcesses = {count}"
        why += " a user registered on one worker could not log in on another; name a file"
        raise ConfigError(config.source, None, why)
    return count


def _add(total: dict[str, Any], part: Mapping[str, Any]) -> None:  # nested dicts key by key
    for key, value in part.items():
        if isinstance(value, Mapping):
            _add(total.setdefault(key, {}), value)
        elif isinstance(value, int):
            total[key] = total.get(key, 0) + value


# --8<-- [start:control]
def _control(worker: Worker, channel: Channel, lock: threading.Lock) -> None:
    """Answer the master. C++ (nginx): ngx_channel_handler. ``"s"``: ``stats()``; ``"q"``,
    ``"t"``: drain. The master gone (EOF): as ``"t"``, stopping after ``TERM_GRACE``."""
    while True:
        try:
            command = channel.recv()
        except (EOFError, OSError):
            break
        if command == "s":
            with lock, contextlib.suppress(OSError):
                channel.send({"stats": worker.stats()})
        elif worker.draining != "term":
            worker.draining = "quit" if command == "q" else "term"  # see drained()
            worker.loop.wake()
    worker.draining = "term"
    worker.loop.wake()
    time.sleep(TERM_GRACE)
    worker.shutdown()


def drained(worker: Worker) -> bool:
    """The worker loop's condition, checked before each poll (on its thread): once draining,
    accept no one; for ``"term"`` also read no request, as if every client had half-closed
    (chapter 2's path then delivers the replies owed, and closes). True: no client left."""
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


# --8<-- [end:control]
