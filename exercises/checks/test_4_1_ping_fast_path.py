"""Exercise 4.1: pings skip the worker queue (chapter 4).

Chapter 4 hands every request to a worker, pings included, so a ping waits while every
worker is busy with someone's expensive login. A read that holds only bare pings can be
answered on the event loop at once, but only when the client has nothing in flight:
replies leave in request order, always.

The check makes the one worker busy for as long as it likes: the user store's
``register`` is replaced by one that waits for the check's go. What waits for a worker is
then visible in ``stats()["queues"]["receive"]``, so nothing depends on timing.
"""

from __future__ import annotations

import select
import threading

import pytest

from common.protocol import PING_PACKET, MsgCode, Register, Status, encode_packet
from tools.client import register_packet

from .conftest import recv_exactly, wait_until

REGISTER_REPLY = encode_packet(MsgCode.REGISTER, Register(0, "alice", Status.OK.name).encode())


@pytest.fixture
def busy(serve):
    """A server with one worker, and a way to hold that worker inside a register."""
    srv = serve(ProcMsgRecvWorkThreadCount=1)
    store = srv.server.logic.store
    entered, go = threading.Event(), threading.Event()
    register = store.register

    def held_register(username: str, password: str) -> Status:
        entered.set()
        go.wait(30)
        return register(username, password)

    store.register = held_register
    yield srv, entered, go
    go.set()  # never leave the worker held


def waiting_for_a_worker(srv) -> int:
    return srv.stats()["queues"]["receive"]


def readable(sock) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def hold_the_worker(srv, entered) -> object:
    """Client A registers; its worker is held. Returns A's socket."""
    a = srv.raw(timeout=10)
    a.sendall(register_packet("alice", "pw"))
    assert entered.wait(10), "the register never reached a worker"
    return a


def test_a_ping_is_answered_while_every_worker_is_busy(busy):
    srv, entered, _ = busy
    with hold_the_worker(srv, entered), srv.raw(timeout=10) as b:
        b.sendall(PING_PACKET)
        wait_until(lambda: readable(b) or waiting_for_a_worker(srv))
        assert readable(b), (
            "B's ping waits in the worker queue (stats queues.receive = "
            f"{waiting_for_a_worker(srv)}) behind A's register: a read of nothing but pings "
            "should be answered by the event loop itself"
        )
        assert recv_exactly(b, 8) == PING_PACKET
        b.sendall(PING_PACKET * 100)  # pipelined: one or a few reads, all pings
        assert recv_exactly(b, 800) == PING_PACKET * 100
        assert waiting_for_a_worker(srv) == 0
        wait_until(
            lambda: srv.stats()["replies_out"] == 101,
            what="stats()['replies_out'] should count the pongs sent from the loop too: "
            f"expected 101, it says {srv.stats()['replies_out']}",
        )


def test_a_ping_after_a_pending_request_keeps_its_place(busy):
    """A's ping comes after its register: its pong must not overtake the register's reply,
    so it goes to the worker, behind the register."""
    srv, entered, go = busy
    with hold_the_worker(srv, entered) as a:
        a.sendall(PING_PACKET)
        wait_until(lambda: readable(a) or waiting_for_a_worker(srv))
        assert not readable(a), (
            "A's pong was sent while A's register was still with the worker: replies must "
            "leave in request order (answer pings on the loop only when nothing of the "
            "client's is in flight)"
        )
        go.set()
        assert recv_exactly(a, len(REGISTER_REPLY) + 8) == REGISTER_REPLY + PING_PACKET


def test_a_read_of_pings_and_requests_is_answered_in_order(busy):
    srv, _, go = busy
    go.set()  # the worker is free: this one is about order only
    with srv.raw(timeout=10) as c:
        c.sendall(PING_PACKET + register_packet("alice", "pw") + PING_PACKET * 3)
        want = PING_PACKET + REGISTER_REPLY + PING_PACKET * 3
        assert recv_exactly(c, len(want)) == want
