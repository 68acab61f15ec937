"""The command line: ``python -m tools.attack TOOL [options]``."""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rich.console import Console

from common.protocol import HEADER_LEN, PKG_MAX_ACCEPTED
from tools.progress import progress_bar

from .base import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    AttackError,
    NotLoopback,
    Progress,
    Report,
    error_name,
    host_port,
    resolve_target,
)
from .churn import run_churn
from .flood import run_flood
from .garbage import malformed, run_garbage
from .hold import run_idle, run_slowloris
from .slow_reader import run_slow_reader


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be 1-65535, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, got {text}")
    return value


def _malformed_length(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 0xFFFF or not malformed(value):
        raise argparse.ArgumentTypeError(
            f"{value} is not a malformed length: use 0-{HEADER_LEN - 1} or "
            f"{PKG_MAX_ACCEPTED + 1}-65535"
        )
    return value


@dataclass(frozen=True)
class _Tool:
    help: str
    run: Callable[..., Report]
    count: int
    count_help: str
    duration: float


TOOLS: dict[str, _Tool] = {
    "flood": _Tool(
        "ping back-to-back on one connection (meets chapter 6's flood kick)",
        run_flood,
        500,
        "pings to send",
        10.0,
    ),
    "garbage": _Tool(
        "send a header with an impossible length, then pings (chapter 6 closes the "
        "connection; chapters 1-5 skip the 8 bytes and answer the pings)",
        run_garbage,
        5,
        "pings to send after the malformed header",
        10.0,
    ),
    "slowloris": _Tool(
        "hold connections that send half a packet and then a byte now and then, never "
        "a ping (meets chapter 5's silence kick; the shipped config kicks after "
        "3*20+10 = 70 s)",
        run_slowloris,
        10,
        "connections to open",
        80.0,
    ),
    "slow-reader": _Tool(
        "pipeline requests on one connection and never read a reply (meets chapter 4's "
        "backpressure: it is read no more; and chapter 5's send-stall kick; in chapter 6 "
        "the flood kick gets there first unless Sock_FloodAttackKickEnable = 0 or --paced)",
        run_slow_reader,
        200_000,
        "requests to send",
        10.0,
    ),
    "churn": _Tool(
        "connect, ping and disconnect as fast as possible (meets chapter 3's online "
        "limit and storm guard; use --hold to fill the pool first)",
        run_churn,
        1000,
        "connect/disconnect cycles",
        30.0,
    ),
    "idle": _Tool(
        "open connections and send nothing (meets chapter 5's silence kick; the "
        "shipped config kicks after 3*20+10 = 70 s)",
        run_idle,
        10,
        "connections to open",
        80.0,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.attack",
        description="Misbehave against a chapter server running on this machine, to watch "
        "its defences fire (run the server with --dashboard). Loopback targets only; "
        "every tool stops by itself after --count or --duration.",
    )
    subparsers = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    for name, tool in TOOLS.items():
        sub = subparsers.add_parser(
            name, help=tool.help, description=tool.help[0].upper() + tool.help[1:] + "."
        )
        sub.add_argument(
            "--host",
            default=DEFAULT_HOST,
            help="server address: 127.0.0.0/8, ::1 or localhost only (default: %(default)s)",
        )
        sub.add_argument(
            "--port", type=_port, default=DEFAULT_PORT, help="server port (default: %(default)s)"
        )
        sub.add_argument(
            "--count",
            type=_positive_int,
            default=tool.count,
            help=f"{tool.count_help} (default: %(default)s)",
        )
        sub.add_argument(
            "--duration",
            type=_positive_float,
            default=tool.duration,
            metavar="SECONDS",
            help="stop after this long at the latest (default: %(default)s)",
        )
        sub.add_argument(
            "--timeout",
            type=_positive_float,
            default=5.0,
            metavar="SECONDS",
            help="wait this long for a connect or a reply (default: %(default)s)",
        )
        if name == "garbage":
            sub.add_argument(
                "--length",
                type=_malformed_length,
                default=7,
                help="the header's pkgLen: 0-7 or 29001-65535 (default: %(default)s)",
            )
        elif name == "slowloris":
            sub.add_argument(
                "--interval",
                type=_non_negative_float,
                default=2.0,
                metavar="SECONDS",
                help="send one more byte every this many seconds; 0: nothing after the "
                "half header (default: %(default)s)",
            )
        elif name == "slow-reader":
            sub.add_argument(
                "--request",
                choices=["login", "ping"],
                default="login",
                help="what to pipeline: logins (104-byte replies) fill the server's "
                "buffers 13 times faster than pings (default: %(default)s)",
            )
            sub.add_argument(
                "--rcvbuf",
                type=_positive_int,
                default=1024,
                metavar="BYTES",
                help="our SO_RCVBUF, small so the replies back up fast (default: %(default)s)",
            )
            sub.add_argument(
                "--paced",
                action="store_true",
                help="no burst (--count is not used): a ping and 3 more requests every "
                "150 ms, under chapter 6's flood rule, so only the send-stall kick meets "
                "it; with the shipped config that takes a few minutes (the kernel buffers "
                "the replies first, then the heartbeat's 70 s): lower Sock_SendBufferSize, "
                "Sock_MaxWaitTime and Sock_PingGraceTime to watch it",
            )
        elif name == "churn":
            sub.add_argument(
                "--hold",
                type=_non_negative_int,
                default=0,
                metavar="N",
                help="connections to open first and keep open, to fill the server's pool "
                "(default: %(default)s)",
            )
    _add_soak(subparsers)
    return parser


def _add_soak(subparsers: argparse._SubParsersAction) -> None:
    help_text = (
        "start a chapter and run every attack at once against it for --seconds, while "
        "well-behaved clients check every reply; report each defence's counter, the good "
        "clients' lost replies and latency, and the server's memory, descriptors and "
        "threads (Linux; exit 1 if a good reply was lost or anything failed to settle)"
    )
    soak = subparsers.add_parser(
        "soak", help=help_text, description=help_text[0].upper() + help_text[1:] + "."
    )
    soak.add_argument(
        "--chapter",
        metavar="NAME",
        help="the chapter to start, e.g. 06_flood or 06 (default: the newest); it runs on "
        "an ephemeral port on 127.0.0.1 with the soak's own config",
    )
    soak.add_argument(
        "--seconds",
        type=_positive_float,
        default=60.0,
        help="how long the attacks run; give it 15 or more, or the paced slow reader may "
        "not be kicked in time (default: %(default)s)",
    )
    soak.add_argument(
        "--warmup",
        type=_non_negative_float,
        metavar="SECONDS",
        help="memory is compared from the end of the warm-up on (default: a quarter of "
        "--seconds, at most 30)",
    )
    soak.add_argument(
        "--clients",
        type=_positive_int,
        default=4,
        help="well-behaved clients (default: %(default)s)",
    )
    soak.add_argument(
        "--connections",
        type=_positive_int,
        default=20,
        help="connections idle and slowloris each hold at a time (default: %(default)s)",
    )


_EXTRA_OPTIONS = ("length", "interval", "request", "rcvbuf", "paced", "hold")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    if args.tool == "soak":
        if args.warmup is not None and args.warmup >= args.seconds:
            parser.error("--warmup must be shorter than --seconds")
        return _soak(args, err)
    tool = TOOLS[args.tool]
    extra = {name: getattr(args, name) for name in _EXTRA_OPTIONS if hasattr(args, name)}

    def fail(message: str, code: int) -> int:
        err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        return code

    try:
        # Checked before anything else, so a refused target never sees a packet.
        resolve_target(args.host, args.port)
        start = f"{args.tool} -> {host_port(args.host, args.port)}"
        with progress_line(err, start, args.duration) as progress:
            if progress is not None and args.tool in _PROGRESS_TOOLS:
                extra["progress"] = progress
            report = tool.run(
                args.host,
                args.port,
                count=args.count,
                duration=args.duration,
                timeout=args.timeout,
                **extra,
            )
    except NotLoopback as exc:
        return fail(str(exc), 2)
    except AttackError as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except OSError as exc:
        return fail(f"{args.tool}: {error_name(exc)}", 1)
    console = Console()
    console.print(report.table())
    console.print(f"[bold]{report.tool}:[/] {report.verdict()}", highlight=False, soft_wrap=True)
    return 0


def _soak(args: argparse.Namespace, err: Console) -> int:
    from .soak import run_soak  # imports the benchmark's runner: only when asked for

    try:
        with progress_line(err, "soak: starting the server", args.seconds) as progress:
            report = run_soak(
                args.chapter,
                args.seconds,
                warmup=args.warmup,
                clients=args.clients,
                connections=args.connections,
                progress=progress,
            )
    except AttackError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("[bold red]error:[/] interrupted", highlight=False)
        return 130
    console = Console()
    console.print(report.tables())
    console.print(f"[bold]soak:[/] {report.verdict()}", highlight=False, soft_wrap=True)
    return 0 if report.ok else 1


# The tools that describe their progress in words; the bar itself follows the clock.
_PROGRESS_TOOLS = frozenset({"idle", "slowloris", "churn", "slow-reader"})


@contextlib.contextmanager
def progress_line(console: Console, description: str, seconds: float) -> Iterator[Progress | None]:
    """A progress bar (``tools.progress``) that fills as ``seconds`` pass: every tool stops
    by then, most sooner. Yields the function that replaces the bar's description with the
    tool's own words, or None when stderr is not a terminal (the bar is silent then)."""
    with progress_bar(console) as bar:
        if bar.disable:
            yield None
            return
        task = bar.add_task(description, total=seconds)
        start = time.monotonic()
        done = threading.Event()

        def follow_the_clock() -> None:
            while not done.wait(0.1):
                bar.update(task, completed=min(seconds, time.monotonic() - start))

        clock = threading.Thread(target=follow_the_clock, name="progress", daemon=True)
        clock.start()
        try:
            yield lambda text: bar.update(task, description=text)
        finally:
            done.set()
            clock.join(timeout=1)
