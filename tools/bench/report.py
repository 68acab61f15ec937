"""Rich output: the live progress bar, the result tables and the plain-words verdict."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .core import CLIENT_BUSY, BenchResult, CompareSummary, ProgressFn
from .parserbench import ParserResult


@contextlib.contextmanager
def live_progress(console: Console, title: str) -> Iterator[ProgressFn]:
    """A progress bar for one run; yields the callback :func:`run_bench` reports to."""
    progress = Progress(
        TextColumn("[bold]{task.fields[title]}[/] {task.description:<22}"),
        BarColumn(),
        TimeRemainingColumn(),
        TextColumn("[cyan]{task.fields[rate]:>14}[/]"),
        console=console,
        transient=True,
    )
    task: TaskID = progress.add_task("starting", total=1.0, title=title, rate="")

    def update(phase: str, done: float, total: float, rate: float) -> None:
        progress.update(
            task,
            description=phase,
            completed=min(done, total),
            total=max(total, 1e-9),
            rate=f"{rate:,.0f} replies/s" if rate else "",
        )

    with progress:
        yield update


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _kib(value: int | None) -> str:
    return "?" if value is None else f"{value / 1024:,.1f} MiB"


def result_table(r: BenchResult) -> Table:
    o = r.options
    table = Table(title=f"Benchmark: {r.target}", title_justify="left", show_header=False)
    table.add_column("what", style="cyan", no_wrap=True)
    table.add_column("value")
    procs = len(r.client_cpu_pct)
    load = (
        f"mode {o['mode']}, {r.connected} connection{'s' if r.connected != 1 else ''} "
        f"x pipeline {o['pipeline']}, "
        f"{procs} client process{'es' if procs != 1 else ''}"
    )
    table.add_row("load", load)
    if o.get("chapter"):
        table.add_row(
            "server config",
            f"PasswordHashIterations = {o['hash_iterations']} (the shipped 600000 would measure "
            f"hashlib), {o['workers']} worker threads, heartbeat "
            f"{'on' if o['heartbeat'] else 'off'}, flood check "
            f"{('on (kick at ' + str(o.get('flood_counter', 10)) + ')') if o['flood'] else 'off'}"
            + (f", event loop {r.event_loop}" if r.event_loop else "")
            + (f", user database {r.database}" if r.database else ""),
        )
    table.add_row(
        "throughput",
        f"[bold]{r.replies_per_s:,.0f} replies/s[/] ({r.replies:,} replies in {r.window:.2f} s, "
        f"after {o['warmup']:g} s warm-up)",
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
    table.add_row("server CPU", cpu)
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
        + " of one core per process",
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
    if r.client_bottleneck:
        lines.append(
            f"[bold red]The client was the bottleneck[/]: its busiest process ran at "
            f"{busiest:.0f}% of a core ({n} process{'es' if n > 1 else ''}, server {server}). "
            "The rate says more about the client than the server: raise --procs, or run on "
            "more cores."
        )
    elif r.server_bottleneck:
        lines.append(
            f"[bold]The server was the bottleneck[/]: it used {server} of a core while the "
            f"client processes stayed at or below {busiest:.0f}%."
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
    total = (r.server_cpu_pct or 0.0) + sum(r.client_cpu_pct)
    if total >= 0.9 * r.cpus * 100:
        lines.append(
            f"[yellow]The machine's {r.cpus} cores were all busy[/] (server + client "
            f"{total:.0f}%): the server and the client competed for CPU."
        )
    return lines


def compare_table(summaries: list[CompareSummary], repeat: int) -> Table:
    table = Table(
        title=f"Comparison: medians of {repeat} interleaved run{'s' if repeat > 1 else ''} each",
        title_justify="left",
    )
    for column in (
        "target",
        "replies/s",
        f"vs {summaries[0].target}",
        "p50 ms",
        "p99 ms",
        "max ms",
        "server CPU",
        "client CPU",
        "problems",
    ):
        table.add_column(column, justify="left" if column == "target" else "right")
    for s in summaries:
        table.add_row(
            s.target,
            f"{s.replies_per_s:,.0f}",
            f"{s.ratio:.2f}x",
            _ms(s.p50_ms),
            _ms(s.p99_ms),
            _ms(s.max_ms),
            "?" if s.server_cpu_pct is None else f"{s.server_cpu_pct:.0f}%",
            f"[{'red' if s.client_cpu_pct >= CLIENT_BUSY else 'green'}]{s.client_cpu_pct:.0f}%[/]",
            f"[red]{s.errors}[/]" if s.errors else "[green]0[/]",
        )
    return table


def run_line(round_: int, r: BenchResult) -> str:
    return (
        f"round {round_ + 1}: {r.target:<14} {r.replies_per_s:>12,.0f} replies/s  "
        f"p99 {_ms(r.latency_ms['p99'])} ms  server CPU "
        f"{'?' if r.server_cpu_pct is None else f'{r.server_cpu_pct:.0f}%'}  client CPU "
        f"{max(r.client_cpu_pct, default=0):.0f}%" + ("" if r.ok else "  [red]problems[/]")
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
