"""The server under test: started in a subprocess with a config suited to load, or found
running; and what ``/proc`` says about it (CPU time, resident memory)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import ipaddress
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tools.chapters import discover

ROOT = Path(__file__).resolve().parents[2]
ASYNCIO = "asyncio"
ASYNCIO_TUNED = "asyncio-tuned"
# The baselines: the style of tools.asyncio_server each one runs, and on which event loop.
# The loop is part of the name, so "asyncio" always means the standard library's loop
# (installing uvloop never silently changes what a row measures).
BASELINES = {
    ASYNCIO: ("plain", "asyncio"),
    ASYNCIO_TUNED: ("tuned", "asyncio"),
    "asyncio-uvloop": ("plain", "uvloop"),
    "asyncio-tuned-uvloop": ("tuned", "uvloop"),
}
LISTENING = re.compile(r"listening on ([0-9.]+):(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BenchError(Exception):
    """A problem the user can fix (bad option, server would not start …): one sentence."""


# -- targets --------------------------------------------------------------------------------


def chapters() -> list[str]:
    return [chapter.name for chapter in discover(ROOT)]


def resolve_target(name: str) -> str:
    """``04``, ``04_sendqueue``, ``chapters.04_sendqueue`` or ``asyncio`` -> canonical name."""
    name = name.strip().removeprefix("chapters.").rstrip("/")
    if name.lower() in BASELINES:
        return name.lower()
    known = chapters()
    for chapter in known:
        if name == chapter or name == chapter[:2] or name == chapter[3:]:
            return chapter
    raise BenchError(
        f"unknown target {name!r}: choose {', '.join(BASELINES)} or a chapter "
        f"({', '.join(known) or 'none yet'})"
    )


def check_runnable(name: str) -> None:
    """Refuse, before anything starts, a uvloop baseline without uvloop."""
    needs_uvloop = name in BASELINES and BASELINES[name][1] == "uvloop"
    if needs_uvloop and importlib.util.find_spec("uvloop") is None:
        raise BenchError(f"{name} needs uvloop, which is not installed: pip install -e '.[bench]'")


def target_features(name: str) -> frozenset[str]:
    if name in BASELINES:
        module = importlib.import_module("tools.asyncio_server")
    else:
        module = importlib.import_module(f"chapters.{name}")
    return frozenset(getattr(module, "FEATURES", frozenset()))


def check_loopback(host: str) -> str:
    """Return the IPv4 loopback address to use, or refuse: a load generator must never be
    pointed at somebody else's machine by a typo."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise BenchError(
            f"refusing to benchmark {host!r}: only loopback addresses are allowed "
            "(127.0.0.1, any 127.x.y.z, or localhost)"
        ) from None
    if not address.is_loopback or address.version != 4:
        raise BenchError(
            f"refusing to benchmark {host}: it is not an IPv4 loopback address; this tool "
            "only loads servers on this machine (127.0.0.1)"
        )
    return str(address)


# -- file descriptors -----------------------------------------------------------------------


def raise_nofile(needed: int) -> tuple[int, int, int, bool]:
    """Raise this process's RLIMIT_NOFILE soft limit to ``needed`` if the hard limit
    allows. Child processes (client processes, the server) inherit it.

    Returns (soft limit before, soft limit now, hard limit, enough)."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = before
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    enough = soft == resource.RLIM_INFINITY or soft >= needed
    return before, soft, hard, enough


# -- cores ----------------------------------------------------------------------------------


def usable_cores() -> list[int]:
    """The cores this process may run on (a container or taskset may allow fewer than
    ``os.cpu_count()``)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


@contextlib.contextmanager
def affinity_for_children(cores: set[int] | None) -> Iterator[None]:
    """Start processes inside this block and they run on ``cores``, every thread of them.

    ``sched_setaffinity(0, …)`` sets the *calling thread's* mask, and a child forked by
    that thread inherits it; so the mask is set around the fork and restored after, and no
    other thread of the bench moves. (Pinning the server by pid after it started would
    miss the worker threads it had already created.)"""
    if not cores:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def process_cores(pid: int) -> list[int] | None:
    """The cores a running process may use, as the kernel says."""
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return None


def core_ticks() -> dict[int, tuple[int, int, int]]:
    """Per core, from ``/proc/stat``: (busy, interrupt, all) ticks since boot. Busy is
    every state but idle and iowait, whichever process it was for; interrupt is the irq
    and softirq part of it, which no process is charged for (on loopback that is mostly
    TCP's receive work for the bench's own traffic)."""
    ticks: dict[int, tuple[int, int, int]] = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *values = line.split()
                numbers = [int(v) for v in values[:8]]
                idle = numbers[3] + numbers[4]
                total = sum(numbers)
                ticks[int(name[3:])] = (total - idle, numbers[5] + numbers[6], total)
    except (OSError, ValueError, IndexError):
        return {}
    return ticks


def core_usage_pct(
    before: dict[int, tuple[int, int, int]], after: dict[int, tuple[int, int, int]]
) -> dict[int, tuple[float, float]]:
    """Per core, between two :func:`core_ticks` samples: (% busy, % in interrupts)."""
    usage = {}
    for core, (b1, i1, t1) in after.items():
        b0, i0, t0 = before.get(core, (b1, i1, t1))
        if t1 > t0:
            usage[core] = ((b1 - b0) / (t1 - t0) * 100, (i1 - i0) / (t1 - t0) * 100)
    return usage


# -- /proc ----------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process under it (chapter 7's master and its workers)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    queue.extend(int(child) for child in f.read().split())
    return found


def proc_cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(utime + stime, stime) of a process and the processes under it (all their
    threads), in seconds: a server that forks workers (chapter 7) is measured whole."""
    total = system = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat", "rb") as f:
                data = f.read()
        except OSError:
            if member == pid:
                return None
            continue  # a worker that just exited
        # The command name (field 2) is in parentheses and may hold spaces: split after it.
        fields = data[data.rindex(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
        system += int(fields[12])
    return total / CLK_TCK, system / CLK_TCK


def proc_rss_kib(pid: int) -> int | None:
    """Resident memory of a process and the processes under it (their shared pages are
    counted once per process, as ps does)."""
    total = None
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total = (total or 0) + int(line.split()[1])
    return total


# -- the server subprocess -------------------------------------------------------------------


@dataclass
class ServerSettings:
    """What goes into the temporary config (see :func:`load_config`)."""

    worker_connections: int = 2048
    hash_iterations: int = 1000
    heartbeat: bool = False
    max_wait_time: float = 5.0
    flood: bool = False
    flood_counter: int = 10
    workers: int = 4
    processes: int = 1  # WorkerProcesses (chapter 7; the others run one process)


def load_config(settings: ServerSettings, database: Path) -> str:
    """A config suited to load: any free port, a big pool, heartbeat and flood detection
    off unless asked, a 1-second recycle time, a throwaway user database and cheap hashing
    (the shipped 600000 PBKDF2 iterations would measure hashlib, not the server)."""
    return "\n".join(
        [
            "# written by python -m tools.bench",
            "ListenAddress = 127.0.0.1",
            "ListenPortCount = 1",
            "ListenPort0 = 0",
            "LogLevel = 6",
            f"worker_connections = {settings.worker_connections}",
            "Sock_RecyConnectionWaitTime = 1",
            f"Sock_WaitTimeEnable = {int(settings.heartbeat)}",
            f"Sock_MaxWaitTime = {settings.max_wait_time:g}",
            "Sock_TimeOutKick = 0",
            f"Sock_FloodAttackKickEnable = {int(settings.flood)}",
            f"Sock_FloodKickCounter = {settings.flood_counter}",
            f"ProcMsgRecvWorkThreadCount = {settings.workers}",
            f"WorkerProcesses = {settings.processes}",
            f"UserDatabase = {database}",
            f"PasswordHashIterations = {settings.hash_iterations}",
            "",
        ]
    )


class ServerProcess:
    """``python -m chapters.NN_name`` (or the asyncio baseline) in a subprocess.

    The port is read from the server's "listening on 127.0.0.1:PORT" log line (with
    ``COLUMNS=200`` so rich does not wrap it). Its stderr is drained by a thread, keeping
    the last lines to show if it fails."""

    def __init__(
        self, target: str, settings: ServerSettings, cores: set[int] | None = None
    ) -> None:
        self.target = target
        self.settings = settings
        self.cores = cores  # pin every thread of the server to these cores
        # The user database goes to tmpfs when there is one: a register is an SQLite commit,
        # and on a disk its fsyncs would measure the disk rather than the server.
        shm = Path("/dev/shm")
        where = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-", dir=where)
        self.database = Path(self.tmp.name) / "users.sqlite3"
        self.config_path = Path(self.tmp.name) / "bench.conf"
        self.config_path.write_text(load_config(settings, self.database))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.tail: deque[str] = deque(maxlen=40)
        self.loop_line = ""
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        if self.target in BASELINES:
            style, loop = BASELINES[self.target]
            module = ["-m", "tools.asyncio_server", "--loop", loop, "--style", style]
        else:
            module = ["-m", f"chapters.{self.target}"]
        return [sys.executable, *module, "--config", str(self.config_path)]

    def start(self, timeout: float = 30.0) -> int:
        env = dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with affinity_for_children(self.cores):
            self.proc = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                # Its own session: a Ctrl-C in the terminal reaches the bench, which then
                # stops the server cleanly, rather than both at once.
                start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read_stderr, name="server-stderr", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                why = "exited" if self.proc.returncode is not None else "did not start in time"
                raise BenchError(
                    f"server {self.target} {why}; its last output:\n" + "\n".join(self.tail)
                )
        assert self.port is not None
        return self.port

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            if self.port is None:
                match = LISTENING.search(line)
                if match:
                    self.port = int(match.group(2))
                    self._listening.set()
            if "event loop:" in line:
                self.loop_line = line.split("event loop:", 1)[1].strip()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT (a clean shutdown), then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.tmp.cleanup()
        return self.proc.returncode
