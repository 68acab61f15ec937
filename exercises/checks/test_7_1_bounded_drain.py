"""Exercise 7.1: a bounded drain (chapter 7).

After a reload (or SIGQUIT) an old worker drains gently: it accepts no one and serves its
clients until they leave, which a game client may never do. ``WorkerShutdownTimeout`` (as
nginx's ``worker_shutdown_timeout``) bounds that: once it has passed, the worker drains
for good, as if the master had said ``t``: the replies owed are delivered, the clients
closed, and the worker exits. 0, the default, keeps chapter 7's unbounded drain.

The copy runs with one worker process (and so may keep the in-memory user store).
"""

from __future__ import annotations

from common.protocol import PING_PACKET

from .conftest import closed_by_server, recv_exactly, wait_until


def generations(srv) -> set[int]:
    return {row["generation"] for row in srv.stats()["workers"]}


def reload_with_a_client(srv):
    """A client of the first worker, then a reload: the worker starts its gentle drain."""
    sock = srv.raw(timeout=10)
    sock.sendall(PING_PACKET)
    assert recv_exactly(sock, 8) == PING_PACKET
    srv.server.reload(srv.server.config)
    wait_until(lambda: srv.stats()["processes"]["reloads"] == 1, what="the reload never happened")
    return sock


def test_the_old_worker_closes_its_clients_after_the_timeout_and_exits(serve):
    srv = serve(WorkerProcesses=1, WorkerShutdownTimeout=0.5)
    sock = reload_with_a_client(srv)
    with sock:
        sock.settimeout(5)
        assert closed_by_server(sock), (
            "the old worker still served its client 5 s after a reload with "
            "WorkerShutdownTimeout = 0.5: the drain has no bound"
        )
    wait_until(lambda: generations(srv) == {1}, what="the old worker never exited")
    with srv.raw() as fresh:  # the new worker serves
        fresh.sendall(PING_PACKET)
        assert recv_exactly(fresh, 8) == PING_PACKET


def test_without_the_key_the_drain_has_no_bound(serve):
    srv = serve(WorkerProcesses=1)
    sock = reload_with_a_client(srv)
    with sock:
        sock.settimeout(1.5)
        assert not closed_by_server(sock), "the old worker closed its client without the key"
        sock.settimeout(10)
        sock.sendall(PING_PACKET)  # still served, by the old worker
        assert recv_exactly(sock, 8) == PING_PACKET
