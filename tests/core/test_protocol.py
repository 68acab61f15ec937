"""The sans-IO protocol, hammered by hypothesis: header, codecs, CRC and the packet parser.

Nothing here opens a socket. The parser is checked against a reference model that is too
naive to be wrong: re-parse the whole stream received so far, from the start, every time.
"""

from __future__ import annotations

import os
import random
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from common.protocol import (
    BD_INIT,
    BD_RECVING,
    BODY_SIZES,
    HD_INIT,
    HD_RECVING,
    HEADER_LEN,
    PASSWORD_LEN,
    PING,
    PING_PACKET,
    PKG_MAX_ACCEPTED,
    USERNAME_LEN,
    Login,
    MsgCode,
    Packet,
    PacketParser,
    ProtocolError,
    Register,
    crc32,
    encode_packet,
    pack_header,
    packets_from,
    unpack_header,
)

# Seeds and reproduction blobs on failure; no deadline, because a loaded 2-core CI box
# makes single examples slow without anything being wrong. HYPOTHESIS_PROFILE picks another
# registered profile (e.g. "dev" for a quick local run).
settings.register_profile(
    "ci", print_blob=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", parent=settings.get_profile("ci"), max_examples=20)
# tools/mutate.py: the same examples on every run (so its figures repeat), and no example
# database (a failure replayed from an earlier mutant would make a kill depend on order).
settings.register_profile(
    "mutation", parent=settings.get_profile("ci"), derandomize=True, database=None
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

STATES = {HD_INIT, HD_RECVING, BD_INIT, BD_RECVING}

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
bad_lengths = st.one_of(st.integers(0, HEADER_LEN - 1), st.integers(PKG_MAX_ACCEPTED + 1, 0xFFFF))


# -- the reference model -------------------------------------------------------------------


def naive_parse(stream: bytes) -> tuple[list, bytes]:
    """Every event in ``stream`` and the unconsumed tail, parsing from the start with
    no state carried between calls (so no chunking can confuse it)."""
    events: list = []
    i = 0
    while len(stream) - i >= HEADER_LEN:
        length, code, crc = struct.unpack(">HHI", stream[i : i + HEADER_LEN])
        if length < HEADER_LEN or length > PKG_MAX_ACCEPTED:
            events.append(ProtocolError(length, code, "too short" if length < 8 else "too long"))
            i += HEADER_LEN
            continue
        if len(stream) - i < length:
            break
        events.append(Packet(code, crc, stream[i + HEADER_LEN : i + length]))
        i += length
    return events, stream[i:]


def expected_state(tail: bytes) -> tuple[str, int]:
    """The (state, buffered) a parser must show when ``tail`` is what it has not finished."""
    if len(tail) < HEADER_LEN:
        return (HD_RECVING if tail else HD_INIT), len(tail)
    body = len(tail) - HEADER_LEN
    return (BD_RECVING if body else BD_INIT), body


def feed_chunks(parser: PacketParser, data: bytes, cuts: list[int]) -> list:
    """Feed ``data`` split at ``cuts`` (any offsets, duplicates allowed: empty chunks)."""
    events: list = []
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        events += parser.feed(data[start:cut])
        start = cut
    return events


@st.composite
def packets(draw: st.DrawFn, max_body: int = 300) -> bytes:
    """A well-formed packet of any code; the CRC may be anything (the parser ignores it)."""
    body = draw(st.binary(max_size=max_body))
    code = draw(u16)
    crc = draw(st.one_of(st.just(crc32(body) if body else 0), u32))
    return pack_header(HEADER_LEN + len(body), code, crc) + body


# -- header, CRC, encode_packet -------------------------------------------------------------


@given(length=u16, code=u16, crc=u32)
def test_header_round_trip_big_endian(length, code, crc):
    raw = pack_header(length, code, crc)
    assert raw == length.to_bytes(2, "big") + code.to_bytes(2, "big") + crc.to_bytes(4, "big")
    assert unpack_header(raw) == (length, code, crc)
    assert unpack_header(bytearray(raw + b"trailing")) == (length, code, crc)


def test_crc32_is_the_standard_reflected_crc():
    assert crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value
    assert crc32(b"") == 0


@given(code=u16, body=st.binary(max_size=2000))
def test_encode_packet_fields(code, body):
    raw = encode_packet(code, body)
    assert unpack_header(raw) == (HEADER_LEN + len(body), code, zlib.crc32(body) if body else 0)
    assert raw[HEADER_LEN:] == body
    assert packets_from(raw) == [Packet(code, zlib.crc32(body) if body else 0, body)]


def test_ping_packet_exact_bytes():
    assert PING_PACKET == b"\x00\x08\x00\x00\x00\x00\x00\x00"
    assert BODY_SIZES == {MsgCode.PING: 0, MsgCode.REGISTER: 100, MsgCode.LOGIN: 96}


# -- Register / Login codecs ----------------------------------------------------------------


def cut_to(text: str, size: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 fits a ``size``-byte C string (one byte
    is the forced NUL), up to its first NUL."""
    out = ""
    for ch in text:
        if len((out + ch).encode("utf-8")) > size - 1:
            break
        out += ch
    return out.split("\0", 1)[0]


names = st.text(max_size=70)  # both under and over the 55 usable bytes


@given(itype=st.integers(-(2**31), 2**31 - 1), username=names, password=names)
def test_register_round_trip(itype, username, password):
    body = Register(itype, username, password).encode()
    assert len(body) == Register.SIZE == 100
    assert body[59] == 0 and body[99] == 0  # last byte of each string is NUL
    assert body[:4] == itype.to_bytes(4, "big", signed=True)
    decoded = Register.decode(body)
    assert decoded == Register(
        itype, cut_to(username, USERNAME_LEN), cut_to(password, PASSWORD_LEN)
    )


@given(username=names, password=names)
def test_login_round_trip(username, password):
    body = Login(username, password).encode()
    assert len(body) == Login.SIZE == 96
    assert body[55] == 0 and body[95] == 0
    assert Login.decode(body) == Login(
        cut_to(username, USERNAME_LEN), cut_to(password, PASSWORD_LEN)
    )


def test_short_strings_are_nul_padded_exactly():
    assert Login("bob", "pw").encode() == b"bob".ljust(56, b"\0") + b"pw".ljust(40, b"\0")
    body = Register(-2, "al", "x").encode()
    assert body == b"\xff\xff\xff\xfe" + b"al".ljust(56, b"\0") + b"x".ljust(40, b"\0")


def test_over_long_strings_are_cut_at_a_character_boundary():
    # 55 usable bytes: 27 two-byte characters fit, the 28th would be split in half.
    body = Login("é" * 40, "p" * 100).encode()
    assert body[:56] == ("é" * 27).encode() + b"\0\0"
    assert body[56:] == b"p" * 39 + b"\0"
    assert Login.decode(body) == Login("é" * 27, "p" * 39)
    # bytes are the caller's wire format: cut where they are
    assert Login(b"\xc3\xa9" * 40, b"").encode()[:56] == b"\xc3\xa9" * 27 + b"\xc3\0"  # type: ignore[arg-type]


def test_unencodable_str_does_not_raise():
    # A command-line argument that was not UTF-8 arrives as a lone surrogate.
    assert Login("a\udcffb", "\ud800").encode()[:4] == b"a?b\0"


@given(body=st.binary(min_size=100, max_size=100))
def test_register_decode_any_bytes(body):
    """Any 100 bytes decode without raising: up to the first NUL, bad UTF-8 replaced, the
    last byte of each string ignored (the original forces it to NUL)."""
    decoded = Register.decode(body)
    assert decoded.itype == int.from_bytes(body[:4], "big", signed=True)
    assert decoded.username == body[4:59].split(b"\0")[0].decode("utf-8", "replace")
    assert decoded.password == body[60:99].split(b"\0")[0].decode("utf-8", "replace")
    assert "\0" not in decoded.username + decoded.password
    forced = bytearray(body)
    forced[59] = forced[99] = 0
    assert Register.decode(bytes(forced)) == decoded


@given(body=st.binary(min_size=96, max_size=96))
def test_login_decode_any_bytes(body):
    decoded = Login.decode(body)
    assert decoded.username == body[:55].split(b"\0")[0].decode("utf-8", "replace")
    assert decoded.password == body[56:95].split(b"\0")[0].decode("utf-8", "replace")
    assert Login.decode(body[:55] + b"\x41" + body[56:95] + b"\x42") == decoded


def test_decode_up_to_first_nul():
    body = b"ab\0cd".ljust(56, b"x") + b"\xff\xfe\0zz".ljust(40, b"y")
    assert Login.decode(body) == Login("ab", "\ufffd\ufffd")


# -- the parser: chunking ---------------------------------------------------------------


def check_state(parser: PacketParser, tail: bytes) -> None:
    assert parser.state in STATES
    assert (parser.state, parser.buffered) == expected_state(tail)
    assert parser.buffered <= PKG_MAX_ACCEPTED


@given(stream=st.lists(packets(), max_size=12), cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_any_split_parses_like_whole(stream, cuts):
    data = b"".join(stream)
    whole = PacketParser().feed(data)
    assert whole == naive_parse(data)[0]
    assert len(whole) == len(stream)
    parser = PacketParser()
    assert feed_chunks(parser, data, cuts) == whole
    check_state(parser, b"")


@given(stream=st.lists(packets(max_body=40), min_size=1, max_size=5))
def test_one_byte_at_a_time(stream):
    data = b"".join(stream)
    parser = PacketParser()
    events: list = []
    for i in range(len(data)):
        events += parser.feed(data[i : i + 1])
        check_state(parser, naive_parse(data[: i + 1])[1])
    assert events == naive_parse(data)[0]


@st.composite
def hostile_chunks(draw: st.DrawFn) -> list[bytes]:
    """Random bytes, sprinkled with headers announcing large legal bodies so the parser
    is pushed to hold nearly a maximum packet."""
    chunks = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            length = draw(st.integers(PKG_MAX_ACCEPTED - 200, PKG_MAX_ACCEPTED))
            chunks.append(pack_header(length, draw(u16), draw(u32)))
        elif kind == 1:
            # big random chunks from a drawn seed, so a failure replays and shrinks
            seed, size = draw(st.integers(0, 2**32)), draw(st.integers(0, 12_000))
            chunks.append(random.Random(seed).randbytes(size))
        else:
            chunks.append(draw(st.binary(max_size=64)))
    return chunks


@given(chunks=hostile_chunks())
@settings(max_examples=60)
def test_arbitrary_bytes_never_raise_and_stay_bounded(chunks):
    parser = PacketParser()
    seen = b""
    events: list = []
    for chunk in chunks:
        events += parser.feed(chunk)
        seen += chunk
        model_events, tail = naive_parse(seen)
        check_state(parser, tail)
        assert events == model_events


@given(chunks=st.lists(st.binary(max_size=50), max_size=40))
def test_small_random_chunks_match_the_model(chunks):
    parser = PacketParser()
    events: list = []
    for chunk in chunks:
        events += parser.feed(bytearray(chunk))
    model_events, tail = naive_parse(b"".join(chunks))
    assert events == model_events
    check_state(parser, tail)


def test_feed_accepts_memoryview_and_copies():
    data = bytearray(encode_packet(MsgCode.LOGIN, b"x" * 96) + encode_packet(7, b"abc")[:10])
    parser = PacketParser()
    events = parser.feed(memoryview(data))
    data[:] = b"\0" * len(data)  # the caller reuses its buffer
    assert events == [Packet(MsgCode.LOGIN, zlib.crc32(b"x" * 96), b"x" * 96)]
    assert parser.feed(b"c") == [Packet(7, zlib.crc32(b"abc"), b"abc")]


# -- the parser: malformed lengths ------------------------------------------------------


@given(length=bad_lengths, code=u16, crc=u32, after=st.lists(packets(max_body=30), max_size=4))
def test_malformed_length_skips_exactly_eight_bytes(length, code, crc, after):
    bad = pack_header(length, code, crc)
    data = bad + b"".join(after)
    reason = "too short" if length < HEADER_LEN else "too long"
    expected = [ProtocolError(length, code, reason), *packets_from(b"".join(after))]
    assert PacketParser().feed(data) == expected
    parser = PacketParser()
    assert feed_chunks(parser, data, list(range(len(data)))) == expected  # byte by byte
    assert parser.state == HD_INIT and parser.buffered == 0


def test_29001_header_then_50_pings_gives_50_pings():
    data = pack_header(PKG_MAX_ACCEPTED + 1, 0, 0) + PING_PACKET * 50
    events = PacketParser().feed(data)
    assert events[0] == ProtocolError(29001, 0, "too long")
    assert events[1:] == [Packet(0, 0, b"")] * 50


def test_short_length_header_is_dropped_and_parsing_restarts():
    # length 7: those 8 bytes go, the next byte starts a header (framing is not resynced)
    events = PacketParser().feed(pack_header(7, 5, 0) + PING_PACKET)
    assert events == [ProtocolError(7, 5, "too short"), Packet(0, 0, b"")]
    events = PacketParser().feed(pack_header(0, 0, 0))
    assert events == [ProtocolError(0, 0, "too short")]


def test_length_exactly_29000_is_legal_and_buffered_peaks_below_it():
    body = bytes(range(256)) * (28992 // 256) + b"z" * (28992 % 256)
    packet = pack_header(PKG_MAX_ACCEPTED, 9, 1234) + body
    assert len(packet) == 29000
    parser = PacketParser()
    assert parser.feed(packet[:8]) == [] and (parser.state, parser.buffered) == (BD_INIT, 0)
    assert parser.feed(packet[8:-1]) == []
    assert (parser.state, parser.buffered) == (BD_RECVING, 28991)
    assert parser.feed(packet[-1:] + PING_PACKET) == [Packet(9, 1234, body), Packet(0, 0, b"")]
    assert (parser.state, parser.buffered) == (HD_INIT, 0)
    assert PacketParser().feed(packet) == [Packet(9, 1234, body)]


@pytest.mark.parametrize("split", range(1, 8))
def test_header_split_at_every_offset(split):
    packet = encode_packet(MsgCode.REGISTER, Register(0, "u", "p").encode())
    parser = PacketParser()
    assert parser.feed(packet[:split]) == []
    assert (parser.state, parser.buffered) == (HD_RECVING, split)
    assert parser.feed(packet[split:]) == packets_from(packet)


# -- the parser against the model, as a state machine -----------------------------------


class ParserMachine(RuleBasedStateMachine):
    """Interleave valid packets, garbage headers and random bytes into a pending stream,
    and feed it to the parser in random chunk sizes; after every step the parser must
    agree with the naive model on events, state and bytes held."""

    def __init__(self) -> None:
        super().__init__()
        self.parser = PacketParser()
        self.pending = b""  # produced, not yet fed
        self.fed = b""
        self.events: list = []

    @rule(packet=packets(max_body=200))
    def add_packet(self, packet):
        self.pending += packet

    @rule(length=bad_lengths, code=u16, crc=u32)
    def add_garbage_header(self, length, code, crc):
        self.pending += pack_header(length, code, crc)

    @rule(junk=st.binary(max_size=20))
    def add_random_bytes(self, junk):
        self.pending += junk

    @rule(length=st.integers(PKG_MAX_ACCEPTED - 50, PKG_MAX_ACCEPTED), code=u16)
    def add_big_packet(self, length, code):
        self.pending += pack_header(length, code, 0) + b"\xab" * (length - HEADER_LEN)

    @precondition(lambda self: self.pending)
    @rule(size=st.integers(0, 400))
    def feed_some(self, size):
        chunk, self.pending = self.pending[:size], self.pending[size:]
        self.events += self.parser.feed(chunk)
        self.fed += chunk

    @precondition(lambda self: self.pending)
    @rule()
    def feed_all(self):
        self.events += self.parser.feed(self.pending)
        self.fed += self.pending
        self.pending = b""

    @invariant()
    def agrees_with_model(self):
        model_events, tail = naive_parse(self.fed)
        assert self.events == model_events
        check_state(self.parser, tail)


ParserMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=30)
TestParserMachine = ParserMachine.TestCase


# -- boundaries, whichever way the bytes arrive --------------------------------------------
# The reading of a header must not depend on how the network cut the stream: the parser
# has a fast path (whole header in one read) and a slow path (header split across reads),
# and the limits (8 is a ping, 29000 the longest packet) must be the same on both.


@pytest.mark.parametrize("split", [0, *range(1, HEADER_LEN)])
@pytest.mark.parametrize(
    "length, expected",
    [
        (HEADER_LEN - 1, "too short"),
        (HEADER_LEN, "packet"),
        (HEADER_LEN + 1, "packet"),
        (PKG_MAX_ACCEPTED, "packet"),
        (PKG_MAX_ACCEPTED + 1, "too long"),
    ],
)
def test_length_limits_hold_however_the_header_is_split(length, expected, split):
    """29000 is accepted and 29001 refused, 8 is a ping and 7 refused, whether the header
    comes in one read (split 0) or in two reads cut after ``split`` bytes."""
    body = b"\x5a" * (length - HEADER_LEN) if expected == "packet" else b""
    data = pack_header(length, 6, 77) + body + PING_PACKET
    parser = PacketParser()
    events = []
    if split:
        assert parser.feed(data[:split]) == []
        assert (parser.state, parser.buffered) == (HD_RECVING, split)
        data = data[split:]
    events += parser.feed(data)
    if expected == "packet":
        assert events == [Packet(6, 77, body), Packet(0, 0, b"")]
    else:
        assert events == [ProtocolError(length, 6, expected), Packet(0, 0, b"")]
    assert (parser.state, parser.buffered) == (HD_INIT, 0)


@pytest.mark.parametrize("split", range(1, HEADER_LEN))
def test_largest_packet_with_a_split_header_then_a_body_in_pieces(split):
    """The slow path taken all the way: a 29000-byte packet whose header arrives in two
    reads and whose body arrives in three."""
    body = (bytes(range(256)) * 114)[: PKG_MAX_ACCEPTED - HEADER_LEN]
    data = pack_header(PKG_MAX_ACCEPTED, 5, 1) + body
    parser = PacketParser()
    assert parser.feed(data[:split]) == []
    assert parser.feed(data[split:HEADER_LEN]) == []
    assert (parser.state, parser.buffered) == (BD_INIT, 0)
    assert parser.feed(data[HEADER_LEN:100]) == []
    assert (parser.state, parser.buffered) == (BD_RECVING, 92)
    assert parser.feed(data[100:-1]) == []
    assert parser.feed(data[-1:]) == [Packet(5, 1, body)]
    assert (parser.state, parser.buffered) == (HD_INIT, 0)


def test_a_packet_without_a_body_is_its_header_alone():
    assert encode_packet(MsgCode.PING) == b"\x00\x08\x00\x00\x00\x00\x00\x00"
    assert encode_packet(0xABCD) == b"\x00\x08\xab\xcd\x00\x00\x00\x00"
    assert encode_packet(3, b"") == b"\x00\x08\x00\x03\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "char",
    ["é", "€", "😀"],  # 2, 3 and 4 bytes of UTF-8
)
def test_a_character_that_would_straddle_the_limit_is_dropped_whole(char):
    """55 bytes of a username fit (the 56th is the C string's NUL). Text that ends with a
    multi-byte character crossing that limit by one byte or more loses the character,
    never half of it; text that fits exactly is kept whole."""
    width = len(char.encode())
    fits = "a" * (USERNAME_LEN - 1 - width) + char  # exactly 55 bytes
    assert Login(fits, "").encode()[:USERNAME_LEN] == fits.encode() + b"\0"
    for over in range(1, width + 1):  # the character's last byte lands 1..width past 55
        text = "a" * (USERNAME_LEN - 1 - width + over) + char
        assert len(text.encode()) == USERNAME_LEN - 1 + over
        prefix = "a" * (USERNAME_LEN - 1 - width + over)
        assert Login(text, "").encode()[:USERNAME_LEN] == prefix.encode().ljust(USERNAME_LEN, b"\0")
        assert Login.decode(Login(text, "").encode()).username == prefix
    # the same rule in the 40-byte password field
    password = "p" * (PASSWORD_LEN - 1 - width + 1) + char
    assert Login("u", password).encode()[USERNAME_LEN:] == (
        "p" * (PASSWORD_LEN - width)
    ).encode().ljust(PASSWORD_LEN, b"\0")


def test_every_empty_packet_parses_to_its_own_fields_and_a_ping_to_the_shared_ping():
    """A header of length 8 is a packet with no body: its code and CRC are kept as sent,
    whatever they are; a bare ping (code 0, CRC 0) read whole is the one shared ``PING``
    object, which Logic.answer recognises by identity (its fast path)."""
    headers = [(0, 0), (1, 1), (0, 1), (1, 0), (0, 0)]
    events = PacketParser().feed(b"".join(pack_header(HEADER_LEN, c, crc) for c, crc in headers))
    assert events == [Packet(code, crc, b"") for code, crc in headers]
    assert [event is PING for event in events] == [True, False, False, False, True]
