"""The wire protocol, sans-IO: header, message codes, bodies, CRC and the packet parser.

Nothing here touches a socket. The parser is fed bytes and returns events, in the style of
h11 and wsproto, so it can be tested (and hammered by hypothesis) without a network, and
every chapter's socket code only moves bytes in and out.

Wire format (all integers big-endian, no padding)::

    offset 0  uint16  pkgLen   total length, header + body
    offset 2  uint16  msgCode  message code
    offset 4  uint32  crc32    CRC-32 of the body (0 when there is no body)
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

# C++: COMM_PKG_HEADER (#pragma pack(1)): pkgLen, msgCode, crc32.
# --8<-- [start:header]
HEADER = struct.Struct("!HHI")
HEADER_LEN = HEADER.size  # 8
PKG_MAX_LENGTH = 30000  # C++: _PKG_MAX_LENGTH, the size of the receive buffer
PKG_MAX_ACCEPTED = PKG_MAX_LENGTH - 1000  # a header announcing more than 29000 is malformed

USERNAME_LEN = 56
PASSWORD_LEN = 40
# --8<-- [end:header]


class MsgCode(IntEnum):
    """C++: _CMD_PING, _CMD_REGISTER, _CMD_LOGIN (codes 1-4 are reserved, no handler)."""

    PING = 0
    REGISTER = 5
    LOGIN = 6


def crc32(body: bytes) -> int:
    """CRC-32 of a body: the standard reflected CRC, byte for byte what the original's
    CCRC32::Get_CRC computes (C++: CCRC32)."""
    return zlib.crc32(body)


def pack_header(length: int, code: int, crc: int) -> bytes:
    return HEADER.pack(length, code, crc)


def unpack_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """Return (pkg_len, msg_code, crc32) from the first 8 bytes of ``data``."""
    return HEADER.unpack_from(data)


def encode_packet(code: int, body: bytes = b"") -> bytes:
    """A whole packet: header with the right length and CRC, then the body."""
    crc = zlib.crc32(body) if body else 0
    return HEADER.pack(HEADER_LEN + len(body), code, crc) + body


PING_PACKET = encode_packet(MsgCode.PING)


# ----------------------------------------------------------------------------------------
# Message bodies
# ----------------------------------------------------------------------------------------


def _fixed(text: str | bytes, size: int) -> bytes:
    """NUL-pad (or cut) to ``size`` bytes and force the last byte to NUL, as the original
    does before it trusts a C string from the wire.

    A ``str`` is cut at a character boundary: cutting its UTF-8 mid-character would put
    invalid UTF-8 on the wire (and a replacement character in the echoed reply). A lone
    surrogate (a command-line argument that was not valid UTF-8) becomes ``?`` instead of
    raising. ``bytes`` are cut where they are: they are what the caller wants on the wire."""
    if isinstance(text, str):
        raw = text.encode("utf-8", errors="replace")
        if len(raw) > size - 1:
            raw = raw[: size - 1].decode("utf-8", errors="ignore").encode("utf-8")
    else:
        raw = bytes(text)
    return raw[: size - 1].ljust(size, b"\0")


def _cstr(raw: bytes) -> str:
    """Decode a fixed-size C string: up to the first NUL, never raising on bad UTF-8."""
    raw = raw[: len(raw) - 1]  # the original forces the last byte to NUL before use
    end = raw.find(b"\0")
    if end >= 0:
        raw = raw[:end]
    return raw.decode("utf-8", errors="replace")


_REGISTER = struct.Struct(f"!i{USERNAME_LEN}s{PASSWORD_LEN}s")  # 100 bytes
_LOGIN = struct.Struct(f"!{USERNAME_LEN}s{PASSWORD_LEN}s")  # 96 bytes


@dataclass(frozen=True, slots=True)
class Register:
    """C++: STRUCT_REGISTER {int iType; char username[56]; char password[40];}.

    In a reply, ``itype`` carries a numeric :class:`Status` and ``password`` carries the
    status word (see the protocol page)."""

    itype: int
    username: str
    password: str

    SIZE = _REGISTER.size

    def encode(self) -> bytes:
        return _REGISTER.pack(
            self.itype, _fixed(self.username, USERNAME_LEN), _fixed(self.password, PASSWORD_LEN)
        )

    @classmethod
    def decode(cls, body: bytes) -> Register:
        itype, user, password = _REGISTER.unpack(body)
        return cls(itype, _cstr(user), _cstr(password))


@dataclass(frozen=True, slots=True)
class Login:
    """C++: STRUCT_LOGIN {char username[56]; char password[40];}.

    In a reply, ``password`` carries the status word (see the protocol page)."""

    username: str
    password: str

    SIZE = _LOGIN.size

    def encode(self) -> bytes:
        return _LOGIN.pack(_fixed(self.username, USERNAME_LEN), _fixed(self.password, PASSWORD_LEN))

    @classmethod
    def decode(cls, body: bytes) -> Login:
        user, password = _LOGIN.unpack(body)
        return cls(_cstr(user), _cstr(password))


BODY_SIZES = {MsgCode.PING: 0, MsgCode.REGISTER: Register.SIZE, MsgCode.LOGIN: Login.SIZE}


# --8<-- [start:status]
class Status(IntEnum):
    """Outcome carried in register/login replies (our addition: the original replies with
    an all-zero body, so a client cannot tell success from failure)."""

    OK = 0
    EXISTS = 1
    NO_USER = 2
    BAD_PASSWORD = 3
    INVALID = 4
    ERROR = 5  # the server could not reach its user store (disk full, file removed …)


# --8<-- [end:status]


# ----------------------------------------------------------------------------------------
# The sans-IO packet parser
# ----------------------------------------------------------------------------------------


class Packet(NamedTuple):
    """One complete packet as it arrived: header fields and the body (b"" when none)."""

    code: int
    crc: int
    body: bytes


# A ping as the parser yields it (code 0, CRC 0, no body): always this one object, so the
# hot paths can recognise it with ``is``.
PING = Packet(MsgCode.PING, 0, b"")


class ProtocolError(NamedTuple):
    """A header whose length is impossible (< 8 or > 29000). The parser has already
    discarded those 8 bytes; what happens to the connection is the chapter's decision."""

    length: int
    code: int
    reason: str


Event = Packet | ProtocolError

# C++: _PKG_HD_INIT, _PKG_HD_RECVING, _PKG_BD_INIT, _PKG_BD_RECVING
# --8<-- [start:states]
HD_INIT = "HD_INIT"  # expecting a header
HD_RECVING = "HD_RECVING"  # header partly received
BD_INIT = "BD_INIT"  # header complete, expecting the body
BD_RECVING = "BD_RECVING"  # body partly received
# --8<-- [end:states]


class PacketParser:
    """Feed bytes, get :class:`Packet` and :class:`ProtocolError` events.

    C++: the receive state machine in ngx_read_request_handler / ngx_wait_request_handler_proc_p1.

    The four states of the original are kept (``state``) so the course reader recognises
    them. The original ``recv()``s exactly the bytes still missing, so it never holds more
    than one packet; we may be handed a large chunk at once, so we parse complete packets in
    place and keep only the unfinished tail. That tail is always less than one maximum
    packet (``PKG_MAX_ACCEPTED`` bytes), whatever we are fed.
    """

    __slots__ = ("_buf", "_need", "_code", "_crc", "state")

    def __init__(self) -> None:
        self.state = HD_INIT
        self._buf = bytearray()  # the unfinished header or body, never a whole packet
        self._need = 0  # body length still expected (BD_* states)
        self._code = 0
        self._crc = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished packet (header or body)."""
        return len(self._buf)

    # --8<-- [start:feed]
    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Consume ``data`` and return every event it completes, in order."""
        events: list[Event] = []
        view = memoryview(data)
        pos = 0
        end = len(view)
        if self.state != HD_INIT:
            pos = self._continue(view, events)
            if pos == end:
                return events
        # Fast path: whole packets straight out of the caller's buffer (state HD_INIT).
        # This loop is the hot path of every chapter; it avoids copies and attribute lookups.
        unpack_from = HEADER.unpack_from
        append = events.append
        # tuple.__new__ builds the NamedTuple without the Python-level __new__ frame that
        # Packet(...) costs: a third of the parser's time per ping.
        new = tuple.__new__
        while end - pos >= HEADER_LEN:
            length, code, crc = unpack_from(view, pos)
            if length == HEADER_LEN:
                # The commonest packet by far is a ping: one shared, immutable object.
                append(PING if code == 0 == crc else new(Packet, (code, crc, b"")))
                pos += HEADER_LEN
            elif length < HEADER_LEN or length > PKG_MAX_ACCEPTED:
                # C++ mirror: drop the 8 header bytes and restart at the next byte.
                append(
                    ProtocolError(length, code, "too short" if length < HEADER_LEN else "too long")
                )
                pos += HEADER_LEN
            elif end - pos >= length:
                append(new(Packet, (code, crc, bytes(view[pos + HEADER_LEN : pos + length]))))
                pos += length
            else:
                # Header complete, body unfinished: keep just the body part we have.
                self._code, self._crc = code, crc
                self._need = length - HEADER_LEN
                self._buf = bytearray(view[pos + HEADER_LEN :])
                self.state = BD_RECVING if self._buf else BD_INIT
                return events
        if pos < end:
            self._buf = bytearray(view[pos:])
            self.state = HD_RECVING
        return events

    # --8<-- [end:feed]

    # --8<-- [start:continue]
    def _continue(self, view: memoryview, events: list[Event]) -> int:
        """Finish the packet left unfinished by the previous feed; return bytes consumed."""
        pos = 0
        if self.state == HD_RECVING:
            take = min(HEADER_LEN - len(self._buf), len(view))
            self._buf += view[:take]
            pos = take
            if len(self._buf) < HEADER_LEN:
                return pos
            length, code, crc = HEADER.unpack(self._buf)
            self._buf = bytearray()
            if length < HEADER_LEN or length > PKG_MAX_ACCEPTED:
                events.append(
                    ProtocolError(length, code, "too short" if length < HEADER_LEN else "too long")
                )
                self.state = HD_INIT
                return pos
            if length == HEADER_LEN:
                events.append(Packet(code, crc, b""))
                self.state = HD_INIT
                return pos
            self._code, self._crc, self._need = code, crc, length - HEADER_LEN
            self.state = BD_INIT
        # BD_INIT or BD_RECVING
        take = min(self._need - len(self._buf), len(view) - pos)
        self._buf += view[pos : pos + take]
        pos += take
        if len(self._buf) < self._need:
            self.state = BD_RECVING if self._buf else BD_INIT
            return pos
        events.append(Packet(self._code, self._crc, bytes(self._buf)))
        self._buf = bytearray()
        self.state = HD_INIT
        return pos

    # --8<-- [end:continue]


def packets_from(data: bytes) -> list[Event]:
    """Parse a complete byte string in one go (handy in clients and tests)."""
    return PacketParser().feed(data)
