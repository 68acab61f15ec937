"""The course map (python -m tools.chapters map): its figures, and the targets it checks."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.conftest import CHAPTERS, ROOT
from tools import chapters, coursemap


def test_the_chapters_meet_every_target():
    """server.py sizes, functions of at most 50 lines, steps of at most 400 changed lines
    with at least 85 % of them in the chapter's subsystem."""
    assert coursemap.misses(ROOT / "chapters", CHAPTERS) == []


def _write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))


def test_a_step_counts_added_files_and_lines_naming_them_as_the_subsystem(tmp_path):
    _write(
        tmp_path / "01_a",
        {
            "server.py": """\
                class Server:
                    def run(self):
                        return 1
            """
        },
    )
    _write(
        tmp_path / "02_b",
        {
            "server.py": """\
                from .pool import Pool


                class Server:
                    def __init__(self):
                        self.things = Pool()

                    def run(self):
                        return 2  # reworded, names nothing new
            """,
            "pool.py": """\
                class Pool:
                    pass
            """,
        },
    )
    step = coursemap.step(tmp_path, "01_a", "02_b")
    assert {"pool", "Pool", "things"} <= step.subsystem_names
    assert step.by_file == {"pool.py": (2, 0), "server.py": (7, 1)}
    # pool.py (2), the import (1), __init__ naming Pool (3 lines), blank lines around it
    # fall in the module or class; "return 2" and "return 1" name nothing the step adds.
    assert step.other >= 2
    assert step.changed == 10
    assert step.subsystem == step.changed - step.other


def test_misses_name_the_target_and_the_figure(tmp_path):
    long_body = "\n".join(f"    x{i} = {i}" for i in range(60))
    _write(tmp_path / "01_a", {"server.py": f"def f():\n{long_body}\n"})
    problems = coursemap.misses(tmp_path, ["01_a"])
    assert problems == ["01_a/server.py: f has 61 lines (<= 50)"]


def test_map_command_prints_the_tables_and_checks(capsys):
    assert chapters.main(["map", "--check"]) == 0
    out = capsys.readouterr().out
    assert "Steps: changed .py lines" in out and "every target met" in out
