"""The attack tools (``python -m tools.attack``) against real in-process servers.

Each tool must report what the server actually did (kicked, closed at accept, skipped a
header …), must refuse any target that is not loopback without sending it a single byte,
and, while each attack runs against chapter 6, the server must keep answering a
well-behaved client without losing or reordering any of its replies. The soak runs them
all at once for 20 s against chapter 6 (in a subprocess, as ``python -m tools.attack soak``
does) and checks the same, plus the server's descriptors, threads and memory.
"""

from __future__ import annotations

import importlib
import io
import socket
import subprocess
import sys
import threading

import pytest
from rich.console import Console

from common.protocol import PING_PACKET, Login, MsgCode, Status, encode_packet
from tests.conftest import CHAPTERS, ROOT, load_chapter, recv_exactly, wait_until
from tools import attack
from tools.attack import (
    NotLoopback,
    main,
    resolve_target,
    run_churn,
    run_flood,
    run_garbage,
    run_idle,
    run_slow_reader,
    run_slowloris,
    soak,
    soak_server,
)
from tools.attack.cli import progress_line
from tools.attack.slow_reader import PACED_GROUP, PACED_INTERVAL
from tools.attack.soak import GoodClient, defence_counts, run_soak
from tools.client import login_packet

TOOLS = ["flood", "garbage", "slowloris", "slow-reader", "churn", "idle"]
RUNNERS = {
    "flood": run_flood,
    "garbage": run_garbage,
    "slowloris": run_slowloris,
    "slow-reader": run_slow_reader,
    "churn": run_churn,
    "idle": run_idle,
}

FLOOD = dict(Sock_FloodAttackKickEnable=1, Sock_FloodTimeInterval=100, Sock_FloodKickCounter=10)
# Silent clients are kicked after 3 * 0.2 + 0.2 = 0.8 s.
HEARTBEAT = dict(Sock_WaitTimeEnable=1, Sock_MaxWaitTime=0.2, Sock_PingGraceTime=0.2)


def has(chapter: str, feature: str) -> bool:
    return feature in load_chapter(chapter).FEATURES


def one_at_a_time(chapter: str) -> bool:
    """Chapter 1 (and anything without epoll) serves one client at a time."""
    return not has(chapter, "epoll")


# -- loopback only ------------------------------------------------------------------------

NOT_LOOPBACK = [
    "10.0.0.1",
    "8.8.8.8",
    "0.0.0.0",
    "::ffff:8.8.8.8",
    "2001:4860:4860::8888",
    "example.com",
    "localhost.example.com",
    "127.0.0.1.example.com",
]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to resolve a name or open a connection fails the test."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network touched for a refused target: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket.socket, "connect_ex", forbidden)
    monkeypatch.setattr(socket.socket, "sendto", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(socket, "getaddrinfo", forbidden)


@pytest.mark.parametrize("host", NOT_LOOPBACK)
@pytest.mark.parametrize("tool", TOOLS)
def test_cli_refuses_non_loopback_targets(tool, host, no_network, capsys):
    assert main([tool, "--host", host, "--count", "1", "--duration", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: refusing") and err.count("\n") == 1, err


@pytest.mark.parametrize("host", ["10.0.0.1", "8.8.8.8", "example.com"])
@pytest.mark.parametrize("tool", TOOLS)
def test_functions_refuse_non_loopback_targets(tool, host, no_network):
    with pytest.raises(NotLoopback):
        RUNNERS[tool](host, 5678, count=1, duration=1.0, timeout=1.0)


def test_localhost_resolving_elsewhere_is_refused(monkeypatch):
    def fake_getaddrinfo(host, port, *args, **kwargs):
        assert host == "localhost"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(NotLoopback, match=r"10\.1\.2\.3"):
        resolve_target("localhost", 5678)


@pytest.mark.parametrize(
    ("host", "ip"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.9.8.7", "127.9.8.7"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
    ],
)
def test_loopback_literals_are_accepted(host, ip):
    assert resolve_target(host, 5678).ip == ip


def test_localhost_is_accepted_when_it_is_loopback(monkeypatch):
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, port, *a, **k: [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ],
    )
    assert resolve_target("localhost", 5678).ip == "127.0.0.1"  # what the chapters bind
    assert resolve_target("LOCALHOST.", 5678).ip == "127.0.0.1"


# -- command line -------------------------------------------------------------------------


@pytest.fixture
def closed_port():
    """A loopback port where nobody listens (bound, never listening: connect is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("tool", TOOLS)
def test_connection_refused_is_one_line_and_exit_1(tool, closed_port, capsys):
    argv = [tool, "--port", str(closed_port), "--count", "2", "--duration", "2", "--timeout", "2"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"error: cannot connect to 127.0.0.1:{closed_port}: "
        "connection refused (is the server running?)\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["garbage", "--length", "8"],
        ["garbage", "--length", "29000"],
        ["garbage", "--length", "65536"],
        ["flood", "--count", "0"],
        ["idle", "--duration", "0"],
        ["churn", "--hold", "-1"],
        ["bogus"],
        [],
    ],
)
def test_bad_arguments_exit_2(argv, no_network, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("tool", TOOLS)
def test_help_for_every_tool(tool, capsys):
    with pytest.raises(SystemExit) as exc:
        main([tool, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--count", "--duration", "--timeout"):
        assert option in out


def test_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "tools.attack", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for tool in [*TOOLS, "soak"]:
        assert tool in result.stdout


# -- flood --------------------------------------------------------------------------------


@pytest.mark.features("flood")
def test_flood_is_kicked_after_exactly_ten_replies(serve, capsys):
    srv = serve(**FLOOD)
    report = run_flood(srv.host, srv.port, count=100, duration=10)
    assert (report.kicked, report.replies, report.closed_on_request) == (True, 10, 11)
    assert report.closed_by in ("EOF", "reset")
    # and the command line says so
    assert main(["flood", "--port", str(srv.port), "--count", "100", "--duration", "10"]) == 0
    assert f"flood: kicked after 10 replies ({report.closed_by} on request 11) in" in (
        capsys.readouterr().out
    )


def test_flood_is_not_kicked_without_flood_detection(chapter, serve, capsys):
    srv = serve(Sock_FloodAttackKickEnable=0) if has(chapter, "flood") else serve()
    report = run_flood(srv.host, srv.port, count=200, duration=10)
    assert (report.kicked, report.timed_out, report.requests, report.replies) == (
        False,
        False,
        200,
        200,
    )
    assert main(["flood", "--port", str(srv.port), "--count", "50"]) == 0
    assert "flood: not kicked: 50 replies in " in capsys.readouterr().out


# -- garbage ------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [7, 65535])
def test_garbage_closed_by_chapter_6_skipped_before(chapter, serve, length, capsys):
    srv = serve()
    report = run_garbage(srv.host, srv.port, length=length, count=5, duration=10)
    if has(chapter, "flood"):
        assert (report.closed, report.replies) == (True, 0)
        expected = (
            "garbage: closed by the server after the malformed header "
            f"(length {length}): 0 of 5 pings answered"
        )
    else:
        assert (report.closed, report.timed_out, report.replies) == (False, False, 5)
        assert srv.stats()["malformed"] == 1
        expected = (
            f"garbage: header (length {length}) skipped: "
            "all 5 pings after it answered, connection kept open"
        )
    assert main(["garbage", "--port", str(srv.port), "--length", str(length)]) == 0
    assert expected in capsys.readouterr().out


# -- idle and slowloris -------------------------------------------------------------------


@pytest.mark.features("timers")
def test_idle_connections_are_closed_by_the_heartbeat(serve):
    srv = serve(**HEARTBEAT)
    progress: list[str] = []
    report = run_idle(srv.host, srv.port, count=5, duration=10, progress=progress.append)
    assert (report.opened, report.connect_failed, report.closed) == (5, 0, 5)
    assert report.elapsed < 10  # ended as soon as the last one was closed
    assert progress[0].startswith("idle: 1 held open, 0 closed by the server")


@pytest.mark.features("timers")
def test_slowloris_connections_are_closed_by_the_heartbeat(serve):
    """A partial packet and a byte every 0.1 s are not pings: the silence kick fires."""
    srv = serve(**HEARTBEAT)
    report = run_slowloris(srv.host, srv.port, count=3, duration=10, interval=0.1)
    assert (report.opened, report.connect_failed, report.closed, report.replies) == (3, 0, 3, 0)
    assert report.bytes_sent >= 3 * 4  # half a header each, at least


@pytest.mark.parametrize("tool", ["idle", "slowloris"])
def test_held_connections_stay_open_without_heartbeat(chapter, serve, tool):
    srv = serve(Sock_WaitTimeEnable=0) if has(chapter, "timers") else serve()
    count = 1 if one_at_a_time(chapter) else 3
    report = RUNNERS[tool](srv.host, srv.port, count=count, duration=0.2)
    assert (report.opened, report.closed, report.still_open) == (count, 0, count)


# -- slow-reader --------------------------------------------------------------------------


@pytest.mark.features("sendqueue")
def test_slow_reader_is_throttled_then_gets_everything(serve):
    """Chapter 4 on: a client that does not read is not kicked but throttled (the server
    stops reading its requests while its replies wait), and loses nothing."""
    srv = serve()
    report = run_slow_reader(srv.host, srv.port, count=60_000, duration=3, request="login")
    assert not report.kicked, report.verdict()
    assert report.replies_read == report.requests_sent


@pytest.mark.features("timers")
def test_slow_reader_is_kicked_by_the_heartbeat(serve):
    """Chapter 5 on: one that takes none of its waiting replies for the heartbeat's
    timeout is kicked (``kicks.send_stall``)."""
    srv = serve(Sock_WaitTimeEnable=1, Sock_MaxWaitTime=0.2, Sock_PingGraceTime=0.2)
    report = run_slow_reader(srv.host, srv.port, count=60_000, duration=15, request="login")
    assert report.kicked, report.verdict()
    assert report.elapsed < 15  # the kick, not the time limit, ended it
    wait_until(lambda: srv.stats()["kicks"]["send_stall"] == 1)


def test_slow_reader_not_kicked_before_the_send_queue(chapter, serve):
    if has(chapter, "sendqueue"):
        pytest.skip("from chapter 4 a client that does not read is read no more")
    srv = serve()
    # A generous read timeout: it bounds the wait for the last replies only, and a server
    # starved of CPU by other work may need seconds for 5000 logins.
    report = run_slow_reader(
        srv.host, srv.port, count=5000, duration=0.5, timeout=30, request="login"
    )
    assert not report.kicked, report.verdict()
    assert report.requests_sent >= 5000
    assert report.replies_read == report.requests_sent


# -- churn --------------------------------------------------------------------------------


def test_churn_every_connect_served(chapter, serve):
    srv = serve()
    report = run_churn(srv.host, srv.port, count=20, duration=10)
    assert (report.cycles, report.accepted, report.closed_at_accept, report.no_answer) == (
        20,
        20,
        0,
        0,
    )


@pytest.mark.features("pool")
def test_churn_beyond_the_online_limit_is_closed_at_accept(serve):
    srv = serve(worker_connections=5, WorkerProcesses=1)  # (chapter 7: a limit per worker)
    progress: list[str] = []
    report = run_churn(srv.host, srv.port, count=20, duration=10, hold=5, progress=progress.append)
    assert progress[0] == "churn: 0 of 20 cycles, 0 served, 0 closed at accept"
    assert (report.held_answered, report.held_still_open) == (5, 5)
    assert (report.cycles, report.accepted, report.closed_at_accept, report.no_answer) == (
        20,
        0,
        20,
        0,
    )


# -- the server keeps serving a well-behaved client through every attack -----------------


def login_reply(username: str) -> bytes:
    return encode_packet(MsgCode.LOGIN, Login(username, Status.NO_USER.name).encode())


class WellBehavedClient(threading.Thread):
    """Sends a ping and a login for ``good<i>`` in one write, reads both replies, waits
    150 ms after the replies, and again. Pings keep the heartbeat happy; the pause (longer
    than the 100 ms flood interval, and counted from the reply so the server never sees
    two of our packets closer than that, except the login right after its ping) keeps
    the flood counter at 1 at most. Distinct usernames make any reordering visible."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(name="well-behaved", daemon=True)
        self.sock = socket.create_connection((host, port), timeout=5)
        self.stopping = threading.Event()
        self.expected: list[bytes] = []
        self.received: list[bytes] = []
        self.error: BaseException | None = None

    @property
    def exchanges(self) -> int:
        return len(self.received) // 2

    def run(self) -> None:
        try:
            with self.sock:
                i = 0
                while not self.stopping.is_set():
                    name = f"good{i}"
                    self.expected += [PING_PACKET, login_reply(name)]
                    self.sock.sendall(PING_PACKET + login_packet(name, "pw"))
                    data = recv_exactly(self.sock, len(PING_PACKET) + len(login_reply(name)))
                    self.received += [data[: len(PING_PACKET)], data[len(PING_PACKET) :]]
                    i += 1
                    self.stopping.wait(0.15)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        assert not self.is_alive(), "the well-behaved client did not stop"


ATTACKS = {
    "flood": lambda h, p: run_flood(h, p, count=200, duration=5),
    "garbage": lambda h, p: run_garbage(h, p, length=65535, count=5, duration=5),
    "slowloris": lambda h, p: run_slowloris(h, p, count=3, duration=5, interval=0.1),
    "slow-reader": lambda h, p: run_slow_reader(h, p, count=20_000, duration=5),
    "churn": lambda h, p: run_churn(h, p, count=20, duration=5, hold=5),
    "idle": lambda h, p: run_idle(h, p, count=3, duration=5),
}


def check_attack(tool: str, report: attack.Report) -> None:
    """What each attack meets in chapter 6 with flood and heartbeat both on."""
    if tool == "flood":
        assert (report.kicked, report.replies) == (True, 10)
    elif tool == "garbage":
        assert (report.closed, report.replies) == (True, 0)
    elif tool in ("slowloris", "idle"):
        assert report.closed == report.opened == 3
    elif tool == "slow-reader":
        assert report.kicked  # by the flood kick, the send-stall kick or both: all the same here
    elif tool == "churn":
        assert (report.cycles, report.held_answered) == (20, 5)


@pytest.mark.features("flood", "timers")
@pytest.mark.parametrize("tool", list(ATTACKS))
def test_well_behaved_client_is_served_throughout(serve, tool):
    # Room for the well-behaved client and the 5 connections churn holds; churn's
    # further connects are then closed at accept.
    srv = serve(**FLOOD, **HEARTBEAT, worker_connections=6)
    good = WellBehavedClient(srv.host, srv.port)
    good.start()
    try:
        wait_until(lambda: good.exchanges >= 2 or not good.is_alive())
        report = ATTACKS[tool](srv.host, srv.port)
        after = good.exchanges
        wait_until(lambda: good.exchanges >= after + 2 or not good.is_alive())
    finally:
        good.finish()
    assert good.error is None, f"well-behaved client failed: {good.error!r}"
    assert good.received == good.expected
    assert good.exchanges >= 4
    check_attack(tool, report)


# -- slow-reader, paced: only the send-stall kick can meet it -----------------------------


@pytest.mark.slow
@pytest.mark.features("timers")
def test_paced_slow_reader_meets_the_send_stall_kick_not_silence(serve):
    """Groups of a ping and 3 logins every 150 ms, pinging all along; but once its replies
    wait, the server reads it no more, and it takes none of them: the send-stall kick
    closes it, not the silence kick. (A small send buffer, or the kernel would buffer
    megabytes first. Flood detection is off here: the pacing is real time, and a server
    starved of CPU reads several groups at once, which can look like a flood; that the
    pacing itself is under the flood rule is the next test's, on the server's clock.)"""
    srv = serve(
        Sock_WaitTimeEnable=1,
        Sock_MaxWaitTime=1,
        Sock_PingGraceTime=3,
        Sock_SendBufferSize=4096,
    )
    progress: list[str] = []
    report = run_slow_reader(srv.host, srv.port, duration=60, paced=True, progress=progress.append)
    assert report.kicked, report.verdict()
    assert report.elapsed < 60  # the kick, not the time limit, ended it
    assert progress[0] == "slow-reader: 0 requests sent, not kicked yet"
    assert "logins and pings" in report.verdict()
    wait_until(lambda: srv.stats()["kicks"]["send_stall"] == 1)
    assert srv.stats()["kicks"]["silence"] == 0


@pytest.mark.features("flood")
def test_the_paced_pattern_is_under_the_flood_rule(chapter):
    """What the paced slow reader sends, timed on the server's clock: a group of
    PACED_GROUP packets at one instant every PACED_INTERVAL seconds never makes the
    shipped rule (100 ms, 10 in a row) kick."""
    flood = importlib.import_module(f"chapters.{chapter}.flood")
    connection = importlib.import_module(f"chapters.{chapter}.connection")
    detector = flood.FloodDetector(0.1, 10)
    conn = connection.Connection()
    for group in range(200):
        now = 1000.0 + group * PACED_INTERVAL
        assert not any(detector.check(conn, now) for _ in range(PACED_GROUP))


# -- progress bars ------------------------------------------------------------------------


def test_progress_bar_shows_on_a_terminal_and_follows_the_tool():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with progress_line(console, "idle -> 127.0.0.1:5678", 60) as progress:
        assert progress is not None
        progress("idle: 3 held open, 0 closed by the server")
        wait_until(lambda: "idle: 3 held open, 0 closed by the server" in out.getvalue())
    assert "left" in out.getvalue()  # the time-left column


def test_progress_bar_is_silent_off_a_terminal():
    out = io.StringIO()
    with progress_line(Console(file=out, force_terminal=False), "idle", 60) as progress:
        assert progress is None
    assert out.getvalue() == ""


# -- the soak -----------------------------------------------------------------------------


def test_defence_counts_read_every_chapters_counters(chapter, serve):
    """The raw counters the soak reads for chapters before 6 exist under those names, and
    chapter 6's ``defences`` agrees with them."""
    features = load_chapter(chapter).FEATURES
    if "pool" not in features or chapter not in CHAPTERS:
        pytest.skip(f"{chapter} has no defences the soak counts")
    stats = serve().stats()
    counts = defence_counts(stats, features)
    assert counts == {name: 0 for name, _, feature in soak.DEFENCES if feature in features}
    for _, key, feature in soak.DEFENCES:
        if feature in features:
            group, _, leaf = key.partition(".")
            assert stats[group][leaf] == 0, key  # the raw counter exists under this name


def test_defence_counts_from_raw_counters():
    stats = {
        "refused": {"online_limit": 2, "storm": 5},
        "kicks": {"send_stall": 1, "silence": 3, "timeout": 0},
        "replies_dropped": {"stale": 9},
    }
    assert defence_counts(stats, frozenset({"pool", "sendqueue", "timers"})) == {
        "online_limit": 2,
        "storm_guard": 5,
        "silence_kick": 3,
        "send_stall_kick": 1,
        "timeout_kick": 0,
    }


def good_client() -> tuple[GoodClient, socket.socket, socket.socket]:
    """A good client and a socket pair: the client's end, and the end a test plays the
    server on (replies written there before the cycle are what the client reads)."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    client = GoodClient(0, resolve_target("127.0.0.1", 5678), threading.Event(), 0.0)
    return client, ours, theirs


def test_good_client_accepts_the_right_replies_and_times_each():
    client, ours, theirs = good_client()
    with ours, theirs:
        theirs.sendall(b"".join(client.first) + b"".join(client.later))
        assert client._cycle(ours, client.first)
        assert client.registered
        assert client._cycle(ours, client.later)
    t = client.tally
    assert (t.cycles, t.replies, t.lost, t.wrong, t.failures) == (2, 8, 0, 0, [])
    assert len(t.latencies) == 8
    # what the client sent: ping, register, login, login with a wrong password
    assert client.request.startswith(PING_PACKET)


def test_good_client_counts_a_wrong_byte():
    client, ours, theirs = good_client()
    replies = bytearray(b"".join(client.later))
    replies[-1] ^= 0xFF  # the last reply's last byte (the BAD_PASSWORD login)
    with ours, theirs:
        theirs.sendall(replies)
        assert not client._cycle(ours, client.later)  # and starts a new connection
    t = client.tally
    assert (t.replies, t.lost, t.wrong) == (3, 0, 1)
    assert "reply 4 of 4 wrong" in t.failures[0]


def test_good_client_counts_replies_lost_to_a_close():
    client, ours, theirs = good_client()
    with ours, theirs:
        theirs.sendall(client.later[0] + client.later[1])  # two replies, then EOF
        theirs.shutdown(socket.SHUT_WR)
        assert not client._cycle(ours, client.later)
    t = client.tally
    assert (t.replies, t.lost, t.wrong) == (0, 2, 0)
    assert "closed by the server after 2 of 4 replies" in t.failures[0]


def test_good_client_counts_replies_that_never_come(monkeypatch):
    monkeypatch.setattr(soak, "REPLY_TIMEOUT", 0.2)
    client, ours, theirs = good_client()
    ours.settimeout(0.2)
    with ours, theirs:
        theirs.sendall(client.later[0])
        assert not client._cycle(ours, client.later)
    assert (client.tally.lost, client.tally.wrong) == (3, 0)
    assert "no reply 2 of 4 within 0.2 s" in client.tally.failures[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["soak", "--seconds", "0"],
        ["soak", "--seconds", "10", "--warmup", "10"],
        ["soak", "--clients", "0"],
        ["soak", "--connections", "-1"],
    ],
)
def test_soak_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("chapter", "message"),
    [
        ("nope", "error: unknown chapter 'nope': choose one of 01_listen, "),
        ("01", "error: 01_listen serves one client at a time: a soak needs chapter 2 or later"),
    ],
)
def test_soak_refuses_what_it_cannot_soak(chapter, message, capsys):
    assert main(["soak", "--chapter", chapter, "--seconds", "1"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message) and err.count("\n") == 1, err


def test_soak_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["soak", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--chapter", "--seconds", "--warmup", "--clients", "--connections"):
        assert option in out


def test_soak_server_refuses_an_unknown_chapter(capsys):
    with pytest.raises(SystemExit) as exc:
        soak_server.main(["nope", "--config", "nginx.conf"])
    assert exc.value.code == 2
    assert "no chapter 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_soak_20_seconds_against_chapter_6():
    """Every attack at once for 20 s: no good reply lost or wrong, every defence an attack
    aims at fired, descriptors and threads back to where they started once everyone has
    gone, resident memory within the bound, and a clean stop."""
    report = run_soak("06_flood", 20)
    assert report.good.failures == [], report.good.failures
    assert (report.good.lost, report.good.wrong) == (0, 0)
    assert report.good.replies >= 4 * report.clients  # every client did a cycle, at least
    assert report.good.replies == 4 * report.good.cycles
    assert report.expected == [
        "online_limit",
        "storm_guard",
        "silence_kick",
        "send_stall_kick",
        "flood_kick",
        "malformed_close",
    ]
    fired = {name: report.defences[name] for name in report.expected}
    assert all(fired.values()), fired
    assert report.defences["timeout_kick"] == 0  # off in the soak's config
    assert all(tally.runs > 0 for tally in report.hostile), report.hostile
    start, after = report.snap("start"), report.snap("after")
    assert (after.fds, after.threads) == (start.fds, start.threads)
    assert after.online == 0
    assert report.rss_growth_kib is not None
    assert report.rss_growth_kib <= soak.RSS_GROWTH_LIMIT_MIB * 1024
    assert report.stopped_cleanly
    assert report.ok, report.verdict()
    assert report.verdict().startswith("passed: ")
