"""Exercise 3.1: the storm guard's factor as a config key (chapter 3).

The storm guard refuses a client once the pool holds more than 5 x ``worker_connections``
objects while fewer than ``worker_connections`` are free. ``Sock_StormFactor`` (an
integer >= 1, default 5) replaces the 5.

The check connects and disconnects clients one after the other with
``worker_connections = 2``. The server's clock stands still, so no closed connection ever
leaves the recycle queue: every new client needs a new object, and the pool grows by one
per client until the guard refuses. Which client is the first refused is exact.
"""

from __future__ import annotations

import pytest

from common.config import ConfigError

from .conftest import FakeClock, check_config, wait_until

SIZE = 2


def first_storm_refusal(srv, limit: int = 30) -> int | None:
    """Connect, wait until the server dealt with the client, disconnect, wait until it
    closed it; repeat. Return the number of the first client refused as a storm."""
    for number in range(1, limit + 1):
        with srv.raw(timeout=5):
            wait_until(lambda n=number: seen(srv) == n, what=f"client {number} never accepted")
        if srv.stats()["refused"]["storm"]:
            return number
        wait_until(lambda: srv.stats()["closed"] == srv.stats()["accepted"])
    return None


def seen(srv) -> int:
    stats = srv.stats()
    return stats["accepted"] + stats["refused"]["storm"] + stats["refused"]["online_limit"]


@pytest.mark.parametrize(
    ("factor", "first_refused"),
    [(None, 5 * SIZE + 2), (2, 2 * SIZE + 2), (1, SIZE + 2)],
    ids=["default", "2", "1"],
)
def test_the_guard_refuses_past_factor_times_the_pool_size(serve, factor, first_refused):
    """The pool starts with SIZE objects, and every client after the first SIZE adds one:
    with a factor f, clients are accepted while the pool holds at most f x SIZE objects,
    so client f x SIZE + 2 is the first refused."""
    overrides = {} if factor is None else {"Sock_StormFactor": factor}
    srv = serve(clock=FakeClock(), worker_connections=SIZE, **overrides)
    got = first_storm_refusal(srv)
    setting = (
        "without Sock_StormFactor (the default, 5)"
        if factor is None
        else (f"with Sock_StormFactor = {factor}")
    )
    assert got == first_refused, (
        f"{setting} and worker_connections = {SIZE}, client {first_refused} should be the "
        f"first refused as a storm; it was {'none of 30' if got is None else f'client {got}'}"
    )


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_factor_is_a_config_error(copy, value):
    try:
        server = copy.Server(check_config(Sock_StormFactor=value))
    except ConfigError as exc:
        assert "Sock_StormFactor" in str(exc), f"the error should name the key: {exc}"
        return
    server.shutdown()
    pytest.fail(
        f"Sock_StormFactor = {value} should be a ConfigError naming the key (the factor is "
        "an integer >= 1)",
        pytrace=False,
    )
