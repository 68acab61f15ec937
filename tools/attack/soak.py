"""The soak: every attack at once, for minutes, while well-behaved clients must lose nothing.

``python -m tools.attack soak --seconds 600`` starts a chapter (the newest by default) on
an ephemeral loopback port and, for that long, runs at the same time:

* **good clients** (``--clients``, 4): each holds one connection and repeats a cycle of a
  ping, a register of its own name (EXISTS, after the first time), a login with the
  right password (OK) and one with a wrong password (BAD_PASSWORD), written in one go.
  Every reply is compared byte for byte with the one expected, in order, and timed from
  the write. A reply that never comes (``REPLY_TIMEOUT``) or a connection the server
  closes is a *lost* reply; a wrong byte is a *wrong* reply. A good client must have
  neither: if it does, the server has a bug. The cycle's 4 packets arrive together and
  the next cycle follows ``GOOD_PAUSE`` (150 ms) after the last reply, so the flood
  counter never passes 3 (it kicks at 10 packets each less than 100 ms after the last),
  and the ping in every cycle keeps the heartbeat happy.
* **every attack tool**, each on a loop of its own, one run after another: ``flood``,
  ``garbage`` (four malformed lengths in turn), ``idle`` and ``slowloris``
  (``--connections`` each, 20), ``slow-reader`` (paced, so it stays under the flood
  rule and what meets it is the send-stall kick), and ``churn``, whose runs alternate
  between filling every free slot and then churning (the online limit) and churning
  ``8 * worker_connections`` times as fast as it can (the storm guard). The attackers
  run in a process of their own, so that the good clients' latencies are the server's,
  not the soak's own GIL contention.

It reports each defence's counter (and whether every defence a tool aims at fired), what
each tool saw, the good clients' replies, lost and wrong replies and latencies, and the
server's resident memory, open descriptors and threads: at the start (before any
client), after the warm-up, at the end, and after every client has gone. It passes when
no good reply was lost or wrong, every expected defence fired, the descriptors and
threads came back to their start values, and resident memory grew by at most
``RSS_GROWTH_LIMIT_MIB`` between the warm-up and the end.

**Why a subprocess, and how the counters get out.** The server must be a process of its
own: ``/proc/PID`` then shows the server's memory, descriptors and threads and nothing of
the soak's hundreds of client sockets. But the counters live in ``stats()``, which a
separate process cannot call; a server run in-process would give ``stats()`` but mix the
clients' descriptors into the server's. So the soak starts the chapter through
``tools.attack.soak_server``: the chapter's own ``Server``, started by ``common.cli`` as
``python -m chapters.NN_name`` starts it, plus one thread that prints ``stats()`` as a
JSON line on stderr twice a second (constant for the whole run, so it cannot make the
figures drift). The process is run by the benchmark's ``ServerProcess``. Counting kicks
from what the attack tools see instead would be guesswork: a close seen by a client does
not say which defence closed it (a refusal at accept and a kick look the same).

**The config.** The soak writes its own, the shipped ``nginx.conf`` with the intervals
shortened so every defence fires within seconds, and the limits sized for the run:

========================================  ======================================================
``worker_connections``                    ``clients + 2 * connections + 8``: every attacker fits,
                                          except when churn fills the pool on purpose
``Sock_RecyConnectionWaitTime = 2``       short, so the storm guard lets clients in again
                                          2 s after churn stops (shipped: 150 s), and long
                                          enough that churn at 150 connects/s or more on a
                                          loaded machine still trips it
``Sock_MaxWaitTime = 1``,                 silent clients are kicked after ``3 * 1 + 1 = 4`` s
``Sock_PingGraceTime = 1``                (shipped: 80 s); the good clients ping every cycle
``Sock_SendBufferSize = 4096``           the paced slow reader's replies soon wait for it
                                          (with the shipped buffers the kernel takes a
                                          minute's worth first); it is then read no more
                                          and, taking none of its replies for 4 s, is
                                          kicked (``kicks.send_stall``)
``UserDatabase = :memory:``,              the user table holds the good clients' names only,
``PasswordHashIterations = 1000``         so memory stays flat; cheap hashing so logins are
                                          not the bottleneck
========================================  ======================================================

Flood detection keeps the shipped rule (100 ms, 10 in a row).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table

from common.protocol import PING_PACKET, Login, MsgCode, Register, Status, encode_packet
from tools.bench.target import (
    LISTENING,
    BenchError,
    ServerProcess,
    ServerSettings,
    chapters,
    proc_cpu_seconds,
    proc_rss_kib,
    target_features,
)
from tools.client import login_packet, register_packet

from .base import AttackError, Progress, Target, resolve_target
from .churn import run_churn
from .flood import run_flood
from .garbage import run_garbage
from .hold import run_idle, run_slowloris
from .slow_reader import run_slow_reader
from .soak_server import STATS_PREFIX

# A good client gives up on a reply after this long: the reply is then lost.
REPLY_TIMEOUT = 30.0
# Between a cycle's last reply and the next cycle's write (over the 100 ms flood interval).
GOOD_PAUSE = 0.15
# Resident memory may grow this much between the end of the warm-up and the end of the
# run. Generous on purpose, so that noise never fails it: a 10-minute run against chapter
# 6 grew 0.2 MiB (docs/security.md), and CPython's allocator keeps freed arenas, so a
# peak reached late (many connections at once, a full send backlog) stays resident. A
# leak of 1 KiB per connection still fails a 10-minute run, which makes some 70,000.
RSS_GROWTH_LIMIT_MIB = 8
# How long the end of the run may take: every attack stops at the end of the run, but a
# slow reader still reads its replies and a good client waits for its last ones.
WIND_DOWN = 60.0

# Every defence: its name in the report, its counter in stats(), and the chapter feature
# that brings it.
DEFENCES = [
    ("online_limit", "refused.online_limit", "pool"),
    ("storm_guard", "refused.storm", "pool"),
    ("silence_kick", "kicks.silence", "timers"),
    ("send_stall_kick", "kicks.send_stall", "timers"),
    ("timeout_kick", "kicks.timeout", "timers"),
    ("flood_kick", "kicks.flood", "flood"),
    ("malformed_close", "kicks.malformed", "flood"),
]
# The defences an attack tool aims at, so each must fire. Not the timeout kick: it kicks
# every client, good ones too, so the soak turns it off.
AIMED_AT = {
    "online_limit": "churn",
    "storm_guard": "churn",
    "send_stall_kick": "slow-reader",
    "silence_kick": "idle, slowloris",
    "flood_kick": "flood",
    "malformed_close": "garbage",
}

SOAK_CONFIG = """\
# written by python -m tools.attack soak (see tools/attack/soak.py for each choice)
ListenAddress = 127.0.0.1
ListenPortCount = 1
ListenPort0 = 0
LogLevel = 6
worker_connections = {worker_connections}
Sock_RecyConnectionWaitTime = 2
ProcMsgRecvWorkThreadCount = 4
Sock_SendQueueLimit = 50000
Sock_SendBufferSize = 4096
Sock_WaitTimeEnable = 1
Sock_MaxWaitTime = 1
Sock_PingGraceTime = 1
Sock_TimeOutKick = 0
Sock_FloodAttackKickEnable = 1
Sock_FloodTimeInterval = 100
Sock_FloodKickCounter = 10
UserDatabase = :memory:
PasswordHashIterations = 1000
"""


def worker_connections(clients: int, connections: int) -> int:
    """Room for the good clients, idle and slowloris, and flood, garbage, slow-reader and
    churn's one connection each, with a few to spare."""
    return clients + 2 * connections + 8


# ----------------------------------------------------------------------------------------
# The server, and what /proc says about it
# ----------------------------------------------------------------------------------------


class SoakServer(ServerProcess):
    """The chapter through ``tools.attack.soak_server``, in the benchmark's runner; keeps
    the latest ``stats()`` line apart from the log lines."""

    def __init__(self, chapter: str, config_text: str) -> None:
        super().__init__(chapter, ServerSettings())
        self.config_path.write_text(config_text)  # in place of the benchmark's config
        self._stats_lock = threading.Condition()
        self._stats: dict | None = None
        self.stats_seen = 0

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tools.attack.soak_server",
            self.target,
            "--config",
            str(self.config_path),
        ]

    def _read_stderr(self) -> None:
        """ServerProcess's reader, with the stats lines taken out of the log tail."""
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line.startswith(STATS_PREFIX):
                try:
                    stats = json.loads(line[len(STATS_PREFIX) :])
                except ValueError:
                    continue  # cut by a log line: the next one comes in half a second
                with self._stats_lock:
                    self._stats = stats
                    self.stats_seen += 1
                    self._stats_lock.notify_all()
                continue
            self.tail.append(line)
            if self.port is None and (match := LISTENING.search(line)):
                self.port = int(match.group(2))
                self._listening.set()

    def fresh_stats(self, timeout: float = 10.0) -> dict | None:
        """The next stats line to arrive (written at most one interval, half a second,
        before it is read); None if none comes in time."""
        with self._stats_lock:
            seen = self.stats_seen
            self._stats_lock.wait_for(lambda: self.stats_seen > seen, timeout)
            return self._stats if self.stats_seen > seen else None

    @property
    def stats(self) -> dict | None:
        with self._stats_lock:
            return self._stats

    def goodbye(self) -> bool:
        return any("Goodbye:" in line for line in self.tail)


def proc_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def proc_threads(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Snapshot:
    """The server at one moment: from /proc, and ``online`` from its stats()."""

    label: str
    at: float  # seconds since the attacks started (negative: before)
    rss_kib: int | None
    fds: int | None
    threads: int | None
    cpu_s: float | None
    online: int | None


SNAPSHOT_LABELS = {
    "start": "start (no client)",
    "after warm-up": "after warm-up",
    "end": "end (attacked)",
    "after": "after (all gone)",
}


def snapshot(server: SoakServer, label: str, at: float, stats: dict | None) -> Snapshot:
    cpu = proc_cpu_seconds(server.pid)
    online = stats.get("online") if stats else None
    return Snapshot(
        label,
        at,
        proc_rss_kib(server.pid),
        proc_fds(server.pid),
        proc_threads(server.pid),
        None if cpu is None else cpu[0],
        online if isinstance(online, int) else None,
    )


def defence_counts(stats: dict, features: frozenset[str]) -> dict[str, int]:
    """Each defence the chapter has, with its count from ``stats()``."""
    counts = {}
    for name, key, feature in DEFENCES:
        if feature not in features:
            continue
        group, _, leaf = key.partition(".")
        value = stats.get(group, {})
        counts[name] = int(value.get(leaf, 0)) if isinstance(value, dict) else 0
    return counts


# ----------------------------------------------------------------------------------------
# Good clients
# ----------------------------------------------------------------------------------------


def register_reply(username: str, status: Status) -> bytes:
    return encode_packet(MsgCode.REGISTER, Register(int(status), username, status.name).encode())


def login_reply(username: str, status: Status) -> bytes:
    return encode_packet(MsgCode.LOGIN, Login(username, status.name).encode())


@dataclass
class GoodTally:
    """What one good client saw."""

    cycles: int = 0
    replies: int = 0  # verified, byte for byte, in order
    lost: int = 0
    wrong: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, one per reply
    failures: list[str] = field(default_factory=list)


class GoodClient(threading.Thread):
    """One well-behaved client: a ping, a register, two logins, written at once; every
    reply checked; a pause; again, until ``stop``. Reconnects after a failure (which is
    recorded: there should be none)."""

    def __init__(self, index: int, target: Target, stop: threading.Event, start: float) -> None:
        super().__init__(name=f"good-{index}", daemon=True)
        self.target = target
        self.stop = stop
        self.start_time = start
        self.tally = GoodTally()
        name, password = f"good{index}", f"secret{index}"
        self.request = b"".join(
            [
                PING_PACKET,
                register_packet(name, password),
                login_packet(name, password),
                login_packet(name, password + "x"),
            ]
        )
        later = [
            PING_PACKET,
            register_reply(name, Status.EXISTS),
            login_reply(name, Status.OK),
            login_reply(name, Status.BAD_PASSWORD),
        ]
        # The very first register is the one that creates the user.
        self.first = [later[0], register_reply(name, Status.OK), *later[2:]]
        self.later = later
        self.registered = False  # the first register's reply has arrived

    def fail(self, why: str) -> None:
        at = time.monotonic() - self.start_time
        self.tally.failures.append(f"{self.name} at {at:.1f} s: {why}")

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                sock = self._connect()
            except OSError as exc:
                self.fail(f"connect failed: {exc.strerror or exc}")
                self.stop.wait(0.5)
                continue
            with sock:
                while not self.stop.is_set():
                    if not self._cycle(sock, self.later if self.registered else self.first):
                        break
                    self.stop.wait(GOOD_PAUSE)
            if not self.stop.is_set():
                self.stop.wait(0.5)

    def _connect(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.target.ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(REPLY_TIMEOUT)
            sock.connect((self.target.ip, self.target.port))
        except BaseException:
            sock.close()
            raise
        return sock

    def _cycle(self, sock: socket.socket, expected: list[bytes]) -> bool:
        """One cycle; False if the connection is no longer usable."""
        ends = list(itertools.accumulate(len(r) for r in expected))
        want = b"".join(expected)
        got = bytearray()
        done = 0  # replies complete so far
        tally = self.tally
        sent_at = time.perf_counter()
        try:
            sock.sendall(self.request)
            while len(got) < len(want):
                data = sock.recv(len(want) - len(got))
                if not data:
                    raise ConnectionError("closed by the server")
                got += data
                now = time.perf_counter()
                while done < len(ends) and len(got) >= ends[done]:
                    tally.latencies.append(now - sent_at)
                    done += 1
                self.registered = self.registered or done >= 2
        except TimeoutError:
            tally.lost += len(expected) - done
            self.fail(f"no reply {done + 1} of {len(expected)} within {REPLY_TIMEOUT:g} s")
            return False
        except OSError as exc:
            tally.lost += len(expected) - done
            self.fail(f"{exc.strerror or exc} after {done} of {len(expected)} replies")
            return False
        tally.cycles += 1
        if got == want:
            tally.replies += len(expected)
            return True
        starts = [0, *ends[:-1]]
        bad = [
            i for i, (a, b) in enumerate(zip(starts, ends, strict=True)) if got[a:b] != want[a:b]
        ]
        tally.replies += len(expected) - len(bad)
        tally.wrong += len(bad)
        first = bad[0]
        self.fail(
            f"reply {first + 1} of {len(expected)} wrong: expected "
            f"{want[starts[first] : ends[first]].hex()}, "
            f"got {bytes(got[starts[first] : ends[first]]).hex()}"
        )
        return False  # the stream may be out of step now: start again on a new connection


# ----------------------------------------------------------------------------------------
# The attackers, in a process of their own
# ----------------------------------------------------------------------------------------

GARBAGE_LENGTHS = (7, 65535, 0, 29001)


@dataclass
class HostilePlan:
    """What the attacker process needs (picklable: it crosses to a spawned process)."""

    ip: str
    port: int
    end: float  # time.monotonic() at which every attack stops (the clock is system-wide)
    connections: int
    worker_connections: int


def _flood(plan: HostilePlan, _: int, duration: float) -> Counter[str]:
    report = run_flood(plan.ip, plan.port, count=1000, duration=duration)
    if report.kicked:
        return Counter({"kicked" if report.replies else "closed before a reply": 1})
    return Counter({"not kicked": 1})


def _garbage(plan: HostilePlan, i: int, duration: float) -> Counter[str]:
    length = GARBAGE_LENGTHS[i % len(GARBAGE_LENGTHS)]
    report = run_garbage(plan.ip, plan.port, length=length, count=3, duration=duration)
    if report.closed:
        return Counter({"closed": 1})
    return Counter({"answered" if report.replies == report.pings else "neither": 1})


def _held(report) -> Counter[str]:  # IdleReport | SlowlorisReport
    return Counter(
        {
            "opened": report.opened,
            "closed by the server": report.closed,
            "still open at the end": report.still_open,
            "connect failed": report.connect_failed,
        }
    )


def _idle(plan: HostilePlan, _: int, duration: float) -> Counter[str]:
    return _held(run_idle(plan.ip, plan.port, count=plan.connections, duration=duration))


def _slowloris(plan: HostilePlan, _: int, duration: float) -> Counter[str]:
    report = run_slowloris(
        plan.ip, plan.port, count=plan.connections, duration=duration, interval=0.2
    )
    return _held(report)


def _slow_reader(plan: HostilePlan, _: int, duration: float) -> Counter[str]:
    report = run_slow_reader(plan.ip, plan.port, duration=duration, paced=True)
    # "closed", not "kicked": a refusal at accept looks the same from here.
    return Counter({"closed by the server" if report.kicked else "never closed": 1})


def _churn(plan: HostilePlan, i: int, duration: float) -> Counter[str]:
    if i % 2 == 0:
        # Take every free slot, then churn: the online limit.
        report = run_churn(
            plan.ip, plan.port, count=20, hold=plan.worker_connections, duration=duration
        )
    else:
        # Churn faster than closed connections are recycled: the storm guard.
        report = run_churn(plan.ip, plan.port, count=8 * plan.worker_connections, duration=duration)
    refused_held = report.hold - report.held_answered
    return Counter(
        {
            "connects served": report.accepted + report.held_answered,
            "closed at accept": report.closed_at_accept + refused_held,
            "no answer": report.no_answer,
            "connect failed": report.connect_failed,
        }
    )


@dataclass(frozen=True)
class HostileTool:
    run: Callable[[HostilePlan, int, float], Counter[str]]
    longest: float  # a run's duration at most
    pause: float  # between two runs


HOSTILE: dict[str, HostileTool] = {
    "flood": HostileTool(_flood, 5.0, 0.2),
    "garbage": HostileTool(_garbage, 5.0, 0.2),
    "idle": HostileTool(_idle, 15.0, 0.5),
    "slowloris": HostileTool(_slowloris, 15.0, 0.5),
    "slow-reader": HostileTool(_slow_reader, 30.0, 0.5),
    "churn": HostileTool(_churn, 10.0, 2.0),
}


@dataclass
class HostileTally:
    """What one attack tool saw over all its runs."""

    tool: str
    runs: int = 0
    seen: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        parts = [f"{n:,} {what}" for what, n in self.seen.items() if n]
        parts += [f"{n:,} failed ({why})" for why, n in self.errors.items()]
        return ", ".join(parts) or "-"


def _attack_loop(name: str, plan: HostilePlan, stop: threading.Event, tally: HostileTally) -> None:
    tool = HOSTILE[name]
    for i in itertools.count():
        remaining = plan.end - time.monotonic()
        if stop.is_set() or remaining < 0.5:
            return
        try:
            tally.seen.update(tool.run(plan, i, min(tool.longest, remaining)))
        except AttackError as exc:  # "cannot connect to HOST:PORT: why"
            tally.errors[str(exc).rsplit(": ", 1)[-1]] += 1
        except Exception as exc:
            # Counted and shown, and the tool carries on: one odd run must not silently
            # take an attack out of the rest of the soak.
            tally.errors[f"{type(exc).__name__}: {exc}"] += 1
        tally.runs += 1
        stop.wait(tool.pause)


def attackers(plan: HostilePlan, stop, results) -> None:  # in the attacker process
    """Run every tool on its own thread until ``plan.end`` (or ``stop``, a
    multiprocessing event); put the tallies on ``results``."""
    # Ctrl-C reaches the whole process group: the soak's main process decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    local_stop = threading.Event()
    tallies = {name: HostileTally(name) for name in HOSTILE}
    threads = [
        threading.Thread(
            target=_attack_loop, args=(name, plan, local_stop, tallies[name]), name=name
        )
        for name in HOSTILE
    ]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        if stop.wait(0.2):
            local_stop.set()
    results.put([(t.tool, t.runs, dict(t.seen), dict(t.errors)) for t in tallies.values()])


# ----------------------------------------------------------------------------------------
# The soak
# ----------------------------------------------------------------------------------------


@dataclass
class SoakReport:
    chapter: str
    seconds: float
    warmup: float
    clients: int
    connections: int
    worker_connections: int
    elapsed: float = 0.0
    good: GoodTally = field(default_factory=GoodTally)
    hostile: list[HostileTally] = field(default_factory=list)
    defences: dict[str, int] = field(default_factory=dict)
    expected: list[str] = field(default_factory=list)  # defences that must fire
    snapshots: list[Snapshot] = field(default_factory=list)
    samples: list[Snapshot] = field(default_factory=list)  # between warm-up and end
    stopped_cleanly: bool = False
    problems: list[str] = field(default_factory=list)  # anything else that went wrong

    def snap(self, label: str) -> Snapshot | None:
        return next((s for s in self.snapshots if s.label == label), None)

    @property
    def rss_growth_kib(self) -> int | None:
        warm, end = self.snap("after warm-up"), self.snap("end")
        if warm is None or end is None or warm.rss_kib is None or end.rss_kib is None:
            return None
        return end.rss_kib - warm.rss_kib

    def failures(self) -> list[str]:
        """Everything that makes the soak fail; empty when it passes."""
        out = []
        if self.good.lost or self.good.wrong:
            out.append(f"good clients: {self.good.lost} replies lost, {self.good.wrong} wrong")
        if self.good.failures and not (self.good.lost or self.good.wrong):
            out.append(f"good clients: {len(self.good.failures)} failures")
        if not self.good.replies:
            out.append("good clients: no reply at all")
        silent = [d for d in self.expected if not self.defences.get(d)]
        if silent:
            out.append("never fired: " + ", ".join(silent))
        start, after = self.snap("start"), self.snap("after")
        if start is None or after is None:
            out.append("no /proc figures for the start and the end")
        else:
            if after.fds != start.fds:
                out.append(f"open descriptors {start.fds} at the start, {after.fds} after")
            if after.threads != start.threads:
                out.append(f"threads {start.threads} at the start, {after.threads} after")
        growth = self.rss_growth_kib
        if growth is None:
            out.append("no resident-memory figures after the warm-up and at the end")
        elif growth > RSS_GROWTH_LIMIT_MIB * 1024:
            out.append(
                f"resident memory grew {growth / 1024:.1f} MiB after the warm-up "
                f"(limit {RSS_GROWTH_LIMIT_MIB} MiB)"
            )
        if not self.stopped_cleanly:
            out.append("the server did not stop cleanly")
        return out + self.problems

    @property
    def ok(self) -> bool:
        return not self.failures()

    def verdict(self) -> str:
        if not self.ok:
            return "FAILED: " + "; ".join(self.failures())
        growth = self.rss_growth_kib or 0
        fired = sum(self.defences.get(d, 0) for d in self.expected)
        return (
            f"passed: {self.good.replies:,} good replies, 0 lost, 0 wrong, worst "
            f"{max(self.good.latencies) * 1000:,.0f} ms; {fired:,} kicks and refusals "
            f"from {len(self.expected)} defences; descriptors and threads back to their "
            f"start values; resident memory {growth / 1024:+.1f} MiB after the warm-up"
        )

    def tables(self) -> Group:
        title = (
            f"soak: {self.chapter}, {self.seconds:g} s ({self.warmup:g} s warm-up), "
            f"{self.clients} good clients"
        )
        good = Table(title=title, show_header=False)
        good.add_column("what")
        good.add_column("value", justify="right")
        lat = sorted(self.good.latencies)
        good.add_row("cycles (ping, register, 2 logins)", f"{self.good.cycles:,}")
        good.add_row("replies verified byte for byte", f"{self.good.replies:,}")
        good.add_row("lost replies", f"{self.good.lost:,}")
        good.add_row("wrong replies", f"{self.good.wrong:,}")
        if lat:
            median = statistics.median(lat) * 1000
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
            good.add_row(
                "latency median / p99 / worst",
                f"{median:.1f} / {p99:.1f} / {lat[-1] * 1000:.1f} ms",
            )
        for failure in self.good.failures[:5]:
            good.add_row("[red]failure[/]", failure)
        if len(self.good.failures) > 5:
            good.add_row("[red]failure[/]", f"… and {len(self.good.failures) - 5} more")

        tools = Table(title="attack tools (what each saw)")
        tools.add_column("tool")
        tools.add_column("runs", justify="right")
        tools.add_column("seen")
        for tally in self.hostile:
            tools.add_row(tally.tool, f"{tally.runs:,}", tally.summary())

        defences = Table(title="defences (the server's counters)")
        defences.add_column("defence")
        defences.add_column("count", justify="right")
        defences.add_column("aimed at by")
        for name, count in self.defences.items():
            mark = "" if name not in self.expected else (" ✓" if count else " [red]✗[/]")
            defences.add_row(name, f"{count:,}{mark}", AIMED_AT.get(name, "-"))

        server = Table(title="server process (/proc)")
        for column in ("when", "at", "RSS", "fds", "threads", "online", "CPU"):
            server.add_column(column, justify="left" if column == "when" else "right")
        for s in self.snapshots:
            if s.label == "end" and self.samples:
                server.add_row(
                    f"{len(self.samples)} samples",
                    f"{self.samples[0].at:.0f}-{self.samples[-1].at:.0f} s",
                    _span([s.rss_kib for s in self.samples], lambda v: f"{v / 1024:.1f}", " MiB"),
                    _span([s.fds for s in self.samples]),
                    _span([s.threads for s in self.samples]),
                    _span([s.online for s in self.samples]),
                    "",
                )
            server.add_row(
                SNAPSHOT_LABELS.get(s.label, s.label),
                f"{s.at:.0f} s",
                "-" if s.rss_kib is None else f"{s.rss_kib / 1024:.1f} MiB",
                "-" if s.fds is None else str(s.fds),
                "-" if s.threads is None else str(s.threads),
                "-" if s.online is None else str(s.online),
                "-" if s.cpu_s is None else f"{s.cpu_s:.1f} s",
            )
        return Group(good, tools, defences, server)


def _span(values: list[int | None], show: Callable[[int], str] = str, unit: str = "") -> str:
    """ "min-max" of the values that exist, or the one value if they are all equal."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    low, high = min(known), max(known)
    return f"{show(low)}{unit}" if low == high else f"{show(low)}-{show(high)}{unit}"


def find_chapter(name: str | None) -> str:
    """``06``, ``06_flood``, ``flood`` or ``chapters.06_flood`` -> ``06_flood``; None -> the
    newest chapter."""
    known = chapters()
    if not known:
        raise AttackError("no chapters found")
    if name is None:
        return known[-1]
    wanted = name.strip().removeprefix("chapters.").rstrip("/")
    for chapter in known:
        if wanted in (chapter, chapter[:2], chapter[3:]):
            return chapter
    raise AttackError(f"unknown chapter {name!r}: choose one of {', '.join(known)}")


def run_soak(
    chapter: str | None = None,
    seconds: float = 60.0,
    *,
    warmup: float | None = None,
    clients: int = 4,
    connections: int = 20,
    progress: Progress | None = None,
) -> SoakReport:
    """Start ``chapter`` (default: the newest), soak it for ``seconds``, stop it, report.
    ``warmup`` (default: a quarter of the run, at most 30 s) ends where resident memory is
    first measured under attack."""
    if not sys.platform.startswith("linux"):
        raise AttackError("the soak reads the server's /proc/PID: it runs on Linux only")
    name = find_chapter(chapter)
    features = target_features(name)
    if "epoll" not in features:
        raise AttackError(f"{name} serves one client at a time: a soak needs chapter 2 or later")
    if warmup is None:
        warmup = min(30.0, seconds / 4)
    if not 0 <= warmup < seconds:
        raise ValueError(f"warm-up must be 0 or more and less than the run, got {warmup:g}")
    wc = worker_connections(clients, connections)
    report = SoakReport(name, seconds, warmup, clients, connections, wc)
    report.expected = [d for d, _, feature in DEFENCES if feature in features and d in AIMED_AT]
    server = SoakServer(name, SOAK_CONFIG.format(worker_connections=wc))
    try:
        port = server.start()
    except BenchError as exc:
        raise AttackError(str(exc)) from None
    stop = threading.Event()
    goods: list[GoodClient] = []
    context = multiprocessing.get_context("spawn")
    hostile_stop = context.Event()
    results = context.Queue()
    hostile = None
    began = time.monotonic()
    try:
        target = resolve_target("127.0.0.1", port)
        report.snapshots.append(snapshot(server, "start", 0.0, server.fresh_stats()))
        began = time.monotonic()
        end = began + seconds
        goods = [GoodClient(i, target, stop, began) for i in range(clients)]
        for good in goods:
            good.start()
        plan = HostilePlan(target.ip, target.port, end, connections, wc)
        hostile = context.Process(
            target=attackers, args=(plan, hostile_stop, results), name="attackers", daemon=True
        )
        hostile.start()
        warm_at = began + warmup
        sample_every = max(1.0, (seconds - warmup) / 60)
        next_sample = warm_at + sample_every
        while (now := time.monotonic()) < end:
            if not server.alive():
                report.problems.append(f"the server exited during the soak: {server.tail[-1:]}")
                break
            if now >= warm_at and report.snap("after warm-up") is None:
                stats = server.fresh_stats()
                report.snapshots.append(
                    snapshot(server, "after warm-up", time.monotonic() - began, stats)
                )
            elif now >= next_sample and report.snap("after warm-up") is not None:
                report.samples.append(snapshot(server, "sample", now - began, server.stats))
                next_sample = now + sample_every
            if progress is not None:
                progress(_progress_line(report, goods, server.stats))
            time.sleep(min(0.5, max(0.0, end - now)))
        stats = server.fresh_stats()
        report.snapshots.append(snapshot(server, "end", time.monotonic() - began, stats))
    except BaseException:
        # Ctrl-C (or a bug): stop everything now rather than wait for the runs to end.
        stop.set()
        hostile_stop.set()
        if hostile is not None and hostile.is_alive():
            hostile.kill()
            hostile.join(5)
        server.stop()
        raise
    # Every attack stops by itself at the end of the run; the good clients finish their
    # cycle. Then, with nobody connected, the last snapshot.
    stop.set()
    if progress is not None:
        progress("soak: stopping, waiting for the last runs")
    try:
        tallies = _collect(hostile, results, report)
        for good in goods:
            good.join(REPLY_TIMEOUT + 5)
            if good.is_alive():
                report.problems.append(f"{good.name} did not stop")
        after = _wait_until_quiet(server, report, began)
    finally:
        code = server.stop()
    report.stopped_cleanly = code == 0 and server.goodbye()
    report.elapsed = time.monotonic() - began
    report.hostile = tallies
    for good in goods:
        t = good.tally
        report.good.cycles += t.cycles
        report.good.replies += t.replies
        report.good.lost += t.lost
        report.good.wrong += t.wrong
        report.good.latencies += t.latencies
        report.good.failures += t.failures
    if after is not None:
        report.defences = defence_counts(after, features)
    return report


def _progress_line(report: SoakReport, goods: list[GoodClient], stats: dict | None) -> str:
    """Short, to leave the bar room: "soak: 2,024 good replies, 0 lost, 1,582 kicks"."""
    lost = sum(g.tally.lost + g.tally.wrong for g in goods)
    replies = sum(g.tally.replies for g in goods)
    kicks = ""
    if stats:
        counts = defence_counts(stats, frozenset(f for _, _, f in DEFENCES))
        kicks = f", {sum(counts[d] for d in report.expected if d in counts):,} kicks"
    phase = " (warm-up)" if report.snap("after warm-up") is None else ""
    return f"soak{phase}: {replies:,} good replies, {lost} lost{kicks}"


def _collect(hostile, results, report: SoakReport) -> list[HostileTally]:
    """The attacker process's tallies (it stops by the end of the run by itself)."""
    tallies = [HostileTally(name) for name in HOSTILE]
    if hostile is None:
        return tallies
    try:
        rows = results.get(timeout=max(tool.longest for tool in HOSTILE.values()) + WIND_DOWN)
    except Exception:  # queue.Empty, or the process died without a word
        report.problems.append("the attacker process gave no report")
        rows = []
    hostile.join(10)
    if hostile.is_alive():
        hostile.kill()
        hostile.join(5)
    for name, runs, seen, errors in rows:
        tally = next(t for t in tallies if t.tool == name)
        tally.runs, tally.seen, tally.errors = runs, Counter(seen), Counter(errors)
    return tallies


def _wait_until_quiet(server: SoakServer, report: SoakReport, began: float) -> dict | None:
    """Once every client has gone: wait for the server to have no one online and its
    descriptor count to settle, then take the last snapshot. The stats returned count
    everything up to now."""
    if not server.alive():
        return server.stats
    start = report.snap("start")
    deadline = time.monotonic() + 15
    stats = server.fresh_stats()
    while time.monotonic() < deadline:
        online = stats.get("online") if stats else None
        if online == 0 and (start is None or proc_fds(server.pid) == start.fds):
            break
        stats = server.fresh_stats()
    report.snapshots.append(snapshot(server, "after", time.monotonic() - began, stats))
    return stats
