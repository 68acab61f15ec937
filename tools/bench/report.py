"""Rich output: the live progress bar, the result tables and the plain-words verdict."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import TaskID
from rich.table import Table

from tools.progress import progress_bar

from .core import CLIENT_BUSY, CORE_BUSY, OTHER_LOAD, BenchResult, CompareSummary, ProgressFn
from .parserbench import ParserResult


@contextlib.contextmanager
def live_progress(console: Console, title: str) -> Iterator[ProgressFn]:
    """The progress bar of a run or a comparison (``tools.progress``: silent when stderr
    is not a terminal); yields the callback :func:`run_bench` reports to."""
    with progress_bar(console) as bar:
        task: TaskID = bar.add_task(title, total=1.0)

        def update(phase: str, done: float, total: float, rate: float) -> None:
            speed = f" ({rate:,.0f} replies/s)" if rate else ""
            bar.update(
                task,
                description=f"{title} {phase}{speed}",
                completed=min(done, total),
                total=max(total, 1e-9),
            )

        yield update


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _kib(value: int | None) -> str:
    return "?" if value is None else f"{value / 1024:,.1f} MiB"


def _cores(cores: list[int] | None) -> str:
    return "?" if not cores else ",".join(map(str, cores))


def pinning_text(r: BenchResult) -> str:
    """Where each side ran, as the kernel reported it during the run."""
    if not r.pinned:
        return "off (server and client share the cores)"
    clients = sorted({c for cs in r.client_cores or [] for c in cs})
    return f"server on core {_cores(r.server_cores)}, client on core {_cores(clients)}"


def config_text(o: dict[str, Any], event_loop: str = "") -> str:
    """The server config of a started server (or of a comparison's rows), in a line."""
    head = f"PasswordHashIterations = {o['hash_iterations']}, {o['workers']} worker threads, "
    tail = f", event loop {event_loop}" if event_loop else ""
    if o.get("defences") == "both":
        return (
            head + "heartbeat and flood detection off, and on but never firing in the "
            "rows marked +heartbeat/+flood" + tail
        )
    on = o.get("defences") == "on"
    hb = o["heartbeat"] or on
    flood = o["flood"] or on
    counter = "never firing" if on else f"kick at {o.get('flood_counter', 10)}"
    return (
        head
        + f"heartbeat {'on' if hb else 'off'}, flood check "
        + (f"on ({counter})" if flood else "off")
        + tail
    )


def _busy(value: float | None) -> str:
    if value is None:
        return ""
    colour = "red" if value >= CORE_BUSY else "green"
    return f"; its core [{colour}]{value:.0f}%[/] busy"


def result_table(r: BenchResult) -> Table:
    o = r.options
    table = Table(
        title=f"Benchmark: {r.label or r.target}", title_justify="left", show_header=False
    )
    table.add_column("what", style="cyan", no_wrap=True)
    table.add_column("value")
    procs = len(r.client_cpu_pct)
    load = (
        f"mode {o['mode']}, {r.connected} connection{'s' if r.connected != 1 else ''} "
        f"x pipeline {o['pipeline']}, closed loop"
    )
    table.add_row("load", load)
    table.add_row("client", r.client_detail or r.client)
    table.add_row("pinning", pinning_text(r))
    if o.get("chapter"):
        table.add_row(
            "server config",
            config_text(o, r.event_loop)
            + " (the shipped 600000 iterations would measure hashlib)"
            + (f", user database {r.database}" if r.database else ""),
        )
    table.add_row(
        "throughput",
        f"[bold]{r.replies_per_s:,.0f} replies/s[/] ({r.replies:,} replies in {r.window:.2f} s, "
        f"after {o['warmup']:g} s warm-up)"
        + (" [bold red]client-bound[/]" if r.client_bottleneck else ""),
    )
    lat = r.latency_ms
    table.add_row(
        "latency (ms)",
        f"p50 {_ms(lat['p50'])}   p90 {_ms(lat['p90'])}   p99 {_ms(lat['p99'])}   "
        f"max {_ms(lat['max'])}",
    )
    table.add_row("validation", _validation(r))
    cpu = (
        "?"
        if r.server_cpu_pct is None
        else f"{r.server_cpu_pct:.0f}% of one core ({r.server_sys_pct:.0f}% in the kernel)"
    )
    table.add_row("server CPU", cpu + _busy(r.server_core_busy()))
    rss = r.server_rss_kib
    if rss["before"] is not None:
        table.add_row(
            "server RSS", f"{_kib(rss['before'])} before the load, {_kib(rss['after'])} after"
        )
    table.add_row(
        "client CPU",
        ", ".join(
            f"[{'red' if c >= CLIENT_BUSY else 'green'}]{c:.0f}%[/] ({k:.0f}% in the kernel)"
            for c, k in zip(r.client_cpu_pct, r.client_sys_pct, strict=True)
        )
        + f" of one core (per process, {procs} process{'es' if procs != 1 else ''})"
        + _busy(r.client_core_busy()),
    )
    other = r.other_load_pct()
    if other is not None:
        irq = r.irq_pct() or 0.0
        table.add_row(
            "other load",
            f"{other:.0f}% of a core on the pinned cores (other processes; interrupts, "
            f"mostly this run's own network work, {irq:.0f}% more)",
        )
    if r.idle is not None:
        i = r.idle
        per = "?" if i.kib_per_connection is None else f"{i.kib_per_connection:.1f} KiB"
        table.add_row(
            "idle connections",
            f"{i.opened:,} of {i.requested:,} open ({i.answered_first_ping:,} answered a first "
            f"ping); server RSS {_kib(i.rss_before_kib)} -> {_kib(i.rss_after_kib)}: {per} each",
        )
        closed = f"{i.closed_by_server} closed by the server"
        sample_ok = i.sample_answered == i.sample_size
        table.add_row(
            "idle after the run",
            f"[{'green' if sample_ok else 'red'}]{i.sample_answered}/{i.sample_size}[/] of a "
            f"sample answered a ping within 2 s; {closed}"
            + (f"; {i.keepalive_pings:,} keep-alive pings sent" if i.keepalive_pings else ""),
        )
    return table


def _validation(r: BenchResult) -> str:
    checked = "exact bytes, length, code and CRC"
    if r.options["mode"] == "ping":
        checked += "; ping replies are all alike, so order is checked in the other modes"
    else:
        checked += ", request order"
    if r.ok:
        return f"[green]every reply valid[/] ({checked})"
    problems = [f"{k.replace('_', ' ')} {v}" for k, v in r.errors.items() if v]
    for label, value in (
        ("reordered", r.reordered),
        ("disconnects", r.disconnects),
        ("unanswered", r.unanswered),
        ("connect failures", r.connect_failures),
        ("setup failures", r.setup_failures),
    ):
        if value:
            problems.append(f"{label} {value:,}")
    return f"[bold red]{', '.join(problems)}[/] ({checked})"


def verdict(r: BenchResult) -> list[str]:
    """Who limited the rate, in plain words."""
    if not r.replies:
        return ["[bold red]No reply was measured[/]: see the validation row and the notes."]
    lines = []
    busiest = max(r.client_cpu_pct, default=0.0)
    n = len(r.client_cpu_pct)
    server = "?" if r.server_cpu_pct is None else f"{r.server_cpu_pct:.0f}%"
    client_core = r.client_core_busy()
    if r.client_bottleneck:
        why = f"its busiest process ran at {busiest:.0f}% of a core"
        if client_core is not None and client_core >= CORE_BUSY:
            why += f" and its core was {client_core:.0f}% busy"
        lines.append(
            f"[bold red]Client-bound[/]: {why} ({n} process{'es' if n > 1 else ''}, server "
            f"{server}). The rate is the client's limit, not the server's: the server can do "
            "at least this much."
            + ("" if r.client == "native" else " The native client (--client native) is lighter.")
        )
    elif r.server_bottleneck:
        lines.append(
            f"[bold]Server-bound[/]: the server used {server} of a core while the client "
            f"processes stayed at or below {busiest:.0f}%."
        )
    elif r.server_cpu_pct is None:
        lines.append(
            f"The client was not the bottleneck (its processes at most {busiest:.0f}% of a "
            "core); the server's CPU is unknown (pass --server-pid)."
        )
    else:
        lines.append(
            f"Neither side was CPU-bound (server {server} of a core, client at most "
            f"{busiest:.0f}%): the rate is limited by round trips; more connections or a "
            "deeper --pipeline keep more requests in flight."
        )
    other = r.other_load_pct()
    if other is not None and other >= OTHER_LOAD:
        lines.append(
            f"[yellow]Other processes used {other:.0f}% of a core[/] on the pinned cores: the "
            "machine is shared and these rates are lower than a quiet machine gives."
        )
    total = (r.server_cpu_pct or 0.0) + sum(r.client_cpu_pct)
    if not r.pinned and total >= 0.9 * r.cpus * 100:
        lines.append(
            f"[yellow]The machine's {r.cpus} cores were all busy[/] (server + client "
            f"{total:.0f}%): the server and the client competed for CPU."
        )
    return lines


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}%"


def compare_table(summaries: list[CompareSummary], repeat: int, title: str = "") -> Table:
    table = Table(
        title=title
        or f"Comparison: medians of {repeat} interleaved round{'s' if repeat > 1 else ''}",
        title_justify="left",
    )
    for column in (
        "target",
        "replies/s",
        f"vs {summaries[0].target}",
        "p50 ms",
        "p99 ms",
        "server CPU",
        "client CPU",
        "other load",
        "saturated",
        "problems",
    ):
        table.add_column(column, justify="left" if column == "target" else "right")
    for s in summaries:
        if s.ratio is not None:
            ratio = f"{s.ratio:.2f}x"
        else:
            ratio = "[red]client-bound[/]" if s.client_bound else "[red]base client-bound[/]"
        saturated = {
            "client": "[bold red]client[/]",
            "both": "[bold red]both[/]",
            "server": "server",
        }.get(s.limited_by, "neither")
        table.add_row(
            s.target,
            f"{s.replies_per_s:,.0f}" + (" [red]≥[/]" if s.client_bound else ""),
            ratio,
            _ms(s.p50_ms),
            _ms(s.p99_ms),
            _pct(s.server_cpu_pct),
            f"[{'red' if s.client_bound else 'green'}]{s.client_cpu_pct:.0f}%[/]",
            _pct(s.other_load_pct),
            saturated,
            f"[red]{s.errors}[/]" if s.errors else "[green]0[/]",
        )
    return table


def run_line(round_: int, r: BenchResult) -> str:
    side = {
        "client": "  [bold red]client-bound[/]",
        "both": "  [bold red]client-bound[/] (the server's core too)",
        "server": "  server-bound",
    }.get(r.limited_by, "")
    other = r.other_load_pct()
    return (
        f"round {round_ + 1}: {r.label or r.target:<28} {r.replies_per_s:>12,.0f} replies/s  "
        f"p99 {_ms(r.latency_ms['p99'])} ms  server CPU {_pct(r.server_cpu_pct)}  client CPU "
        f"{max(r.client_cpu_pct, default=0):.0f}%"
        + ("" if other is None else f"  other {other:.0f}%")
        + side
        + ("" if r.ok else "  [red]problems[/]")
    )


def parser_table(r: ParserResult) -> Table:
    how = "one coalesced buffer" if not r.chunk else f"{r.chunk:,}-byte chunks"
    table = Table(
        title=f"PacketParser: {r.packets:,} pings from {how}, best of {r.repeat}",
        title_justify="left",
        show_header=False,
    )
    table.add_column("what", style="cyan")
    table.add_column("value")
    table.add_row("packets/s", f"[bold]{r.packets_per_s:,.0f}[/]")
    table.add_row("throughput", f"{r.mib_per_s:,.1f} MiB/s")
    table.add_row("per packet", f"{r.best_seconds / r.packets * 1e9:,.0f} ns")
    table.add_row("runs (s)", "  ".join(f"{t:.3f}" for t in r.times))
    return table
