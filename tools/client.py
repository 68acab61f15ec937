"""A small client for every chapter: ``python -m tools.client ping|register|login``.

Also the blocking :class:`Client` that the tests, attack tools and examples use.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from common.protocol import (
    HEADER_LEN,
    PING_PACKET,
    Login,
    MsgCode,
    Packet,
    PacketParser,
    ProtocolError,
    Register,
    Status,
    crc32,
    encode_packet,
)


def ping_packet() -> bytes:
    return PING_PACKET


def register_packet(username: str, password: str, itype: int = 0) -> bytes:
    return encode_packet(MsgCode.REGISTER, Register(itype, username, password).encode())


def login_packet(username: str, password: str) -> bytes:
    return encode_packet(MsgCode.LOGIN, Login(username, password).encode())


class ServerClosed(ConnectionError):
    """The server closed the connection before a full reply arrived."""


class Client:
    """A blocking client with a timeout on every operation (default 5 s)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5678, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.parser = PacketParser()
        self._ready: list[Packet] = []

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_packet(self) -> Packet:
        """Block until one whole packet arrives (raises ServerClosed on EOF)."""
        while not self._ready:
            data = self.sock.recv(65536)
            if not data:
                raise ServerClosed("the server closed the connection")
            for event in self.parser.feed(data):
                if isinstance(event, ProtocolError):
                    raise ValueError(
                        f"server sent a malformed header (length {event.length}: {event.reason})"
                    )
                self._ready.append(event)
        return self._ready.pop(0)

    def recv_packets(self, n: int) -> list[Packet]:
        return [self.recv_packet() for _ in range(n)]

    def request(self, data: bytes) -> Packet:
        self.send(data)
        return self.recv_packet()


# ----------------------------------------------------------------------------------------
# Reading replies for people
# ----------------------------------------------------------------------------------------


@dataclass
class ReplyView:
    code: int
    length: int
    crc_ok: bool
    outcome: str


def describe(packet: Packet) -> ReplyView:
    length = HEADER_LEN + len(packet.body)
    crc_ok = packet.crc == (crc32(packet.body) if packet.body else 0)
    outcome = "pong" if packet.code == MsgCode.PING and not packet.body else "?"
    if packet.code == MsgCode.REGISTER and len(packet.body) == Register.SIZE:
        reply = Register.decode(packet.body)
        outcome = f"{_status_name(reply.itype)} ({reply.password}) user={reply.username!r}"
    elif packet.code == MsgCode.LOGIN and len(packet.body) == Login.SIZE:
        reply = Login.decode(packet.body)
        outcome = f"{reply.password} user={reply.username!r}"
    return ReplyView(packet.code, length, crc_ok, outcome)


def _status_name(value: int) -> str:
    try:
        return Status(value).name
    except ValueError:
        return f"status {value}"


def _port(text: str) -> int:
    """argparse type for --port: without it the OS wraps 70000 round to 4464."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1-65535, got {port}")
    return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.client",
        description="Send ping, register or login requests to a running chapter server "
        "and print each reply (code, length, CRC check, outcome).",
    )
    parser.add_argument("command", choices=["ping", "register", "login"])
    parser.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=5678, help="server port (default: %(default)s)"
    )
    parser.add_argument(
        "--count", type=int, default=1, help="requests to send, one after another (default: 1)"
    )
    parser.add_argument("--username", default="alice", help="for register/login (default: alice)")
    parser.add_argument("--password", default="secret", help="for register/login (default: secret)")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for a reply (default: 10)"
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if not args.timeout > 0:  # 0 would make the socket non-blocking, < 0 raises
        parser.error("--timeout must be more than 0 seconds")
    console = Console()
    if args.command == "ping":
        request = ping_packet()
    elif args.command == "register":
        request = register_packet(args.username, args.password)
    else:
        request = login_packet(args.username, args.password)

    table = Table(title=f"{args.command} x{args.count} -> {args.host}:{args.port}")
    for column in ("#", "code", "length", "crc", "outcome", "ms"):
        table.add_column(column, justify="right" if column in ("#", "length", "ms") else "left")
    try:
        with Client(args.host, args.port, timeout=args.timeout) as client:
            for i in range(1, args.count + 1):
                start = time.perf_counter()
                reply = client.request(request)
                elapsed = (time.perf_counter() - start) * 1000
                view = describe(reply)
                table.add_row(
                    str(i),
                    f"{view.code} ({_code_name(view.code)})",
                    str(view.length),
                    "[green]ok[/]" if view.crc_ok else "[red]BAD[/]",
                    view.outcome,
                    f"{elapsed:.1f}",
                )
    except (OSError, ValueError) as exc:
        # OSError covers refused, reset, timed out, unknown host and ServerClosed;
        # ValueError is a reply with a malformed header.
        if table.row_count:
            console.print(table)
        if isinstance(exc, TimeoutError):
            reason = "timed out waiting for a reply"
        elif isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        else:
            reason = str(exc)
        Console(stderr=True).print(
            f"[bold red]error:[/] {args.host}:{args.port}: {reason}", highlight=False
        )
        return 1
    console.print(table)
    return 0


def _code_name(code: int) -> str:
    try:
        return MsgCode(code).name.lower()
    except ValueError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
