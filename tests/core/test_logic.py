"""The business logic without a network: validation, drop reasons, the user store, and the
small shared pieces every chapter leans on (log levels, thread-safe counters).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import sys
import threading
import zlib
from pathlib import Path

import pytest

from common.config import Config, ConfigError
from common.log import NOTICE, parse_level
from common.logic import PING_OUTCOME, DropReason, Logic, Outcome, UserStore
from common.protocol import (
    HEADER_LEN,
    PING,
    PING_PACKET,
    Login,
    MsgCode,
    Packet,
    ProtocolError,
    Register,
    Status,
)
from common.stats import Counters

ITERATIONS = 1000  # cheap hashes: the cost is not what these tests are about
JOIN_TIMEOUT = 30


@pytest.fixture
def logic():
    lg = Logic(UserStore(":memory:", ITERATIONS))
    yield lg
    lg.close()


def packet(code: int, body: bytes = b"", crc: int | None = None) -> Packet:
    """A packet as the parser hands it over; ``crc`` defaults to the correct one."""
    if crc is None:
        crc = zlib.crc32(body) if body else 0
    return Packet(code, crc, body)


def register_body(username: str, password: str, itype: int = 0) -> bytes:
    return Register(itype, username, password).encode()


def login_body(username: str, password: str) -> bytes:
    return Login(username, password).encode()


def expected_reply(code: int, body: bytes) -> bytes:
    """Written out by hand (not with encode_packet) so the test does not trust the code
    under test to build its own expectation."""
    return (
        (HEADER_LEN + len(body)).to_bytes(2, "big")
        + code.to_bytes(2, "big")
        + zlib.crc32(body).to_bytes(4, "big")
        + body
    )


def register_reply(status: Status, username: str) -> bytes:
    body = (
        int(status).to_bytes(4, "big")
        + username.encode().ljust(56, b"\0")
        + status.name.encode().ljust(40, b"\0")
    )
    return expected_reply(5, body)


def login_reply(status: Status, username: str) -> bytes:
    return expected_reply(
        6, username.encode().ljust(56, b"\0") + status.name.encode().ljust(40, b"\0")
    )


# -- validation and drop reasons ------------------------------------------------------------


def test_ping_fast_path(logic):
    outcome = logic.handle(packet(MsgCode.PING))
    assert outcome is PING_OUTCOME  # shared, allocation-free
    assert outcome == Outcome(b"\x00\x08\x00\x00\x00\x00\x00\x00", None, True)
    assert outcome.reply == PING_PACKET


GOOD_REGISTER = register_body("u", "p")


@pytest.mark.parametrize(
    "pkt, reason",
    [
        # CRC first: a wrong CRC wins over every other fault
        (packet(MsgCode.REGISTER, GOOD_REGISTER, crc=1), DropReason.BAD_CRC),
        (packet(MsgCode.REGISTER, b"short", crc=1), DropReason.BAD_CRC),
        (packet(3, b"x", crc=0), DropReason.BAD_CRC),
        (packet(MsgCode.PING, b"x", crc=0), DropReason.BAD_CRC),
        (packet(MsgCode.PING, crc=5), DropReason.CRC_ON_EMPTY),
        (packet(999, crc=5), DropReason.CRC_ON_EMPTY),
        (packet(MsgCode.REGISTER, crc=1), DropReason.CRC_ON_EMPTY),
        # then the code: reserved 1-4 and unknown codes, whatever the size
        *[(packet(code, GOOD_REGISTER), DropReason.UNKNOWN_CODE) for code in (1, 2, 3, 4)],
        (packet(7, b"abc"), DropReason.UNKNOWN_CODE),
        (packet(0xFFFF), DropReason.UNKNOWN_CODE),
        (packet(MsgCode.PING, b"\0"), DropReason.BODY_ON_PING),
        # then the handler's size check
        (packet(MsgCode.REGISTER, GOOD_REGISTER[:-1]), DropReason.WRONG_SIZE),
        (packet(MsgCode.REGISTER, GOOD_REGISTER + b"\0"), DropReason.WRONG_SIZE),
        (packet(MsgCode.REGISTER), DropReason.WRONG_SIZE),
        (packet(MsgCode.LOGIN, login_body("u", "p") + b"\0"), DropReason.WRONG_SIZE),
        (packet(MsgCode.LOGIN, GOOD_REGISTER), DropReason.WRONG_SIZE),  # 100 bytes, not 96
        (packet(MsgCode.LOGIN), DropReason.WRONG_SIZE),
    ],
)
def test_drop_reasons_in_validation_order(logic, pkt, reason):
    assert logic.handle(pkt) == Outcome(None, reason, False)
    assert logic.store.count() == 0  # nothing reached the store


def test_every_drop_reason_is_covered():
    # keeps the table above (and the handler test below) honest when a reason is added
    assert {r.value for r in DropReason} == {
        "bad_crc",
        "crc_on_empty",
        "unknown_code",
        "wrong_size",
        "body_on_ping",
        "server_error",
    }


@pytest.mark.parametrize("code, body", [(MsgCode.REGISTER, GOOD_REGISTER)])
def test_a_handler_that_raises_costs_only_that_requests_reply(logic, monkeypatch, code, body):
    def broken(_body: bytes) -> Outcome:
        raise RuntimeError("a bug in a handler")

    monkeypatch.setattr(logic, "_register", broken)
    assert logic.handle(packet(code, body)) == Outcome(None, DropReason.SERVER_ERROR, False)
    assert logic.handle(packet(MsgCode.PING)) == PING_OUTCOME  # the logic still works


def test_only_a_ping_counts_as_a_heartbeat(logic):
    """Register and login get a reply but are not pings: the heartbeat chapters must not
    take them as a sign of life (``is_ping`` is exactly False, not merely falsy)."""
    reg = logic.handle(packet(MsgCode.REGISTER, register_body("hal", "pw")))
    log_in = logic.handle(packet(MsgCode.LOGIN, login_body("hal", "pw")))
    assert reg == Outcome(register_reply(Status.OK, "hal"), None, False)
    assert log_in == Outcome(login_reply(Status.OK, "hal"), None, False)
    assert reg.is_ping is False and log_in.is_ping is False
    assert logic.handle(packet(MsgCode.PING)).is_ping is True


def test_register_ignores_request_itype(logic):
    outcome = logic.handle(packet(MsgCode.REGISTER, register_body("x", "y", itype=-77)))
    assert outcome.reply == register_reply(Status.OK, "x")


# -- register / login outcomes, exact bytes -----------------------------------------------


def test_register_and_login_outcomes(logic):
    def reg(user: str, pw: str) -> bytes | None:
        return logic.handle(packet(MsgCode.REGISTER, register_body(user, pw))).reply

    def log_in(user: str, pw: str) -> bytes | None:
        return logic.handle(packet(MsgCode.LOGIN, login_body(user, pw))).reply

    assert reg("alice", "pw1") == register_reply(Status.OK, "alice")
    assert reg("alice", "other") == register_reply(Status.EXISTS, "alice")
    assert log_in("alice", "pw1") == login_reply(Status.OK, "alice")
    assert log_in("alice", "pw2") == login_reply(Status.BAD_PASSWORD, "alice")
    assert log_in("Alice", "pw1") == login_reply(Status.NO_USER, "Alice")  # names are exact
    assert log_in("bob", "pw1") == login_reply(Status.NO_USER, "bob")
    assert reg("", "pw") == register_reply(Status.INVALID, "")
    assert log_in("", "pw") == login_reply(Status.INVALID, "")
    assert reg("\0hidden", "pw") == register_reply(Status.INVALID, "")  # C string: empty
    assert logic.store.count() == 1


def test_reply_lengths_and_every_byte_defined(logic):
    reg = logic.handle(packet(MsgCode.REGISTER, register_body("carol", "pw"))).reply
    log_in = logic.handle(packet(MsgCode.LOGIN, login_body("carol", "nope"))).reply
    assert reg is not None and log_in is not None
    assert (len(reg), len(log_in)) == (108, 104)
    assert reg[HEADER_LEN:] == b"\0\0\0\0carol" + b"\0" * 51 + b"OK" + b"\0" * 38
    assert log_in[HEADER_LEN:] == b"carol" + b"\0" * 51 + b"BAD_PASSWORD" + b"\0" * 28
    assert b"pw" not in reg + log_in and b"nope" not in log_in  # reference bug 2


def test_long_username_is_echoed_cut(logic):
    name = "n" * 80  # the client cuts it to 55 bytes; the reply echoes what was stored
    reply = logic.handle(packet(MsgCode.REGISTER, register_body(name, "pw"))).reply
    assert reply == register_reply(Status.OK, "n" * 55)


# -- the user store ---------------------------------------------------------------------


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT username, salt, iterations, hash FROM users ORDER BY username"
        ).fetchall()


def test_passwords_never_stored_in_clear(tmp_path):
    path = tmp_path / "users.db"
    store = UserStore(str(path), ITERATIONS)
    try:
        assert store.register("ann", "same password") == Status.OK
        assert store.register("ben", "same password") == Status.OK
    finally:
        store.close()
    (u1, salt1, it1, hash1), (u2, salt2, it2, hash2) = rows(path)
    assert (u1, u2) == ("ann", "ben")
    assert len(salt1) == len(salt2) == UserStore.SALT_LEN == 16
    assert salt1 != salt2 and hash1 != hash2  # one salt per user: equal passwords look different
    assert it1 == it2 == ITERATIONS
    for salt, digest in ((salt1, hash1), (salt2, hash2)):
        assert digest == hashlib.pbkdf2_hmac("sha256", b"same password", salt, ITERATIONS)
    assert b"same password" not in path.read_bytes()


def test_file_store_persists_across_instances(tmp_path):
    path = tmp_path / "nested" / "dir" / "users.db"  # parent folders are created
    first = UserStore(str(path), ITERATIONS)
    assert first.register("dora", "pw") == Status.OK
    first.close()
    second = UserStore(str(path), 2 * ITERATIONS)
    try:
        assert second.count() == 1
        assert second.login("dora", "pw") == Status.OK  # checked with the stored iterations
        assert second.login("dora", "px") == Status.BAD_PASSWORD
        assert second.register("dora", "x") == Status.EXISTS
    finally:
        second.close()


def test_logic_from_config_uses_path_relative_to_config(tmp_path):
    conf = tmp_path / "server.conf"
    conf.write_text("UserDatabase = db/users.sqlite3\nPasswordHashIterations = 1000\n")
    logic = Logic.from_config(Config.load(conf))
    try:
        assert logic.store.path == str(tmp_path.resolve() / "db" / "users.sqlite3")
        assert logic.store.iterations == 1000
        logic.store.register("eve", "pw")
    finally:
        logic.close()
    assert [r[0] for r in rows(tmp_path / "db" / "users.sqlite3")] == ["eve"]


@pytest.mark.parametrize("iterations", [0, -1])
def test_store_rejects_fewer_than_one_iteration(iterations):
    with pytest.raises(ValueError, match=r"^iterations must be >= 1$"):
        UserStore(":memory:", iterations)
    UserStore(":memory:", 1).close()  # one is the least, and it is allowed


def test_store_without_a_path_is_in_memory_and_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = UserStore(iterations=ITERATIONS), UserStore(iterations=ITERATIONS)
    try:
        assert first.register("kim", "pw") == Status.OK
        assert (first.count(), second.count()) == (1, 0)  # each store its own database
    finally:
        first.close()
        second.close()
    assert list(tmp_path.iterdir()) == []


def test_store_default_iterations_match_the_config_default():
    """A store made in code hashes as hard as one made from the shipped defaults."""
    store = UserStore()
    try:
        assert store.iterations == Config.from_text("").get_int("PasswordHashIterations")
        assert store.iterations == 600_000
    finally:
        store.close()


def test_logic_from_config_checks_the_iteration_count(tmp_path):
    conf = tmp_path / "server.conf"
    conf.write_text("UserDatabase = :memory:\nPasswordHashIterations = 0\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(conf))}:2: PasswordHashIterations"):
        Logic.from_config(Config.load(conf))
    conf.write_text("UserDatabase = :memory:\nPasswordHashIterations = 1\n")
    logic = Logic.from_config(Config.load(conf))
    try:
        assert logic.store.iterations == 1
    finally:
        logic.close()


def run_threads(n: int, target, *args) -> list:
    """Start ``n`` threads on ``target(i, *args)`` at the same moment; return the results."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=JOIN_TIMEOUT)
            results[i] = target(i, *args)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert errors == []
    return results


def test_concurrent_registrations_of_one_name():
    store = UserStore(":memory:", ITERATIONS)
    try:
        results = run_threads(8, lambda i: store.register("zed", f"pw{i}"))
        assert sorted(results) == [Status.OK] + [Status.EXISTS] * 7
        winner = results.index(Status.OK)
        assert store.login("zed", f"pw{winner}") == Status.OK
        assert store.count() == 1
    finally:
        store.close()


def test_user_store_is_thread_safe():
    store = UserStore(":memory:", ITERATIONS)
    per_thread = 25

    def work(i: int) -> list[Status]:
        out = []
        for j in range(per_thread):
            out.append(store.register(f"user{i}-{j}", f"pw{j}"))
            out.append(store.login(f"user{i}-{j}", f"pw{j}"))
            out.append(store.login(f"user{(i + 1) % 8}-{j}", "wrong"))
        return out

    try:
        results = run_threads(8, work)
        flat = [s for r in results for s in r]
        assert flat.count(Status.OK) == 2 * 8 * per_thread
        assert set(flat) <= {Status.OK, Status.BAD_PASSWORD, Status.NO_USER}
        assert store.count() == 8 * per_thread
    finally:
        store.close()


def test_logic_handle_from_threads_keeps_replies_apart(logic):
    """Worker threads share one Logic: each reply must echo its own request."""

    def work(i: int) -> list[bytes | None]:
        return [
            logic.handle(packet(MsgCode.REGISTER, register_body(f"t{i}", "pw"))).reply,
            logic.handle(packet(MsgCode.LOGIN, login_body(f"t{i}", "pw"))).reply,
        ]

    results = run_threads(8, work)
    for i, (reg, log_in) in enumerate(results):
        assert reg == register_reply(Status.OK, f"t{i}")
        assert log_in == login_reply(Status.OK, f"t{i}")


# -- log levels -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, level",
    [
        (0, logging.CRITICAL),
        ("1", logging.CRITICAL),
        ("2", logging.CRITICAL),
        ("3", logging.CRITICAL),
        ("4", logging.ERROR),
        ("5", logging.WARNING),
        ("6", NOTICE),
        ("7", logging.INFO),
        (8, logging.DEBUG),
        ("stderr", logging.CRITICAL),
        ("emerg", logging.CRITICAL),
        ("alert", logging.CRITICAL),
        ("crit", logging.CRITICAL),
        ("error", logging.ERROR),
        ("warn", logging.WARNING),
        ("notice", NOTICE),
        ("info", logging.INFO),
        ("debug", logging.DEBUG),
        ("err", logging.ERROR),
        ("warning", logging.WARNING),
        ("critical", logging.CRITICAL),
        (" DEBUG ", logging.DEBUG),
        ("Notice", NOTICE),
        ("06", NOTICE),
    ],
)
def test_parse_level(text, level):
    assert parse_level(text) == level


def test_notice_sits_between_info_and_warning():
    assert logging.INFO < NOTICE < logging.WARNING
    assert logging.getLevelName(NOTICE) == "NOTICE"


@pytest.mark.parametrize("text", ["9", "-1", "", "verbose", "²", "٣", "1.5", 42])
def test_parse_level_rejects(text):
    with pytest.raises(ValueError) as info:
        parse_level(text)
    message = str(info.value)
    assert message.startswith("log level must be 0-8 or one of stderr, emerg, alert")
    assert message.endswith(f"got {text!r}")


# -- counters -----------------------------------------------------------------------------


def test_counters_lose_no_update_across_threads():
    counters = Counters(["hits"])
    per_thread = 20_000

    def work(i: int) -> None:
        for _ in range(per_thread):
            counters.add("hits")
            counters.add("drops.bad_crc", 2)
        counters.add(f"by_thread.t{i}", i)

    # Switch threads as often as the interpreter allows, so an unguarded read-add-write
    # has every chance to interleave.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        run_threads(8, work)
    finally:
        sys.setswitchinterval(old)
    assert counters.get("hits") == 8 * per_thread
    assert counters.get("drops.bad_crc") == 2 * 8 * per_thread
    snap = counters.snapshot()
    assert snap["hits"] == 8 * per_thread
    assert snap["by_thread"] == {f"t{i}": i for i in range(8)}


def test_counters_snapshot_nesting_and_zeros():
    counters = Counters(["accepted", "drops.bad_crc", "drops.wrong_size"])
    counters.add("drops.bad_crc", 3)
    counters.add("kicks.flood")
    counters.add("accepted", 0)
    assert counters.snapshot() == {
        "accepted": 0,
        "drops": {"bad_crc": 3, "wrong_size": 0},
        "kicks": {"flood": 1},
    }
    assert counters.get("never.seen") == 0
    snap = counters.snapshot()
    snap["drops"]["bad_crc"] = 99  # a copy: the counters are untouched
    assert counters.get("drops.bad_crc") == 3


def test_a_failing_user_store_gives_an_error_reply_not_an_exception(tmp_path, caplog):
    """A database error (here: the store's connection is gone) must not escape handle():
    in chapters 1-3 it would stop the event loop, in 4-6 it would lose the reply."""
    from common.logic import Logic, UserStore
    from common.protocol import Login, MsgCode, PacketParser, Register, Status, encode_packet
    from tools.client import login_packet, register_packet

    store = UserStore(str(tmp_path / "users.sqlite3"), iterations=1)
    logic = Logic(store)
    store._db.close()  # every statement now raises sqlite3.ProgrammingError
    [register] = PacketParser().feed(register_packet("amy", "pw"))
    [login] = PacketParser().feed(login_packet("amy", "pw"))
    assert logic.handle(register).reply == encode_packet(
        MsgCode.REGISTER, Register(int(Status.ERROR), "amy", "ERROR").encode()
    )
    assert logic.handle(login).reply == encode_packet(MsgCode.LOGIN, Login("amy", "ERROR").encode())
    # and the operator is told why, once per failed request
    failures = [r for r in caplog.records if r.name == "logic" and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failures] == [
        "user store failed: Cannot operate on a closed database."
    ] * 2


# -- one read's events: answer() and packets() ---------------------------------------------


def _read_of_every_kind() -> list:
    """One read's events as the parser hands them over: bare pings (the parser's shared
    PING), a register, a malformed header, a packet with a bad CRC, a ping built anew."""
    return [
        PING,
        packet(MsgCode.REGISTER, register_body("ann", "pw")),
        ProtocolError(7, 0, "too short"),
        packet(MsgCode.LOGIN, login_body("ann", "pw"), crc=1),
        Packet(MsgCode.PING, 0, b""),  # equal to PING, not the same object
        PING,
    ]


def test_answer_replies_in_request_order_and_counts_the_read(logic, caplog):
    caplog.set_level(logging.INFO, logger="logic")
    counters = Counters()
    replies = logic.answer(_read_of_every_kind(), counters)
    assert replies == [PING_PACKET, register_reply(Status.OK, "ann"), PING_PACKET, PING_PACKET]
    assert counters.snapshot() == {
        "malformed": 1,
        "packets_in": 5,  # every complete packet, answered or dropped
        "replies_out": 4,
        "drops": {"bad_crc": 1},
    }
    [record] = [r for r in caplog.records if r.name == "logic"]
    assert (record.levelno, record.getMessage()) == (
        logging.INFO,
        "malformed header (length 7): skipped",
    )


def test_answer_of_a_read_with_two_malformed_headers(logic):
    counters = Counters()
    events = [ProtocolError(0, 0, "too short"), PING, ProtocolError(30000, 5, "too long")]
    assert logic.answer(events, counters) == [PING_PACKET]
    assert counters.snapshot() == {"malformed": 2, "packets_in": 1, "replies_out": 1}
    counters = Counters()
    assert logic.answer([], counters) == []
    assert counters.snapshot() == {"packets_in": 0, "replies_out": 0}


def test_packets_keeps_the_packets_of_a_read_in_order_and_counts_them(caplog):
    caplog.set_level(logging.INFO, logger="logic")
    counters = Counters()
    events = _read_of_every_kind()
    assert Logic.packets(events, counters) == [e for e in events if isinstance(e, Packet)]
    assert counters.snapshot() == {"malformed": 1, "packets_in": 5}
    [record] = [r for r in caplog.records if r.name == "logic"]
    assert record.getMessage() == "malformed header (length 7): skipped"
    counters = Counters()
    assert Logic.packets([PING, PING], counters) == [PING, PING]  # nothing malformed
    assert counters.snapshot() == {"packets_in": 2}
    assert not [r for r in caplog.records if r.name == "logic"][1:]


def test_a_handler_that_raises_is_logged_with_its_code(logic, monkeypatch, caplog):
    def broken(_body: bytes) -> Outcome:
        raise RuntimeError("a bug in a handler")

    monkeypatch.setattr(logic, "_login", broken)
    logic.handle(packet(MsgCode.LOGIN, login_body("u", "p")))
    [record] = [r for r in caplog.records if r.name == "logic"]
    assert record.getMessage() == "the LOGIN handler failed: request dropped"
    assert record.exc_info[0] is RuntimeError


def test_a_file_store_uses_the_write_ahead_log(tmp_path):
    """A file store commits to a write-ahead log (the mode is kept in the file), so its
    readers never wait for a writer; an in-memory store has no log to keep."""
    path = tmp_path / "users.sqlite3"
    store = UserStore(str(path), ITERATIONS)
    try:
        assert store.register("ann", "pw") == Status.OK
        with sqlite3.connect(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        store.close()
