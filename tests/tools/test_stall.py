"""``python -m tools.stall``: one short bounded run that checks what it counts, never speed.

The run starts chapter 4 in a real subprocess with cheap hashing (1000 iterations) for
about a second and a half; the assertions are about counting (pings and logins were
completed and every latency was reported), not about how fast anything was.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from rich.console import Console

from tests.conftest import ROOT
from tools import stall
from tools.stall import StallResult, main, percentile, render, run_stall


def test_percentile_is_a_measured_value():
    samples = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(samples, 50) == 3.0
    assert percentile(samples, 99) == 5.0
    assert percentile(samples, 100) == 5.0
    assert percentile([7.0], 1) == 7.0
    assert percentile([], 50) is None


@pytest.mark.slow
def test_short_run_on_chapter_4_counts_pings_and_logins():
    seen: list[tuple[str, float]] = []
    result = run_stall(
        "04_sendqueue",
        duration=1.0,
        login_clients=2,
        iterations=1000,
        baseline=0.5,
        timeout=10,
        progress=lambda what, done: seen.append((what, done)),
    )
    assert result.chapter == "04_sendqueue"
    # The progress it reported: each phase in turn, the clock only going forward, to the
    # end of the run (baseline + duration).
    phases = [what for what, _ in seen]
    assert phases[0] == "04_sendqueue: starting the server"
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == [
        "04_sendqueue: starting the server",
        "04_sendqueue: registering one user",
        "04_sendqueue: baseline, pings alone",
        "04_sendqueue: 2 clients log in, one pings",
    ]
    done = [d for _, d in seen]
    assert done == sorted(done) and done[-1] == 1.5
    assert result.errors == []
    assert result.logins > 0 and len(result.login_ms) == result.logins
    assert result.pings > 0 and len(result.baseline_ms) > 0
    for p50, p99, top in (
        (result.ping(50), result.ping(99), result.ping(100)),
        (result.baseline(50), result.baseline(99), result.baseline(100)),
    ):
        assert p50 is not None and p99 is not None and top is not None
        assert 0 < p50 <= p99 <= top
    # The rendered table carries the same numbers.
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(render([result]))
    text = console.export_text()
    assert "04_sendqueue" in text
    assert f"│ logins completed          │ {result.logins:>12} │" in text
    assert f"│ pings completed           │ {result.pings:>12} │" in text


def test_render_side_by_side_and_errors_row():
    a = StallResult("03_pool", 5, 2, 600000, 4, logins=20, login_ms=[480.0], ping_ms=[489.0])
    b = StallResult("04_sendqueue", 5, 2, 600000, 4, logins=22, ping_ms=[5.2], errors=["x"])
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(render([a, b]))
    text = console.export_text()
    assert "│ ping p50 (ms)             │     489 │          5.2 │" in text
    assert "│ no logins: ping p50 (ms)  │       - │            - │" in text
    assert "│ errors                    │       0 │            1 │" in text


def _fake_run_stall(name, *, duration, baseline, progress, **_settings):
    """Reports like run_stall over a made-up run, without starting a server."""
    progress(f"{name}: baseline, pings alone", baseline / 2)
    progress(f"{name}: 2 clients log in, one pings", baseline + duration / 2)
    return StallResult(name, duration, 2, 1000, 4)


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "not-a-terminal"])
def test_progress_bar_names_the_run_and_is_silent_off_a_terminal(monkeypatch, terminal):
    monkeypatch.setattr(stall, "run_stall", _fake_run_stall)
    args = stall.build_parser().parse_args(["--compare", "03", "04", "--duration", "2"])
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=100)
    results = stall.run_all(["03_pool", "04_sendqueue"], args, console)
    assert [r.chapter for r in results] == ["03_pool", "04_sendqueue"]
    drawn = buffer.getvalue()
    if terminal:
        for text in ("03_pool: baseline, pings alone", "04_sendqueue: 2 clients log in", "left"):
            assert text in drawn
    else:
        assert drawn == ""  # CI logs stay clean


def test_unknown_chapter_is_one_line_and_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--chapter", "99"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no chapter '99'" in err and "Traceback" not in err


def test_help():
    done = subprocess.run(
        [sys.executable, "-m", "tools.stall", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    for option in ("--chapter", "--compare", "--duration", "--login-clients", "--iterations"):
        assert option in done.stdout
