"""``python -m tools.bench``: short bounded runs that check what it counts, never speed.

The load runs start real servers in subprocesses (the bench's own way) for about a second;
the validator is also tested without any network, and against a deliberately faulty
server whose faults it must count exactly.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time

import pytest

from common.logic import Logic, UserStore
from common.protocol import PING_PACKET, MsgCode, Packet, PacketParser, pack_header
from tools.bench import BenchError, BenchOptions, parser_bench, run_bench
from tools.bench.cli import main
from tools.bench.loadgen import Conn, RequestMaker, Stats

SHORT = {"duration": 0.6, "warmup": 0.2, "procs": 1, "drain_timeout": 5.0}


def test_asyncio_baseline_mixed_load_is_validated():
    result = run_bench(
        BenchOptions(chapter="asyncio", connections=4, pipeline=4, mode="mixed", **SHORT)
    )
    assert result.replies > 0
    assert result.error_count == 0 and result.reordered == 0 and result.unanswered == 0
    assert result.connected == 4 and result.disconnects == 0 and result.setup_failures == 0
    assert result.ok
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"] <= result.latency_ms["max"]
    assert result.server_cpu_pct is not None and result.server_rss_kib["before"]


def test_chapter1_through_the_cli_with_json(tmp_path, capsys):
    out = tmp_path / "run.json"
    code = main(
        ["--chapter", "01_listen", "--connections", "1", "--pipeline", "8", "--duration", "0.6",
         "--warmup", "0.2", "--procs", "1", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())["result"]
    assert result["target"] == "01_listen"
    assert result["replies"] > 0 and result["error_count"] == 0 and result["ok"] is True
    assert "replies/s" in capsys.readouterr().out


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


def test_faulty_server_faults_are_counted_exactly():
    server = FaultyServer()
    try:
        result = run_bench(
            BenchOptions(port=server.port, connections=1, pipeline=4, mode="mixed", **SHORT)
        )
    finally:
        server.close()
    assert not server.thread.is_alive()
    assert server.swaps > 0 and server.corrupted > 0
    assert result.reordered == server.swaps
    assert result.errors["bad_crc"] == server.corrupted
    assert result.unanswered == 0
    assert not result.ok
