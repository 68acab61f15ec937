"""The process model (chapter 7): a master forks worker processes, replaces a dead one,
reloads without dropping clients, stops without losing a reply, leaves nothing behind.

In-process tests run the master as the harness runs every chapter (``serve()``: the
master on a thread of this process, its workers forked children). The signal tests run
``python -m chapters.NN`` in a subprocess and send it real signals.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from common.config import ConfigError
from common.logic import Status
from common.protocol import PING_PACKET
from tests.chapters.test_shared import login_reply, register_reply
from tests.conftest import (
    CHAPTERS,
    LISTENING,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Proc,
    ServerClosed,
    load_chapter,
    recv_exactly,
    test_config,
    wait_until,
)
from tools.client import login_packet, register_packet

PROCESS_CHAPTERS = [c for c in CHAPTERS if "processes" in load_chapter(c).FEATURES]
pytestmark = pytest.mark.features("processes")


# -- helpers -------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child nobody reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def exists(pid: int) -> bool:
    """Anything at all with this pid, zombies included."""
    return Path(f"/proc/{pid}").exists()


def worker_pids(srv) -> list[int]:
    return [row["pid"] for row in srv.stats()["workers"] if row["state"] == "serving"]


def worker_of(srv, sock: socket.socket) -> int | None:
    """The pid of the worker process holding the server side of ``sock`` (found through
    /proc/net/tcp and each worker's descriptors); None if none holds it (yet)."""
    client_port = sock.getsockname()[1]
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(f.split(":")[1], 16) for f in fields[1:3])
        if local == srv.port and remote == client_port and fields[9] != "0":
            inodes.add(f"socket:[{fields[9]}]")
    for pid in worker_pids(srv):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    return None


def ping(sock: socket.socket) -> bool:
    """One round trip; False if the server closed or reset the connection."""
    try:
        sock.sendall(PING_PACKET)
        return recv_exactly(sock, 8) == PING_PACKET
    except (ServerClosed, ConnectionResetError, BrokenPipeError):
        return False


def clients_on_each_worker(srv, limit: int = 200) -> dict[int, list[socket.socket]]:
    """Connect until every worker holds at least one client (the kernel decides who
    accepts); the clients grouped by the pid of their worker."""
    wait_until(lambda: len(worker_pids(srv)) == 2)
    groups: dict[int, list[socket.socket]] = {pid: [] for pid in worker_pids(srv)}
    for _ in range(limit):
        sock = srv.raw()
        assert ping(sock)
        pid = None
        deadline = time.monotonic() + 10
        while pid is None and time.monotonic() < deadline:
            pid = worker_of(srv, sock)
        assert pid is not None, "no worker holds an answered client"
        groups[pid].append(sock)
        if all(groups.values()):
            return groups
    pytest.fail(f"{limit} clients and still a worker without one: {groups}")


# -- the master and its workers ------------------------------------------------------------


def test_memory_store_is_refused_with_more_than_one_worker(chapter):
    module = __import__(f"chapters.{chapter}.server", fromlist=["Server"])
    with pytest.raises(ConfigError, match="UserDatabase = :memory: is one store per process"):
        module.Server(test_config(WorkerProcesses=2, UserDatabase=":memory:"))
    module.Server(test_config(WorkerProcesses=1, UserDatabase=":memory:")).shutdown()


def test_workers_are_child_processes_and_the_master_serves_no_client(serve):
    srv = serve()
    wait_until(lambda: len(worker_pids(srv)) == 2)
    pids = worker_pids(srv)
    for pid in pids:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert ppid == os.getpid() and pid != os.getpid()
    socks = [srv.raw() for _ in range(10)]
    for sock in socks:
        assert ping(sock)
    stats = srv.stats()
    assert stats["accepted"] == 10 == sum(row["accepted"] for row in stats["workers"])
    assert stats["online"] == 10 == sum(row["online"] for row in stats["workers"])
    assert stats["processes"] == {"workers": 2, "respawns": 0, "reloads": 0}
    assert {row["slot"] for row in stats["workers"]} == {1, 2}
    for sock in socks:
        sock.close()


def test_users_registered_on_one_worker_log_in_on_the_other(serve):
    srv = serve()
    groups = clients_on_each_worker(srv)
    (a, *_), (b, *_) = groups.values()
    for name, on, other in (("ann", a, b), ("bob", b, a)):
        on.sendall(register_packet(name, "pw"))
        assert recv_exactly(on, 108) == register_reply(Status.OK, name)
        other.sendall(login_packet(name, "pw"))  # the other process, the same store
        assert recv_exactly(other, 104) == login_reply(Status.OK, name)
    for sock in (s for group in groups.values() for s in group):
        sock.close()


def test_a_killed_worker_is_replaced_and_the_other_workers_clients_notice_nothing(serve):
    srv = serve()
    groups = clients_on_each_worker(srv)
    victim, survivor = list(groups)
    slot = next(r["slot"] for r in srv.stats()["workers"] if r["pid"] == victim)
    os.kill(victim, signal.SIGKILL)
    # Replaced within 1 s: the master hears of the death through the worker's pidfd.
    wait_until(lambda: any(r["slot"] == slot for r in srv.stats()["workers"]
                           if r["pid"] != victim), timeout=1.0)  # fmt: skip
    assert not exists(victim)  # reaped: no zombie
    for sock in groups[survivor]:
        for _ in range(20):
            assert ping(sock), "a client of the other worker noticed"
    for sock in groups[victim]:
        assert not ping(sock)  # its connection died with its process
    with srv.raw() as fresh:
        assert ping(fresh)
    assert srv.stats()["processes"]["respawns"] == 1
    for sock in (s for group in groups.values() for s in group):
        sock.close()


def test_reload_changes_a_key_for_new_clients_and_drops_no_connected_one(serve):
    srv = serve(Sock_FloodAttackKickEnable=0)
    wait_until(lambda: len(worker_pids(srv)) == 2)
    old_pids = set(worker_pids(srv))
    kept = [srv.raw() for _ in range(6)]
    for sock in kept:
        assert ping(sock)
    # Flood detection on, 5 close packets and out: lock-step pings on loopback are closer
    # together than 100 ms, so a new client is kicked within 10 pings.
    srv.server.reload(
        srv.server.config.with_overrides(
            Sock_FloodAttackKickEnable=1, Sock_FloodTimeInterval=100, Sock_FloodKickCounter=5
        )
    )
    wait_until(lambda: srv.stats()["processes"]["reloads"] == 1)
    rows = srv.stats()["workers"]
    # An old worker drains (one without clients has already gone); none serves new ones.
    assert {r["pid"] for r in rows if r["state"] == "draining"} <= old_pids
    assert not any(r["pid"] in old_pids for r in rows if r["state"] == "serving")
    assert len([r for r in rows if r["generation"] == 1 and r["state"] == "serving"]) == 2
    for sock in kept:  # served on by the old workers, on the old config: no flood kick
        for _ in range(30):
            assert ping(sock), "a connected client was dropped or kicked by the reload"
    with srv.raw() as new:
        assert not all(ping(new) for _ in range(10))  # the new config's effect
    wait_until(lambda: srv.stats()["kicks"]["flood"] == 1)
    for sock in kept:
        sock.close()
    # Their last client gone, the old workers exit; nothing is left of them.
    wait_until(lambda: all(not exists(pid) for pid in old_pids))
    assert {r["generation"] for r in srv.stats()["workers"]} == {1}


def test_a_reload_that_fails_leaves_the_workers_serving(serve):
    srv = serve()
    wait_until(lambda: len(worker_pids(srv)) == 2)
    before = set(worker_pids(srv))
    srv.server.reload(srv.server.config.with_overrides(worker_connections="many"))
    srv.server.reload(srv.server.config.with_overrides(UserDatabase=":memory:"))
    with srv.raw() as sock:  # the loop has carried both out once this is answered
        assert ping(sock)
    wait_until(lambda: not srv.server._asked)
    assert set(worker_pids(srv)) == before
    assert srv.stats()["processes"]["reloads"] == 0


def test_quit_serves_connected_clients_until_they_leave_and_refuses_new_ones(serve):
    srv = serve()
    wait_until(lambda: len(worker_pids(srv)) == 2)
    pids = worker_pids(srv)
    kept = srv.raw()
    assert ping(kept)
    srv.server.quit()
    srv.server.reload(srv.server.config)  # too late: a quitting master starts no workers
    wait_until(lambda: all(r["state"] == "draining" for r in srv.stats()["workers"]))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((srv.host, srv.port), timeout=5).close()
    for _ in range(20):
        assert ping(kept)  # still served
    assert {r["generation"] for r in srv.stats()["workers"]} == {0}
    kept.close()
    srv.thread.join(timeout=15)  # the last worker gone, serve_forever() returns
    assert not srv.thread.is_alive()
    assert not any(exists(pid) for pid in pids)


def test_shutdown_leaves_no_worker_and_no_zombie(serve):
    srv = serve()
    wait_until(lambda: len(worker_pids(srv)) == 2)
    pids = worker_pids(srv)
    socks = [srv.raw() for _ in range(4)]
    for sock in socks:
        assert ping(sock)
    srv.stop()
    for pid in pids:
        assert not exists(pid), f"worker {pid} left behind"
    for sock in socks:
        sock.settimeout(10)
        assert sock.recv(1) == b""  # closed after the replies it was owed
        sock.close()


def test_reuse_port_gives_each_worker_a_socket_and_spreads_the_clients(serve):
    srv = serve(ListenReusePort=1)
    # Nothing listens until a worker does (the master only holds the port): wait for them.
    wait_until(lambda: len(worker_pids(srv)) == 2)
    socks = [srv.raw() for _ in range(40)]
    for sock in socks:
        assert ping(sock)
    rows = srv.stats()["workers"]
    # The kernel hashes each connection to one of the two sockets: all 40 on one worker
    # has a chance of 2 ** -39.
    assert all(row["accepted"] > 0 for row in rows), rows
    assert sum(row["accepted"] for row in rows) == 40
    for sock in socks:
        sock.close()


# -- as a reader runs it: python -m, real signals ------------------------------------------

LOAD_CONFIG = """\
ListenPort0 = 0
worker_connections = 1024
WorkerProcesses = 2
UserDatabase = {db}
PasswordHashIterations = 1000
Sock_FloodAttackKickEnable = 0
"""
EXITED = re.compile(r"worker (\d) \(pid (\d+)\) exited \(code 0\): (\d+) clients, (\d+) requests in, (\d+) replies out")  # fmt: skip  # noqa: E501
SERVES = re.compile(r"worker \d serves \(pid (\d+)")


def start(tmp_path: Path, chapter: str, extra: str = "") -> tuple[Proc, int]:
    conf = tmp_path / "nginx.conf"
    conf.write_text(LOAD_CONFIG.format(db=tmp_path / "users.sqlite3") + extra)
    proc = Proc(["-m", f"chapters.{chapter}", "--config", str(conf), "--log-level", "info"])
    port = int(proc.wait_for(LISTENING, START_TIMEOUT).group(1))
    return proc, port


@pytest.mark.parametrize("chapter", PROCESS_CHAPTERS)
def test_sigterm_under_load_loses_no_reply_to_a_request_it_took(chapter, tmp_path):
    """Lock-step clients (one request in flight each); SIGTERM to the master. Every
    request a worker read got its reply: the replies the clients received add up to the
    requests the workers report having read, and each worker answered all it read."""
    proc, port = start(tmp_path, chapter)
    received: list[int] = []
    running = threading.Event()

    def client() -> None:
        got = 0
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            while True:
                if got == 20:
                    running.set()
                if not ping(sock):
                    break
                got += 1
        received.append(got)

    try:
        pids = [int(proc.wait_for(SERVES, START_TIMEOUT).group(1)) for _ in range(2)]
        threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
        for thread in threads:
            thread.start()
        assert running.wait(30)
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.finish(STOP_TIMEOUT) == 0
    finally:
        proc.kill()
    for thread in threads:
        thread.join(timeout=15)
    exits = EXITED.findall(proc.text)
    assert len(exits) == 2, proc.text
    read = sum(int(e[3]) for e in exits)
    assert all(e[3] == e[4] for e in exits), exits  # each answered every request it read
    assert sum(received) == read, (received, exits)
    assert not any(exists(pid) for pid in pids)
    assert "stopped cleanly" in proc.text and "Traceback" not in proc.text


@pytest.mark.parametrize("chapter", PROCESS_CHAPTERS)
def test_sighup_reloads_the_config_file_and_log_lines_name_their_process(chapter, tmp_path):
    proc, port = start(tmp_path, chapter)
    try:
        old = {int(proc.wait_for(SERVES, START_TIMEOUT).group(1)) for _ in range(2)}
        with socket.create_connection(("127.0.0.1", port), timeout=10) as kept:
            assert ping(kept)
            conf = tmp_path / "nginx.conf"
            conf.write_text(conf.read_text().replace("Enable = 0", "Enable = 1"))
            proc.popen.send_signal(signal.SIGHUP)
            proc.wait_for(re.compile(r"reloaded: generation 1 serves"), START_TIMEOUT)
            for _ in range(30):
                assert ping(kept)  # an old worker, the old config: kept, never kicked
            with socket.create_connection(("127.0.0.1", port), timeout=10) as new:
                assert not all(ping(new) for _ in range(20))  # flood detection is on now
        wait_until(lambda: not any(exists(pid) for pid in old), timeout=STOP_TIMEOUT)
        proc.popen.send_signal(signal.SIGINT)
        assert proc.finish(STOP_TIMEOUT) == 0
    finally:
        proc.kill()
    lines = [line for line in proc.lines if re.match(r"\S+ +(INFO|NOTICE|WARNING)", line)]
    named = [line for line in lines if re.search(r"(master|worker \d) \[\d+\]: ", line)]
    assert len(named) >= len(lines) - 1, proc.text  # all but the master's first line
    assert "kicked" in proc.text or "flood" in proc.text


@pytest.mark.parametrize("chapter", PROCESS_CHAPTERS)
def test_workers_outlive_no_dead_master(chapter, tmp_path):
    """The master killed outright: each worker sees its channel close, drains, exits."""
    proc, _ = start(tmp_path, chapter)
    try:
        pids = [int(proc.wait_for(SERVES, START_TIMEOUT).group(1)) for _ in range(2)]
        proc.popen.kill()
        proc.popen.wait(timeout=STOP_TIMEOUT)
        wait_until(lambda: not any(alive(pid) for pid in pids), timeout=STOP_TIMEOUT)
    finally:
        proc.kill()


@pytest.mark.parametrize("chapter", PROCESS_CHAPTERS)
def test_process_titles(chapter, tmp_path):
    proc, _ = start(tmp_path, chapter)
    try:
        pids = [int(proc.wait_for(SERVES, START_TIMEOUT).group(1)) for _ in range(2)]
        for pid in pids:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            assert re.match(r"worker \d", comm) or "pynginx: worker" in cmdline, (comm, cmdline)
    finally:
        proc.popen.send_signal(signal.SIGTERM)
        proc.finish(STOP_TIMEOUT)
        proc.kill()


@pytest.mark.parametrize("chapter", PROCESS_CHAPTERS)
def test_daemon_detaches_writes_its_pid_file_and_removes_it_on_sigterm(chapter, tmp_path):
    pid_file, log_file = tmp_path / "master.pid", tmp_path / "error.log"
    extra = f"Daemon = 1\nPidFile = {pid_file}\nLog = {log_file}\n"
    conf = tmp_path / "nginx.conf"
    conf.write_text(LOAD_CONFIG.format(db=tmp_path / "users.sqlite3") + extra)
    proc = Proc(["-m", f"chapters.{chapter}", "--config", str(conf), "--log-level", "info"])
    assert proc.finish(START_TIMEOUT) == 0  # the command returns: the daemon goes on
    wait_until(lambda: pid_file.exists() and pid_file.read_text().endswith("\n"))
    pid = int(pid_file.read_text())
    try:
        assert alive(pid) and pid != proc.popen.pid
        wait_until(lambda: len(SERVES.findall(log_file.read_text())) == 2, timeout=START_TIMEOUT)
        port = int(LISTENING.search(log_file.read_text()).group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert ping(sock)
        workers = [int(p) for p in SERVES.findall(log_file.read_text())]
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pid_file.exists(), timeout=STOP_TIMEOUT)
        wait_until(lambda: not any(alive(p) for p in [pid, *workers]), timeout=STOP_TIMEOUT)
        assert "stopped cleanly" in log_file.read_text()
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("chapter", PROCESS_CHAPTERS)
def test_daemon_without_a_pid_file_is_a_config_error(chapter, tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(LOAD_CONFIG.format(db=tmp_path / "users.sqlite3") + "Daemon = 1\n")
    proc = Proc(["-m", f"chapters.{chapter}", "--config", str(conf)])
    assert proc.finish(START_TIMEOUT) == 2
    assert "Daemon = 1 needs a PidFile" in proc.text


def test_dashboard_has_a_row_per_worker_and_the_limit_of_all(serve):
    from rich.console import Console

    from common.dashboard import render

    srv = serve(worker_connections=100)
    wait_until(lambda: len(worker_pids(srv)) == 2)
    with srv.raw() as sock:
        assert ping(sock)
        console = Console(record=True, width=100)
        console.print(render(srv.stats(), "test", limit=100))
    text = console.export_text()
    assert "╭─ Workers" in text
    for pid in worker_pids(srv):
        assert re.search(rf"#\d pid {pid} serving +online \d", text), text
    assert re.search(r"│ online\s+1/200 ", text)  # 100 per worker, two workers


@pytest.mark.parametrize("chapter", PROCESS_CHAPTERS)
def test_a_pid_file_that_cannot_be_written_is_a_clear_error(chapter, tmp_path):
    (tmp_path / "a-file").write_text("")
    conf = tmp_path / "nginx.conf"
    extra = f"PidFile = {tmp_path / 'a-file' / 'master.pid'}\n"  # under a file: no such dir
    conf.write_text(LOAD_CONFIG.format(db=tmp_path / "users.sqlite3") + extra)
    proc = Proc(["-m", f"chapters.{chapter}", "--config", str(conf), "--log-level", "info"])
    assert proc.finish(STOP_TIMEOUT) == 1
    assert "error: PidFile:" in proc.text and "Traceback" not in proc.text
    pids = [int(pid) for pid in SERVES.findall(proc.text)]
    assert len(pids) == 2 and not any(exists(pid) for pid in pids)  # stopped, and reaped
