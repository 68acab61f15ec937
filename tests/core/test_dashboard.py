"""The dashboard (``--dashboard``): it fits a 100x24 terminal for every chapter, shows the
groups the chapter has and no other, and draws what the counters say.

``render`` is a pure function of a history of ``stats()`` snapshots, so most tests feed
it snapshots with made-up times (a rate over exactly one second is the count itself) and
read the text a recording console drew. The real-server tests take their snapshots from
every chapter's ``Server.stats()``; one test runs ``python -m chapters.06_flood
--dashboard`` in a pseudo-terminal, as a reader does.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import io
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from rich.console import Console

from common.dashboard import (
    History,
    human,
    panels,
    rate,
    recently_moved,
    render,
    sparkline,
    value,
)
from common.protocol import PING_PACKET
from tests.conftest import CHAPTERS, ROOT, RunningServer, recv_exactly, test_config, wait_until

WIDTH, HEIGHT = 100, 24
GROUPS = ("Connections", "Pool", "Defences", "Throughput", "Queues", "Drops")


def draw(history: History | dict, width: int = WIDTH, height: int = HEIGHT, **kw) -> str:
    console = Console(width=width, height=height, record=True, file=io.StringIO())
    console.print(render(history, "Chapter test", width=width, height=height, **kw))
    return console.export_text()


def assert_fits(text: str, width: int = WIDTH, height: int = HEIGHT) -> list[str]:
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= height, f"{len(lines)} lines:\n{text}"
    too_wide = [line for line in lines if len(line) > width]
    assert not too_wide, f"lines wider than {width}:\n" + "\n".join(too_wide)
    return lines


def panel_titles(text: str) -> set[str]:
    """The groups drawn: every "╭─ Title" on the screen."""
    return {m.group(1) for m in re.finditer(r"╭─ (\w+)", text)}


def expected_groups(features: frozenset[str]) -> set[str]:
    """What each chapter should show, from its FEATURES (not from its stats keys, which
    is what the dashboard itself looks at)."""
    groups = {"Connections", "Throughput", "Drops"}
    if "pool" in features:
        groups |= {"Pool", "Defences"}  # the online limit and the storm guard come with it
    if "sendqueue" in features:
        groups.add("Queues")
    if "processes" in features:
        groups.add("Workers")  # a row per worker process
    return groups


def row(text: str, label: str) -> str:
    """The first screen line holding ``label`` (several panels share a line)."""
    for line in text.splitlines():
        if label in line:
            return line
    raise AssertionError(f"no {label!r} on the screen:\n{text}")


def words(text: str, label: str) -> list[str]:
    """The words of the cell where ``label`` is: from the label to the panel's border, or
    to the end of its column in a panel of several columns (30 wide)."""
    line = row(text, label)
    start = line.index(label)
    return line[start : start + 30].partition("│")[0].split()


# -- every chapter, real stats() ------------------------------------------------------------


def _ping(srv: RunningServer, sock, n: int) -> None:
    """``n`` round trips; then wait for the server to count its replies (from chapter 4
    the send thread counts a reply after writing it, so the client can be faster)."""
    before = value(srv.stats(), "replies_out") or 0
    for _ in range(n):
        sock.sendall(PING_PACKET)
        assert recv_exactly(sock, 8) == PING_PACKET
    wait_until(lambda: value(srv.stats(), "replies_out") == before + n)


@pytest.mark.parametrize("name", CHAPTERS)
def test_every_chapter_fits_100x24_and_shows_its_groups(name):
    features = importlib.import_module(f"chapters.{name}").FEATURES
    srv = RunningServer(name, test_config(worker_connections=2))
    history = History()
    try:
        with srv.raw() as sock:
            _ping(srv, sock, 3)
            history.add(srv.stats(), at=100.0)
            _ping(srv, sock, 7)  # 7 in the next second: 7/s
            history.add(srv.stats(), at=101.0)
            if "pool" in features:
                # Fill the two places and knock once more: the online limit fires.
                with srv.raw() as second, srv.raw() as third:
                    _ping(srv, second, 1)
                    wait_until(lambda: value(srv.stats(), "refused.online_limit") == 1)
                    third.settimeout(10)
                    assert third.recv(1) == b""  # refused: closed at once
                    history.add(srv.stats(), at=102.0)
                    stats_now = srv.stats()
    finally:
        srv.stop()

    text = draw(history, limit=2)
    assert_fits(text)
    assert panel_titles(text) == expected_groups(features), text
    if "pool" not in features:
        assert words(text, "packets in")[:3] == ["packets", "in", "7/s"], text
        assert words(text, "replies out")[:3] == ["replies", "out", "7/s"], text
        assert "total: 10 packets, 10 replies" in text
        assert words(text, "online") == ["online", "1"]
    else:
        assert words(text, "online")[:2] == ["online", f"{stats_now['online']}/2"]
        assert words(text, "online limit") == ["online", "limit", "1", "◀"]  # fired just now
        assert "total: 11 packets, 11 replies" in text
        assert "m_freeconnectionList" in text  # its C++ name in the footer
    if "timers" in features:
        assert words(text, "timers")[:2] == ["timers", "0"]
    else:
        assert "timers" not in text
    assert "nothing dropped" in text


def test_render_takes_a_single_stats_dict():
    """``render(server.stats(), title)`` still works: a history of one, no rates yet."""
    srv = RunningServer("06_flood", test_config())
    try:
        with srv.raw() as sock:
            _ping(srv, sock, 2)
            text = draw(srv.stats(), limit=1024)
    finally:
        srv.stop()
    assert_fits(text)
    assert panel_titles(text) == set(GROUPS)
    assert words(text, "packets in") == ["packets", "in", "-/s"]  # one snapshot: no rate
    assert re.search(r"│ total\s+1024 ", text)  # the pool's size


# -- synthetic worst cases ------------------------------------------------------------------

EVERY_DEFENCE = {
    "refused": {"online_limit": 12, "storm": 3},
    "kicks": {
        "send_stall": 2,
        "silence": 40,
        "timeout": 5,
        "flood": 7,
        "malformed": 9,
        "brand_new": 1,  # a defence a later chapter might add: shown under its key
    },
    "replies_dropped": {"stale": 4},
}
MANY_DROPS = {
    "drops": {
        "bad_crc": 5,
        "crc_on_empty": 6,
        "unknown_code": 7,
        "wrong_size": 8,
        "body_on_ping": 9,
        "something_else": 10,
    },
    "accept_errors": {"econnaborted": 11, "emfile": 12, "enobufs": 13},
    "malformed": 14,
    "stale_events": 15,
    "stale_requests": 16,
}


def worst_stats(scale: int = 1) -> dict:
    stats: dict = {
        "accepted": 9_876_543 * scale,
        "closed": 9_876_000 * scale,
        "packets_in": 123_456_789 * scale,
        "replies_out": 123_456_000 * scale,
        "online": 2048,
        "waiting_epollout": 1500,
        "epollout_armed": 77 * scale,
        "half_closed": 3 * scale,
        "send_queue_full": 99 * scale,
        "pool": {"total": 10240, "free": 0, "recycling": 8192},
        "queues": {"receive": 150_000, "send": 50_000, "timers": 2048},
    }
    for group, counts in (*EVERY_DEFENCE.items(), *MANY_DROPS.items()):
        if isinstance(counts, dict):
            stats[group] = {k: v * scale for k, v in counts.items()}
        else:
            stats[group] = counts * scale
    return stats


def test_worst_case_fits_every_size_from_100x24_up():
    history = History()
    for i in range(70):  # more than a minute: the history keeps the last 60 s
        history.add(worst_stats(scale=i + 1), at=float(i))
    assert history.samples[-1].at - history.samples[1].at <= 60
    for width, height in ((100, 24), (120, 40), (160, 30), (100, 20)):
        text = draw(history, width=width, height=height, limit=2048)
        assert_fits(text, width, height)
        assert panel_titles(text) == set(GROUPS)
    text = draw(history, limit=2048)
    # Everything fired in the last second: highlighted, and anything that did not fit is
    # counted, never silently lost.
    assert words(text, "online limit")[-1] == "◀"
    assert re.search(r"\+\d+ more", text), text
    assert words(text, "online")[:2] == ["online", "2048/2048"]


def test_defences_and_drops_show_only_what_fired():
    quiet = worst_stats()
    quiet["kicks"] = {k: 0 for k in quiet["kicks"]}
    quiet["kicks"]["flood"] = 3
    quiet["refused"] = {"online_limit": 0, "storm": 0}
    quiet["replies_dropped"] = {"stale": 0}
    quiet["send_queue_full"] = 0
    quiet["drops"] = {k: 0 for k in quiet["drops"]}
    quiet["drops"]["bad_crc"] = 2
    quiet["accept_errors"] = {"econnaborted": 0, "emfile": 0}
    quiet["malformed"] = quiet["stale_events"] = quiet["stale_requests"] = 0
    history = History()
    history.add(quiet, at=0.0)
    history.add(quiet, at=10.0)  # nothing moved for 10 s: no highlight
    text = draw(history)
    assert_fits(text)
    assert words(text, "flood kick") == ["flood", "kick", "3"]
    assert words(text, "bad CRC") == ["bad", "CRC", "2"]
    for hidden in ("online limit", "silence kick", "send stall", "CRC on empty", "EMFILE"):
        assert hidden not in text
    assert "◀" not in text
    assert "TestFlood" in text and "threadRecvProcFunc" in text  # footer: what is shown


def test_a_defence_is_highlighted_for_five_seconds_after_it_fires():
    history = History()
    base = {"kicks": {"flood": 0}}
    history.add(base, at=0.0)
    history.add({"kicks": {"flood": 1}}, at=1.0)
    assert recently_moved(history, "kicks.flood")
    assert words(draw(history), "flood kick") == ["flood", "kick", "1", "◀"]
    for t in range(2, 7):
        history.add({"kicks": {"flood": 1}}, at=float(t))
    assert not recently_moved(history, "kicks.flood")
    assert words(draw(history), "flood kick") == ["flood", "kick", "1"]


def test_none_fired_yet_names_what_is_armed():
    stats = {"online": 0, "refused": {"online_limit": 0, "storm": 0}, "pool": {"total": 4}}
    history = History()
    history.add(stats)
    (defences,) = [p for p in panels(history) if p.title == "Defences"]
    lines = [line.plain for line in defences.build(60, 6)]
    assert lines == ["none fired yet; armed: online limit, connect storm"]
    text = draw(stats)
    assert_fits(text)
    assert "none fired yet" in text
    assert "in use" not in text  # the pool's free and recycling counts are missing
    assert words(text, "total") == ["total", "4"]  # no bar: how it splits is unknown


def test_missing_keys_and_odd_values_degrade_gracefully():
    # The asyncio baseline has only what it counted so far; chapter 6's old "defences"
    # summary is ignored (the panel is computed from kicks, refused, replies_dropped).
    for stats in (
        {},
        {"online": 3},
        {"online": None, "accepted": "many", "pool": "n/a", "queues": {"send": 1.5}},
        {"defences": {"flood_kick": 4}, "kicks": {"flood": 4}, "online": 1},
    ):
        text = draw(stats)
        assert_fits(text)
        assert "Connections" in text
    assert "flood_kick" not in draw({"defences": {"flood_kick": 4}, "kicks": {"flood": 4}})


def test_small_terminals_drop_the_footer_then_cut_rows():
    history = History()
    history.add(worst_stats(), at=0.0)
    history.add(worst_stats(2), at=1.0)
    for height in (19, 16):
        text = draw(history, height=height)
        assert_fits(text, WIDTH, height)
        assert "C++:" not in text
    text = draw(history, width=60, height=24)
    assert_fits(text, 60, 24)


# -- the pieces ----------------------------------------------------------------------------


def test_value_follows_dotted_keys():
    stats = {"pool": {"free": 3}, "online": 2, "flag": True}
    assert value(stats, "pool.free") == 3
    assert value(stats, "online") == 2
    assert value(stats, "pool.total") is None
    assert value(stats, "online.x") is None
    assert value(stats, "flag") is None  # a bool is not a counter


def test_rate_is_the_difference_over_the_interval():
    history = History()
    history.add({"packets_in": 100}, at=10.0)
    assert rate(history, "packets_in") is None  # one snapshot: no rate yet
    history.add({"packets_in": 400}, at=12.0)
    assert rate(history, "packets_in") == 150.0
    history.add({"packets_in": 0}, at=13.0)  # a restarted server: never negative
    assert rate(history, "packets_in") == 0.0
    assert rate(history, "missing") is None


def test_sparkline_newest_on_the_right_scaled_to_the_top():
    points = [(float(t), float(t)) for t in range(60)]  # a ramp over the last minute
    line = sparkline(points, 10, now=60.0).plain
    assert len(line) == 10
    assert line[-1] == "█" and line[0] in "▁▂"
    assert list(line) == sorted(line, key="▁▂▃▄▅▆▇█".index)
    assert sparkline([], 5, now=60.0).plain == "     "
    assert sparkline([(59.0, 0.0)], 5, now=60.0).plain == "    ▁"  # zero: the baseline
    assert sparkline([(30.0, 1.0), (59.0, 1.0)], 4, now=60.0).plain == "  ██"  # no holes


def test_human_numbers_stay_short():
    assert [human(n) for n in (0, 7, 9999, 12_345, 123_456, 9_876_543)] == [
        "0",
        "7",
        "9999",
        "12.3k",
        "123k",
        "9.9M",
    ]
    assert human(2.5, decimals=True) == "2.5"
    assert human(None) == "-"


def test_panels_follow_the_keys():
    history = History()
    history.add({"online": 1, "packets_in": 1})
    assert [p.title.split(",")[0] for p in panels(history)] == [
        "Connections",
        "Throughput",
        "Drops",
    ]


# -- the real thing: python -m chapters.06_flood --dashboard in a terminal -------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def test_dashboard_in_a_100x24_pseudo_terminal(tmp_path: Path):
    conf = tmp_path / "dash.conf"
    conf.write_text(
        "ListenPort0 = 0\nUserDatabase = :memory:\nPasswordHashIterations = 1000\n"
        "worker_connections = 64\n",
        encoding="utf-8",
    )
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", HEIGHT, WIDTH, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env.update(TERM="xterm-256color", PYTHONIOENCODING="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chapters.06_flood", "--config", str(conf), "--dashboard"],
        cwd=ROOT,
        env=env,
        stdin=child,
        stdout=child,
        stderr=child,
        start_new_session=True,
    )
    os.close(child)
    output = bytearray()

    def read_until(pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = ANSI.sub("", output.decode("utf-8", "replace"))
            if re.search(pattern, text):
                return text
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    output.extend(os.read(main, 65536))
                except OSError:  # EIO: the child closed the terminal
                    break
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{ANSI.sub('', output.decode())}")

    try:
        text = read_until(r"up 0:00:0[2-9]", 30)  # a few redraws
        for title in GROUPS:
            assert f"╭─ {title}" in text
        assert words(text, "online")[:2] == ["online", "0/64"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        text = read_until("Goodbye", 10)
        assert "Traceback" not in text
        # The frame, as drawn: never wider than the terminal.
        frame = text[text.rindex("Chapter 6 (06_flood)") :]
        assert all(len(line) <= WIDTH for line in frame.splitlines())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.close(main)
