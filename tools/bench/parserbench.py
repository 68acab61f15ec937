"""``python -m tools.bench parser``: how fast the sans-IO parser alone is.

No sockets: N ping packets in one coalesced buffer (what a busy server reads when clients
pipeline), fed to :class:`~common.protocol.PacketParser`. That rate is a ceiling for any
chapter: a server cannot answer packets faster than it can cut them out of the stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from common.protocol import PING_PACKET, Packet, PacketParser


@dataclass
class ParserResult:
    packets: int
    chunk: int  # bytes fed per call (0: the whole buffer at once)
    repeat: int
    best_seconds: float
    times: list[float]

    @property
    def packets_per_s(self) -> float:
        return self.packets / self.best_seconds if self.best_seconds else 0.0

    @property
    def mib_per_s(self) -> float:
        return (
            self.packets * len(PING_PACKET) / self.best_seconds / 2**20
            if self.best_seconds
            else 0.0
        )


def parser_bench(packets: int = 1_000_000, repeat: int = 5, chunk: int = 0) -> ParserResult:
    """Best of ``repeat`` timings of parsing ``packets`` pings; with ``chunk`` > 0 the
    buffer is fed ``chunk`` bytes at a time (as a server's 64 KiB reads would)."""
    if packets < 1 or repeat < 1 or chunk < 0:
        raise ValueError("packets and repeat must be >= 1, chunk >= 0")
    data = PING_PACKET * packets
    view = memoryview(data)
    times = []
    for _ in range(repeat):
        parser = PacketParser()
        count = 0
        start = time.perf_counter()
        if chunk:
            for offset in range(0, len(data), chunk):
                count += len(parser.feed(view[offset : offset + chunk]))
        else:
            count = len(parser.feed(data))
        times.append(time.perf_counter() - start)
        if count != packets:
            raise AssertionError(f"parsed {count} packets, expected {packets}")
    # The events must be right, not only counted: check the last run's tail.
    tail = PacketParser().feed(data[-3 * len(PING_PACKET) :])
    if tail != [Packet(0, 0, b"")] * 3:
        raise AssertionError(f"unexpected events: {tail}")
    return ParserResult(packets, chunk, repeat, min(times), times)
