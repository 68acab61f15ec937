"""tools/mutate.py without running mutmut (CI does not install it): its table, the list of
equivalent mutants, and how it reads mutmut's answers.

The equivalents file is checked here against the code on every ``make test``, so an entry
whose line was edited away fails in CI, not only at the next ``make mutate``.
"""

from __future__ import annotations

import ast
import tomllib

import pytest

from tools import mutate
from tools.mutate import (
    MODULES,
    ROOT,
    Change,
    change_from_diff,
    function_name,
    parse_results,
    read_equivalents,
    strip_comment,
)


def test_every_row_names_an_existing_module_and_existing_tests():
    assert MODULES, "the table is empty"
    for module, tests in MODULES.items():
        assert (ROOT / module).is_file(), module
        assert module.endswith(".py")
        paths = test_paths(tests)
        assert paths, f"{module} has no tests"
        for selection in paths:
            path = selection.split("::")[0]
            assert (ROOT / path).exists(), f"{module}: {selection} does not exist"


def test_paths(args: tuple[str, ...]) -> list[str]:
    """The test files and folders among a row's pytest arguments (options such as
    ``-m unit`` and ``-k 07_processes`` and their values left out)."""
    paths, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("-m", "-k"):
            skip = True
        elif not arg.startswith("-"):
            paths.append(arg)
    return paths


test_paths.__test__ = False  # type: ignore[attr-defined]  # a helper, despite the name


def test_chapter_rows_select_the_newest_chapters_unit_tests():
    """A row for a chapter module names that chapter in its -k, and every such row is the
    newest chapter's (older chapters hold copies or older versions of the same files)."""
    chapters = sorted(p.name for p in (ROOT / "chapters").iterdir() if p.name[:2].isdigit())
    for module, tests in MODULES.items():
        if module.startswith("chapters/"):
            chapter = module.split("/")[1]
            assert chapter == chapters[-1], module
            assert tests[tests.index("-k") + 1] == chapter, module
            assert tests[tests.index("-m") + 1] == "unit", module


def function_lines(module: str, function: str) -> list[str]:
    """The lines of ``function`` (``name`` or ``Class.method``) in ``module``, trimmed and
    without inline comments, as the tool quotes them."""
    source = (ROOT / module).read_text(encoding="utf-8")
    tree = ast.parse(source)
    *classes, name = function.split(".")
    scope: list[ast.stmt] = tree.body
    for cls in classes:
        scope = next(n for n in scope if isinstance(n, ast.ClassDef) and n.name == cls).body
    node = next(
        n for n in scope if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name
    )
    lines = source.splitlines()[node.lineno - 1 : node.end_lineno]
    return [strip_comment(line.strip()) for line in lines]


EQUIVALENTS = read_equivalents()


def test_the_equivalents_file_parses_and_has_entries():
    assert EQUIVALENTS
    assert all(e.why for e in EQUIVALENTS)
    changes = [e.change for e in EQUIVALENTS]
    assert len(changes) == len(set(changes)), "an equivalent is listed twice"


@pytest.mark.parametrize("entry", EQUIVALENTS, ids=lambda e: f"{e.change.module}:{e.line}")
def test_every_equivalent_quotes_a_line_of_its_function(entry):
    """The quoted 'before' lines are still in the function they name: an edit that
    removes them makes the entry stale, and this says so without running mutmut."""
    change = entry.change
    assert change.module in MODULES, f"{change.module} is not in the MODULES table"
    lines = function_lines(change.module, change.function)
    for before in change.before.split(" ⏎ "):
        assert before in lines, f"line {entry.line}: {before!r} not in {change.function}"
    assert change.before != change.after


def test_read_equivalents_needs_an_argument_and_a_module(tmp_path):
    path = tmp_path / "eq.md"
    path.write_text("## common/x.py\n\n- `f`: `a = 1` → `a = 2`\n  Never read.\n")
    [entry] = read_equivalents(path)
    assert entry.change == Change("common/x.py", "f", "a = 1", "a = 2")
    assert (entry.why, entry.line) == ("Never read.", 3)
    path.write_text("## common/x.py\n\n- `f`: `a = 1` → `a = 2`\n\n")
    with pytest.raises(ValueError, match=r"eq\.md:3: an equivalent needs its argument"):
        read_equivalents(path)
    path.write_text("- `f`: `a = 1` → `a = 2`\n  Never read.\n")
    with pytest.raises(ValueError, match=r"eq\.md:1: expected"):
        read_equivalents(path)
    assert read_equivalents(tmp_path / "absent.md") == []


@pytest.mark.parametrize(
    "code, expected",
    [
        ("x = 0  # a comment", "x = 0"),
        ('s = "a  # not a comment"', 's = "a  # not a comment"'),
        ('s = "a  # b"  # c', 's = "a  # b"'),
        ("plain", "plain"),
    ],
)
def test_strip_comment(code, expected):
    assert strip_comment(code) == expected


def test_function_names_as_a_reader_writes_them():
    assert function_name("common.protocol.x_crc32__mutmut_1", "common/protocol.py") == "crc32"
    assert function_name("common.protocol.x__fixed__mutmut_12", "common/protocol.py") == "_fixed"
    assert (
        function_name("common.protocol.xǁPacketParserǁfeed__mutmut_3", "common/protocol.py")
        == "PacketParser.feed"
    )
    assert (
        function_name(
            "chapters.06_flood.flood.xǁFloodDetectorǁcheck__mutmut_2", "chapters/06_flood/flood.py"
        )
        == "FloodDetector.check"
    )


def test_change_from_a_mutmut_diff():
    diff = """# common.protocol.xǁPacketParserǁfeed__mutmut_34: survived
--- common/protocol.py
+++ common/protocol.py
@@ -21,7 +21,7 @@
         if length == HEADER_LEN:
-        elif length < HEADER_LEN or length > PKG_MAX_ACCEPTED:
+        elif length <= HEADER_LEN or length > PKG_MAX_ACCEPTED:
             # C++ mirror: drop the 8 header bytes and restart at the next byte.
"""
    change = change_from_diff(
        "common.protocol.xǁPacketParserǁfeed__mutmut_34", "common/protocol.py", diff
    )
    assert change == Change(
        "common/protocol.py",
        "PacketParser.feed",
        "elif length < HEADER_LEN or length > PKG_MAX_ACCEPTED:",
        "elif length <= HEADER_LEN or length > PKG_MAX_ACCEPTED:",
    )


def test_parse_results():
    text = (
        "    common.config.x__is_listen_port__mutmut_1: killed\n"
        "    common.config.xǁConfigǁload__mutmut_21: survived\n"
        "some other line: not a mutant\n"
    )
    assert parse_results(text) == {
        "common.config.x__is_listen_port__mutmut_1": "killed",
        "common.config.xǁConfigǁload__mutmut_21": "survived",
    }


def test_list_and_bad_arguments(capsys):
    assert mutate.main(["--list"]) == 0
    out = capsys.readouterr().out
    for module in MODULES:
        assert module in out
    assert mutate.main(["common/nope.py"]) == 2
    assert "not in the MODULES table: common/nope.py" in capsys.readouterr().err
    assert mutate.main(["--jobs", "0"]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["common/config.py", "chapters/06_flood/flood.py"])
def test_prepare_writes_a_config_for_one_module(tmp_path, module):
    """The scratch folder holds the packages, the tests and a pyproject.toml whose
    [tool.mutmut] table mutates that module alone, against that row's tests."""
    work = tmp_path / "work"
    mutate.prepare(module, ("tests/core/test_config.py",), work)
    for name in mutate.COPIED:
        assert (work / name).exists(), name
    assert not list(work.rglob("__pycache__"))
    data = tomllib.loads((work / "pyproject.toml").read_text(encoding="utf-8"))
    config = data["tool"]["mutmut"]
    assert config["only_mutate"] == [module]
    assert set(config["source_paths"]) == {"common", "chapters"}
    assert config["pytest_add_cli_args_test_selection"] == ["tests/core/test_config.py"]
    assert (
        data["tool"]["pytest"]
        == tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]
    )  # the project's own pytest settings still apply
    assert (work / module).read_bytes() == (ROOT / module).read_bytes()
