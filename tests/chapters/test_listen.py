"""Chapter 1's lesson: a server that serves one client at a time makes the second wait.

The contrast, that from chapter 2 on a silent client delays nobody, is
``test_stalled_half_sent_client_does_not_delay_others`` in ``test_epoll.py``.
"""

from __future__ import annotations

import pytest

from common.protocol import PING_PACKET
from tests.conftest import CHAPTERS, load_chapter, recv_exactly, wait_until

ONE_AT_A_TIME = [c for c in CHAPTERS if "epoll" not in load_chapter(c).FEATURES]


@pytest.mark.parametrize("chapter", ONE_AT_A_TIME)
def test_second_client_waits_until_the_first_leaves(serve):
    srv = serve()
    first = srv.raw()
    second = srv.raw()  # the kernel completes the handshake: the connect succeeds
    try:
        first.sendall(PING_PACKET)
        assert recv_exactly(first, 8) == PING_PACKET
        second.sendall(PING_PACKET)
        # The server answers the first client again after the second one's ping was sent,
        # so it is running; it is back in recv() on the first client and has not accepted
        # the second: no reply is waiting for it, and none can come.
        first.sendall(PING_PACKET)
        assert recv_exactly(first, 8) == PING_PACKET
        assert srv.stats()["accepted"] == 1
        second.setblocking(False)
        with pytest.raises(BlockingIOError):
            second.recv(8)
        second.setblocking(True)
        first.close()  # the first client leaves: only now is the second accepted and served
        assert recv_exactly(second, 8) == PING_PACKET
        wait_until(lambda: srv.stats()["accepted"] == 2)
    finally:
        first.close()
        second.close()
