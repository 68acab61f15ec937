"""The live dashboard: the few figures an operator watches, grouped, with rates and the
last minute drawn as sparklines.

C++: CSocekt::printTDInfo, which the original's worker prints every 10 seconds: online
users against the limit, free / total / recycling connections, the timer queue, the
receive and send queues and the dropped replies. We show the same figures, per second
instead of per ten, plus what the original does not count: accepted and closed
connections, packets in and replies out, each defence as it fires and each reason a
packet was dropped.

The dashboard is a pure function: :func:`render` takes a :class:`History` of ``stats()``
snapshots (one a second, the last minute), the title, the online limit and the size of
the terminal, and returns a rich renderable. Rates are differences between successive
snapshots, so ``stats()`` stays a plain bag of counters and the chapters know nothing of
the screen. The panels are chosen from the keys the running chapter's ``stats()`` has,
so each chapter shows only what it has, and a key a chapter lacks is simply not drawn:

* Connections (chapter 1 on): ``online``, against ``worker_connections`` where the
  chapter enforces it (it then counts ``refused.online_limit``); ``accepted`` and
  ``closed`` per second; ``waiting_epollout``.
* Throughput (1 on): ``packets_in`` and ``replies_out`` per second, with sparklines.
* Drops (1 on): each non-zero ``drops.*``, ``malformed``, ``stale_events``,
  ``stale_requests``, ``replies_dropped.stale`` / ``.kicked``, ``accept_errors.*``.
* Pool (3 on): ``pool.free``, ``pool.recycling``, ``pool.total`` and what is in use.
* Defences (3 on): each ``refused.*`` and ``kicks.*``
  once it has fired, in red while it moves.
* Queues (4 on): ``queues.receive``, ``.send``, ``.timers`` with sparklines, and the flow
  control counts (``epollout_armed``, ``send_queue_full``, ``half_closed``) once moved.
* Workers (7): a row per worker process from ``workers`` (slot, pid, state, clients
  online, replies per second); every other figure is already the sum over the workers,
  and the online limit is ``worker_connections`` per serving worker.

A footer names the C++ counterpart of every figure on the screen.
"""

from __future__ import annotations

import io
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

HISTORY_SECONDS = 60.0
# How long a defence or a drop stays highlighted after its count moved: long enough to be
# seen at a glance with one refresh a second.
RECENT_SECONDS = 5.0
WIDTH = 100  # the terminal the dashboard is designed for (and tested at)
HEIGHT = 24
WIDTH_FLOOR = 60  # below this the panels would not fit their labels: rich wraps instead
MAX_PANEL_ROWS = 6
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"


# ----------------------------------------------------------------------------------------
# The history of snapshots
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic() when stats() was taken
    stats: Mapping[str, object]


@dataclass
class History:
    """The snapshots of the last ``seconds`` (plus the one just before, so a rate over
    the whole window has a start)."""

    seconds: float = HISTORY_SECONDS
    started: float | None = None
    samples: deque[Sample] = field(default_factory=deque)

    def add(self, stats: Mapping[str, object], at: float | None = None) -> None:
        at = time.monotonic() if at is None else at
        if self.started is None:
            self.started = at
        self.samples.append(Sample(at, stats))
        while len(self.samples) > 2 and at - self.samples[1].at > self.seconds:
            self.samples.popleft()

    @property
    def latest(self) -> Mapping[str, object]:
        return self.samples[-1].stats if self.samples else {}


def value(stats: Mapping[str, object], key: str) -> float | None:
    """``value(stats, "pool.free")``: the number under a dotted key, None when the chapter
    has no such key (or it is not a number)."""
    node: object = stats
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None
    return node


def rate(history: History, key: str) -> float | None:
    """Per second, between the last two snapshots; None before there are two."""
    if len(history.samples) < 2:
        return None
    before, now = history.samples[-2], history.samples[-1]
    a, b = value(before.stats, key), value(now.stats, key)
    if a is None or b is None or now.at <= before.at:
        return None
    return max(0.0, (b - a) / (now.at - before.at))


def rate_series(history: History, key: str) -> list[tuple[float, float]]:
    """``(time, per second)`` for every interval in the history."""
    out = []
    samples = list(history.samples)
    for before, now in itertools.pairwise(samples):
        a, b = value(before.stats, key), value(now.stats, key)
        if a is not None and b is not None and now.at > before.at:
            out.append((now.at, max(0.0, (b - a) / (now.at - before.at))))
    return out


def gauge_series(history: History, key: str) -> list[tuple[float, float]]:
    """``(time, value)`` for every snapshot that has ``key``."""
    out = []
    for sample in history.samples:
        v = value(sample.stats, key)
        if v is not None:
            out.append((sample.at, v))
    return out


def recently_moved(history: History, key: str, seconds: float = RECENT_SECONDS) -> bool:
    """Did the counter ``key`` go up in the last ``seconds``? (Compared with the last
    snapshot at least that old, or the first one while the history is younger.)"""
    samples = history.samples
    if len(samples) < 2:
        return False
    now = samples[-1]
    base = samples[0]
    for sample in samples:
        if sample.at <= now.at - seconds:
            base = sample
    return (value(now.stats, key) or 0) > (value(base.stats, key) or 0)


# ----------------------------------------------------------------------------------------
# Small drawing helpers
# ----------------------------------------------------------------------------------------


def human(n: float | None, *, decimals: bool = False) -> str:
    """A number in at most 6 characters: 987, 12.5k, 3.4M, 1.2G; "-" for unknown."""
    if n is None:
        return "-"
    if abs(n) >= 999_950_000:
        return f"{n / 1_000_000_000:.1f}G"
    if abs(n) >= 999_950:
        return f"{n / 1_000_000:.1f}M"
    if abs(n) >= 99_950:
        return f"{n / 1000:.0f}k"
    if abs(n) >= 9_999.5:
        return f"{n / 1000:.1f}k"
    if decimals and 0 < abs(n) < 10 and n != int(n):
        return f"{n:.1f}"
    return f"{n:.0f}"


def sparkline(
    points: Sequence[tuple[float, float]], width: int, now: float, span: float = HISTORY_SECONDS
) -> Text:
    """The last ``span`` seconds of ``points`` in ``width`` block characters, newest on the
    right, each character the highest value of its slice of time; blank before the first
    point. Scaled to the highest value shown, so the shape is what to read, not the
    height."""
    width = max(0, width)
    if width == 0:
        return Text()
    cells: list[float | None] = [None] * width
    start = now - span
    for at, v in points:
        if at < start:
            continue
        i = min(width - 1, max(0, int((at - start) / span * width)))
        current = cells[i]
        cells[i] = v if current is None else max(current, v)
    # With fewer snapshots than characters some slices are empty: carry the previous value
    # across so the line has no holes (a slice before the first point stays blank).
    seen = False
    for i, cell in enumerate(cells):
        if cell is not None:
            seen = True
        elif seen:
            cells[i] = cells[i - 1]
    top = max((c for c in cells if c is not None), default=0.0)
    text = Text()
    for cell in cells:
        if cell is None:
            text.append(" ")
        elif top <= 0 or cell <= 0:
            text.append(SPARK_BLOCKS[0], style="dim")
        else:
            level = max(1, math.ceil(cell / top * (len(SPARK_BLOCKS) - 1)))
            text.append(SPARK_BLOCKS[level], style="green")
    return text


def meter(used: float, total: float, width: int) -> Text:
    """``████░░░░``: ``used`` of ``total`` in ``width`` characters; red from 90 %."""
    if width <= 0 or total <= 0:
        return Text()
    filled = min(width, round(used / total * width))
    if used > 0:
        filled = max(1, filled)
    style = "bold red" if used >= 0.9 * total else "cyan"
    return Text("█" * filled, style=style) + Text("░" * (width - filled), style="dim")


def stacked_bar(parts: Sequence[tuple[float, str, str]], total: float, width: int) -> Text:
    """One bar of ``width`` characters split between ``(amount, char, style)`` parts, in
    proportion (each part ends where its running total, rounded, ends: the widths always
    add up, so the bar never overflows)."""
    text = Text()
    if width <= 0 or total <= 0:
        return text
    done = 0.0
    end_before = 0
    for amount, char, style in parts:
        done += max(0.0, amount)
        end = min(width, round(done / total * width))
        text.append(char * max(0, end - end_before), style=style)
        end_before = max(end_before, end)
    return text


def _row(label: str, shown: str, extra: Text | str = "", *, inner: int, lw: int) -> Text:
    """One line of a panel: ``label`` in ``lw`` columns, the value right-aligned in 7,
    then ``extra``; cut to the panel's inner width."""
    line = Text(label.ljust(lw)[:lw], style="bold")
    line.append(" ")
    line.append(shown.rjust(7))
    if extra:
        line.append(" ")
        line.append_text(extra if isinstance(extra, Text) else Text(extra, style="dim"))
    line.truncate(inner, overflow="ellipsis")
    return line


def _wrap(text: Text, width: int, max_lines: int) -> list[Text]:
    """``text`` wrapped to ``width``, at most ``max_lines`` lines (the last ending in "…"
    when cut)."""
    if max_lines <= 0:
        return []
    lines = list(text.wrap(_MEASURE, max(1, width)))
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1].rstrip()
        lines[-1].truncate(max(1, width - 1), overflow="crop")
        lines[-1].append("…", style="dim")
    return lines


# Wrapping a Text needs a console; this one only measures and is never printed to.
_MEASURE = Console(width=WIDTH, file=io.StringIO())


# ----------------------------------------------------------------------------------------
# What each figure is called, here and in the C++
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    key: str  # the dotted stats() key
    label: str  # what the dashboard calls it
    cpp: str = ""  # the C++ counterpart, for the footer; "" when the original has none


DEFENCES = (
    Figure("refused.online_limit", "online limit", "ngx_event_accept"),
    Figure("refused.storm", "connect storm", "ngx_event_accept"),
    Figure("kicks.silence", "silence kick", "procPingTimeOutChecking"),
    # The original kicks at 400 queued replies in msgSend; ours when none is taken in time.
    Figure("kicks.send_stall", "send stall kick", "msgSend"),
    Figure("kicks.timeout", "timeout kick", "m_ifTimeOutKick"),
    Figure("kicks.flood", "flood kick", "TestFlood"),
    # The original skips a malformed header and reads on; chapter 6 closes instead.
    Figure("kicks.malformed", "malformed close"),
)
DROPS = (
    Figure("drops.bad_crc", "bad CRC", "threadRecvProcFunc"),
    Figure("drops.crc_on_empty", "CRC on empty", "threadRecvProcFunc"),
    Figure("drops.unknown_code", "unknown code", "threadRecvProcFunc"),
    Figure("drops.wrong_size", "wrong size", "threadRecvProcFunc"),
    Figure("drops.body_on_ping", "body on ping", "threadRecvProcFunc"),
    Figure("malformed", "malformed header", "ngx_read_request_handler"),
    Figure("stale_events", "stale event", "instance bit"),
    Figure("stale_requests", "request, conn gone", "iCurrsequence"),
    Figure("replies_dropped.stale", "reply, conn gone", "iCurrsequence"),
    Figure("accept_errors.econnaborted", "accept ECONNABORTED", "ngx_event_accept"),
    Figure("accept_errors.emfile", "accept EMFILE", "ngx_event_accept"),
)
# Flow control at work, neither a defence nor a drop: shown under the queues once moved.
FLOW = (
    Figure("epollout_armed", "EPOLLOUT armed", "ngx_epoll_oper_event"),
    # The original drops replies past 50000 (m_iDiscardSendPkgCount); ours makes the
    # worker wait.
    Figure("send_queue_full", "send queue full"),
    Figure("half_closed", "half-closed"),
)


def _label_of(key: str, known: Iterable[Figure]) -> str:
    for figure in known:
        if figure.key == key:
            return figure.label
    return key.partition(".")[2].replace("_", " ") or key


def _cpp_of(key: str, known: Iterable[Figure]) -> str:
    return next((figure.cpp for figure in known if figure.key == key), "")


def _keys(stats: Mapping[str, object], known: Iterable[Figure], groups: Iterable[str]) -> list[str]:
    """The known keys this chapter has, in teaching order, then any other key of
    ``groups`` (a reason a later chapter adds shows up without a change here)."""
    keys = [f.key for f in known if value(stats, f.key) is not None]
    for group in groups:
        node = stats.get(group)
        if isinstance(node, Mapping):
            for name in node:
                key = f"{group}.{name}"
                if key not in keys and value(stats, key) is not None:
                    keys.append(key)
    return keys


def defence_keys(stats: Mapping[str, object]) -> list[str]:
    """Every defence this chapter counts: refusals at accept, kicks, dropped replies."""
    return _keys(stats, DEFENCES, ("refused", "kicks"))


def drop_keys(stats: Mapping[str, object]) -> list[str]:
    """Every reason this chapter counts for a packet, a reply or an event thrown away."""
    return _keys(stats, DROPS, ("drops", "accept_errors"))


# ----------------------------------------------------------------------------------------
# The panels
# ----------------------------------------------------------------------------------------


@dataclass
class PanelSpec:
    """A panel before its width is known. ``build(inner_width, max_rows)`` draws its
    rows; ``min_width`` is what it needs; ``cpp`` pairs its figures with their C++ names
    for the footer; ``alert`` turns the frame red (a defence or drop just fired)."""

    title: str
    min_width: int
    build: Callable[[int, int], list[Text]]
    cpp: list[tuple[str, str]] = field(default_factory=list)
    alert: bool = False


def _fit(rows: list[Text], max_rows: int, inner: int) -> list[Text]:
    """At most ``max_rows`` rows; the last one says how many were left out."""
    if len(rows) <= max_rows:
        return rows
    kept = rows[: max(0, max_rows - 1)]
    more = Text(f"+{len(rows) - len(kept)} more", style="dim italic")
    more.truncate(inner, overflow="ellipsis")
    return [*kept, more]


def _connections(history: History, limit: int | None) -> PanelSpec:
    stats = history.latest
    online = value(stats, "online")
    # The limit means something only where the chapter enforces it: chapter 3 on, which
    # then counts refused.online_limit. (Chapter 1 serves one client at a time by design.)
    enforced = bool(limit) and value(stats, "refused.online_limit") is not None
    cpp = [("online", "m_onlineUserCount")] if online is not None else []
    if enforced:
        cpp.append(("limit", "m_worker_connections"))
    for key, name in (
        ("accepted", "ngx_event_accept"),
        ("closed", "ngx_close_connection"),
        ("waiting_epollout", "iThrowsendCount>0"),
    ):
        if value(stats, key) is not None:
            cpp.append(("EPOLLOUT" if key == "waiting_epollout" else key, name))

    def build(inner: int, max_rows: int) -> list[Text]:
        lw = 9
        rows = []
        if online is not None:
            if enforced and limit:
                shown = f"{human(online)}/{human(limit)}"
                bar = meter(online, limit, inner - lw - 2 - max(7, len(shown)))
                rows.append(_row("online", shown, bar, inner=inner, lw=lw))
            else:
                rows.append(_row("online", human(online), inner=inner, lw=lw))
        for key in ("accepted", "closed"):
            total = value(stats, key)
            if total is not None:
                per_s = f"{human(rate(history, key), decimals=True)}/s"
                rows.append(_row(key, per_s, f"{human(total)} total", inner=inner, lw=lw))
        waiting = value(stats, "waiting_epollout")
        if waiting is not None:
            rows.append(_row("EPOLLOUT", human(waiting), "waiting", inner=inner, lw=lw))
        return _fit(rows, max_rows, inner)

    return PanelSpec("Connections", 30, build, cpp)


def _pool(history: History) -> PanelSpec:
    stats = history.latest
    free = value(stats, "pool.free")
    total = value(stats, "pool.total")
    recycling = value(stats, "pool.recycling")
    parts: list[tuple[str, float | None, str, str]] = []
    if free is not None and total is not None and recycling is not None:
        # Three reads of three lists, not one atomic snapshot: they can disagree for an
        # instant, so "in use" is never shown below zero.
        parts.append(("in use", max(0, total - free - recycling), "█", "cyan"))
    parts += [("recycling", recycling, "▒", "yellow"), ("free", free, "░", "dim")]
    parts = [part for part in parts if part[1] is not None]
    names = {"free": "m_freeconnectionList", "recycling": "m_recyconnectionList"}
    cpp = [(label, names[label]) for label, *_ in parts if label in names]
    if total is not None:
        cpp.append(("total", "m_connectionList"))

    def build(inner: int, max_rows: int) -> list[Text]:
        lw = 9
        rows = [
            _row(label, human(n), Text(char, style=style), inner=inner, lw=lw)
            for label, n, char, style in parts
        ]
        if total is not None:
            shares = [(n or 0, char, style) for _, n, char, style in parts]
            bar = stacked_bar(shares, total, inner - lw - 9)
            rows.append(_row("total", human(total), bar, inner=inner, lw=lw))
        return _fit(rows, max_rows, inner)

    return PanelSpec("Pool", 30, build, cpp)


def _throughput(history: History) -> PanelSpec:
    stats = history.latest
    now = history.samples[-1].at if history.samples else 0.0
    figures = [
        (key, label)
        for key, label in (("packets_in", "packets in"), ("replies_out", "replies out"))
        if value(stats, key) is not None
    ]
    names = {"packets_in": "ngx_read_request_handler", "replies_out": "msgSend"}
    cpp = [(label, names[key]) for key, label in figures]

    def build(inner: int, max_rows: int) -> list[Text]:
        lw = 11
        rows = []
        for key, label in figures:
            per_s = f"{human(rate(history, key), decimals=True)}/s"
            spark = sparkline(rate_series(history, key), inner - lw - 9, now, history.seconds)
            rows.append(_row(label, per_s, spark, inner=inner, lw=lw))
        totals = [f"{human(value(stats, key))} {label.split()[0]}" for key, label in figures]
        if totals:
            line = Text("total: " + ", ".join(totals), style="dim")
            line.truncate(inner, overflow="ellipsis")
            rows.append(line)
        return _fit(rows, max_rows, inner)

    return PanelSpec(f"Throughput, last {history.seconds:g} s", 45, build, cpp)


def _queues(history: History) -> PanelSpec:
    stats = history.latest
    now = history.samples[-1].at if history.samples else 0.0
    figures = [
        (key, label, cpp)
        for key, label, cpp in (
            ("queues.receive", "receive", "getRecvMsgQueueCount()"),
            ("queues.send", "send", "m_iSendMsgQueueCount"),
            ("queues.timers", "timers", "m_timerQueuemap"),
        )
        if value(stats, key) is not None
    ]
    moved = [f for f in FLOW if value(stats, f.key)]
    cpp = [(label, name) for _, label, name in figures]
    cpp += [(f.label, f.cpp) for f in moved if f.cpp]

    def build(inner: int, max_rows: int) -> list[Text]:
        lw = 8
        rows = []
        for key, label, _ in figures:
            spark = sparkline(gauge_series(history, key), inner - lw - 9, now, history.seconds)
            rows.append(_row(label, human(value(stats, key)), spark, inner=inner, lw=lw))
        if moved:
            flow = Text(", ".join(f"{f.label} {human(value(stats, f.key))}x" for f in moved))
            flow.stylize("dim")
            flow.truncate(inner, overflow="ellipsis")
            rows.append(flow)
        return _fit(rows, max_rows, inner)

    return PanelSpec(f"Queues, last {history.seconds:g} s", 45, build, cpp)


def _counts(
    title: str, history: History, keys: list[str], known: Sequence[Figure], none_text: str
) -> PanelSpec:
    """The defences and the drops: one entry per counter that is not zero, red while it
    moves; the counters that never fired stay hidden."""
    stats = history.latest
    fired = [key for key in keys if value(stats, key)]
    hot = {key for key in fired if recently_moved(history, key)}
    cpp = [(_label_of(k, known), _cpp_of(k, known)) for k in fired if _cpp_of(k, known)]

    def build(inner: int, max_rows: int) -> list[Text]:
        if not fired:
            return _wrap(Text(none_text, style="dim italic"), inner, max_rows)
        # As many columns side by side as fit: one in a narrow panel, three when the
        # panel has a row of the screen to itself.
        col = min(inner, 30)
        per_line = max(1, (inner + 2) // (col + 2))
        cells = []
        for key in fired:
            style = "bold red" if key in hot else ""
            cell = Text(_label_of(key, known).ljust(col - 9)[: col - 9], style=style)
            cell.append(" ")
            cell.append(human(value(stats, key)).rjust(6), style=style or "bold")
            cell.append(" ◀" if key in hot else "  ", style="bold red")
            cells.append(cell)
        lines = []
        for i in range(0, len(cells), per_line):
            line = Text("  ").join(cells[i : i + per_line])
            line.truncate(inner, overflow="ellipsis")
            lines.append(line)
        return _fit(lines, max_rows, inner)

    return PanelSpec(title, 30, build, cpp, alert=bool(hot))


def _workers(history: History, rows: list[Mapping[str, object]]) -> PanelSpec:
    """Chapter 7: one row per worker process. The rate is per pid, between the last two
    snapshots (a replaced worker starts with no rate)."""
    before: dict[object, Mapping[str, object]] = {}
    span = 0.0
    if len(history.samples) >= 2:
        previous, now = history.samples[-2], history.samples[-1]
        old_rows = previous.stats.get("workers")
        before = {row.get("pid"): row for row in old_rows} if isinstance(old_rows, list) else {}
        span = now.at - previous.at

    def build(inner: int, max_rows: int) -> list[Text]:
        lines = []
        for row in rows:
            old = before.get(row.get("pid"))
            per_s = None
            if old is not None and span > 0:
                delta = (value(row, "replies_out") or 0) - (value(old, "replies_out") or 0)
                per_s = max(0.0, delta / span)
            line = Text(f"#{row.get('slot', '?')} ", style="bold")
            line.append(f"pid {row.get('pid', '?')} ")
            state = str(row.get("state", "?"))
            line.append(f"{state:<9}", style="green" if state == "serving" else "yellow")
            line.append(f"online {human(value(row, 'online'))}  ")
            line.append(f"{human(per_s, decimals=True)} replies/s", style="dim")
            line.truncate(inner, overflow="ellipsis")
            lines.append(line)
        return _fit(lines or [Text("none", style="dim italic")], max_rows, inner)

    return PanelSpec("Workers", 45, build, [("workers", "ngx_processes")])


def panels(history: History, limit: int | None = None) -> list[PanelSpec]:
    """The panels this chapter's stats have, in screen order."""
    stats = history.latest
    workers = stats.get("workers")
    if isinstance(workers, list) and limit:  # chapter 7: the limit is per worker process
        limit *= max(1, sum(1 for row in workers if row.get("state") == "serving"))
    out = [_connections(history, limit)]
    if isinstance(workers, list):
        out.append(_workers(history, workers))
    if value(stats, "pool.total") is not None:
        out.append(_pool(history))
    defences = defence_keys(stats)
    if defences:
        watched = ", ".join(_label_of(key, DEFENCES) for key in defences)
        out.append(
            _counts("Defences", history, defences, DEFENCES, f"none fired yet; armed: {watched}")
        )
    if any(value(stats, key) is not None for key in ("packets_in", "replies_out")):
        out.append(_throughput(history))
    if any(value(stats, key) is not None for key in ("queues.receive", "queues.send")):
        out.append(_queues(history))
    out.append(_counts("Drops", history, drop_keys(stats), DROPS, "nothing dropped"))
    return out


def _pack(specs: list[PanelSpec], width: int) -> list[list[tuple[PanelSpec, int]]]:
    """Lay the panels out in rows, in order, as many to a row as their minimum widths
    allow; then share each row's spare width out in proportion."""
    rows: list[list[PanelSpec]] = [[]]
    for spec in specs:
        if rows[-1] and sum(p.min_width for p in rows[-1]) + spec.min_width > width:
            rows.append([])
        rows[-1].append(spec)
    laid = []
    for row in rows:
        total = sum(p.min_width for p in row)
        widths = [p.min_width * width // total for p in row]
        widths[-1] = width - sum(widths[:-1])
        laid.append(list(zip(row, widths, strict=True)))
    return laid


# ----------------------------------------------------------------------------------------
# The whole screen
# ----------------------------------------------------------------------------------------


def _uptime(history: History) -> str:
    if not history.samples or history.started is None:
        return "0:00:00"
    seconds = int(history.samples[-1].at - history.started)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _header(title: str, address: str | None, history: History, width: int) -> Text:
    line = Text(title, style="bold")
    if address:
        line.append(f"  {address}", style="cyan")
    line.append(f"  up {_uptime(history)}", style="dim")
    hint = "one snapshot a second · Ctrl-C stops"
    if len(line) + 2 + len(hint) <= width:
        line.append(" " * (width - len(line) - len(hint)))
        line.append(hint, style="dim")
    line.truncate(width, overflow="ellipsis")
    return line


def _footer(specs: list[PanelSpec], width: int, lines: int) -> list[Text]:
    """The C++ name of every figure on the screen, as many lines as there is room for.
    Figures with the same C++ name share it ("accepted/online limit ngx_event_accept");
    a "figures name" unit is never split across lines."""
    by_cpp: dict[str, list[str]] = {}
    for spec in specs:
        for label, cpp in spec.cpp:
            if label not in by_cpp.setdefault(cpp, []):
                by_cpp[cpp].append(label)
    units = []
    for cpp, labels in by_cpp.items():
        unit = Text("/".join(labels), style="dim")
        unit.append(" ")
        unit.append(cpp, style="cyan")
        unit.truncate(width - 2, overflow="ellipsis")
        units.append(unit)
    out: list[Text] = []
    line = Text("C++: ", style="bold")
    for unit in units:
        if len(line) > 5 and len(line) + 3 + len(unit) > width:
            out.append(line)
            line = Text("  ")
        elif len(line) > 5:
            line.append(" · ", style="dim")
        line.append_text(unit)
    out.append(line)
    if len(out) > lines:
        out = out[: max(0, lines)]
        if out:
            out[-1].truncate(width - 1, overflow="crop")
            out[-1].append("…", style="dim")
    return out


def render(
    history: History | Mapping[str, object],
    title: str,
    *,
    limit: int | None = None,
    address: str | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> RenderableType:
    """The dashboard, drawn for a ``width`` x ``height`` terminal.

    ``history`` is the last minute of ``stats()`` snapshots (a single ``stats()`` dict is
    a history of one: no rates yet). ``limit`` is ``worker_connections``, drawn against
    ``online`` by the chapters that enforce it; ``address`` goes in the top line. No line
    is wider than ``width``; the screen is at most ``height`` lines (the footer of C++
    names takes what is left, then long panels are cut to "+n more") down to a floor of
    one row per panel.
    """
    if not isinstance(history, History):
        single = History()
        single.add(history, at=0.0)
        history = single
    width = max(WIDTH_FLOOR, width)
    specs = panels(history, limit)
    layout = _pack(specs, width)

    max_rows = MAX_PANEL_ROWS
    while True:
        drawn = []
        for row in layout:
            built = [(spec, w, spec.build(w - 4, max_rows)) for spec, w in row]
            drawn.append((2 + max(1, *(len(lines) for _, _, lines in built)), built))
        used = 1 + sum(row_height for row_height, _ in drawn)
        if used <= height or max_rows == 1:
            break
        max_rows -= 1

    parts: list[RenderableType] = [_header(title, address, history, width)]
    for row_height, built in drawn:
        grid = Table.grid(padding=0)
        for _, w, _ in built:
            grid.add_column(width=w, no_wrap=True)
        grid.add_row(
            *(
                Panel(
                    Group(*lines),
                    title=Text(spec.title, style="bold red" if spec.alert else "bold"),
                    title_align="left",
                    border_style="red" if spec.alert else "blue",
                    width=w,
                    height=row_height,
                    padding=(0, 1),
                )
                for spec, w, lines in built
            )
        )
        parts.append(grid)
    parts.extend(_footer(specs, width, height - used))
    return Group(*parts)
