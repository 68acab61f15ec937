"""What every attack tool shares: loopback-only targets, connecting, the report base class.

Only loopback targets pass :func:`resolve_target`; every tool calls it before it opens a
socket, so a refused target never sees a packet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.table import Table

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5678

# Linux's TCP states as TCP_INFO reports them (include/net/tcp_states.h).
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8


class NotLoopback(ValueError):
    """The target is not a loopback address; the tools never send anything to it."""


class AttackError(RuntimeError):
    """The attack could not run at all (connection refused, no reply to connect …)."""


# ----------------------------------------------------------------------------------------
# Targets: loopback only
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked target: ``ip`` is a loopback address literal, so nothing re-resolves it."""

    host: str
    ip: str
    port: int

    def __str__(self) -> str:
        return host_port(self.host, self.port)


def host_port(host: str, port: int) -> str:
    host = host.removeprefix("[").removesuffix("]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The address to connect to if ``ip`` is loopback, else None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip) if ip.is_loopback else None


def resolve_target(host: str, port: int) -> Target:
    """Accept 127.0.0.0/8, ::1 and ``localhost`` (only if every address it resolves to is
    loopback); raise :class:`NotLoopback` for anything else.

    Other host names are refused without being looked up: a name could resolve to
    loopback today and to someone else's machine tomorrow, and asking a DNS server about
    it is already talking to the network.
    """
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    name = host.strip()
    try:
        ip = ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        ip = None
    if ip is not None:
        literal = _loopback(ip)
        if literal is None:
            raise NotLoopback(
                f"refusing to attack {host}: not a loopback address "
                "(the attack tools only target 127.0.0.0/8, ::1 or localhost)"
            )
        return Target(host, literal, port)
    if name.lower().rstrip(".") != "localhost":
        raise NotLoopback(
            f"refusing to attack {host!r}: only loopback addresses (127.0.0.0/8, ::1) "
            "or 'localhost' are allowed, and other names are not looked up"
        )
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NotLoopback(f"refusing {host!r}: it does not resolve ({exc.strerror})") from None
    addresses = [ipaddress.ip_address(info[4][0].partition("%")[0]) for info in infos]
    outside = [str(a) for a in addresses if _loopback(a) is None]
    if outside or not addresses:
        raise NotLoopback(
            f"refusing {host!r}: it resolves to {', '.join(outside) or 'nothing'}, "
            "which is not loopback"
        )
    literals = [_loopback(a) for a in addresses]
    # The chapters bind 127.0.0.1 by default: prefer it when localhost has both families.
    ip_text = "127.0.0.1" if "127.0.0.1" in literals else str(literals[0])
    return Target(host, ip_text, port)


def connect_to(target: Target, timeout: float, rcvbuf: int | None = None) -> socket.socket:
    family = socket.AF_INET6 if ":" in target.ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if rcvbuf is not None:
            # Before connect(), so the window the server sees is small from the handshake on.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect((target.ip, target.port))
    except BaseException:
        sock.close()
        raise
    return sock


def first_connect(target: Target, timeout: float, rcvbuf: int | None = None) -> socket.socket:
    """The first connection of an attack: failing here means there is nothing to attack."""
    with connect_errors(target, timeout):
        return connect_to(target, timeout, rcvbuf)


@contextlib.contextmanager
def connect_errors(target: Target, timeout: float) -> Iterator[None]:
    """Turn a failed connect into one :class:`AttackError` sentence (no traceback)."""
    try:
        yield
    except ConnectionRefusedError:
        raise AttackError(
            f"cannot connect to {target}: connection refused (is the server running?)"
        ) from None
    except TimeoutError:
        raise AttackError(f"cannot connect to {target}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise AttackError(f"cannot connect to {target}: {exc.strerror or exc}") from None


def tcp_state(sock: socket.socket) -> int | None:
    """The kernel's TCP state of ``sock`` (Linux), or None where TCP_INFO does not exist.

    This sees a server's close (FIN: CLOSE_WAIT, reset: CLOSE) without reading from the
    socket, which a slow reader must never do.
    """
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, option, 8)[0]
    except OSError:
        return None


def peer_closed(sock: socket.socket) -> bool:
    """True if the server has closed ``sock`` (EOF or reset waiting); consumes nothing."""
    # Non-blocking first: on a socket with a timeout, Python waits for data before recv().
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def raise_fd_limit(wanted: int) -> None:
    """Let one process hold ``wanted`` sockets if the hard limit allows (10k idle
    connections need more than the usual soft limit of 1024)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def n_replies(n: int) -> str:
    return f"{n:,} reply" if n == 1 else f"{n:,} replies"


def error_counts(errors: dict[str, int]) -> str:
    if not errors:
        return "0"
    return ", ".join(f"{n:,} ({reason})" for reason, n in sorted(errors.items()))


def spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return (
        f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f} s"
        " (min / median / max)"
    )


# ----------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------


@dataclass
class Report:
    """What every tool reports: where it went and how long it took; subclasses add the
    rest, a ``verdict()`` line and the ``rows()`` of the printed table."""

    tool: ClassVar[str] = ""
    host: str
    port: int
    elapsed: float

    def verdict(self) -> str:
        raise NotImplementedError

    def rows(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def table(self) -> Table:
        title = f"{self.tool} -> {host_port(self.host, self.port)}"
        table = Table(title=title, show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        for name, value in self.rows():
            table.add_row(name, value)
        table.add_row("elapsed", f"{self.elapsed:.2f} s")
        return table


Progress = Callable[[str], None]


def error_name(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
