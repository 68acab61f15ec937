"""The command line every chapter shares: ``python -m chapters.NN_name [options]``.

C++: main() in nginx.cxx (read the config, set up logging, open the listening sockets,
run the event loop) and the SIGINT/SIGTERM handling of ngx_signal.cxx.

What differs from the original: a signal asks for a clean shutdown (every thread joined,
every socket closed) instead of the process dying where it stands. Chapters 1-6 run one
process in the foreground; chapter 7's server is a master that forks workers, and only
for a server like it (one with ``reload``) does this module detach when
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
from typing import Protocol, TextIO

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
    server_class = importlib.import_module(f"{package}.server").Server

    def make_server(config: Config) -> ServerLike:
        return server_class(config)

    processes = hasattr(server_class, "reload")  # chapter 7's master
    return serve(args, make_server, package, title, processes=processes)


class ServerLike(Protocol):
    """The chapter contract, as far as the command line uses it."""

    def serve_forever(self) -> None: ...

    def shutdown(self) -> None: ...

    def stats(self) -> dict[str, object]: ...


def serve(
    args: argparse.Namespace,
    make_server: Callable[[Config], ServerLike],
    name: str,
    title: str,
    *,
    processes: bool = False,
) -> int:
    """Load the config (with ``--port``/``--host``), set up logging, start the server, and
    serve until SIGINT/SIGTERM; then shut down cleanly and say goodbye. Exit status: 0 on a
    clean stop, 1 when the server cannot start or fails, 2 for a config problem.
    ``processes``: the server is a master that forks workers (chapter 7; see the module's
    docstring for what that changes here)."""
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
        master = _Master(config) if processes else None
    except (ConfigError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    except OSError as exc:  # the log file of a daemon
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1

    setup_logging(level)
    # A write to a socket the client has reset raises SIGPIPE, whose default action ends
    # the process: the original's worker died that way (reference bug 1). Ignored, the
    # write fails with EPIPE instead, which the server handles. Python's start-up ignores
    # it already; we say so here rather than depend on it (and a test checks it).
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    startup_err = err if master is None else master.before_start(err)
    stop = threading.Event()
    failure: list[BaseException] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    # Before the server starts: a signal while it starts (chapter 7 forks its workers then)
    # stops it as soon as it serves, instead of killing the process half-built.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server = make_server(config)
    except UnsupportedPlatform as exc:
        startup_err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return _started(master, 1)
    except (ConfigError, ValueError) as exc:
        startup_err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return _started(master, 2)
    except OSError as exc:
        where = f"{config.get_str('ListenAddress')}:{','.join(map(str, config.listen_ports()))}"
        reason = exc.strerror or exc
        startup_err.print(
            f"[bold red]error:[/] cannot listen on {where}: {reason}", highlight=False
        )
        return _started(master, 1)
    if master is not None:
        try:
            master.serving(server)  # type: ignore[arg-type]
        except OSError as exc:
            server.shutdown()
            startup_err.print(f"[bold red]error:[/] PidFile: {exc}", highlight=False)
            return _started(master, 1)
        _started(master, 0)

    def serve_thread() -> None:
        try:
            server.serve_forever()
        except BaseException as exc:  # reported by the main thread, then a clean exit 1
            failure.append(exc)
        finally:
            stop.set()

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
        if master is not None:
            master.stopped()
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


def _started(master: _Master | None, status: int) -> int:
    if master is not None:
        master.started(status)
    return status


# Reload and quit (chapter 7, on Linux: chapter 1 runs where they do not exist).
MASTER_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGHUP", "SIGQUIT") if hasattr(signal, name)
)


class MasterLike(ServerLike, Protocol):
    """A server that runs processes of its own (chapter 7's master)."""

    def reload(self) -> None: ...

    def quit(self) -> None: ...


# --8<-- [start:master]
class _Master:
    """What the command line does for a master process (chapter 7), in order: detach when
    ``Daemon = 1`` and name the process, before the server forks its workers; once it
    serves, write the ``PidFile`` and route SIGHUP and SIGQUIT; at exit remove the file.
    C++ (nginx): main's ngx_daemon, ngx_create_pidfile, ngx_init_signals."""

    def __init__(self, config: Config) -> None:
        self.daemon = config.get_bool("Daemon")
        pid_file = config.get_str("PidFile")
        if self.daemon and not pid_file:
            raise ConfigError(config.source, None, "Daemon = 1 needs a PidFile to be found")
        self.pid_file = Path(config.get_path("PidFile")) if pid_file else None
        self._log = -1
        if self.daemon:  # the log file, opened now: an error still reaches the terminal
            log_file = config.get_path("Log") if config.get_str("Log") else os.devnull
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            self._log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._done: Callable[[int], None] | None = None

    def before_start(self, err: Console) -> Console:
        """Detach if asked; returns the console for start-up errors (the terminal, still)."""
        if self.daemon:
            terminal, self._done = daemonize(self._log)
            err = Console(file=terminal, stderr=True)
            os.close(self._log)
        set_title("master")
        log_as("master")
        # Held until serving() routes them: a SIGHUP while the workers start is not lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        return err

    def serving(self, server: MasterLike) -> None:
        if self.pid_file is not None:
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(f"{os.getpid()}\n")
        # Both only ask the master's loop to act (the handler runs on the main thread).
        for signum, action in zip(MASTER_SIGNALS, (server.reload, server.quit), strict=True):
            signal.signal(signum, lambda _signum, _frame, act=action: act())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)

    def started(self, status: int) -> None:
        """Tell the command waiting in the terminal (a daemon's) how the start went."""
        if self._done is not None:
            self._done(status)
            self._done = None

    def stopped(self) -> None:
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)


# --8<-- [end:master]


# --8<-- [start:daemonize]
def daemonize(log: int) -> tuple[TextIO, Callable[[int], None]]:
    """Leave the terminal. C++ (nginx): ngx_daemon. Fork (the command can return to the
    shell), ``setsid`` (a session of our own, with no controlling terminal), fork again (so
    one is never acquired); stdin and stdout to /dev/null, stderr (the log) to ``log``.
    Unlike a bare double fork, the command waits until the daemon serves or fails and
    exits with its status: returned are the terminal, for start-up errors, and
    ``done(status)``, which tells the command."""
    read_end, write_end = os.pipe()
    if os.fork():  # the command in the terminal: wait for the daemon's word
        os.close(write_end)
        status = os.read(read_end, 1)
        os._exit(status[0] if status else 1)  # none of its exit handlers run
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    null = os.open(os.devnull, os.O_RDWR)
    for fd, target in ((0, null), (1, null), (2, log)):
        os.dup2(target, fd)
    os.close(null)

    def done(status: int) -> None:
        os.write(write_end, bytes([status]))
        os.close(write_end)
        terminal.close()

    return terminal, done


# --8<-- [end:daemonize]


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
