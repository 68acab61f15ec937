"""The command line every chapter shares: ``python -m chapters.NN_name [options]``.

C++: main() in nginx.cxx (read the config, set up logging, open the listening sockets,
run the event loop) and the SIGINT/SIGTERM handling of ngx_signal.cxx.

What differs from the original: a signal asks for a clean shutdown (every thread joined,
every socket closed) instead of the process dying where it stands. Chapters 1-6 run one
process in the foreground; chapter 7's server is a master that forks workers, and only
for a server like it (one with ``signal_actions``) does this module detach when
``Daemon = 1``, write the ``PidFile`` and route SIGHUP and SIGQUIT (C++ nginx: ngx_daemon,
ngx_create_pidfile, the signals table).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Protocol

from rich.console import Console, RenderableType

from common.config import DEFAULT_CONFIG, Config, ConfigError
from common.log import log_as, parse_level, setup_logging
from common.platform import UnsupportedPlatform, set_title

log = logging.getLogger("cli")


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every server shares (chapters and the asyncio baseline)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Stop it with Ctrl-C (or SIGTERM): it closes every connection and exits 0.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help="config file in the original's nginx.conf format (default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=int,
        metavar="N",
        help="listen on this one port instead of the config's ListenPort keys (0: any free port)",
    )
    parser.add_argument(
        "--host", metavar="ADDR", help="address to bind instead of the config's ListenAddress"
    )
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        help="0-8 as in the original, or a name: stderr emerg alert crit error warn notice "
        "info debug (default: the config's LogLevel)",
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="watch the server live, redrawn once a second: connections, pool, queues, "
        "throughput, defences and drops, with rates and the last minute as sparklines; "
        "its footer names each figure's C++ counterpart (printTDInfo's)",
    )
    return parser


def main(package: str, argv: list[str] | None = None) -> int:
    """Run chapter ``package`` (e.g. ``chapters.01_listen``) until a signal stops it."""
    chapter = importlib.import_module(package)
    title = getattr(chapter, "TITLE", package)
    # The docstring's first line is "Chapter N: what it adds"; --help shows the part after ':'.
    first_line = ((chapter.__doc__ or "").strip().splitlines() or [package])[0]
    description = first_line.partition(": ")[2] or first_line
    args = build_parser(f"python -m {package}", f"{title}: {description}").parse_args(argv)

    def make_server(config: Config) -> ServerLike:
        return importlib.import_module(f"{package}.server").Server(config)

    return serve(args, make_server, package, title)


class ServerLike(Protocol):
    """The chapter contract, as far as the command line uses it."""

    def serve_forever(self) -> None: ...

    def shutdown(self) -> None: ...

    def stats(self) -> dict[str, object]: ...


class MasterLike(ServerLike, Protocol):
    """A server that runs processes of its own (chapter 7's master)."""

    def signal_actions(self) -> dict[int, Callable[[], None]]: ...


def serve(
    args: argparse.Namespace,
    make_server: Callable[[Config], ServerLike],
    name: str,
    title: str,
) -> int:
    """Load the config (with ``--port``/``--host``), set up logging, start the server, and
    serve until SIGINT/SIGTERM; then shut down cleanly and say goodbye. Exit status: 0 on a
    clean stop, 1 when the server cannot start or fails, 2 for a config problem."""
    err = Console(stderr=True)
    try:
        config = Config.load(args.config)
        overrides: dict[str, object] = {}
        if args.port is not None:
            if not 0 <= args.port <= 65535:
                raise ConfigError("--port", None, f"must be 0-65535, got {args.port}")
            overrides.update(ListenPortCount=1, ListenPort0=args.port)
        if args.host is not None:
            overrides["ListenAddress"] = args.host
        config = config.with_overrides(**overrides)
        level = parse_level(args.log_level or config.get_str("LogLevel"))
    except (ConfigError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2

    setup_logging(level)
    # A write to a socket the client has reset raises SIGPIPE, whose default action ends
    # the process: the original's worker died that way (reference bug 1). Ignored, the
    # write fails with EPIPE instead, which the server handles. Python's start-up ignores
    # it already; we say so here rather than depend on it (and a test checks it).
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        server = make_server(config)
    except UnsupportedPlatform as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    except (ConfigError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    except OSError as exc:
        where = f"{config.get_str('ListenAddress')}:{','.join(map(str, config.listen_ports()))}"
        reason = exc.strerror or exc
        err.print(f"[bold red]error:[/] cannot listen on {where}: {reason}", highlight=False)
        return 1

    pid_file = None
    if hasattr(server, "signal_actions"):
        try:
            pid_file = _become_master(server, config)
        except (ConfigError, OSError) as exc:
            server.shutdown()
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return 2 if isinstance(exc, ConfigError) else 1

    stop = threading.Event()
    failure: list[BaseException] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    def serve_thread() -> None:
        try:
            server.serve_forever()
        except BaseException as exc:  # reported by the main thread, then a clean exit 1
            failure.append(exc)
        finally:
            stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    thread = threading.Thread(target=serve_thread, name="serve", daemon=True)
    thread.start()
    try:
        if getattr(args, "dashboard", False):
            _run_dashboard(server, title, stop, config)
        else:
            # A timed wait, so the main thread returns to the interpreter often enough to run
            # the signal handler promptly.
            while not stop.wait(0.5):
                pass
    finally:
        server.shutdown()
        thread.join(timeout=10)
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)
    if failure:
        log.critical("the server stopped on an error: %r", failure[0])
        return 1
    stats = server.stats()
    err.print(
        f"[green]Goodbye:[/] {name} stopped cleanly "
        f"({stats.get('accepted', 0)} connections served).",
        highlight=False,
    )
    return 0


def _become_master(server: MasterLike, config: Config) -> Path | None:
    """Before the first fork: detach when ``Daemon = 1``, write the ``PidFile`` (returned,
    to remove at exit), name the process and its log lines, route SIGHUP and SIGQUIT."""
    daemon, pid_file = config.get_bool("Daemon"), config.get_str("PidFile")
    if daemon and not pid_file:
        raise ConfigError(config.source, None, "Daemon = 1 needs a PidFile to be found again")
    if daemon:
        daemonize(config.get_path("Log") if config.get_str("Log") else os.devnull)
    path = Path(config.get_path("PidFile")) if pid_file else None
    if path is not None:
        path.write_text(f"{os.getpid()}\n")
    set_title("master")
    log_as("master")
    for signum, action in server.signal_actions().items():
        signal.signal(signum, lambda _signum, _frame, act=action: act())
    return path


def daemonize(log_file: str) -> None:
    """Leave the terminal. C++ (nginx): ngx_daemon. Fork (the shell sees the command end),
    ``setsid`` (a session of our own, without a controlling terminal), fork again (so one
    is never acquired); stdin and stdout to /dev/null, stderr (the log) to ``log_file``."""
    null = os.open(os.devnull, os.O_RDWR)  # opened first: an error still reaches the terminal
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for step in ("setsid", "again"):
        if os.fork():
            os._exit(0)  # the parent leaves at once: none of its exit handlers run
        if step == "setsid":
            os.setsid()
    for fd, target in ((0, null), (1, null), (2, out)):
        os.dup2(target, fd)
    os.close(null)
    os.close(out)


def _run_dashboard(
    server: ServerLike, title: str, stop: threading.Event, config: Config | None = None
) -> None:
    """Redraw the dashboard once a second until ``stop`` is set. C++: printTDInfo, which
    the original prints every ten seconds."""
    from rich.live import Live

    from common.dashboard import History, render

    console = Console()
    history = History()
    try:
        limit = config.get_int("worker_connections") if config is not None else None
    except ConfigError:
        limit = None  # a chapter that needs the key has already refused to start
    addresses = getattr(server, "addresses", None) or []
    address = ", ".join(f"{host}:{port}" for host, port in addresses)

    def frame() -> RenderableType:
        history.add(server.stats())
        # Read the size every time: the reader may resize the terminal while it runs.
        width, height = console.size
        return render(history, title, limit=limit, address=address, width=width, height=height)

    with Live(frame(), console=console, auto_refresh=False) as live:
        while not stop.wait(1.0):
            live.update(frame(), refresh=True)


def run(package: str) -> None:
    """Entry point for a chapter's ``__main__.py``."""
    sys.exit(main(package))
