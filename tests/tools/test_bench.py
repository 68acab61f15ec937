"""``python -m tools.bench``: short bounded runs that check what it counts, never speed.

The load runs start real servers in subprocesses (the bench's own way) for about a second;
the validators of both load clients (the native C one and the Python one) are tested
against deliberately faulty servers whose faults they must count exactly, and the Python
one also without any network.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from common.logic import Logic, UserStore
from common.protocol import PING_PACKET, MsgCode, Packet, PacketParser, encode_packet, pack_header
from tools.bench import BenchError, BenchOptions, BenchResult, native, parser_bench, run_bench
from tools.bench.chart import nice_ticks, panels_from, render
from tools.bench.cli import _config, main
from tools.bench.core import choose_client, compare_variants, defences_label, summarise
from tools.bench.loadgen import Conn, RequestMaker, Stats
from tools.bench.target import check_runnable, usable_cores

SHORT = {"duration": 0.6, "warmup": 0.2, "procs": 1, "drain_timeout": 5.0}
CLIENTS = ["native", "python"]


@pytest.fixture(scope="module")
def native_client():
    """The built native client, or a visible skip where this machine has no C compiler."""
    if native.find_compiler() is None:
        pytest.skip("no C compiler here: the native load client cannot be built")
    return native.build()


def _need(client: str) -> None:
    if client == "native" and native.find_compiler() is None:
        pytest.skip("no C compiler here: the native load client cannot be built")


def test_native_client_one_second_against_a_chapter(native_client):
    """The suite's run of the native client: 02_epoll, one second, every reply checked."""
    result = run_bench(
        BenchOptions(
            chapter="02_epoll", connections=8, pipeline=4, mode="mixed", client="native",
            duration=1.0, warmup=0.2,
        )
    )  # fmt: skip
    assert result.client == "native" and "loadclient.c" in result.client_detail
    assert result.replies > 0 and result.replies_per_s > 0
    assert result.ok, (result.errors, result.reordered, result.unanswered, result.notes)
    assert result.connected == 8 and result.setup_failures == 0
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"] <= result.latency_ms["max"]
    assert len(result.client_cpu_pct) == 1 and result.server_cpu_pct is not None
    cores = usable_cores()
    if len(cores) >= 2:  # pinned by default: the kernel's own word on where each side ran
        assert result.pinned
        assert result.server_cores == [cores[0]] and result.client_cores == [[cores[1]]]
        assert set(result.core_busy_pct) >= {cores[0], cores[1]}
    else:
        assert not result.pinned


def test_asyncio_baseline_mixed_load_is_validated():
    """The Python client, end to end against a real server (the fallback must keep working)."""
    result = run_bench(
        BenchOptions(
            chapter="asyncio", connections=4, pipeline=4, mode="mixed", client="python", **SHORT
        )
    )
    assert result.client == "python"
    assert result.replies > 0
    assert result.error_count == 0 and result.reordered == 0 and result.unanswered == 0
    assert result.connected == 4 and result.disconnects == 0 and result.setup_failures == 0
    assert result.ok
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"] <= result.latency_ms["max"]
    assert result.server_cpu_pct is not None and result.server_rss_kib["before"]


def test_chapter1_through_the_cli_with_json_and_chart(tmp_path, capsys):
    out, svg = tmp_path / "run.json", tmp_path / "run.svg"
    code = main(
        ["--chapter", "01_listen", "--connections", "1", "--pipeline", "8", "--duration", "0.6",
         "--warmup", "0.2", "--no-pin", "--json", str(out), "--chart", str(svg)]
    )  # fmt: skip
    assert code == 0
    document = json.loads(out.read_text())
    result = document["result"]
    assert result["target"] == "01_listen"
    assert result["replies"] > 0 and result["error_count"] == 0 and result["ok"] is True
    assert result["pinned"] is False and document["config"]["pinning"].startswith("off")
    assert document["command"].startswith("python -m tools.bench --chapter 01_listen")
    assert document["config"]["client"] == result["client"] in ("native", "python")
    assert "replies/s" in capsys.readouterr().out
    bars = ET.parse(svg).getroot().findall(".//{http://www.w3.org/2000/svg}rect[@class='bar']")
    assert [b.get("data-target") for b in bars] == ["01_listen"]
    assert int(bars[0].get("data-value")) == round(result["replies_per_s"])


def test_parser_subcommand(tmp_path, capsys):
    out = tmp_path / "parser.json"
    assert main(["parser", "--packets", "2000", "--repeat", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["packets"] == 2000 and len(data["times"]) == 2 and data["packets_per_s"] > 0
    assert "packets/s" in capsys.readouterr().out
    assert parser_bench(1000, 1, chunk=7).packets == 1000  # chunks that split headers


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.1", "example.com", "::1"])
def test_refuses_hosts_other_than_loopback(host, capsys):
    assert main(["--host", host, "--port", "5678"]) == 2
    assert "refusing to benchmark" in capsys.readouterr().err
    with pytest.raises(BenchError, match="refusing"):
        run_bench(BenchOptions(host=host, port=5678))


def test_unknown_target_is_a_clear_error(capsys):
    assert main(["--chapter", "99_nothing"]) == 2
    assert "unknown target" in capsys.readouterr().err


def test_defences_both_needs_compare(capsys):
    assert main(["--chapter", "06_flood", "--defences", "both"]) == 2
    assert "needs --compare" in capsys.readouterr().err


def test_uvloop_baseline_without_uvloop_is_refused(monkeypatch):
    monkeypatch.setattr("tools.bench.target.importlib.util.find_spec", lambda name: None)
    with pytest.raises(BenchError, match="needs uvloop"):
        check_runnable("asyncio-uvloop")
    check_runnable("asyncio")  # the standard loop needs nothing


# -- the native client: build, fallback --------------------------------------------------------


def test_native_build_is_cached_by_source(native_client, tmp_path, monkeypatch):
    first = native.build(where=tmp_path)
    assert first.parent == tmp_path and os.access(first, os.X_OK)
    stamp = first.stat().st_mtime_ns
    assert native.build(where=tmp_path) == first and first.stat().st_mtime_ns == stamp
    edited = tmp_path / "loadclient.c"
    edited.write_text(native.SOURCE.read_text() + "\n/* an edit */\n")
    monkeypatch.setattr(native, "SOURCE", edited)
    second = native.build(where=tmp_path)
    assert second != first and os.access(second, os.X_OK)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".loadclient-")]


def test_without_a_compiler_auto_falls_back_and_native_is_refused(monkeypatch):
    monkeypatch.setattr(native, "find_compiler", lambda: None)
    notes: list[str] = []
    assert choose_client("auto", notes.append) is None
    assert len(notes) == 1 and "using the Python client" in notes[0]
    with pytest.raises(BenchError, match="no C compiler"):
        choose_client("native", notes.append)


def test_a_build_failure_names_the_compiler_error(tmp_path, monkeypatch, native_client):
    broken = tmp_path / "loadclient.c"
    broken.write_text("int main(void) { return undeclared; }\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    with pytest.raises(native.NativeBuildError, match="undeclared"):
        native.build(where=tmp_path / "cache")


# -- the validator, without a network ---------------------------------------------------------


def _conn(mode: str | None) -> tuple[Conn, Stats, socket.socket, select.epoll]:
    a, b = socket.socketpair()
    a.setblocking(False)  # as the load generator's sockets
    b.settimeout(5)
    ep = select.epoll()
    maker = None if mode is None else RequestMaker(mode, "tXp0c0", "pw")
    conn = Conn(a, maker)
    ep.register(conn.fd, select.EPOLLIN)
    stats = Stats()
    stats.recording = True
    return conn, stats, b, ep


def test_validator_accepts_replies_split_anywhere():
    conn, stats, peer, ep = _conn(None)
    with peer, ep, conn.sock:
        conn.send_requests(3, time.monotonic(), stats, ep)
        assert peer.recv(100) == PING_PACKET * 3
        now = time.monotonic()
        assert conn.on_data(memoryview(PING_PACKET + PING_PACKET[:3]), now, stats) == 1
        assert conn.on_data(memoryview(PING_PACKET[3:] + PING_PACKET), now, stats) == 2
        assert stats.replies == 3 and conn.outstanding == 0 and conn.checker is None


def test_validator_classifies_reordered_and_corrupt_replies():
    conn, stats, peer, ep = _conn("mixed")
    with peer, ep, conn.sock:
        conn.send_requests(9, time.monotonic(), stats, ep)  # 7 pings, a register, a ping
        requests = [e for e in PacketParser().feed(peer.recv(65536)) if isinstance(e, Packet)]
        assert [p.code for p in requests] == [0] * 7 + [MsgCode.REGISTER, 0]
        logic = Logic(UserStore(iterations=1))
        replies = [logic.handle(p).reply for p in requests]
        assert all(replies)
        bad_ping = pack_header(8, 0, 99)  # nonzero CRC on a header-only reply
        # replies 0-5 fine; 6 corrupt; 7 (register) and 8 (ping) swapped
        stream = b"".join(replies[:6]) + bad_ping + replies[8] + replies[7]
        assert conn.on_data(memoryview(stream), time.monotonic(), stats) == 9
        assert stats.errors["bad_crc"] == 1
        assert stats.reordered == 1
        assert conn.outstanding == 0
        logic.close()


# -- against a faulty server --------------------------------------------------------------------


class FaultyServer:
    """Answers one connection correctly except that every register reply is held back and
    sent after the reply that follows it (a swap), and every 10th reply has a bad CRC."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        self.port = self.listener.getsockname()[1]
        self.swaps = 0
        self.corrupted = 0
        self.logic = Logic(UserStore(iterations=1))
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        sock, _ = self.listener.accept()
        sock.settimeout(0.2)
        parser = PacketParser()
        held: bytes | None = None
        count = 0
        with sock:
            while True:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    if held is not None:  # nothing follows it: send it as it is
                        sock.sendall(held)
                        held = None
                    continue
                except OSError:
                    return
                if not data:
                    return
                out = []
                for packet in parser.feed(data):
                    reply = self.logic.handle(packet).reply
                    assert reply is not None
                    count += 1
                    if count % 10 == 0 and held is None and packet.code != MsgCode.REGISTER:
                        reply = reply[:4] + bytes([reply[4] ^ 0xFF]) + reply[5:]
                        self.corrupted += 1
                    if packet.code == MsgCode.REGISTER and held is None:
                        held = reply
                        continue
                    out.append(reply)
                    if held is not None:
                        out.append(held)
                        held = None
                        self.swaps += 1
                if out:
                    sock.sendall(b"".join(out))

    def close(self) -> None:
        self.thread.join(timeout=15)
        self.listener.close()
        self.logic.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_faulty_server_faults_are_counted_exactly(client):
    _need(client)
    server = FaultyServer()
    try:
        result = run_bench(
            BenchOptions(
                port=server.port, connections=1, pipeline=4, mode="mixed", client=client, **SHORT
            )
        )
    finally:
        server.close()
    assert not server.thread.is_alive()
    assert result.client == client
    assert server.swaps > 0 and server.corrupted > 0
    assert result.reordered == server.swaps
    assert result.errors["bad_crc"] == server.corrupted
    assert result.unanswered == 0
    assert not result.ok


class ScriptedServer:
    """Answers one connection's pings, except that reply number ``at`` (from 1) is replaced
    by ``bad`` bytes, or, when ``bad`` is None, the connection is closed instead."""

    def __init__(self, at: int, bad: bytes | None) -> None:
        self.at, self.bad = at, bad
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        self.port = self.listener.getsockname()[1]
        self.answered = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        sock, _ = self.listener.accept()
        sock.settimeout(10)
        with sock:
            pending = b""
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                pending += data
                out = []
                while len(pending) >= 8:
                    pending = pending[8:]
                    self.answered += 1
                    if self.answered != self.at:
                        out.append(PING_PACKET)
                    elif self.bad is None:
                        sock.sendall(b"".join(out))
                        return
                    else:
                        out.append(self.bad)
                sock.sendall(b"".join(out))

    def close(self) -> None:
        self.thread.join(timeout=15)
        self.listener.close()


BAD_REPLIES = {
    "bad_code": pack_header(8, 7, 0),  # a well-formed packet with a code nobody sent
    "bad_crc": pack_header(8, 0, 1),  # a ping reply must carry CRC 0
    "bad_length": encode_packet(MsgCode.PING, b"body"),  # a ping reply has no body
}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("kind", [*BAD_REPLIES, "framing", "closed"])
def test_each_bad_reply_is_counted(client, kind):
    """Both clients classify a bad reply the same way (the C one mirrors loadgen.py)."""
    _need(client)
    bad = {**BAD_REPLIES, "framing": pack_header(3, 0, 0), "closed": None}[kind]
    server = ScriptedServer(5, bad)
    try:
        result = run_bench(
            BenchOptions(
                port=server.port, connections=1, pipeline=2, client=client, procs=1,
                duration=0.3, warmup=0.1, drain_timeout=1.0,
            )
        )  # fmt: skip
    finally:
        server.close()
    assert result.client == client and not result.ok
    errors = {k: v for k, v in result.errors.items() if v}
    if kind == "closed":  # both requests in flight are lost with the connection
        assert errors == {} and result.disconnects == 1 and result.unanswered == 2
    elif kind == "framing":  # an impossible length: 8 bytes dropped, that reply never comes
        assert errors == {"bad_length": 1} and result.unanswered == 1
    else:  # a bad reply still answers its request: the loop goes on
        assert errors == {kind: 1} and result.unanswered == 0 and result.disconnects == 0
        assert result.replies > 0


# -- comparisons and the chart -------------------------------------------------------------------


def _result(label: str, rate: float, client_bound: bool = False) -> BenchResult:
    return BenchResult(
        target=label.split()[0], options={}, replies=int(rate), window=1.0, replies_per_s=rate,
        latency_ms={"p50": 1.0, "p90": 1.0, "p99": 2.0, "max": 3.0},
        errors={}, reordered=0, disconnects=0, unanswered=0, connected=1, connect_failures=0,
        setup_failures=0, server_cpu_pct=99.0, server_sys_pct=50.0,
        server_rss_kib={"before": None, "after": None},
        client_cpu_pct=[95.0 if client_bound else 40.0], client_sys_pct=[30.0],
        client_bottleneck=client_bound, server_bottleneck=not client_bound, cpus=2,
        client="native", label=label,
    )  # fmt: skip


def test_a_client_bound_row_gets_no_ratio():
    runs = [
        _result("asyncio", 100), _result("02_epoll", 300), _result("06_flood", 200),
        _result("asyncio", 120), _result("02_epoll", 310, client_bound=True),
        _result("06_flood", 180),
    ]  # fmt: skip
    summary = {s.target: s for s in summarise(runs)}
    assert summary["asyncio"].replies_per_s == 110 and summary["asyncio"].ratio == 1.0
    assert summary["06_flood"].ratio == pytest.approx(190 / 110)
    epoll = summary["02_epoll"]
    assert epoll.client_bound and epoll.ratio is None and epoll.limited_by == "client"
    # a client-bound base makes every ratio meaningless
    rebased = summarise([_result("02_epoll", 300, client_bound=True), _result("asyncio", 100)])
    assert [s.ratio for s in rebased] == [None, None]


def test_a_comparison_names_each_way_its_runs_were_pinned():
    """A two-process server takes both cores of a 2-core machine, so only the other target
    is pinned: the table's header must not claim the first run's pinning for every row."""
    pinned = _result("06_flood", 200)
    pinned.pinned, pinned.server_cores, pinned.client_cores = True, [0], [[1]]
    shared = _result("07_processes", 150)
    opts = BenchOptions(chapter="06_flood")
    text = _config(["--compare", "06_flood", "07_processes"], opts, [pinned, shared], 1, "off")
    assert text["pinning"] == (
        "server on core 0, client on core 1 (06_flood); "
        "off (server and client share the cores) (07_processes)"
    )
    same = _config(["--chapter", "06_flood"], opts, [pinned, pinned], 1, "off")
    assert same["pinning"] == "server on core 0, client on core 1"


def test_defences_both_makes_two_rows_of_chapters_that_have_them():
    rows = compare_variants(["asyncio", "02_epoll", "05_timers", "06_flood"], "both")
    assert rows == [
        ("asyncio", "off"), ("02_epoll", "off"), ("05_timers", "off"), ("05_timers", "on"),
        ("06_flood", "off"), ("06_flood", "on"),
    ]  # fmt: skip
    assert defences_label("05_timers", "on") == "05_timers +heartbeat"
    assert defences_label("06_flood", "on") == "06_flood +heartbeat+flood"
    assert defences_label("02_epoll", "on") == "02_epoll"


def test_chart_from_compare_json(tmp_path, capsys):
    runs = [_result("asyncio", 50_000), _result("02_epoll", 150_000, client_bound=True)]
    document = {
        "kind": "compare",
        "config": {"mode": "ping", "connections": 100, "pipeline": 1, "client": "native",
                   "pinning": "server on core 0, client on core 1", "hash_iterations": 1,
                   "repeat": 3},
        "summary": [s.__dict__ for s in summarise(runs)],
    }  # fmt: skip
    source = tmp_path / "p1.json"
    source.write_text(json.dumps(document))
    svg = tmp_path / "chart.svg"
    assert main(["chart", str(source), str(source), "-o", str(svg)]) == 0
    assert "2 panels" in capsys.readouterr().out
    root = ET.parse(svg).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    bars = root.findall(f".//{ns}rect[@class='bar']")
    assert [(b.get("data-target"), b.get("data-value")) for b in bars] == [
        ("asyncio", "50000"), ("02_epoll", "150000")
    ] * 2  # fmt: skip
    assert [b.get("data-client-bound") for b in bars[:2]] == ["false", "true"]
    assert float(bars[1].get("width")) == pytest.approx(3 * float(bars[0].get("width")))
    texts = ["".join(t.itertext()) for t in root.iter(f"{ns}text")]
    assert "≥ 150,000/s client-bound" in texts and "50,000/s" in texts
    assert any("medians of 3 rounds" in t for t in texts)
    assert panels_from(document).bars[1].client_bound


def test_chart_refuses_a_file_that_is_not_a_bench_result(tmp_path, capsys):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"kind": "parser", "packets": 5}))
    assert main(["chart", str(bad), "-o", str(tmp_path / "x.svg")]) == 2
    assert "not a bench result" in capsys.readouterr().err
    assert not (tmp_path / "x.svg").exists()


def test_nice_ticks_cover_the_largest_value():
    assert nice_ticks(151_133) == [0, 50_000, 100_000, 150_000, 200_000]
    assert nice_ticks(1_021_813)[-1] >= 1_021_813
    assert render([panels_from({"kind": "run", "result": _result("x", 0).as_dict()})])
