"""Flood detection.

C++: CSocekt::TestFlood (with FloodkickLastTime and FloodAttackCount on the connection,
and the [NetSecurity] config keys).
"""

from __future__ import annotations

from common.config import Config

from .connection import Connection


# --8<-- [start:flood]
class FloodDetector:
    """Counts packets that arrive too close together, per connection.

    Each complete packet is compared with the previous one's arrival time: closer than
    ``interval`` seconds and the connection's count goes up, otherwise it starts again
    from zero. When the count reaches ``kick_count`` the caller discards the packet and
    closes the connection. With the original's 100 ms / 10, a client pinging in lock-step
    gets 10 replies and is closed on its 11th ping; one pinging every 150 ms, or sending
    bursts of 10 with 150 ms gaps, is never kicked.

    The original reads the wall clock (``gettimeofday``), so a clock step backwards makes
    every packet look "too close"; we use the monotonic clock.
    """

    COUNTERS = ("kicks.flood",)

    def __init__(self, interval: float, kick_count: int) -> None:
        self.interval = interval
        self.kick_count = kick_count

    @classmethod
    def from_config(cls, config: Config) -> FloodDetector | None:
        """The flood rule of ``config``, or None when ``Sock_FloodAttackKickEnable = 0``."""
        if not config.get_bool("Sock_FloodAttackKickEnable"):
            return None
        return cls(
            config.get_int("Sock_FloodTimeInterval", minimum=0) / 1000,
            config.get_int("Sock_FloodKickCounter", minimum=1),
        )

    def check(self, conn: Connection, now: float) -> bool:
        """True when this packet, arrived at ``now`` (the server's clock), makes ``conn`` a
        flooder. C++: TestFlood."""
        if now - conn.flood_last < self.interval:
            conn.flood_count += 1
        else:
            conn.flood_count = 0
        conn.flood_last = now
        return conn.flood_count >= self.kick_count


# --8<-- [end:flood]
