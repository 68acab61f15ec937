"""Thread-safe counters for ``Server.stats()``.

C++: the atomic counters printed by CSocekt::printTDInfo (m_onlineUserCount,
m_iDiscardSendPkgCount …).

Chapters 1-3 run on one thread, but from chapter 4 the event loop, the workers, the send
thread and the timer thread all count things. ``x += 1`` on a shared int is a read, an add
and a write, and a thread switch between them loses an update, so every change goes
through one lock. Counts by reason (drops, kicks, refusals) are kept under a dotted key,
``"drops.bad_crc"``, and :meth:`snapshot` nests them: ``{"drops": {"bad_crc": 3}}``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable


class Counters:
    __slots__ = ("_counts", "_lock")

    def __init__(self, *zero: Iterable[str]) -> None:
        """Start every key of every group in ``zero`` at 0, so ``stats()`` shows it before
        it first happens (each subsystem names the counters it keeps)."""
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter({key: 0 for group in zero for key in group})

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def get(self, key: str) -> int:
        with self._lock:
            return self._counts[key]

    def snapshot(self) -> dict[str, object]:
        """Plain dict; ``a.b`` keys become ``{"a": {"b": n}}``."""
        with self._lock:
            items = sorted(self._counts.items())
        out: dict[str, object] = {}
        for key, value in items:
            group, dot, name = key.partition(".")
            if dot:
                out.setdefault(group, {})[name] = value  # type: ignore[index]
            else:
                out[key] = value
        return out
