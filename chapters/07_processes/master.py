"""The master process: it forks the workers, replaces one that dies, reloads, stops them.

C++ (nginx): ngx_master_process_cycle, ngx_spawn_process, ngx_reap_children,
ngx_signal_worker_processes. The course server's master forks the same way but never
replaces a worker (reference bug 1 leaves the port dead).

It serves no client: it opens the listening sockets, forks ``WorkerProcesses`` children
that each run a :class:`~.server.Worker` on them, then sleeps in ``poll()`` on one pidfd
per worker (readable once that worker exits: the news nginx gets from SIGCHLD, as a
descriptor, so it works on any thread) and on a wake pipe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Pipe
from typing import Any

from common.config import Config, ConfigError
from common.lifecycle import ServerLifecycle
from common.log import notice
from common.stats import Counters

from .listening import close_listening_sockets, open_listening_sockets
from .process import Channel, run_worker

log = logging.getLogger("master")

START_TIMEOUT = 10.0  # a new worker says it serves (or why it cannot) within this
ASK_TIMEOUT = 2.0  # a worker answers "s" within this, or stats() shows its last answer
STOP_TIMEOUT = 6.0  # after "t", then SIGKILL (shutdown() waits 10 s for serve_forever)
# The sizes a worker reports, summed over the live workers only; every other figure counts
# events and keeps what the workers that exited had counted.
GAUGES = {"online": 0, "waiting_epollout": 0, "unsent_bytes": 0}
GAUGES |= {"queues": {"receive": 0, "send": 0, "timers": 0}}
GAUGES |= {"pool": {"total": 0, "free": 0, "recycling": 0}}


class WorkerFailed(Exception):
    """A worker could not start (a config value, the user store, a port)."""


@dataclass(eq=False)
class Child:
    """One worker process, as the master sees it."""

    slot: int  # 1 .. WorkerProcesses: a replacement takes the dead worker's slot
    pid: int
    pidfd: int  # readable once the process has exited
    channel: Channel
    generation: int  # the config it runs: 0, then one more per reload
    state: str = "starting"  # "serving", "draining"
    asked: int = 0  # "s" sent and not answered yet
    report: dict[str, Any] = field(default_factory=dict)  # its last stats()


# --8<-- [start:master]
class Master(ServerLifecycle):
    """The chapter contract (``Server(config)``, ``serve_forever()``, ``shutdown()``,
    ``addresses``, ``stats()``), kept by the process that forks the servers. ``clock``,
    the one time source of every timer, is inherited by each worker."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.count = check(config)
        self.config, self.clock = config, clock
        self.reuse_port = config.get_bool("ListenReusePort")
        self.children: dict[int, Child] = {}  # by pidfd
        self.generation = 0
        self.counts = {"respawns": 0, "reloads": 0}
        self._retired: dict[str, Any] = {}  # what the workers that exited had counted
        self._lock = threading.RLock()  # children, their channels, the counts
        self._asked: list[tuple[str, Config | None]] = []  # reloads and quits, for the loop
        self._vacant: set[int] = set()  # slots whose respawn failed: tried again each second
        with self.building():
            self.listeners = self.closes(
                open_listening_sockets(
                    config.get_str("ListenAddress"),
                    config.listen_ports(),
                    reuse_port=self.reuse_port,
                    listen=not self.reuse_port,  # then each worker listens on its own
                ),
                close_listening_sockets,
            )
            self.bound = self.addresses  # (a quit closes the sockets: keep what they were)
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self.at_shutdown(lambda: (os.close(self._wake_r), os.close(self._wake_w)))

    def _serve(self) -> None:
        """C++ (nginx): ngx_master_process_cycle. Start the workers; then reap each one
        that exits (and replace it unless it was told to go), and carry out what
        ``reload()`` and ``quit()`` asked, all on this one thread."""
        try:
            self._start(self.config, self.generation)
            while not self.stopping and (self.children or self._vacant):
                for pidfd in self._wait(1.0 if self._vacant else None):
                    self._reap(self.children[pidfd])
                for slot in sorted(self._vacant):
                    self._respawn(slot)
                while self._asked:
                    what, config = self._asked.pop(0)
                    self._reload(config) if what == "reload" else self._stop_accepting("q")
        finally:
            self._stop_all()

    def reload(self, config: Config | None = None) -> None:
        """SIGHUP: workers on ``config`` (default: the config file read again) start, then
        the old ones drain. From any thread: the master's loop carries it out."""
        self._asked.append(("reload", config))
        self._wake()

    def quit(self) -> None:
        """SIGQUIT: every worker stops accepting and serves its clients until they leave
        (``WorkerShutdownTimeout`` at most); then ``serve_forever()`` returns."""
        self._vacant.clear()
        self._asked.append(("quit", None))
        self._wake()

    # --8<-- [end:master]

    def _wait(self, timeout: float | None) -> list[int]:
        """The pidfds of the workers that exited, once one has or the pipe woke us."""
        poller = select.poll()
        for fd in [self._wake_r, *self.children]:
            poller.register(fd, select.POLLIN)
        ready = [fd for fd, _ in poller.poll(None if timeout is None else timeout * 1000)]
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass
        return [fd for fd in ready if fd != self._wake_r]

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            os.write(self._wake_w, b"!")

    # --8<-- [start:spawn]
    def _start(self, config: Config, generation: int) -> None:
        """``WorkerProcesses`` new workers. C++ (nginx): ngx_start_worker_processes."""
        started: list[Child] = []
        try:
            for slot in range(1, check(config) + 1):
                started.append(self._spawn(slot, config, generation))
        except WorkerFailed:
            for child in started:
                child.state = "draining"
                child.channel.send("t")
            raise

    def _spawn(self, slot: int, config: Config, generation: int) -> Child:
        """Fork one worker; return once it serves. C++ (nginx): ngx_spawn_process."""
        from .server import Worker  # (server.py imports this module)

        host, ports = self.bound[0][0], [port for _, port in self.bound]

        def make() -> Worker:  # runs in the child
            listeners = self.listeners
            if self.reuse_port:  # a listening socket of its own, on the master's port
                listeners = open_listening_sockets(host, ports, reuse_port=True)
            return Worker(config, listeners, self.clock)

        keep = [] if self.reuse_port else [sock.fileno() for sock in self.listeners]
        grace = config.get_float("WorkerShutdownTimeout", minimum=0)
        ours, theirs = Pipe()
        with self._lock:
            pid = os.fork()  # the worker's threads start after this, in the child
            if pid == 0:
                run_worker(make, theirs, keep, f"worker {slot}", grace)  # never returns
            theirs.close()
            child = Child(slot, pid, os.pidfd_open(pid), ours, generation)
            self.children[child.pidfd] = child
            ready = ours.recv() if ours.poll(START_TIMEOUT) else {"error": "no answer"}
            if "error" in ready:
                child.state = "failed"
                os.kill(pid, signal.SIGKILL)
                self._reap(child)
                raise WorkerFailed(f"worker {slot}: {ready['error']}")
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
                while child.channel.poll(0):
                    child.report = child.channel.recv().get("stats", child.report)
            del self.children[child.pidfd]
            os.close(child.pidfd)
            child.channel.close()
            _add(self._retired, {k: v for k, v in child.report.items() if k not in GAUGES})
        code = os.waitstatus_to_exitcode(status)
        how = f"code {code}" if code >= 0 else signal.Signals(-code).name
        lost = child.state == "serving" and not self.stopping
        r = child.report
        log.log(
            logging.WARNING if lost else logging.INFO,
            "worker %d (pid %d) exited (%s): %d clients, %d requests in, %d replies out",
            *(child.slot, child.pid, how),
            *(r.get(k, 0) for k in ("accepted", "packets_in", "replies_out")),
        )
        if lost:
            self._respawn(child.slot)

    def _respawn(self, slot: int) -> None:
        try:
            self._spawn(slot, self.config, self.generation)
        except (WorkerFailed, OSError) as exc:
            log.error("cannot replace worker %d (again in 1 s): %s", slot, exc)
            self._vacant.add(slot)
        else:
            self._vacant.discard(slot)
            self.counts["respawns"] += 1

    # --8<-- [end:reap]

    # --8<-- [start:reload]
    def _reload(self, config: Config | None) -> None:
        """C++ (nginx): ngx_reconfigure. New workers first; only once they serve do the
        old ones drain. A config that fails leaves the old workers serving."""
        try:
            config = config or Config.load(self.config.source)
            self._start(config, self.generation + 1)
        except (ConfigError, WorkerFailed, OSError) as exc:
            log.error("reload failed, the workers go on with the old config: %s", exc)
            return
        with self._lock:
            old = [c for c in self.children.values() if c.generation == self.generation]
            for child in old:
                child.state = "draining"
                child.channel.send("q")
            self.config, self.generation = config, self.generation + 1
            self.counts["reloads"] += 1
        notice(log, "reloaded: generation %d serves, %d workers drain", self.generation, len(old))

    def _tell_all(self, command: str) -> None:
        with self._lock:
            for child in self.children.values():
                child.state = "draining"
                with contextlib.suppress(OSError):
                    child.channel.send(command)

    def _stop_accepting(self, command: str) -> None:
        """Close our listening sockets (new clients are refused, not queued for no one),
        then tell every worker: ``"q"`` or ``"t"``."""
        close_listening_sockets(self.listeners)
        self._tell_all(command)

    def _stop_all(self) -> None:
        """``"t"`` to every worker; SIGKILL for any still there after ``STOP_TIMEOUT``."""
        self._stop_accepting("t")
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.children and time.monotonic() < deadline:
            for pidfd in self._wait(max(0.0, deadline - time.monotonic())):
                self._reap(self.children[pidfd])
        for child in list(self.children.values()):
            log.error("worker %d (pid %d) did not stop: SIGKILL", child.slot, child.pid)
            os.kill(child.pid, signal.SIGKILL)
            self._reap(child)

    # --8<-- [end:reload]

    # --8<-- [start:stats]
    def stats(self) -> dict[str, object]:
        """Every worker's ``stats()`` added up (with what the exited ones had counted), a
        row per worker under ``"workers"``, the master's counts under ``"processes"``."""
        from .server import COUNTER_GROUPS

        with self._lock:
            children = sorted(self.children.values(), key=lambda c: (c.generation, c.slot))
            for child in children:
                with contextlib.suppress(OSError, EOFError):
                    child.channel.send("s")
                    child.asked += 1
                    while child.asked and child.channel.poll(ASK_TIMEOUT):  # late ones too
                        child.report = child.channel.recv()["stats"]
                        child.asked -= 1
            total: dict[str, Any] = {}
            for part in [Counters(*COUNTER_GROUPS).snapshot(), GAUGES, self._retired]:
                _add(total, part)
            for child in children:
                _add(total, child.report)
            total["processes"] = {"workers": len(children), **self.counts}
            keys = ("online", "accepted", "accept_races", "packets_in", "replies_out")
            total["workers"] = [
                {"slot": c.slot, "pid": c.pid, "generation": c.generation, "state": c.state}
                | {key: c.report.get(key, 0) for key in keys}
                for c in children
            ]
        return total

    # --8<-- [end:stats]

    def signal_actions(self) -> dict[int, Callable[[], None]]:
        """For ``python -m``: what SIGHUP and SIGQUIT do (SIGINT and SIGTERM: shutdown())."""
        return {signal.SIGHUP: self.reload, signal.SIGQUIT: self.quit}


def check(config: Config) -> int:
    """What a worker cannot check alone; returns ``WorkerProcesses``."""
    count = config.get_int("WorkerProcesses", minimum=1)
    if count > 1 and config.get_path("UserDatabase") == ":memory:":
        raise ConfigError(config.source, None, (
            f"UserDatabase = :memory: is one store per process: with WorkerProcesses = {count}"
            " a user registered on one worker could not log in on another; name a file"
        ))  # fmt: skip
    return count


def _add(total: dict[str, Any], part: Mapping[str, Any]) -> None:
    """Add ``part``'s numbers into ``total``, nested dicts key by key."""
    for key, value in part.items():
        if isinstance(value, Mapping):
            _add(total.setdefault(key, {}), value)
        elif isinstance(value, int):
            total[key] = total.get(key, 0) + value
