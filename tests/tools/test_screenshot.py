"""``python -m tools.screenshot``: short bounded runs that check what the picture shows
(the chapter's groups, the defences its attacks meet) and that nothing is left running,
never how fast anything was."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import ROOT
from tests.core.test_dashboard import assert_fits, expected_groups, panel_titles, words
from tools.screenshot import capture, main


def _serving_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("serve-")]


@pytest.mark.slow
def test_chapter_6_under_load_shows_its_defences_firing():
    before = _serving_threads()
    shot = capture("06", seconds=4)
    assert shot.chapter == "06_flood"
    assert shot.errors == []
    text = shot.text
    assert_fits(text)
    features = importlib.import_module("chapters.06_flood").FEATURES
    assert panel_titles(text) == expected_groups(features)
    # What the attacks did, each seen in its group.
    assert words(text, "flood kick")[:2] == ["flood", "kick"]
    assert int(words(text, "online limit")[2]) >= 4  # 28 connections against a limit of 24
    assert words(text, "bad CRC")[:3] == ["bad", "CRC", "1"]
    assert words(text, "malformed close")[:3] == ["malformed", "close", "1"]
    # The SVG is one well-formed document, named for its chapter.
    root = ET.fromstring(shot.svg)
    assert root.tag.endswith("svg")
    assert "dashboard-06_flood" in shot.svg
    assert "python&#160;-m&#160;chapters.06_flood&#160;--dashboard" in shot.svg  # its title
    # Nothing left running: the server's thread is gone and its port is closed.
    assert _serving_threads() == before
    port = int(text.split("127.0.0.1:")[1].split()[0])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass


@pytest.mark.slow
def test_main_writes_one_svg_per_chapter(tmp_path, capsys):
    assert main(["1", "--seconds", "4", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01_listen.svg"]
    svg = (tmp_path / "01_listen.svg").read_text(encoding="utf-8")
    ET.fromstring(svg)
    out = capsys.readouterr()
    assert f"wrote {tmp_path / '01_listen.svg'}" in out.out
    assert out.err == ""  # not a terminal: no progress bar, no log lines


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["99"], "no chapter '99'"),
        (["--seconds", "1"], "--seconds must be 4-60, got 1"),
        (["--seconds", "x"], "invalid float value"),
    ],
)
def test_bad_arguments_are_one_line_and_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_help():
    done = subprocess.run(
        [sys.executable, "-m", "tools.screenshot", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    for option in ("CHAPTER", "--out", "--seconds", "--show"):
        assert option in done.stdout
