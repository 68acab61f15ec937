"""One benchmark run, and a comparison of several targets: the function API behind the
command line (``run_bench(options) -> BenchResult``, ``run_compare(...)``)."""

from __future__ import annotations

import contextlib
import os
import secrets
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import native
from .idle import IdleConnections
from .loadgen import (
    ERROR_KINDS,
    HIST_BUCKETS,
    MODES,
    PythonClients,
    WorkerSpec,
    bucket_upper_seconds,
)
from .target import (
    BASELINES,
    BenchError,
    ServerProcess,
    ServerSettings,
    check_loopback,
    check_runnable,
    core_ticks,
    core_usage_pct,
    proc_cpu_seconds,
    proc_rss_kib,
    process_cores,
    raise_nofile,
    resolve_target,
    target_features,
    usable_cores,
)

# A client process this busy (% of one core), or a client's core this busy (whoever used
# it), means the client may have limited the rate: the run is labelled client-bound.
CLIENT_BUSY = 90.0
# A Python server runs its event loop on one thread under the GIL: about one core is its
# ceiling, and a little idle time between epoll batches is normal even when saturated.
SERVER_BUSY = 80.0
# A pinned core this busy in total had no time left for the side that ran on it.
CORE_BUSY = 90.0
# Other processes using this much of a pinned core make the numbers noisy: say so.
OTHER_LOAD = 10.0
IDLE_SAMPLE = 100
# With --heartbeat: the server checks every 5 s (the smallest Sock_MaxWaitTime it accepts)
# and idle connections ping every 2.5 s, as a live client would.
HEARTBEAT_MAX_WAIT = 5.0
# With --defences on: flood detection checks every packet but kicks only after this many
# too-close packets in a row, which no run reaches (a real deployment's "on, not firing").
NEVER_FLOODS = 1_000_000_000
CLIENTS = ("auto", "native", "python")
DEFENCES = ("off", "on")


def default_procs() -> int:
    """The Python client: half the cores for the client, the rest for the server."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


@dataclass
class BenchOptions:
    chapter: str | None = None  # start this target (a chapter or "asyncio") ...
    host: str = "127.0.0.1"  # ... or load a server already running here
    port: int | None = None
    server_pid: int | None = None  # for CPU/RSS of a server we did not start
    connections: int = 100
    pipeline: int = 1
    mode: str = "ping"
    duration: float = 5.0
    warmup: float = 1.0
    procs: int | None = None  # client processes (None: 1 native, default_procs() Python)
    client: str = "auto"  # auto = native where a C compiler exists, else python
    pin: bool = True  # server and client on different cores (when there are two)
    hash_iterations: int = 1000
    workers: int = 4
    processes: int = 1  # WorkerProcesses of a chapter with worker processes (7)
    defences: str = "off"  # on = heartbeat and flood detection on, never firing
    heartbeat: bool = False
    flood: bool = False
    flood_counter: int = 10  # Sock_FloodKickCounter when flood detection is on
    idle_connections: int = 0
    drain_timeout: float = 5.0

    def validate(self) -> None:
        if self.mode not in MODES:
            raise BenchError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.client not in CLIENTS:
            raise BenchError(f"--client must be one of {', '.join(CLIENTS)}, got {self.client!r}")
        if self.defences not in DEFENCES:
            raise BenchError(f"--defences must be off, on or both, got {self.defences!r}")
        if self.defences == "on" and (self.heartbeat or self.flood):
            raise BenchError(
                "--defences on already turns the heartbeat and flood detection on (never "
                "firing): drop --heartbeat/--flood, or use them without --defences"
            )
        for name in ("connections", "pipeline", "hash_iterations", "workers", "processes"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
        if self.procs is not None and self.procs < 1:
            raise BenchError("--procs must be at least 1")
        if self.pipeline > 65536:
            raise BenchError("--pipeline must be at most 65536")
        if self.duration <= 0 or self.warmup < 0:
            raise BenchError("--duration must be > 0 and --warmup >= 0")
        if self.idle_connections < 0:
            raise BenchError("--idle-connections must be >= 0")
        if (self.chapter is None) == (self.port is None):
            raise BenchError("give either --chapter NAME (start a server) or --port N")
        self.host = check_loopback(self.host)

    def server_settings(self) -> ServerSettings:
        on = self.defences == "on"
        return ServerSettings(
            worker_connections=max(2048, self.connections + self.idle_connections + 64),
            hash_iterations=self.hash_iterations,
            heartbeat=self.heartbeat or on,
            max_wait_time=HEARTBEAT_MAX_WAIT,
            flood=self.flood or on,
            flood_counter=NEVER_FLOODS if on else self.flood_counter,
            workers=self.workers,
            processes=self.processes,
        )


@dataclass
class IdleReport:
    requested: int
    opened: int
    failures: int
    error: str
    answered_first_ping: int
    rss_before_kib: int | None
    rss_after_kib: int | None
    kib_per_connection: float | None
    sample_answered: int = 0
    sample_size: int = 0
    closed_by_server: int = 0
    keepalive_pings: int = 0
    bad_replies: int = 0


@dataclass
class BenchResult:
    target: str
    options: dict[str, Any]
    replies: int
    window: float
    replies_per_s: float
    latency_ms: dict[str, float]  # p50, p90, p99, max
    errors: dict[str, int]
    reordered: int
    disconnects: int
    unanswered: int
    connected: int
    connect_failures: int
    setup_failures: int
    server_cpu_pct: float | None  # user + system, % of one core
    server_sys_pct: float | None  # the kernel's share of it
    server_rss_kib: dict[str, int | None]
    client_cpu_pct: list[float]  # per client process, % of one core
    client_sys_pct: list[float]  # the kernel's share of client_cpu_pct (socket calls)
    client_bottleneck: bool  # client-bound: the rate may be the client's, not the server's
    server_bottleneck: bool
    cpus: int
    client: str = "python"  # which load client ran: "native" or "python"
    client_detail: str = ""
    server_cores: list[int] | None = None  # the cores the server could run on (as measured)
    client_cores: list[list[int]] | None = None  # per client process
    pinned: bool = False  # server and client on different cores
    core_busy_pct: dict[int, float] = field(default_factory=dict)  # every core, whoever
    core_irq_pct: dict[int, float] = field(default_factory=dict)  # the irq/softirq part
    label: str = ""  # the target and its setting, e.g. "06_flood +heartbeat+flood"
    event_loop: str = ""
    database: str = ""  # the started server's user database
    idle: IdleReport | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def ok(self) -> bool:
        """Every reply valid and in order, nothing lost."""
        return not (
            self.error_count
            or self.reordered
            or self.disconnects
            or self.unanswered
            or self.connect_failures
            or self.setup_failures
        )

    @property
    def limited_by(self) -> str:
        """Which side ran out of CPU: "server", "client", "both" or "neither" (round trips
        limited the rate). Any answer with the client in it makes the rate the client's."""
        if self.client_bottleneck:
            return "both" if self.server_bottleneck else "client"
        return "server" if self.server_bottleneck else "neither"

    def server_core_busy(self) -> float | None:
        if not self.pinned or not self.server_cores:
            return None
        return max((self.core_busy_pct.get(c, 0.0) for c in self.server_cores), default=None)

    def client_core_busy(self) -> float | None:
        if not self.pinned or not self.client_cores:
            return None
        cores = {c for cs in self.client_cores for c in cs}
        return max((self.core_busy_pct.get(c, 0.0) for c in cores), default=None)

    def pinned_cores(self) -> set[int]:
        if not self.pinned or not self.server_cores or not self.client_cores:
            return set()
        return set(self.server_cores) | {c for cs in self.client_cores for c in cs}

    def irq_pct(self) -> float | None:
        """Interrupt time on the pinned cores (% of a core): no process's, and on loopback
        mostly the receive work of the bench's own packets."""
        cores = self.pinned_cores()
        return sum(self.core_irq_pct.get(c, 0.0) for c in cores) if cores else None

    def other_load_pct(self) -> float | None:
        """CPU on the pinned cores that neither side's processes nor interrupts used:
        other processes, i.e. noise (% of a core)."""
        cores = self.pinned_cores()
        if not cores:
            return None
        busy = sum(self.core_busy_pct.get(c, 0.0) - self.core_irq_pct.get(c, 0.0) for c in cores)
        own = (self.server_cpu_pct or 0.0) + sum(self.client_cpu_pct)
        return max(0.0, busy - own)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_count"] = self.error_count
        data["ok"] = self.ok
        data["limited_by"] = self.limited_by
        data["client_bound"] = self.client_bottleneck
        data["server_core_busy_pct"] = self.server_core_busy()
        data["client_core_busy_pct"] = self.client_core_busy()
        data["other_load_pct"] = self.other_load_pct()
        data["irq_pct"] = self.irq_pct()
        return data


ProgressFn = Callable[[str, float, float, float], None]  # phase, done, total, replies/s


def percentiles(hist: list[int], max_latency: float) -> dict[str, float]:
    total = sum(hist)
    out = {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": max_latency * 1000}
    if not total:
        return out
    targets = [("p50", 0.50), ("p90", 0.90), ("p99", 0.99)]
    seen = 0
    for index, count in enumerate(hist):
        seen += count
        while targets and seen >= targets[0][1] * total:
            name, _ = targets.pop(0)
            # The bucket's upper edge, but never above the true maximum.
            out[name] = min(bucket_upper_seconds(index), max_latency) * 1000
        if not targets:
            break
    return out


def defences_label(target: str, defences: str) -> str:
    """The row name of a target in a setting: ``06_flood +heartbeat+flood`` when the
    defences it has are on, the bare name otherwise."""
    if defences != "on" or target in BASELINES:
        return target
    features = target_features(target)
    parts = [name for key, name in (("timers", "heartbeat"), ("flood", "flood")) if key in features]
    return target + (" +" + "+".join(parts) if parts else "")


# -- which client, which cores --------------------------------------------------------------


def choose_client(kind: str, say: Callable[[str], None]) -> Path | None:
    """The native client's binary (built on first use), or None for the Python client."""
    if kind == "python":
        return None
    try:
        return native.build()
    except native.NativeBuildError as exc:
        if kind == "native":
            raise BenchError(f"--client native: {exc}") from None
        say(
            f"the native load client is not available ({exc}): using the Python client, "
            "which may saturate its core before the server does (the report says when)"
        )
        return None


@dataclass
class Pinning:
    server: set[int] | None  # the server's core (None: not pinned)
    clients: list[set[int] | None]  # one core per client process

    @property
    def on(self) -> bool:
        return self.server is not None and all(self.clients)


def plan_pinning(
    pin: bool, procs: int, starts_server: bool, say: Callable[[str], None], server_cores: int = 1
) -> Pinning:
    """Server on the first usable core (the first ``server_cores``, for a server with as
    many worker processes), client processes on the others, one core each."""
    unpinned = Pinning(None, [None] * procs)
    if not pin:
        return unpinned
    cores = usable_cores()
    server_cores = server_cores if starts_server else 0
    if len(cores) < server_cores + 1 or len(cores) < 2:
        say(
            f"{len(cores)} usable core(s): the server ({max(1, server_cores)} core(s)) and the "
            "client cannot be pinned apart"
        )
        return unpinned
    if not starts_server:
        say("the server was not started by the bench: only the client is pinned")
    rest = cores[max(1, server_cores) :]
    clients: list[set[int] | None] = [{rest[i % len(rest)]} for i in range(procs)]
    if procs > len(rest):
        say(f"{procs} client processes share {len(rest)} core(s): they compete for them")
    server = set(cores[: max(1, server_cores)]) if starts_server else None
    return Pinning(server, clients)


@contextlib.contextmanager
def _server(
    opts: BenchOptions, target: str | None, cores: set[int] | None
) -> Iterator[ServerProcess | None]:
    if target is None:
        yield None
        return
    server = ServerProcess(target, opts.server_settings(), cores=cores)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def run_bench(
    opts: BenchOptions,
    progress: ProgressFn | None = None,
    note: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run one benchmark; start (and stop) the server when ``opts.chapter`` is set."""
    opts.validate()
    notes: list[str] = []

    def say(text: str) -> None:
        notes.append(text)
        if note is not None:
            note(text)

    target = resolve_target(opts.chapter) if opts.chapter else None
    if target is not None:
        check_runnable(target)
    if (
        target is not None
        and target not in BASELINES
        and opts.connections > 1
        and "epoll" not in target_features(target)
    ):
        say(
            f"{target} serves one client at a time: with {opts.connections} connections only "
            "one is answered (use --connections 1)"
        )
    if (
        target is not None
        and target not in BASELINES
        and opts.idle_connections
        and "pool" in target_features(target)
    ):
        say(
            f"{target} allocates its pool (worker_connections objects) at start-up, before "
            "the idle connections open: KiB per connection shows only what a live "
            "connection adds on top"
        )
    if opts.defences == "on" and opts.mode == "register" and opts.warmup + opts.duration > 20:
        say(
            "register mode never pings: with the heartbeat on, a connection is kicked after "
            f"{3 * HEARTBEAT_MAX_WAIT + 10:g} s without a ping, and this run is longer"
        )
    exe = choose_client(opts.client, say)
    procs = opts.procs or (1 if exe is not None else default_procs())
    procs = min(procs, opts.connections)
    share = opts.processes if target and "processes" in target_features(target) else 1
    pinning = plan_pinning(opts.pin, procs, target is not None, say, share)
    # The server holds every connection; this process the idle ones; each client process
    # its share. Children inherit the raised limit.
    needed = opts.connections + opts.idle_connections + 256
    before, soft, hard, enough = raise_nofile(needed)
    if not enough:
        raise BenchError(
            f"need about {needed} open files but the hard limit (ulimit -Hn) is {hard}: "
            f"raise it (e.g. `ulimit -Hn {needed}` as root, or LimitNOFILE= / limits.conf) "
            "or ask for fewer connections"
        )
    if soft != before:
        say(
            f"open-file limit raised from {before} to {soft} (hard limit {hard}) for the "
            "bench, its client processes and the server"
        )

    with _server(opts, target, pinning.server) as server:
        pid = server.pid if server is not None else opts.server_pid
        port = server.port if server is not None else opts.port
        assert port is not None
        name = target or f"{opts.host}:{port}"
        if pid is None:
            say("server CPU and memory unknown: pass --server-pid for a server we did not start")
        with contextlib.ExitStack() as stack:
            idle_report = None
            idle = None
            if opts.idle_connections:
                idle = stack.enter_context(
                    contextlib.closing(IdleConnections(opts.host, port, opts.idle_connections))
                )
                idle_report = _open_idle(idle, pid, opts, progress)
                settings = opts.server_settings()
                idle.start(settings.max_wait_time / 2 if settings.heartbeat else None)
            rss_before = proc_rss_kib(pid) if pid else None
            drive = _drive(opts, port, procs, pid, progress, exe, pinning)
            rss_after = proc_rss_kib(pid) if pid else None
            if idle is not None and idle_report is not None:
                idle.stop()
                idle_report.sample_answered, idle_report.sample_size = idle.sample_check(
                    IDLE_SAMPLE, 2.0
                )
                idle_report.closed_by_server = idle.closed_by_server
                idle_report.keepalive_pings = idle.keepalive_pings
                idle_report.bad_replies = idle.bad_replies
        event_loop = server.loop_line if server is not None else ""
        database = str(server.database) if server is not None else ""
        if server is not None and not server.alive():
            say(f"the server exited during the run; its last output: {' | '.join(server.tail)}")
    result = _aggregate(name, opts, drive, rss_before, rss_after, idle_report, notes)
    result.event_loop, result.database = event_loop, database
    result.label = defences_label(name, opts.defences) if target else name
    return result


def _open_idle(
    idle: IdleConnections, pid: int | None, opts: BenchOptions, progress: ProgressFn | None
) -> IdleReport:
    if progress:
        progress(f"opening {opts.idle_connections} idle connections", 0, 1, 0)
    rss_before = proc_rss_kib(pid) if pid else None
    opened = idle.open()
    # One ping each: proves the server accepted it and built its per-connection state.
    answered = idle.ping_all(timeout=30.0)
    rss_after = proc_rss_kib(pid) if pid else None
    per_conn = None
    if rss_before is not None and rss_after is not None and opened:
        per_conn = (rss_after - rss_before) / opened
    return IdleReport(
        opts.idle_connections,
        opened,
        idle.failures,
        idle.error,
        answered,
        rss_before,
        rss_after,
        per_conn,
    )


@dataclass
class Drive:
    """What one load run collected, before aggregation."""

    results: list[dict[str, Any]]
    server_cpu: tuple[float, float] | None  # (% of a core, of which kernel %)
    window: float
    client: str
    client_detail: str
    core_usage: dict[int, tuple[float, float]]  # (% busy, % interrupts) per core
    server_cores: list[int] | None
    client_cores: list[list[int]] | None
    pinned: bool


def _clients(
    opts: BenchOptions, port: int, procs: int, exe: Path | None, pinning: Pinning
) -> PythonClients | native.NativeClients:
    run_id = secrets.token_hex(3)
    shares = [opts.connections // procs + (i < opts.connections % procs) for i in range(procs)]
    if exe is not None:
        spec = native.NativeSpec(
            opts.host,
            port,
            opts.connections,
            opts.pipeline,
            opts.mode,
            run_id,
            opts.warmup,
            opts.duration,
            opts.drain_timeout,
        )
        return native.NativeClients(exe, spec, shares, pinning.clients)
    specs = [
        WorkerSpec(
            i,
            opts.host,
            port,
            share,
            opts.pipeline,
            opts.mode,
            run_id,
            drain_timeout=opts.drain_timeout,
        )
        for i, share in enumerate(shares)
    ]
    return PythonClients(specs, pinning.clients, opts.warmup, opts.duration)


def _drive(
    opts: BenchOptions,
    port: int,
    procs: int,
    pid: int | None,
    progress: ProgressFn | None,
    exe: Path | None,
    pinning: Pinning,
) -> Drive:
    """Start the client processes, run the schedule, collect their results."""
    clients = _clients(opts, port, procs, exe, pinning)
    try:
        if progress:
            progress(f"connecting {opts.connections}", 0, 1, 0)
        clients.wait_ready(time.monotonic() + 180)
        # What the kernel says each side may run on, not what we asked for.
        server_cores = process_cores(pid) if pid else None
        client_cores = [process_cores(p) or [] for p in clients.pids]
        start = time.monotonic() + 0.2
        clients.start(start)
        w_start, w_end = start + opts.warmup, start + opts.warmup + opts.duration
        cpu0 = cpu1 = None
        ticks0: dict[int, tuple[int, int, int]] = {}
        ticks1: dict[int, tuple[int, int, int]] = {}
        t0 = t1 = 0.0
        opened = False
        last_total, last_t = 0, time.monotonic()
        rate = 0.0
        while True:
            now = time.monotonic()
            if not opened and now >= w_start:
                opened = True
                cpu0, ticks0, t0 = (proc_cpu_seconds(pid) if pid else None), core_ticks(), now
            if now >= w_end:
                cpu1, ticks1, t1 = (proc_cpu_seconds(pid) if pid else None), core_ticks(), now
                break
            total = clients.replies()
            if now - last_t >= 0.5:
                rate = (total - last_total) / (now - last_t)
                last_total, last_t = total, now
            if progress:
                phase = "warming up" if now < w_start else "measuring"
                progress(phase, now - start, opts.warmup + opts.duration, rate)
            wake = min(now + 0.1, w_end if opened else w_start)
            time.sleep(max(0.0, wake - time.monotonic()))
        if progress:
            progress("draining", opts.warmup + opts.duration, opts.warmup + opts.duration, rate)
        results = clients.results(time.monotonic() + opts.drain_timeout + 60)
        server_cpu = None
        if cpu0 is not None and cpu1 is not None and t1 > t0:
            server_cpu = (
                (cpu1[0] - cpu0[0]) / (t1 - t0) * 100,
                (cpu1[1] - cpu0[1]) / (t1 - t0) * 100,
            )
    except BaseException:
        clients.abort()
        raise
    finally:
        clients.close()
    if exe is not None:
        detail = (
            f"native: {native.SOURCE.relative_to(native.SOURCE.parents[3])} "
            f"({procs} process{'es' if procs > 1 else ''}, one thread and one epoll loop "
            f"each), built at {exe}"
        )
    else:
        detail = (
            f"python: tools/bench/loadgen.py ({procs} process{'es' if procs > 1 else ''}, "
            "one epoll loop each)"
        )
    return Drive(
        results,
        server_cpu,
        opts.duration,
        clients.name,
        detail,
        core_usage_pct(ticks0, ticks1),
        server_cores,
        client_cores,
        pinning.on,
    )


def _aggregate(
    name: str,
    opts: BenchOptions,
    drive: Drive,
    rss_before: int | None,
    rss_after: int | None,
    idle: IdleReport | None,
    notes: list[str],
) -> BenchResult:
    results = drive.results
    hist = [0] * HIST_BUCKETS
    errors = dict.fromkeys(ERROR_KINDS, 0)
    for r in results:
        for i, count in enumerate(r["hist"]):
            hist[i] += count
        for kind, count in r["errors"].items():
            errors[kind] += count
    replies = sum(r["replies"] for r in results)
    windows = [r["window"] for r in results if r["window"] > 0]
    measured = statistics.fmean(windows) if windows else drive.window
    client_cpu = [r["cpu_seconds"] / r["window"] * 100 if r["window"] else 0.0 for r in results]
    client_sys = [r["sys_seconds"] / r["window"] * 100 if r["window"] else 0.0 for r in results]
    server_cpu = drive.server_cpu
    result = BenchResult(
        target=name,
        options=asdict(opts),
        replies=replies,
        window=measured,
        replies_per_s=replies / measured if measured else 0.0,
        latency_ms=percentiles(hist, max((r["max_latency"] for r in results), default=0.0)),
        errors=errors,
        reordered=sum(r["reordered"] for r in results),
        disconnects=sum(r["disconnects"] for r in results),
        unanswered=sum(r["unanswered"] for r in results),
        connected=sum(r["connected"] for r in results),
        connect_failures=sum(r["connect_failures"] for r in results),
        setup_failures=sum(r["setup_failures"] for r in results),
        server_cpu_pct=None if server_cpu is None else server_cpu[0],
        server_sys_pct=None if server_cpu is None else server_cpu[1],
        server_rss_kib={"before": rss_before, "after": rss_after},
        client_cpu_pct=client_cpu,
        client_sys_pct=client_sys,
        client_bottleneck=False,
        server_bottleneck=False,
        cpus=os.cpu_count() or 1,
        client=drive.client,
        client_detail=drive.client_detail,
        server_cores=drive.server_cores,
        client_cores=drive.client_cores,
        pinned=drive.pinned,
        core_busy_pct={core: busy for core, (busy, _) in drive.core_usage.items()},
        core_irq_pct={core: irq for core, (_, irq) in drive.core_usage.items()},
        idle=idle,
        notes=notes,
    )
    client_core = result.client_core_busy()
    server_core = result.server_core_busy()
    result.client_bottleneck = bool(client_cpu) and (
        max(client_cpu) >= CLIENT_BUSY or (client_core is not None and client_core >= CORE_BUSY)
    )
    result.server_bottleneck = (server_cpu is not None and server_cpu[0] >= SERVER_BUSY) or (
        server_core is not None and server_core >= CORE_BUSY
    )
    if result.connected and result.disconnects >= result.connected:
        why = " (--flood is on: a client that never pauses is a flood)" if opts.flood else ""
        notes.append(f"the server closed every load connection{why}")
    if result.connect_failures:
        first = next(r["connect_error"] for r in results if r["connect_error"])
        notes.append(f"{result.connect_failures} connections failed to connect ({first})")
    return result


# -- comparisons ----------------------------------------------------------------------------


@dataclass
class CompareSummary:
    target: str  # the row's label: the target and, with --defences, its setting
    runs: int
    replies_per_s: float  # medians over the runs
    ratio: float | None  # against the first row; None when either row is client-bound
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_pct: float | None
    client_cpu_pct: float
    errors: int  # invalid + reordered replies, disconnects and unanswered requests
    client_bottleneck_runs: int
    client_bound: bool = False  # any run client-bound: the rate is (at most) the client's
    limited_by: str = "neither"  # server, client or neither (over the runs)
    server_core_busy_pct: float | None = None
    client_core_busy_pct: float | None = None
    other_load_pct: float | None = None
    client: str = ""


def compare_variants(names: list[str], defences: str) -> list[tuple[str, str]]:
    """(target, defences) rows: with ``both``, a chapter that has a heartbeat or flood
    detection runs twice, off and on; targets without them run once."""
    rows: list[tuple[str, str]] = []
    for name in names:
        has = name not in BASELINES and bool(target_features(name) & {"timers", "flood"})
        if defences == "both" and has:
            rows += [(name, "off"), (name, "on")]
        else:
            rows.append((name, defences if has else "off"))
    return rows


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(runs: list[BenchResult]) -> list[CompareSummary]:
    """Medians per row (in first-seen order) and ratios against the first row. A ratio
    is given only when neither row was client-bound: a client-bound rate is the client's
    limit, and a ratio of it would be passed off as the servers'."""
    labels = list(dict.fromkeys(r.label or r.target for r in runs))
    summaries: list[CompareSummary] = []
    for label in labels:
        mine = [r for r in runs if (r.label or r.target) == label]
        bound = sum(r.client_bottleneck for r in mine)
        sides = [r.limited_by for r in mine]
        limited = max(sorted(set(sides)), key=sides.count)
        if bound and limited not in ("client", "both"):
            limited = "client"  # a single client-bound round is enough to say so
        summaries.append(
            CompareSummary(
                label,
                len(mine),
                statistics.median(r.replies_per_s for r in mine),
                None,
                statistics.median(r.latency_ms["p50"] for r in mine),
                statistics.median(r.latency_ms["p99"] for r in mine),
                statistics.median(r.latency_ms["max"] for r in mine),
                _median([r.server_cpu_pct for r in mine if r.server_cpu_pct is not None]),
                statistics.median(max(r.client_cpu_pct, default=0.0) for r in mine),
                sum(r.error_count + r.reordered + r.disconnects + r.unanswered for r in mine),
                bound,
                client_bound=bound > 0,
                limited_by=limited,
                server_core_busy_pct=_median(
                    [v for r in mine if (v := r.server_core_busy()) is not None]
                ),
                client_core_busy_pct=_median(
                    [v for r in mine if (v := r.client_core_busy()) is not None]
                ),
                other_load_pct=_median([v for r in mine if (v := r.other_load_pct()) is not None]),
                client="/".join(sorted({r.client for r in mine})),
            )
        )
    base = summaries[0] if summaries else None
    for s in summaries:
        if base is not None and base.replies_per_s and not (s.client_bound or base.client_bound):
            s.ratio = s.replies_per_s / base.replies_per_s
    return summaries


def run_compare(
    opts: BenchOptions,
    targets: list[str],
    repeat: int = 3,
    progress: ProgressFn | None = None,
    note: Callable[[str], None] | None = None,
    on_run: Callable[[int, BenchResult], None] | None = None,
    defences: str | None = None,
) -> tuple[list[BenchResult], list[CompareSummary]]:
    """Run the targets interleaved (A B A B …), a fresh server each run, ``repeat``
    rounds; summarise with medians and ratios against the first target. ``defences``
    (off, on or both; default ``opts.defences``) says in which settings chapters with a
    heartbeat or flood detection run."""
    if repeat < 1:
        raise BenchError("--repeat must be at least 1")
    defences = defences or opts.defences
    if defences not in (*DEFENCES, "both"):
        raise BenchError(f"--defences must be off, on or both, got {defences!r}")
    names = [resolve_target(t) for t in targets]
    for name in names:
        check_runnable(name)
    rows = compare_variants(names, defences)
    if len(rows) < 2:
        raise BenchError("--compare needs at least two targets (or one with --defences both)")
    runs: list[BenchResult] = []
    per_run = opts.warmup + opts.duration
    total = per_run * repeat * len(rows)
    for round_ in range(repeat):
        for i, (target, setting) in enumerate(rows):
            run_opts = BenchOptions(
                **{**asdict(opts), "chapter": target, "port": None, "defences": setting}
            )
            offset = (round_ * len(rows) + i) * per_run
            label = defences_label(target, setting)

            def step(
                phase: str, done: float, _total: float, rate: float, *, o=offset, t=label, r=round_
            ) -> None:
                if progress:
                    where = f"round {r + 1}/{repeat} {t}: {phase}"
                    progress(where, o + min(done, per_run), total, rate)

            result = run_bench(run_opts, step, note)
            runs.append(result)
            if on_run:
                on_run(round_, result)
    return runs, summarise(runs)
