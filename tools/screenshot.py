"""Screenshots of the dashboard under load: ``python -m tools.screenshot``.

For each chapter: start its ``Server`` in this process on a free loopback port, put light
load on it (a few clients that register, log in and ping every 150 ms, reconnecting now
and then) plus the misbehaviour its defences are built for, take a ``stats()`` snapshot
every second as ``--dashboard`` does, and after ``--seconds`` draw the dashboard at
100x24 and save it as ``docs/assets/dashboard/<chapter>.svg`` (rich's SVG export), so a
chapter page shows what its reader will see.

What each chapter meets, by the features it has:

* every chapter: pingers, then a bad-CRC packet, an unknown message code and a header
  with an impossible length (drops; chapter 6 closes the connection on the last);
* ``pool``: more connections than ``worker_connections`` (the online limit refuses);
* ``sendqueue`` without ``flood``: a client that pipelines logins and never reads (the
  send-backlog kick; in chapter 6 the flood kick would get there first);
* ``timers``: one connection that never pings (the silence kick, after 4 s here);
* ``flood``: a client that pings back-to-back (the flood kick).

The config is the test suite's kind: a free port, an in-memory user store, cheap hashes,
and short intervals (heartbeat check every 1 s, recycling after 3 s) so a few seconds of
run show everything. Every socket has a timeout, every thread is joined with a deadline,
and the server is shut down whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import itertools
import logging
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from common.config import Config
from common.dashboard import HEIGHT, WIDTH, History, render
from common.protocol import HEADER, PING_PACKET, MsgCode, encode_packet
from tools import chapters as ch
from tools.client import Client, login_packet, register_packet
from tools.progress import progress_bar

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "assets" / "dashboard"
HOST = "127.0.0.1"
TIMEOUT = 5.0  # any one socket operation
PING_EVERY = 0.150  # slower than the flood interval (100 ms): the pingers are never kicked
SESSION = 3.0  # a pinger reconnects after this long, so accept and close rates move
PINGERS = 8
LIMIT = 24  # worker_connections: small, so the burst below reaches it

CONFIG = f"""
ListenAddress = {HOST}
ListenPortCount = 1
ListenPort0 = 0
worker_connections = {LIMIT}
Sock_RecyConnectionWaitTime = 3
ProcMsgRecvWorkThreadCount = 4
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


class ScreenshotError(Exception):
    """The screenshot could not be taken (unknown chapter, server would not start …)."""


@dataclass
class Shot:
    chapter: str
    svg: str
    text: str  # the same frame as plain text
    errors: list[str] = field(default_factory=list)  # what the load clients ran into


# ----------------------------------------------------------------------------------------
# The load
# ----------------------------------------------------------------------------------------


class Load:
    """The clients, each on its own thread, all stopped by ``stop`` and joined with a
    deadline. A client that meets a closed connection where the server may close it (a
    refusal at the limit) reconnects; anything unexpected is written down in ``errors``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._attacks: list[threading.Thread] = []
        self._socks: set[socket.socket] = set()
        self._names = itertools.count(1)

    def start(self, target: Callable[..., None], *args: object, background: bool) -> None:
        """Run ``target(*args)`` on a thread: a ``background`` client runs until ``stop``;
        any other (an attack) ends by itself and :meth:`attacks_done` waits for it."""
        thread = threading.Thread(target=self._run, args=(target, *args), daemon=True)
        self._threads.append(thread)
        if not background:
            self._attacks.append(thread)
        thread.start()

    def attacks_done(self) -> bool:
        return not any(thread.is_alive() for thread in self._attacks)

    def _run(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        except OSError as exc:
            if not self.stop.is_set():
                with self._lock:
                    self.errors.append(f"{target.__name__}: {exc.strerror or exc}")

    @contextlib.contextmanager
    def track(self, sock: socket.socket) -> Iterator[socket.socket]:
        """Close ``sock`` on the way out; until then ``close()`` can shut it down even
        while its thread is blocked in it."""
        with self._lock:
            self._socks.add(sock)
        try:
            yield sock
        finally:
            with self._lock:
                self._socks.discard(sock)
            sock.close()

    def raw(self, rcvbuf: int | None = None) -> contextlib.AbstractContextManager[socket.socket]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:  # before connect(), so the window the server sees is small
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(TIMEOUT)
            sock.connect((HOST, self.port))
        except BaseException:
            sock.close()
            raise
        return self.track(sock)

    @contextlib.contextmanager
    def client(self) -> Iterator[Client]:
        client = Client(HOST, self.port, timeout=TIMEOUT)
        with self.track(client.sock):
            yield client

    def close(self) -> None:
        self.stop.set()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(TIMEOUT + 2)
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            raise ScreenshotError(f"{len(alive)} load threads did not stop")

    # -- the clients ---------------------------------------------------------------------

    def pinger(self, start_after: float) -> None:
        """Log in once per connection, then ping every 150 ms; reconnect every 3 s."""
        if self.stop.wait(start_after):
            return
        name = f"user{next(self._names)}"
        registered = False
        while not self.stop.is_set():
            try:
                with self.client() as client:
                    if not registered:
                        client.request(register_packet(name, "pw"))
                        registered = True
                    client.request(login_packet(name, "pw"))
                    until = time.monotonic() + SESSION
                    while time.monotonic() < until and not self.stop.wait(PING_EVERY):
                        client.request(PING_PACKET)
            except (ConnectionError, TimeoutError):
                # Refused at the online limit during the burst, or kicked: try again.
                self.stop.wait(0.3)

    def drops(self) -> None:
        """One of each packet the server drops, then a malformed header (chapter 6 closes
        the connection on it; earlier chapters skip its 8 bytes)."""
        with self.client() as client:
            sock = client.sock
            sock.sendall(HEADER.pack(8, MsgCode.PING, 1234))  # nonzero CRC, empty body
            self.stop.wait(0.2)
            sock.sendall(encode_packet(3, b""))  # a reserved message code
            self.stop.wait(0.2)
            body = bytearray(register_packet("x", "y"))
            body[-1] ^= 0xFF  # the body no longer matches its CRC
            sock.sendall(bytes(body))
            self.stop.wait(0.2)
            client.request(PING_PACKET)  # everything above was read by now
            self.stop.wait(0.2)
            sock.sendall(HEADER.pack(7, MsgCode.PING, 0))
            with contextlib.suppress(ConnectionError, TimeoutError):
                sock.settimeout(1.0)
                sock.recv(1)

    def burst(self, count: int, hold: float) -> None:
        """``count`` connections at once, held ``hold`` seconds: past the online limit."""
        with contextlib.ExitStack() as stack:
            for _ in range(count):
                with contextlib.suppress(ConnectionError, TimeoutError):
                    stack.enter_context(self.raw())
            self.stop.wait(hold)

    def silent(self, hold: float) -> None:
        """A connection that never sends anything (the heartbeat kicks it)."""
        with self.raw() as sock, contextlib.suppress(ConnectionError, TimeoutError):
            sock.settimeout(hold)
            sock.recv(1)  # EOF when kicked

    def flood(self) -> None:
        """Ping back-to-back until the server closes the connection (at most 100 pings);
        once more if it closed before any reply (refused at the online limit)."""
        for _ in range(3):
            replies = 0
            with self.client() as client, contextlib.suppress(ConnectionError, TimeoutError):
                for _ in range(100):
                    if self.stop.is_set():
                        return
                    client.request(PING_PACKET)
                    replies += 1
            if replies:
                return
            self.stop.wait(0.3)

    def slow_reader(self, duration: float) -> None:
        """Pipeline logins on a small receive buffer and read nothing, until the server
        closes the connection or ``duration`` is up."""
        request = login_packet("nobody", "pw") * 64
        deadline = time.monotonic() + duration
        with self.raw(rcvbuf=2048) as sock, contextlib.suppress(ConnectionError):
            sock.settimeout(0.2)
            while time.monotonic() < deadline and not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    sock.sendall(request)


# ----------------------------------------------------------------------------------------
# One chapter
# ----------------------------------------------------------------------------------------


def resolve_chapter(ref: str) -> str:
    try:
        return ch.resolve(ROOT, ref).name
    except LookupError as exc:
        raise ScreenshotError(str(exc)) from None


def capture(
    chapter: str,
    seconds: float = 12.0,
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
    tick: Callable[[float], None] | None = None,
) -> Shot:
    """Run ``chapter`` under load for ``seconds`` and draw its dashboard's last frame.
    ``tick(elapsed)`` is called after each snapshot (for a progress bar)."""
    name = resolve_chapter(chapter)
    package = importlib.import_module(f"chapters.{name}")
    features = package.FEATURES
    title = getattr(package, "TITLE", name)
    config = Config.from_text(CONFIG, "<screenshot config>")
    store = None
    if "processes" in features:
        # Two workers, as shipped; they share the user store, which must then be a file.
        store = tempfile.TemporaryDirectory(prefix="screenshot-")
        config = config.with_overrides(
            WorkerProcesses=2, UserDatabase=f"{store.name}/users.sqlite3"
        )
    server = importlib.import_module(f"chapters.{name}.server").Server(config)
    thread = threading.Thread(target=server.serve_forever, name=f"serve-{name}", daemon=True)
    thread.start()
    host, port = server.addresses[0]
    load = Load(port)
    # The sparklines span the run, so the picture shows them full (their titles say how
    # long the span is; the live dashboard's is the last minute).
    history = History(seconds=seconds)
    try:
        # Chapter 1 serves one client at a time: more pingers would only wait in line.
        pingers = PINGERS if "epoll" in features else 1
        # What starts when, as a fraction of the run; False: an attack, which ends by
        # itself. The defences fire late enough to be still highlighted at the end.
        plan: list[tuple[float, Callable[..., None], tuple[object, ...], bool]] = [
            (0.0, load.pinger, (i * 0.4,), True) for i in range(pingers)
        ]
        if "timers" in features:
            plan.append((0.0, load.silent, (seconds,), True))
        plan.append((0.45, load.drops, (), False))
        if "pool" in features:
            # Over the limit for a tenth of the run, over before the flood client comes.
            plan.append((0.55, load.burst, (LIMIT + 4, seconds * 0.1), False))
        if "flood" in features:
            plan.append((0.75, load.flood, (), False))
        elif "sendqueue" in features:
            plan.append((0.75, load.slow_reader, (seconds * 0.2,), False))
        started = time.monotonic()
        history.add(server.stats(), started)
        pending = sorted(plan, key=lambda step: step[0])
        next_sample = started + 1.0
        # The last frame waits for the attacks to end (each is bounded by its own
        # timeouts), so it shows what they did whatever the machine's load; this is the
        # backstop.
        give_up = started + seconds + 4 * TIMEOUT
        while True:
            now = time.monotonic()
            while pending and now - started >= pending[0][0] * seconds:
                _, target, args, background = pending.pop(0)
                load.start(target, *args, background=background)
            if now >= next_sample:
                history.add(server.stats(), now)
                next_sample += 1.0
                if tick is not None:
                    tick(min(seconds, now - started))
                if now - started >= seconds - 0.01 and (load.attacks_done() or now > give_up):
                    break
            time.sleep(min(0.05, max(0.0, next_sample - time.monotonic())))
            if not thread.is_alive():
                raise ScreenshotError(f"{name}: the server stopped during the run")
        if not load.attacks_done():
            load.errors.append(f"an attack was still running after {now - started:.0f} s")
    finally:
        try:
            load.close()
        finally:
            server.shutdown()
            thread.join(10)
            if store is not None:
                store.cleanup()
    console = Console(
        width=width,
        height=height,
        record=True,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
    )
    console.print(
        render(
            history,
            title,
            limit=config.get_int("worker_connections"),
            address=f"{host}:{port}",
            width=width,
            height=height,
        )
    )
    svg = console.export_svg(
        title=f"python -m chapters.{name} --dashboard", unique_id=f"dashboard-{name}", clear=False
    )
    return Shot(name, svg, console.export_text(), list(load.errors))


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.screenshot",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run each chapter in this process under light load (pingers, and the attack its\n"
            "defences are for), then save its dashboard's last frame as an SVG at 100x24.\n"
            "Loopback only, a free port, an in-memory user store; every server is stopped.\n\n"
            "examples:\n"
            "  python -m tools.screenshot       # every chapter, into docs/assets/dashboard/\n"
            "  python -m tools.screenshot 06 --show       # one chapter, and print the frame"
        ),
    )
    parser.add_argument(
        "chapters",
        nargs="*",
        metavar="CHAPTER",
        help="chapters to shoot: 3, 03_pool … (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=OUT,
        metavar="DIR",
        help="where to write <chapter>.svg (default: docs/assets/dashboard)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=12.0,
        metavar="S",
        help="seconds of load per chapter, 4-60 (default: 12)",
    )
    parser.add_argument("--show", action="store_true", help="also print each frame to the terminal")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 4 <= args.seconds <= 60:
        parser.error(f"--seconds must be 4-60, got {args.seconds:g}")
    try:
        names = [resolve_chapter(ref) for ref in args.chapters] or [
            c.name for c in ch.discover(ROOT)
        ]
    except ScreenshotError as exc:
        parser.error(str(exc))
    out, err = Console(), Console(stderr=True)
    # The servers log a kick as a warning; with no handler Python would print it over the
    # progress bar. The picture is the output here, not the log.
    logging.getLogger().addHandler(logging.NullHandler())
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err.print(f"[bold red]error:[/] cannot create {args.out}: {exc.strerror}", highlight=False)
        return 1
    failed = False
    try:
        with progress_bar(err) as progress:
            tasks = {name: progress.add_task(name, total=args.seconds) for name in names}
            for name in names:
                task = tasks[name]
                progress.update(task, description=f"{name}: under load")
                shot = capture(
                    name,
                    args.seconds,
                    tick=lambda done, task=task: progress.update(task, completed=done),
                )
                path = args.out / f"{name}.svg"
                path.write_text(shot.svg, encoding="utf-8")
                progress.update(task, completed=args.seconds, description=f"{name}: done")
                if args.show:
                    out.print(shot.text, highlight=False, markup=False, soft_wrap=True, end="")
                out.print(f"wrote {path}", highlight=False, soft_wrap=True)
                for error in shot.errors:
                    failed = True
                    err.print(f"[bold red]error:[/] {name}: {error}", highlight=False)
    except ScreenshotError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    except OSError as exc:
        err.print(f"[bold red]error:[/] {exc.strerror or exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted: the server was stopped", highlight=False)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
