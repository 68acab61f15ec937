"""The command line: ``python -m tools.bench [options]`` and ``python -m tools.bench parser``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.highlighter import RegexHighlighter
from rich.text import Text
from rich.theme import Theme

from .core import (
    CLIENT_BUSY,
    CORE_BUSY,
    SERVER_BUSY,
    BenchOptions,
    BenchResult,
    default_procs,
    run_bench,
    run_compare,
)
from .loadgen import MIXED_SCHEDULE, MODES
from .parserbench import parser_bench
from .target import BASELINES, BenchError, chapters

THEME = Theme(
    {
        "help.option": "bold cyan",
        "help.metavar": "yellow",
        "help.heading": "bold magenta",
        "help.command": "bold green",
    }
)


class HelpHighlighter(RegexHighlighter):
    base_style = "help."
    highlights = [  # noqa: RUF012 (rich's documented way to declare highlights)
        r"(?m)^(?P<heading>[A-Za-z][\w ,()/-]*:)$",
        r"(?P<option>(?<![\w-])--?[a-z][\w-]*)",
        r"(?P<metavar>\b[A-Z][A-Z_]{0,}\b(?![a-z]))",
        r"(?P<command>python -m tools\.[\w.]+(?: parser| chart)?)",
    ]


class RichParser(argparse.ArgumentParser):
    """argparse with its help and errors printed through rich."""

    def print_help(self, file: Any = None) -> None:
        console = Console(theme=THEME, highlighter=HelpHighlighter(), file=file)
        console.print(Text(self.format_help()), highlight=True)

    def error(self, message: str) -> NoReturn:
        Console(stderr=True).print(
            f"[bold red]error:[/] {message}\n(see [bold]{self.prog} --help[/])", highlight=False
        )
        sys.exit(2)


MIXED_DOC = (
    f"{MIXED_SCHEDULE.count('ping') * 5}%% ping, {MIXED_SCHEDULE.count('login') * 5}%% login, "
    f"{MIXED_SCHEDULE.count('register') * 5}%% register"
)


def build_parser() -> RichParser:
    parser = RichParser(
        prog="python -m tools.bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Load a chapter's server (or the asyncio baseline) on loopback and measure it:\n"
            "replies/s, latency percentiles, each side's CPU and core, with every reply checked\n"
            "(exact length, code and CRC, and request order).\n\n"
            "examples:\n"
            "  python -m tools.bench --chapter asyncio --connections 100 --duration 5\n"
            "  python -m tools.bench --chapter 02_epoll --connections 100 --pipeline 16\n"
            "  python -m tools.bench --compare asyncio 02_epoll 06_flood --repeat 3 \\\n"
            "      --json p1.json\n"
            "  python -m tools.bench --compare asyncio 05_timers 06_flood --defences both\n"
            "  python -m tools.bench --chapter 03_pool --idle-connections 10000\n"
            "  python -m tools.bench --port 5678            (a server you started yourself)\n"
            "  python -m tools.bench chart p1.json p16.json -o chart.svg   (the picture)\n"
            "  python -m tools.bench parser                 (the packet parser alone)"
        ),
        epilog=(
            "Targets: "
            + ", ".join(BASELINES)
            + "\n(tools/asyncio_server.py; the uvloop ones need the bench extra) or a chapter:\n"
            + (", ".join(chapters()) or "none yet")
            + ".\n\nA started server gets a temporary config: any free port, a big pool,\n"
            "Sock_RecyConnectionWaitTime = 1, heartbeat and flood checks off unless asked, a\n"
            "throwaway user database on tmpfs, PasswordHashIterations = --hash-iterations.\n\n"
            "The load client: by default the native one (tools/bench/native/loadclient.c: one\n"
            "thread, epoll, closed loop), compiled on first use with the system's C compiler\n"
            "($CC, cc, gcc or clang) into ~/.cache/pynginx-course (PYNGINX_BENCH_CACHE or\n"
            "XDG_CACHE_HOME move it); without a compiler, the Python client\n"
            "(tools/bench/loadgen.py). The report names the client that ran.\n\n"
            f"Client-bound: a client process used >= {CLIENT_BUSY:.0f}% of a core, or (pinned) "
            f"the client's\ncore was >= {CORE_BUSY:.0f}% busy, whoever used it. The rate is "
            "then the client's limit: the\ntable marks it (≥) and gives it no ratio. "
            f"Server-bound: the server used >= {SERVER_BUSY:.0f}%\nof a core (one event-loop "
            f"thread under the GIL), or its pinned core was >= {CORE_BUSY:.0f}% busy."
        ),
    )
    target = parser.add_argument_group("target (loopback only)")
    target.add_argument(
        "--chapter",
        metavar="NAME",
        help="start this server: asyncio or a chapter (02_epoll, 02, …)",
    )
    target.add_argument(
        "--compare",
        nargs="+",
        metavar="NAME",
        help="run these targets interleaved (A B A B …), a fresh server each run; medians and "
        "ratios against the first (none for a client-bound row)",
    )
    target.add_argument(
        "--repeat", type=int, default=3, metavar="R", help="rounds for --compare (default: 3)"
    )
    target.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDR",
        help="a server already running: its address (default: 127.0.0.1; other hosts are refused)",
    )
    target.add_argument("--port", type=int, metavar="N", help="a server already running: its port")
    target.add_argument(
        "--server-pid",
        type=int,
        metavar="PID",
        help="with --port: its pid, for server CPU and memory",
    )

    load = parser.add_argument_group("load")
    load.add_argument(
        "--connections",
        "-c",
        type=int,
        default=100,
        metavar="C",
        help="connections driving load (default: 100)",
    )
    load.add_argument(
        "--pipeline",
        "-p",
        type=int,
        default=1,
        metavar="P",
        help="requests in flight per connection (default: 1)",
    )
    load.add_argument(
        "--mode",
        choices=MODES,
        default="ping",
        help=f"what to send (default: ping); mixed = {MIXED_DOC}, in a fixed order; "
        "login and mixed first register one user per connection",
    )
    load.add_argument(
        "--duration",
        "-d",
        type=float,
        default=5.0,
        metavar="S",
        help="measured seconds (default: 5)",
    )
    load.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds of load before measuring (default: 1)",
    )
    load.add_argument(
        "--client",
        choices=["auto", "native", "python"],
        default="auto",
        help="load client: native (C, built on first use), python, or auto = native where a C "
        "compiler exists (default: auto)",
    )
    load.add_argument(
        "--procs",
        type=int,
        default=None,
        metavar="N",
        help="client processes, each with its own epoll loop (default: 1 native, or for the "
        f"Python client half the cores: {default_procs()})",
    )
    load.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin the server to one core and each client process to another, where there are "
        "two or more (default: on; --no-pin to share)",
    )
    load.add_argument(
        "--idle-connections",
        type=int,
        default=0,
        metavar="N",
        help="open N idle connections first; report server memory per connection and "
        "whether they still answer",
    )

    server = parser.add_argument_group("server config (for a server the tool starts)")
    server.add_argument(
        "--hash-iterations",
        type=int,
        default=1000,
        metavar="N",
        help="PasswordHashIterations (default: 1000, cheap on purpose; the shipped 600000 "
        "would measure hashlib)",
    )
    server.add_argument(
        "--workers",
        type=int,
        default=4,
        metavar="N",
        help="ProcMsgRecvWorkThreadCount (default: 4)",
    )
    server.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="WorkerProcesses, for a chapter with worker processes (7 on); pinned, the server "
        "gets N cores (default: 1)",
    )
    server.add_argument(
        "--defences",
        choices=["off", "on", "both"],
        default="off",
        help="heartbeat and flood detection of the chapters that have them: on = checking every "
        "packet but never firing (Sock_MaxWaitTime = 5, Sock_FloodKickCounter = 1000000000), "
        "as in a real deployment; both = with --compare, a row for each (default: off)",
    )
    server.add_argument(
        "--heartbeat",
        action="store_true",
        help="turn the heartbeat check on (Sock_MaxWaitTime = 5; idle connections then "
        "ping every 2.5 s)",
    )
    server.add_argument(
        "--flood",
        action="store_true",
        help="turn flood detection on (a pipelining client is a flood: expect kicks)",
    )
    server.add_argument(
        "--flood-counter",
        type=int,
        default=10,
        metavar="N",
        help="Sock_FloodKickCounter with --flood (default: 10, the original's); a huge value "
        "keeps the check running on every packet without ever firing",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--json", type=Path, metavar="FILE", help="also write every number to FILE as JSON"
    )
    output.add_argument(
        "--chart",
        type=Path,
        metavar="FILE",
        help="also draw replies/s as an SVG chart (python -m tools.bench chart merges "
        "several runs)",
    )
    return parser


def build_chart_parser() -> RichParser:
    parser = RichParser(
        prog="python -m tools.bench chart",
        description="Draw replies/s per target per setting as an SVG, from the JSON files of "
        "--json (one panel per file, e.g. pipeline 1 and pipeline 16).",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="JSON from --json")
    parser.add_argument(
        "--output", "-o", type=Path, required=True, metavar="SVG", help="where to write the chart"
    )
    parser.add_argument(
        "--title", default="Replies per second (higher is better)", help="the chart's title"
    )
    return parser


def build_parser_bench_parser() -> RichParser:
    parser = RichParser(
        prog="python -m tools.bench parser",
        description="Time common.protocol.PacketParser alone: N ping packets from one "
        "coalesced buffer (no sockets), best of R runs.",
    )
    parser.add_argument(
        "--packets",
        "-n",
        type=int,
        default=1_000_000,
        metavar="N",
        help="packets to parse (default: 1,000,000)",
    )
    parser.add_argument(
        "--repeat", type=int, default=5, metavar="R", help="runs; the best counts (default: 5)"
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=0,
        metavar="BYTES",
        help="feed the buffer this many bytes at a time (default: 0 = all at once)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the numbers to FILE as JSON"
    )
    return parser


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _write_chart(
    path: Path | None, documents: list[dict[str, Any]], title: str | None = None
) -> None:
    if path is None:
        return
    from .chart import panels_from, render

    panels = [panels_from(d) for d in documents]
    path.write_text(render(panels, title) if title else render(panels))


def _config(
    argv: list[str], opts: BenchOptions, runs: list[BenchResult], repeat: int, defences: str
) -> dict[str, Any]:
    """What a table needs beside the numbers: the command, the client, the pinning, the
    server config and the load."""
    from .report import config_text, pinning_text

    first = runs[0]
    settings = {**asdict(opts), "defences": defences}
    return {
        "command": "python -m tools.bench " + shlex.join(argv),
        "client": "/".join(sorted({r.client for r in runs})),
        "client_detail": first.client_detail,
        # Runs of one comparison can be pinned differently (a server with two worker
        # processes takes both cores of a 2-core machine, so nothing is pinned for it):
        # say each way once rather than the first run's for all.
        "pinning": pinning_text(first)
        if len({pinning_text(r) for r in runs}) == 1
        else "; ".join(dict.fromkeys(f"{pinning_text(r)} ({r.label or r.target})" for r in runs)),
        "server_config": config_text(settings),
        "mode": opts.mode,
        "connections": opts.connections,
        "pipeline": opts.pipeline,
        "warmup": opts.warmup,
        "duration": opts.duration,
        "repeat": repeat,
        "hash_iterations": opts.hash_iterations,
        "workers": opts.workers,
        "defences": defences,
        "heartbeat": opts.heartbeat,
        "flood": opts.flood,
        "cpus": first.cpus,
    }


def _chart_main(argv: list[str], out: Console, err: Console) -> int:
    from .chart import ChartError, panels_from, render

    args = build_chart_parser().parse_args(argv)
    panels = []
    for path in args.files:
        try:
            panels.append(panels_from(json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError, ChartError) as exc:
            err.print(f"[bold red]error:[/] {path}: {exc}", highlight=False, soft_wrap=True)
            return 2
    args.output.write_text(render(panels, args.title))
    out.print(f"wrote {args.output} ({len(panels)} panel{'s' if len(panels) > 1 else ''})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Console()
    if not out.is_terminal:
        out = Console(width=132)  # a file or a pipe: room for the comparison's columns
    err = Console(stderr=True)
    if argv and argv[0] == "chart":
        return _chart_main(argv[1:], out, err)
    if argv and argv[0] == "parser":
        args = build_parser_bench_parser().parse_args(argv[1:])
        try:
            result = parser_bench(args.packets, args.repeat, args.chunk)
        except ValueError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return 2
        from .report import parser_table

        out.print(parser_table(result))
        _write_json(
            args.json, {"kind": "parser", **result.__dict__, "packets_per_s": result.packets_per_s}
        )
        return 0

    args = build_parser().parse_args(argv)
    opts = BenchOptions(
        chapter=args.chapter,
        host=args.host,
        port=args.port,
        server_pid=args.server_pid,
        connections=args.connections,
        pipeline=args.pipeline,
        mode=args.mode,
        duration=args.duration,
        warmup=args.warmup,
        procs=args.procs,
        client=args.client,
        pin=args.pin,
        hash_iterations=args.hash_iterations,
        workers=args.workers,
        processes=args.processes,
        defences="on" if args.defences == "both" else args.defences,
        heartbeat=args.heartbeat,
        flood=args.flood,
        flood_counter=args.flood_counter,
        idle_connections=args.idle_connections,
    )
    from .report import compare_table, live_progress, result_table, run_line, verdict

    printed: set[str] = set()

    def note(text: str) -> None:
        if text not in printed:
            printed.add(text)
            err.print(f"[yellow]note:[/] {text}", highlight=False)

    try:
        if args.defences == "both" and not args.compare:
            raise BenchError("--defences both makes two rows of each chapter: it needs --compare")
        if args.compare:
            if args.chapter or args.port is not None:
                raise BenchError("--compare starts its own servers: drop --chapter/--port")
            opts.chapter = args.compare[0]  # for validation; each run sets its own
            opts.validate()

            def on_run(round_: int, result: BenchResult) -> None:
                err.print(run_line(round_, result), highlight=False)
                for text in result.notes:
                    note(text)

            with live_progress(err, "compare") as progress:
                runs, summaries = run_compare(
                    opts, args.compare, args.repeat, progress, note, on_run, args.defences
                )
            config = _config(argv, opts, runs, args.repeat, args.defences)
            title = (
                f"Comparison: medians of {args.repeat} interleaved round"
                f"{'s' if args.repeat > 1 else ''}; {config['client']} client; "
                f"{config['pinning']}"
            )
            out.print(compare_table(summaries, args.repeat, title))
            out.print(f"command: {config['command']}", highlight=False, soft_wrap=True)
            out.print(f"server config: {config['server_config']}", highlight=False)
            busy = sorted({r.label or r.target for r in runs if r.client_bottleneck})
            if busy:
                bound = sum(r.client_bottleneck for r in runs)
                out.print(
                    f"[bold red]Client-bound[/] in {bound} of {len(runs)} runs "
                    f"({', '.join(busy)}): those rates are the client's limit, so no ratio is "
                    "given for them (the server managed at least that)."
                )
            else:
                busiest = max(max(r.client_cpu_pct, default=0.0) for r in runs)
                out.print(
                    f"No run was client-bound (busiest client process {busiest:.0f}% of a core)."
                )
            document = {
                "kind": "compare",
                "command": config["command"],
                "config": config,
                "runs": [r.as_dict() for r in runs],
                "summary": [s.__dict__ for s in summaries],
            }
            _write_json(args.json, document)
            _write_chart(args.chart, [document])
            return 0 if all(r.ok for r in runs) else 1
        with live_progress(err, opts.chapter or f"port {opts.port}") as progress:
            result = run_bench(opts, progress, note)
    except BenchError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: servers and client processes stopped")
        return 130
    for text in result.notes:
        note(text)
    out.print(result_table(result))
    for line in verdict(result):
        out.print(line)
    config = _config(argv, opts, [result], 1, args.defences)
    document = {
        "kind": "run",
        "command": config["command"],
        "config": config,
        "result": result.as_dict(),
    }
    _write_json(args.json, document)
    _write_chart(args.chart, [document])
    return 0 if result.ok else 1
