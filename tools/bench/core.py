"""One benchmark run, and a comparison of several targets: the function API behind the
command line (``run_bench(options) -> BenchResult``, ``run_compare(...)``)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .idle import IdleConnections
from .loadgen import (
    CTL_ABORT,
    CTL_DURATION,
    CTL_START,
    CTL_WARMUP,
    ERROR_KINDS,
    HIST_BUCKETS,
    MODES,
    WorkerSpec,
    bucket_upper_seconds,
    worker_main,
)
from .target import (
    BASELINES,
    BenchError,
    ServerProcess,
    ServerSettings,
    check_loopback,
    proc_cpu_seconds,
    proc_rss_kib,
    raise_nofile,
    resolve_target,
    target_features,
)

# A client process this busy (% of one core) was probably what limited the rate.
CLIENT_BUSY = 90.0
# A Python server runs its event loop on one thread under the GIL: about one core is its
# ceiling, and a little idle time between epoll batches is normal even when saturated.
SERVER_BUSY = 80.0
IDLE_SAMPLE = 100
# With --heartbeat: the server checks every 5 s (the smallest Sock_MaxWaitTime it accepts)
# and idle connections ping every 2.5 s, as a live client would.
HEARTBEAT_MAX_WAIT = 5.0


def default_procs() -> int:
    """Half the cores for the client, the rest for the server (at least one)."""
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
    procs: int = field(default_factory=default_procs)
    hash_iterations: int = 1000
    workers: int = 4
    heartbeat: bool = False
    flood: bool = False
    flood_counter: int = 10  # Sock_FloodKickCounter when flood detection is on
    idle_connections: int = 0
    loop: str = "auto"  # event loop of the asyncio baseline
    drain_timeout: float = 5.0

    def validate(self) -> None:
        if self.mode not in MODES:
            raise BenchError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("connections", "pipeline", "procs", "hash_iterations", "workers"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
        if self.duration <= 0 or self.warmup < 0:
            raise BenchError("--duration must be > 0 and --warmup >= 0")
        if self.idle_connections < 0:
            raise BenchError("--idle-connections must be >= 0")
        if (self.chapter is None) == (self.port is None):
            raise BenchError("give either --chapter NAME (start a server) or --port N")
        self.host = check_loopback(self.host)


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
    client_cpu_pct: list[float]
    client_sys_pct: list[float]  # the kernel's share of client_cpu_pct (socket calls)
    client_bottleneck: bool
    server_bottleneck: bool
    cpus: int
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

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_count"] = self.error_count
        data["ok"] = self.ok
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


@contextlib.contextmanager
def _server(opts: BenchOptions, target: str | None) -> Iterator[ServerProcess | None]:
    if target is None:
        yield None
        return
    settings = ServerSettings(
        worker_connections=max(2048, opts.connections + opts.idle_connections + 64),
        hash_iterations=opts.hash_iterations,
        heartbeat=opts.heartbeat,
        max_wait_time=HEARTBEAT_MAX_WAIT,
        flood=opts.flood,
        flood_counter=opts.flood_counter,
        workers=opts.workers,
    )
    server = ServerProcess(target, settings, loop=opts.loop)
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
    procs = min(opts.procs, opts.connections)
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

    with _server(opts, target) as server:
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
                idle.start(HEARTBEAT_MAX_WAIT / 2 if opts.heartbeat else None)
            rss_before = proc_rss_kib(pid) if pid else None
            results, server_cpu, window = _drive(opts, port, procs, pid, progress)
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
    result = _aggregate(
        name, opts, results, server_cpu, window, rss_before, rss_after, idle_report, notes
    )
    result.event_loop, result.database = event_loop, database
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


def _drive(
    opts: BenchOptions, port: int, procs: int, pid: int | None, progress: ProgressFn | None
) -> tuple[list[dict[str, Any]], tuple[float, float] | None, float]:
    """Start the client processes, run the schedule, collect their results."""
    ctx = multiprocessing.get_context("spawn")
    channel = ctx.Queue()
    counts = ctx.RawArray("q", procs)
    ctl = ctx.RawArray("d", 4)
    run_id = secrets.token_hex(3)
    shares = [opts.connections // procs + (i < opts.connections % procs) for i in range(procs)]
    workers = []
    for i, share in enumerate(shares):
        spec = WorkerSpec(
            i,
            opts.host,
            port,
            share,
            opts.pipeline,
            opts.mode,
            run_id,
            drain_timeout=opts.drain_timeout,
        )
        proc = ctx.Process(target=worker_main, args=(spec, channel, counts, ctl), daemon=True)
        proc.start()
        workers.append(proc)
    try:
        if progress:
            progress(f"connecting {opts.connections}", 0, 1, 0)
        ready = 0
        failures: list[str] = []
        deadline = time.monotonic() + 180
        while ready < procs:
            message = _get(channel, deadline, workers)
            if message[0] == "ready":
                ready += 1
            else:
                failures.append(str(message[2]))
        if failures:
            raise BenchError(f"a client process failed: {failures[0]}")
        start = time.monotonic() + 0.2
        ctl[CTL_WARMUP], ctl[CTL_DURATION] = opts.warmup, opts.duration
        ctl[CTL_START] = start
        w_start, w_end = start + opts.warmup, start + opts.warmup + opts.duration
        cpu0 = cpu1 = None
        t0 = t1 = 0.0
        last_total, last_t = 0, time.monotonic()
        rate = 0.0
        while True:
            now = time.monotonic()
            if cpu0 is None and now >= w_start:
                cpu0, t0 = (proc_cpu_seconds(pid) if pid else None), now
            if now >= w_end:
                cpu1, t1 = (proc_cpu_seconds(pid) if pid else None), now
                break
            total = sum(counts)
            if now - last_t >= 0.5:
                rate = (total - last_total) / (now - last_t)
                last_total, last_t = total, now
            if progress:
                if now < w_start:
                    progress("warming up", now - start, opts.warmup + opts.duration, rate)
                else:
                    progress("measuring", now - start, opts.warmup + opts.duration, rate)
            wake = min(now + 0.1, w_start if cpu0 is None else w_end)
            time.sleep(max(0.0, wake - time.monotonic()))
        if progress:
            progress("draining", 1, 1, rate)
        results: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + opts.drain_timeout + 60
        while len(results) < procs:
            message = _get(channel, deadline, workers)
            if message[0] == "result":
                results[message[1]] = message[2]
            elif message[0] == "failed":
                raise BenchError(f"a client process failed: {message[2]}")
        server_cpu = None
        if cpu0 is not None and cpu1 is not None and t1 > t0:
            server_cpu = (
                (cpu1[0] - cpu0[0]) / (t1 - t0) * 100,
                (cpu1[1] - cpu0[1]) / (t1 - t0) * 100,
            )
        return [results[i] for i in range(procs)], server_cpu, opts.duration
    except BaseException:
        ctl[CTL_ABORT] = 1
        raise
    finally:
        for proc in workers:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        channel.close()
        channel.join_thread()


def _get(channel: Any, deadline: float, workers: list[Any]) -> tuple[Any, ...]:
    """The next message from a client process, failing clearly if they die or stall."""
    import queue

    while True:
        try:
            return channel.get(timeout=0.5)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise BenchError("the client processes did not report in time") from None
            dead = [p for p in workers if p.exitcode not in (None, 0)]
            if dead:
                raise BenchError(f"a client process died (exit code {dead[0].exitcode})") from None


def _aggregate(
    name: str,
    opts: BenchOptions,
    results: list[dict[str, Any]],
    server_cpu: tuple[float, float] | None,
    window: float,
    rss_before: int | None,
    rss_after: int | None,
    idle: IdleReport | None,
    notes: list[str],
) -> BenchResult:
    hist = [0] * HIST_BUCKETS
    errors = dict.fromkeys(ERROR_KINDS, 0)
    for r in results:
        for i, count in enumerate(r["hist"]):
            hist[i] += count
        for kind, count in r["errors"].items():
            errors[kind] += count
    replies = sum(r["replies"] for r in results)
    windows = [r["window"] for r in results if r["window"] > 0]
    measured = statistics.fmean(windows) if windows else window
    client_cpu = [r["cpu_seconds"] / r["window"] * 100 if r["window"] else 0.0 for r in results]
    client_sys = [r["sys_seconds"] / r["window"] * 100 if r["window"] else 0.0 for r in results]
    client_bound = bool(client_cpu) and max(client_cpu) >= CLIENT_BUSY
    server_bound = server_cpu is not None and server_cpu[0] >= SERVER_BUSY
    connected = sum(r["connected"] for r in results)
    disconnects = sum(r["disconnects"] for r in results)
    if connected and disconnects >= connected:
        why = " (--flood is on: a client that never pauses is a flood)" if opts.flood else ""
        notes.append(f"the server closed every load connection{why}")
    connect_failures = sum(r["connect_failures"] for r in results)
    if connect_failures:
        first = next(r["connect_error"] for r in results if r["connect_error"])
        notes.append(f"{connect_failures} connections failed to connect ({first})")
    return BenchResult(
        target=name,
        options=asdict(opts),
        replies=replies,
        window=measured,
        replies_per_s=replies / measured if measured else 0.0,
        latency_ms=percentiles(hist, max((r["max_latency"] for r in results), default=0.0)),
        errors=errors,
        reordered=sum(r["reordered"] for r in results),
        disconnects=disconnects,
        unanswered=sum(r["unanswered"] for r in results),
        connected=connected,
        connect_failures=connect_failures,
        setup_failures=sum(r["setup_failures"] for r in results),
        server_cpu_pct=None if server_cpu is None else server_cpu[0],
        server_sys_pct=None if server_cpu is None else server_cpu[1],
        server_rss_kib={"before": rss_before, "after": rss_after},
        client_cpu_pct=client_cpu,
        client_sys_pct=client_sys,
        client_bottleneck=client_bound,
        server_bottleneck=server_bound,
        cpus=os.cpu_count() or 1,
        idle=idle,
        notes=notes,
    )


@dataclass
class CompareSummary:
    target: str
    runs: int
    replies_per_s: float  # medians over the runs
    ratio: float  # against the first target
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_pct: float | None
    client_cpu_pct: float
    errors: int  # invalid + reordered replies, disconnects and unanswered requests
    client_bottleneck_runs: int


def run_compare(
    opts: BenchOptions,
    targets: list[str],
    repeat: int = 3,
    progress: ProgressFn | None = None,
    note: Callable[[str], None] | None = None,
    on_run: Callable[[int, BenchResult], None] | None = None,
) -> tuple[list[BenchResult], list[CompareSummary]]:
    """Run the targets interleaved (A B A B …), a fresh server each run, ``repeat``
    rounds; summarise with medians and ratios against the first target."""
    if repeat < 1:
        raise BenchError("--repeat must be at least 1")
    names = [resolve_target(t) for t in targets]
    if len(names) < 2:
        raise BenchError("--compare needs at least two targets")
    runs: list[BenchResult] = []
    for round_ in range(repeat):
        for target in names:
            run_opts = BenchOptions(**{**asdict(opts), "chapter": target, "port": None})
            result = run_bench(run_opts, progress, note)
            runs.append(result)
            if on_run:
                on_run(round_, result)
    summaries = []
    base = None
    for target in names:
        mine = [r for r in runs if r.target == target]
        rate = statistics.median(r.replies_per_s for r in mine)
        if base is None:
            base = rate
        cpus = [r.server_cpu_pct for r in mine if r.server_cpu_pct is not None]
        summaries.append(
            CompareSummary(
                target,
                len(mine),
                rate,
                rate / base if base else 0.0,
                statistics.median(r.latency_ms["p50"] for r in mine),
                statistics.median(r.latency_ms["p99"] for r in mine),
                statistics.median(r.latency_ms["max"] for r in mine),
                statistics.median(cpus) if cpus else None,
                statistics.median(max(r.client_cpu_pct, default=0.0) for r in mine),
                sum(r.error_count + r.reordered + r.disconnects + r.unanswered for r in mine),
                sum(r.client_bottleneck for r in mine),
            )
        )
    return runs, summaries
