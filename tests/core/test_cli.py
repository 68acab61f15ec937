"""The command lines, run as a reader runs them: ``python -m chapters.NN_name`` and
``python -m tools.client``, in real subprocesses.

One smoke test per chapter and per stop signal: start on a free port, read the port from
the log, ping and register over the wire (exact bytes), stop with the signal, and expect
exit 0, the goodbye line and no traceback. Every subprocess is killed in a ``finally``.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.protocol import PING_PACKET, Login, MsgCode, Register, Status, encode_packet
from tests.conftest import (
    CHAPTERS,
    ENV,
    LISTENING,
    ROOT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Proc,
    RunningServer,
    recv_exactly,
    test_config,
)
from tools.client import Client, login_packet, register_packet
from tools.client import main as client_main

SMOKE_CONFIG = """\ufeff# smoke test: any free port, throwaway users, cheap hashes
ListenPort0 = 0
UserDatabase = :memory:
PasswordHashIterations = 1000
"""


@pytest.fixture
def smoke_conf(tmp_path: Path) -> Path:
    path = tmp_path / "smoke.conf"
    path.write_text(SMOKE_CONFIG, encoding="utf-8")
    return path


def run(args: list[str], timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (``subprocess.run`` kills it if the timeout expires)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=ENV,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


def free_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {stderr!r}"
    assert "Traceback" not in stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# -- chapter servers ----------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_smoke(name, sig, smoke_conf):
    proc = Proc(["-m", f"chapters.{name}", "--config", str(smoke_conf)])
    try:
        port = int(proc.wait_for(LISTENING, START_TIMEOUT).group(1))
        assert port > 0
        with Client("127.0.0.1", port, timeout=10) as client:
            client.send(PING_PACKET)
            assert recv_exactly(client.sock, 8) == b"\x00\x08\x00\x00\x00\x00\x00\x00"
            client.send(register_packet("smoke", "pw"))
            body = Register(int(Status.OK), "smoke", "OK").encode()
            assert recv_exactly(client.sock, 108) == encode_packet(MsgCode.REGISTER, body)
        proc.popen.send_signal(sig)
        assert proc.finish(STOP_TIMEOUT) == 0, proc.text
        assert "Goodbye" in proc.text
        assert "Traceback" not in proc.text
    finally:
        proc.kill()


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_help(name):
    result = run(["-m", f"chapters.{name}", "--help"])
    assert result.returncode == 0, result.stderr
    for option in ("--config", "--port", "--log-level", "--dashboard"):
        assert option in result.stdout
    assert f"python -m chapters.{name}" in result.stdout
    assert result.stderr == ""


def test_missing_config_file(tmp_path):
    missing = tmp_path / "missing.conf"
    result = run(["-m", f"chapters.{CHAPTERS[0]}", "--config", str(missing)])
    assert result.returncode == 2
    assert one_line_error(result.stderr) == f"error: {missing}: config file not found"


def test_bad_integer_in_config(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text("# a comment\nListenPort0 = 12abc\n", encoding="utf-8")
    result = run(["-m", f"chapters.{CHAPTERS[0]}", "--config", str(path)])
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert line.startswith(f"error: {path}:2: ListenPort0")
    assert "'12abc'" in line


def test_port_in_use(smoke_conf):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            ["-m", f"chapters.{CHAPTERS[0]}", "--config", str(smoke_conf), "--port", str(port)]
        )
    assert result.returncode == 1
    line = one_line_error(result.stderr)
    assert line == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


# -- python -m tools.client ------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer("01_listen", test_config())
    try:
        yield running
    finally:
        running.stop()


def table_rows(stdout: str) -> list[list[str]]:
    """The data rows of the rich table: cells between box-drawing bars."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]
        if cells and cells[0].isdigit():
            rows.append(cells)
    return rows


def client(*args: str) -> subprocess.CompletedProcess[str]:
    return run(["-m", "tools.client", *args])


def test_client_ping(server):
    result = client("ping", "--port", str(server.port), "--count", "3")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = table_rows(result.stdout)
    assert [row[:5] for row in rows] == [[str(i), "0 (ping)", "8", "ok", "pong"] for i in (1, 2, 3)]


def test_client_register_and_login(server):
    port = str(server.port)
    user = ["--username", "cli-user", "--password", "s3cret"]
    outcomes = []
    for args in (
        ["register", *user],
        ["register", *user],
        ["login", *user],
        ["login", "--username", "cli-user", "--password", "wrong"],
        ["login", "--username", "nobody"],
    ):
        result = client(*args, "--port", port)
        assert result.returncode == 0, result.stderr
        [row] = table_rows(result.stdout)
        outcomes.append(row[1:5])
    assert outcomes == [
        ["5 (register)", "108", "ok", "OK (OK) user='cli-user'"],
        ["5 (register)", "108", "ok", "EXISTS (EXISTS) user='cli-user'"],
        ["6 (login)", "104", "ok", "OK user='cli-user'"],
        ["6 (login)", "104", "ok", "BAD_PASSWORD user='cli-user'"],
        ["6 (login)", "104", "ok", "NO_USER user='nobody'"],
    ]


def test_client_help():
    result = client("--help")
    assert result.returncode == 0
    for word in ("ping", "register", "login", "--port", "--host", "--count"):
        assert word in result.stdout


def test_client_closed_port():
    port = free_port()
    result = client("ping", "--port", str(port))
    assert result.returncode == 1
    assert one_line_error(result.stderr) == f"error: 127.0.0.1:{port}: Connection refused"


@pytest.mark.parametrize("port", ["0", "65536", "70000", "http"])
def test_client_rejects_bad_port(port, capsys):
    with pytest.raises(SystemExit) as info:
        client_main(["ping", "--port", port])
    assert info.value.code == 2
    assert "argument --port" in capsys.readouterr().err


def test_client_reports_a_malformed_reply(capsys, monkeypatch):
    """A server that answers with an impossible header: one error line, exit 1."""
    monkeypatch.setenv("COLUMNS", "200")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                recv_exactly(conn, 8)
                conn.sendall(b"\x00\x03\x00\x00\x00\x00\x00\x00")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        try:
            code = client_main(["ping", "--port", str(port), "--timeout", "10"])
        finally:
            thread.join(timeout=10)
    assert code == 1
    err = capsys.readouterr().err
    assert err == f"error: 127.0.0.1:{port}: server sent a malformed header (length 3: too short)\n"


def test_client_in_process_login_reply(server, capsys):
    """The same code path without a subprocess: the table shows the decoded reply."""
    with server.client() as c:
        assert c.request(register_packet("inproc", "pw")).code == MsgCode.REGISTER
        reply = c.request(login_packet("inproc", "pw"))
        assert reply.body == Login("inproc", "OK").encode()
    assert (
        client_main(
            ["login", "--port", str(server.port), "--username", "inproc", "--password", "pw"]
        )
        == 0
    )
    [row] = table_rows(capsys.readouterr().out)
    assert row[1:5] == ["6 (login)", "104", "ok", "OK user='inproc'"]
