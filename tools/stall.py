"""The stall experiment: ``python -m tools.stall --chapter 03_pool`` (chapter 4's lesson).

Up to chapter 3 the event-loop thread runs the business logic itself, and a login hashes
its password with PBKDF2 (600000 iterations in the shipped ``nginx.conf``, a few tenths of
a second). While one login hashes, nobody else is served: not even a ping, which costs
microseconds. Chapter 4 moves the logic to worker threads. This tool measures the
difference instead of asserting it:

1. start the chosen chapter in a subprocess (``python -m chapters.NN_name --config
   <temp conf>``: any free port, a throwaway user database, heartbeat and flood detection
   off) and register one user;
2. *baseline*: one pinger does a ping round trip every 20 ms, alone, for about a second;
3. *load*: for ``--duration`` seconds, ``--login-clients`` threads log in back-to-back
   while the pinger keeps going;
4. report logins completed, pings completed, and ping latency (p50/p99/max) with and
   without logins running. ``--compare 03_pool 04_sendqueue`` runs both and prints them
   side by side.

Loopback only; every socket has a timeout; the server subprocess is always stopped.
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.protocol import Login, MsgCode, Packet, Register, Status
from tools import chapters as ch
from tools.bench.target import BenchError, ServerSettings
from tools.bench.target import ServerProcess as BenchServer
from tools.client import Client, login_packet, ping_packet, register_packet
from tools.progress import progress_bar

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DEFAULT_ITERATIONS = 600_000  # the shipped nginx.conf's PasswordHashIterations
PING_INTERVAL = 0.020
USERNAME = "stall"
PASSWORD = "stall-password"

# progress(what is running now, seconds of the run done): a run lasts ``baseline +
# duration`` seconds once its server is up.
Progress = Callable[[str, float], None]


class StallError(Exception):
    """The experiment could not run (unknown chapter, server would not start …)."""


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (a value that was actually measured), None if no samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class StallResult:
    """One run. Latencies are in milliseconds, one entry per completed round trip."""

    chapter: str
    duration: float
    login_clients: int
    iterations: int
    workers: int
    logins: int = 0  # login round trips completed inside the load window
    login_ms: list[float] = field(default_factory=list)
    ping_ms: list[float] = field(default_factory=list)  # pings sent while logins ran
    baseline_ms: list[float] = field(default_factory=list)  # pings sent before any login
    errors: list[str] = field(default_factory=list)

    @property
    def pings(self) -> int:
        return len(self.ping_ms)

    def ping(self, q: float) -> float | None:
        return percentile(self.ping_ms, q)

    def baseline(self, q: float) -> float | None:
        return percentile(self.baseline_ms, q)


# ----------------------------------------------------------------------------------------
# The server under test
# ----------------------------------------------------------------------------------------


class ServerProcess:
    """The chapter in a subprocess (``tools.bench``'s server runner: a temporary config
    with a port chosen by the OS, heartbeat and flood detection off, since a ping every
    20 ms is exactly what chapter 6 calls a flood and the experiment is about the event
    loop, not the defences), as a context manager that always stops it."""

    def __init__(self, chapter: str, iterations: int, workers: int) -> None:
        self.chapter = chapter
        settings = ServerSettings(
            worker_connections=64, hash_iterations=iterations, workers=workers
        )
        self._server = BenchServer(chapter, settings)
        self.port: int | None = None

    def __enter__(self) -> ServerProcess:
        try:
            self.port = self._server.start()
        except BenchError as exc:
            self._server.stop()
            raise StallError(str(exc)) from None
        except BaseException:
            self._server.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def check_alive(self) -> None:
        if not self._server.alive():
            raise StallError(
                f"{self.chapter} exited during the run:\n" + "\n".join(self._server.tail)
            )


# ----------------------------------------------------------------------------------------
# The clients
# ----------------------------------------------------------------------------------------


@dataclass
class _Shared:
    """What the main thread tells the client threads, and what they hand back."""

    go: threading.Event = field(default_factory=threading.Event)  # the load phase starts
    stop: threading.Event = field(default_factory=threading.Event)  # stop sending
    lock: threading.Lock = field(default_factory=threading.Lock)
    pings: list[tuple[float, float]] = field(default_factory=list)  # (sent at, seconds)
    logins: list[tuple[float, float]] = field(default_factory=list)  # (done at, seconds)
    errors: list[str] = field(default_factory=list)
    cut: bool = False  # the main thread gave up waiting and closed the sockets

    def error(self, who: str, exc: BaseException) -> None:
        if self.cut:
            text = "still waiting for a reply at the end: cut off"
        elif isinstance(exc, TimeoutError):
            text = "timed out waiting for a reply"
        elif isinstance(exc, OSError) and exc.strerror:
            text = exc.strerror
        else:
            text = str(exc) or type(exc).__name__
        with self.lock:
            self.errors.append(f"{who}: {text}")


def _is_pong(reply: Packet) -> bool:
    return reply.code == MsgCode.PING and not reply.body


def _login_ok(reply: Packet) -> bool:
    return (
        reply.code == MsgCode.LOGIN
        and len(reply.body) == Login.SIZE
        and Login.decode(reply.body).password == Status.OK.name
    )


def _pinger(client: Client, shared: _Shared) -> None:
    """A ping round trip every PING_INTERVAL, from the baseline to the end of the load.

    A ping that takes longer than the interval is followed by the next one at once, never
    by a burst of catch-up pings: each sample is one ping with nothing else queued."""
    request = ping_packet()
    next_at = time.monotonic()
    try:
        while not shared.stop.wait(max(0.0, next_at - time.monotonic())):
            sent = time.monotonic()
            reply = client.request(request)
            took = time.monotonic() - sent
            if not _is_pong(reply):
                raise ValueError(f"unexpected reply to a ping: code {reply.code}")
            with shared.lock:
                shared.pings.append((sent, took))
            next_at = max(next_at + PING_INTERVAL, time.monotonic())
    except (OSError, ValueError) as exc:
        shared.error("pinger", exc)


def _login_loop(client: Client, shared: _Shared, timeout: float, who: str) -> None:
    """Log in back-to-back, from the start of the load until told to stop."""
    request = login_packet(USERNAME, PASSWORD)
    if not shared.go.wait(timeout):
        return
    try:
        while not shared.stop.is_set():
            sent = time.monotonic()
            reply = client.request(request)
            done = time.monotonic()
            if not _login_ok(reply):
                raise ValueError(f"login was not answered OK (code {reply.code})")
            with shared.lock:
                shared.logins.append((done, done - sent))
    except (OSError, ValueError) as exc:
        shared.error(who, exc)


def _register(port: int, timeout: float) -> None:
    with Client(HOST, port, timeout=timeout) as client:
        reply = client.request(register_packet(USERNAME, PASSWORD))
    if reply.code != MsgCode.REGISTER or len(reply.body) != Register.SIZE:
        raise StallError(f"unexpected reply to register: code {reply.code}")
    status = Register.decode(reply.body).itype
    if status != Status.OK:
        raise StallError(f"register answered {status} instead of OK")


def _keep_time(seconds: float, report: Callable[[float], None]) -> None:
    """Sleep ``seconds``, calling ``report(seconds done)`` about ten times a second."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        report(seconds - left)
        time.sleep(min(0.1, left))
    report(seconds)


def resolve_chapter(ref: str) -> str:
    """``3``, ``03``, ``03_pool`` or ``chapters/03_pool`` -> ``03_pool``."""
    try:
        return ch.resolve(ROOT, ref).name
    except LookupError as exc:
        raise StallError(str(exc)) from None


def run_stall(
    chapter: str,
    *,
    duration: float = 5.0,
    login_clients: int = 2,
    iterations: int = DEFAULT_ITERATIONS,
    workers: int = 4,
    baseline: float = 1.0,
    timeout: float = 10.0,
    progress: Progress | None = None,
) -> StallResult:
    """Run the experiment once against ``chapter`` (a name ``tools.chapters.resolve``
    understands: ``3``, ``03``, ``03_pool``)."""
    say = progress or (lambda _what, _done: None)
    name = resolve_chapter(chapter)
    result = StallResult(name, duration, login_clients, iterations, workers)
    say(f"{name}: starting the server", 0.0)
    with ServerProcess(name, iterations, workers) as server:
        assert server.port is not None
        say(f"{name}: registering one user", 0.0)
        _register(server.port, timeout)
        shared = _Shared()
        clients: list[Client] = []
        threads: list[threading.Thread] = []
        try:
            # Every connection is open before the baseline starts, so both phases see the
            # same set of clients and only what they send differs.
            pinger = Client(HOST, server.port, timeout=timeout)
            clients.append(pinger)
            threads.append(threading.Thread(target=_pinger, args=(pinger, shared), name="pinger"))
            for i in range(login_clients):
                client = Client(HOST, server.port, timeout=timeout)
                clients.append(client)
                args = (client, shared, timeout + baseline, f"login client {i + 1}")
                threads.append(threading.Thread(target=_login_loop, args=args, name=f"login-{i}"))
            for thread in threads:
                thread.daemon = True
                thread.start()
            # The threads measure; this thread only keeps the clock (and the progress bar).
            _keep_time(baseline, lambda done: say(f"{name}: baseline, pings alone", done))
            load_start = time.monotonic()
            shared.go.set()
            _keep_time(
                duration,
                lambda done: say(
                    f"{name}: {login_clients} clients log in, one pings", baseline + done
                ),
            )
            load_end = time.monotonic()
            shared.stop.set()
            # Round trips in flight finish (a ping caught behind a login is the sample that
            # matters most); a thread still stuck after the timeout is cut off below.
            for thread in threads:
                thread.join(timeout + 1)
        finally:
            shared.stop.set()
            shared.go.set()
            with shared.lock:
                shared.cut = any(thread.is_alive() for thread in threads)
            for client in clients:
                try:
                    client.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                client.close()
            for thread in threads:
                if thread.ident is not None:  # started (a failed connect may come first)
                    thread.join(5)
        server.check_alive()
    with shared.lock:
        result.baseline_ms = [took * 1000 for sent, took in shared.pings if sent < load_start]
        result.ping_ms = [took * 1000 for sent, took in shared.pings if sent >= load_start]
        finished = [took for done, took in shared.logins if done <= load_end]
        result.logins = len(finished)
        result.login_ms = [took * 1000 for took in finished]
        result.errors = list(shared.errors)
    return result


# ----------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def settings_line(result: StallResult) -> str:
    return (
        f"{result.login_clients} clients log in back-to-back for {result.duration:g} s; "
        f"one client pings every {PING_INTERVAL * 1000:.0f} ms\n"
        f"PBKDF2 {result.iterations} iterations per login; "
        f"{result.workers} worker threads (chapter 4 on)"
    )


def render(results: Sequence[StallResult]) -> Table:
    """One column per run, one row per measure."""
    table = Table(title="stall: ping latency while logins run")
    table.add_column("")
    for result in results:
        table.add_column(result.chapter, justify="right")

    def row(label: str, value: Callable[[StallResult], str], style: str | None = None) -> None:
        table.add_row(label, *(value(r) for r in results), style=style)

    row("logins completed", lambda r: str(r.logins))
    row("logins/s", lambda r: f"{r.logins / r.duration:.1f}")
    row("login round trip p50 (ms)", lambda r: _ms(percentile(r.login_ms, 50)))
    row("pings completed", lambda r: str(r.pings))
    row("ping p50 (ms)", lambda r: _ms(r.ping(50)), "bold")
    row("ping p99 (ms)", lambda r: _ms(r.ping(99)), "bold")
    row("ping max (ms)", lambda r: _ms(r.ping(100)), "bold")
    table.add_section()
    row("no logins: pings", lambda r: str(len(r.baseline_ms)))
    row("no logins: ping p50 (ms)", lambda r: _ms(r.baseline(50)))
    row("no logins: ping p99 (ms)", lambda r: _ms(r.baseline(99)))
    row("no logins: ping max (ms)", lambda r: _ms(r.baseline(100)))
    if any(r.errors for r in results):
        table.add_section()
        row("errors", lambda r: str(len(r.errors)), "red")
    return table


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.stall",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Measure how expensive logins stall everybody else: start a chapter's server,\n"
            "ping it every 20 ms alone (the baseline), then while clients log in back-to-back,\n"
            "and report ping latency in both phases. Loopback only; the server is started\n"
            "in a subprocess on a free port with a throwaway user database, and stopped.\n\n"
            "examples:\n"
            "  python -m tools.stall --chapter 03_pool\n"
            "  python -m tools.stall --compare 03_pool 04_sendqueue\n"
            "  python -m tools.stall --chapter 04 --workers 1   # one worker: what now?"
        ),
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--chapter", metavar="NAME", help="the chapter to run: 03, 03_pool …")
    which.add_argument(
        "--compare", nargs="+", metavar="NAME", help="run several chapters, one after another"
    )
    parser.add_argument(
        "--duration",
        type=_positive(float),
        default=5.0,
        metavar="S",
        help="seconds of logins (default: 5)",
    )
    parser.add_argument(
        "--login-clients",
        type=_positive(int),
        default=2,
        metavar="N",
        help="clients logging in back-to-back, one connection each (default: 2)",
    )
    parser.add_argument(
        "--iterations",
        type=_positive(int),
        default=DEFAULT_ITERATIONS,
        metavar="N",
        help="PasswordHashIterations: the cost of one login "
        f"(default: the shipped {DEFAULT_ITERATIONS})",
    )
    parser.add_argument(
        "--workers",
        type=_positive(int),
        default=4,
        metavar="N",
        help="ProcMsgRecvWorkThreadCount, for chapter 4 on (default: 4)",
    )
    parser.add_argument(
        "--baseline",
        type=_positive(float),
        default=1.0,
        metavar="S",
        help="seconds of pings with no logins, before the logins start (default: 1)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=10.0,
        metavar="S",
        help="seconds to wait for any one reply (default: 10)",
    )
    return parser


def run_all(names: Sequence[str], args: argparse.Namespace, console: Console) -> list[StallResult]:
    """Run the experiment on each chapter in turn, with a progress bar on ``console``
    (what runs now and the time left; nothing at all when it is not a terminal)."""
    results = []
    total = args.baseline + args.duration
    with progress_bar(console) as bar:
        tasks = {name: bar.add_task(name, total=total) for name in names}
        for name in names:
            task = tasks[name]
            results.append(
                run_stall(
                    name,
                    duration=args.duration,
                    login_clients=args.login_clients,
                    iterations=args.iterations,
                    workers=args.workers,
                    baseline=args.baseline,
                    timeout=args.timeout,
                    # refresh: drawn at each report (ten a second), not at the bar's own
                    # pace, so a short phase is never skipped.
                    progress=lambda what, done, task=task: bar.update(
                        task, description=what, completed=done, refresh=True
                    ),
                )
            )
            bar.update(task, description=f"{name}: done", completed=total)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out, err = Console(), Console(stderr=True)
    try:
        names = [resolve_chapter(ref) for ref in args.compare or [args.chapter]]
    except StallError as exc:
        parser.error(str(exc))
    results: list[StallResult] = []
    try:
        results = run_all(names, args, err)
    except StallError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    except OSError as exc:
        err.print(f"[bold red]error:[/] {exc.strerror or exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted: the server was stopped", highlight=False)
        return 130
    out.print(settings_line(results[0]), highlight=False)
    out.print(render(results))
    failed = False
    for result in results:
        for error in result.errors:
            failed = True
            err.print(f"[bold red]error:[/] {result.chapter}: {error}", highlight=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
