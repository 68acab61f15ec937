"""The business logic: validate a packet, dispatch on its code, build the reply.

C++: CLogicSocket::threadRecvProcFunc and its handlers _HandleRegister, _HandleLogIn,
_HandlePing.

Every chapter calls :meth:`Logic.handle` with a complete packet; what differs between
chapters is only *which thread* calls it (the event loop until chapter 3, a worker from
chapter 4 on). Register and login are backed by a real user store (SQLite plus salted
PBKDF2 hashes), which makes them deliberately expensive: that cost is what chapter 4's
worker threads are for.

Differences from the original, each deliberate:

* every byte of a reply body is defined (the original sends uninitialised heap memory and
  so can leak one client's password to another: reference bug 2);
* register/login replies carry an outcome (status number and word, username echoed) in the
  original's 100- and 96-byte layouts, where the original sends zeros;
* every dropped packet has a named :class:`DropReason` so chapters can count them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from common.config import Config
from common.protocol import (
    PING,
    PING_PACKET,
    Event,
    Login,
    MsgCode,
    Packet,
    Register,
    Status,
    crc32,
    encode_packet,
)
from common.stats import Counters

log = logging.getLogger("logic")


# --8<-- [start:drop_reasons]
class DropReason(StrEnum):
    """Why a packet got no reply. The connection is kept in every case, as in the original."""

    BAD_CRC = "bad_crc"  # body present, CRC does not match
    CRC_ON_EMPTY = "crc_on_empty"  # header-only packet with a nonzero CRC
    UNKNOWN_CODE = "unknown_code"  # reserved (1-4) or unknown message code
    WRONG_SIZE = "wrong_size"  # register/login body of the wrong size
    BODY_ON_PING = "body_on_ping"  # a ping must not carry a body
    SERVER_ERROR = "server_error"  # the handler raised (a bug): logged, no reply


# --8<-- [end:drop_reasons]


class Outcome(NamedTuple):
    """What the logic decided: a reply to send, or the reason there is none."""

    reply: bytes | None
    drop: DropReason | None
    is_ping: bool  # a valid ping: the heartbeat chapters refresh the client's last-ping time


PING_OUTCOME = Outcome(PING_PACKET, None, True)
_DROPS = {reason: Outcome(None, reason, False) for reason in DropReason}


# --8<-- [start:user_store]
# Seconds a store waits for another process's write lock before a write fails.
BUSY_TIMEOUT = 5.0


class UserStore:
    """Registered users in SQLite, passwords as salted PBKDF2-HMAC-SHA256 hashes.

    Thread-safe: one connection guarded by a lock, with the expensive hashing done outside
    the lock (``hashlib.pbkdf2_hmac`` releases the GIL, so hashes on several worker threads
    really run in parallel). The usernames are unique by a database constraint, so two
    concurrent registrations of one name cannot both succeed.
    """

    SALT_LEN = 16

    def __init__(self, path: str = ":memory:", iterations: int = 600_000) -> None:
        if iterations < 1:
            raise ValueError("iterations must be >= 1")
        self.path = path
        self.iterations = iterations
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # timeout: wait this long for another process's write lock (chapter 7 runs several
        # processes on one file) instead of failing at once with "database is locked".
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT
        )
        with self._lock:
            if path != ":memory:":
                # Write-ahead log: a commit appends to one log file instead of creating,
                # writing and deleting a rollback journal each time (a register cost
                # ~100 us on tmpfs that way, ~30 us with the WAL); readers never wait for a
                # writer. synchronous=NORMAL syncs at checkpoints, not at every commit:
                # a power cut may lose the last registrations, never corrupt the file.
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS users ("
                " username TEXT PRIMARY KEY,"
                " salt BLOB NOT NULL,"
                " iterations INTEGER NOT NULL,"
                " hash BLOB NOT NULL)"
            )

    def _hash(self, password: str, salt: bytes, iterations: int) -> bytes:
        return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)

    def register(self, username: str, password: str) -> Status:
        if not username:
            return Status.INVALID
        salt = os.urandom(self.SALT_LEN)
        digest = self._hash(password, salt, self.iterations)
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO users (username, salt, iterations, hash) VALUES (?, ?, ?, ?)",
                    (username, salt, self.iterations, digest),
                )
        except sqlite3.IntegrityError:
            return Status.EXISTS
        return Status.OK

    def login(self, username: str, password: str) -> Status:
        if not username:
            return Status.INVALID
        with self._lock:
            row = self._db.execute(
                "SELECT salt, iterations, hash FROM users WHERE username = ?", (username,)
            ).fetchone()
        if row is None:
            return Status.NO_USER
        salt, iterations, stored = row
        if hmac.compare_digest(self._hash(password, salt, iterations), stored):
            return Status.OK
        return Status.BAD_PASSWORD

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --8<-- [end:user_store]


class Logic:
    """Validates packets and runs the handlers. C++: CLogicSocket."""

    # The counters :meth:`answer` keeps (every chapter's ``stats()`` shows them).
    COUNTERS = (
        "packets_in",
        "replies_out",
        "malformed",
        *(f"drops.{reason}" for reason in DropReason),
    )

    def __init__(self, store: UserStore) -> None:
        self.store = store

    @classmethod
    def from_config(cls, config: Config) -> Logic:
        return cls(
            UserStore(
                config.get_path("UserDatabase"),
                config.get_int("PasswordHashIterations", minimum=1),
            )
        )

    def close(self) -> None:
        self.store.close()

    # --8<-- [start:handle]
    def handle(self, packet: Packet) -> Outcome:
        """C++: CLogicSocket::threadRecvProcFunc. Validation order follows the original:
        CRC first, then the code, then the handler's own size check."""
        code, crc, body = packet
        if not body:
            if crc != 0:
                return _DROPS[DropReason.CRC_ON_EMPTY]
            if code == MsgCode.PING:
                return PING_OUTCOME  # the hot path: no allocation at all
        elif crc != crc32(body):
            return _DROPS[DropReason.BAD_CRC]
        if code == MsgCode.PING:
            return _DROPS[DropReason.BODY_ON_PING]
        try:
            if code == MsgCode.REGISTER:
                return self._register(body)
            if code == MsgCode.LOGIN:
                return self._login(body)
        except Exception:
            # A bug in a handler costs this request its reply, never the thread that runs
            # it (the event loop in chapters 1-3) nor the bookkeeping of what is owed.
            log.exception("the %s handler failed: request dropped", MsgCode(code).name)
            return _DROPS[DropReason.SERVER_ERROR]
        return _DROPS[DropReason.UNKNOWN_CODE]

    # --8<-- [end:handle]

    # --8<-- [start:answer]
    @staticmethod
    def packets(events: list[Event], counters: Counters) -> list[Packet]:
        """The complete packets of one read. A malformed header is skipped and counted and
        the connection kept, as the original does (chapter 6 closes it instead)."""
        packets = [event for event in events if isinstance(event, Packet)]
        for event in events if len(packets) < len(events) else ():
            if not isinstance(event, Packet):
                counters.add("malformed")
                log.info("malformed header (length %d): skipped", event.length)
        counters.add("packets_in", len(packets))  # once per read: this is the hot path
        return packets

    def answer(self, events: list[Event], counters: Counters) -> list[bytes]:
        """Answer every complete packet of one read; return the replies in request order.
        Chapters 1-3 call this on the thread that reads (the logic is cheap enough until
        chapter 4 makes it expensive). One pass over the events, not :meth:`packets` and
        then a second: this is the hot path of chapters 1-3."""
        replies: list[bytes] = []
        handle = self.handle
        malformed = 0
        for event in events:
            if event is PING:  # the hot path: its reply is a constant
                replies.append(PING_PACKET)
                continue
            if not isinstance(event, Packet):
                malformed += 1
                counters.add("malformed")
                log.info("malformed header (length %d): skipped", event.length)
                continue
            outcome = handle(event)
            if outcome.reply is not None:
                replies.append(outcome.reply)
            else:
                counters.add(f"drops.{outcome.drop}")
        counters.add("packets_in", len(events) - malformed)
        counters.add("replies_out", len(replies))
        return replies

    # --8<-- [end:answer]

    # --8<-- [start:register_login]
    def _register(self, body: bytes) -> Outcome:
        """C++: CLogicSocket::_HandleRegister."""
        if len(body) != Register.SIZE:
            return _DROPS[DropReason.WRONG_SIZE]
        request = Register.decode(body)
        status = self._guarded(self.store.register, request.username, request.password)
        reply = Register(int(status), request.username, status.name).encode()
        return Outcome(encode_packet(MsgCode.REGISTER, reply), None, False)

    def _login(self, body: bytes) -> Outcome:
        """C++: CLogicSocket::_HandleLogIn."""
        if len(body) != Login.SIZE:
            return _DROPS[DropReason.WRONG_SIZE]
        request = Login.decode(body)
        status = self._guarded(self.store.login, request.username, request.password)
        reply = Login(request.username, status.name).encode()
        return Outcome(encode_packet(MsgCode.LOGIN, reply), None, False)

    # --8<-- [end:register_login]

    @staticmethod
    def _guarded(operation: Callable[[str, str], Status], username: str, password: str) -> Status:
        """Run a store operation; a database failure (disk full, file removed, locked) is
        this request's ERROR reply, never an exception that would take down the thread
        running the logic (in chapters 1-3, the event loop itself)."""
        try:
            return operation(username, password)
        except sqlite3.Error as exc:
            log.error("user store failed: %s", exc)
            return Status.ERROR
