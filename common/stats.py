"""Thread-safe counters for ``Server.stats()``.

C++: the atomic counters printed by CSocekt::printTDInfo (m_onlineUserCount,
m_iDiscardSendPkgCount …).

Chapters 1-3 run on one thread, but from chapter 4 the event loop, the workers, the send
thread and the timer thread all count things. ``x += 1`` on a shared int is a read, an add
and a write, and a thread switch between them loses an update. One lock around every
change would be correct, but the event loop counts on every read it makes: that lock cost
a few per cent of chapter 2's throughput. So each thread counts in a table of its own,
which no other thread writes (no update can be lost), and :meth:`snapshot` adds the
tables up: the way the Linux kernel keeps per-CPU counters. Counts by reason (drops,
kicks, refusals) are kept under a dotted key, ``"drops.bad_crc"``, and :meth:`snapshot`
nests them: ``{"drops": {"bad_crc": 3}}``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable


class Counters:
    __slots__ = ("_local", "_tables", "_tables_lock", "_zero")

    def __init__(self, *zero: Iterable[str]) -> None:
        """Start every key of every group in ``zero`` at 0, so ``stats()`` shows it before
        it first happens (each subsystem names the counters it keeps)."""
        self._zero = dict.fromkeys((key for group in zero for key in group), 0)
        self._local = threading.local()  # .counts: the calling thread's own table
        self._tables: list[Counter[str]] = []  # every thread's table, kept when it ends
        self._tables_lock = threading.Lock()  # guards _tables (once per thread)

    def _table(self) -> Counter[str]:
        table: Counter[str] = Counter()
        self._local.counts = table
        with self._tables_lock:
            self._tables.append(table)
        return table

    def add(self, key: str, n: int = 1) -> None:
        try:
            table = self._local.counts
        except AttributeError:  # this thread's first count
            table = self._table()
        table[key] += n

    def get(self, key: str) -> int:
        with self._tables_lock:
            tables = list(self._tables)
        # dict(table) copies in one step under the GIL: never a table changing mid-read.
        return sum(dict(table).get(key, 0) for table in tables)

    def snapshot(self) -> dict[str, object]:
        """Plain dict; ``a.b`` keys become ``{"a": {"b": n}}``."""
        with self._tables_lock:
            tables = list(self._tables)
        totals = Counter(self._zero)
        for table in tables:
            totals.update(dict(table))
        out: dict[str, object] = {}
        for key, value in sorted(totals.items()):
            group, dot, name = key.partition(".")
            if dot:
                out.setdefault(group, {})[name] = value  # type: ignore[index]
            else:
                out[key] = value
        return out
