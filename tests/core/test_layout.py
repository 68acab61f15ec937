"""Which part of the repository may import which, and the course map on the repository
page (docs/repository.md) is today's.

The import rules, with their reasons on that page:

* ``common/`` imports nothing else of the repository: it is what every chapter shares,
  so it cannot depend on any one chapter, nor on what is run against them.
* a chapter imports ``common`` and its own modules (``from .pool import ...``), nothing
  else of the repository: not ``tools``, not ``tests``, not another chapter. It runs on
  its own, and its diff against the chapter before is the whole lesson.
* ``tools/`` imports ``common`` and ``tools``; it reaches a chapter only by name, through
  ``importlib`` (a chapter's folder, ``06_flood``, is not even a valid ``import`` name).
* ``docs/hooks/`` imports ``tools.chapters`` only.
* ``tests/`` may import anything.

``common`` and the chapters also need nothing outside the standard library but the
project's declared dependencies, unless the import is optional (inside a ``try`` that
catches ``ImportError``). Imports are read with :mod:`ast`, so an import inside a
function counts too, and so does ``importlib.import_module("...")`` with a constant name.
"""

from __future__ import annotations

import ast
import itertools
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools import coursemap
from tools.chapters import discover

ROOT = Path(__file__).resolve().parents[2]
# The repository's own top-level packages and folders of Python code.
OWN = frozenset({"common", "chapters", "tools", "tests", "docs", "exercises"})
PAGE = ROOT / "docs" / "repository.md"


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name ("" for a relative import that leaves the tree)
    line: int
    optional: bool  # inside a try whose handlers catch ImportError


def dependencies() -> frozenset[str]:
    """The import names of ``pyproject.toml``'s ``[project] dependencies``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = (re.match(r"[A-Za-z0-9_.-]+", dep).group(0) for dep in project["dependencies"])
    return frozenset(name.lower().replace("-", "_") for name in names)


_ALLOWED_OUTSIDE = sys.stdlib_module_names | dependencies() | {"__future__"}


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        caught = handler.type
        names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
        if caught is None or any(
            isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
            for n in names
        ):
            return True
    return False


def imports_in(source: str, package: str) -> list[Import]:
    """Every import in ``source``, a module of ``package`` (dotted), as absolute names."""
    tree = ast.parse(source)
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and _catches_import_error(node):
            optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found: list[Import] = []
    for node in ast.walk(tree):
        opt = id(node) in optional
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno, opt) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    found.append(Import("", node.lineno, opt))  # above the repository
                    continue
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append(Import(module, node.lineno, opt))
        elif isinstance(node, ast.Call) and _imports_by_name(node):
            found.append(Import(_constant_prefix(node.args[0]), node.lineno, opt))
    return found


def _imports_by_name(call: ast.Call) -> bool:
    """``importlib.import_module(NAME)`` or ``__import__(NAME)`` whose NAME starts with a
    constant (a name that starts with a variable tells nothing)."""
    func = call.func
    by_name = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id == "__import__"
    )
    return by_name and bool(call.args) and bool(_constant_prefix(call.args[0]))


def _constant_prefix(arg: ast.expr) -> str:
    """The module a name argument names as far as it is constant: ``"tools.client"``, or
    ``"chapters"`` for ``f"chapters.{name}"``; "" when it starts with a variable."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values:
        head = arg.values[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str):
            return head.value.rstrip(".")
    return ""


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def problems_in(path: str, source: str) -> list[str]:
    """What breaks the rules in the file at ``path`` (relative to the root, with ``/``)."""
    parts = path.removesuffix(".py").split("/")
    package = ".".join(parts[:-1])  # a module's package; for __init__.py, its own
    found: list[str] = []
    for imp in imports_in(source, package):
        where = f"{path}:{imp.line}: imports {imp.module or 'above the repository'!r}"
        why = _broken_rule(parts, source, imp) if imp.module else "(it leaves the repository)"
        if why:
            found.append(f"{where}: {why}")
    return found


def _broken_rule(parts: list[str], source: str, imp: Import) -> str | None:
    """Which rule ``imp``, in the file whose path is ``parts``, breaks, if any."""
    top, first = parts[0], imp.module.split(".")[0]
    outside = first not in OWN and first not in _ALLOWED_OUTSIDE and not imp.optional
    if top == "common":
        if first in OWN and first != "common":
            return "common imports nothing but common"
        return "not the standard library nor a declared dependency" if outside else None
    if top == "chapters":
        # A chapter's own package; chapters/__init__.py (the folder's) may import nothing.
        own = ".".join(parts[:2]) if len(parts) > 2 else None
        if first in OWN and first != "common" and not (own and _inside(imp.module, own)):
            return "a chapter imports only common and itself"
        return "not the standard library nor a declared dependency" if outside else None
    by_name = first == "chapters" and _is_by_name(source, imp)
    if top == "tools" and first in OWN and first not in ("common", "tools") and not by_name:
        return "tools reach chapters only through importlib"
    if top == "docs" and first in OWN and not _inside(imp.module, "tools.chapters"):
        return "the docs hooks import only tools.chapters"
    return None


def _is_by_name(source: str, imp: Import) -> bool:
    """The import is ``importlib.import_module("chapters...")``, not an import statement."""
    line = source.splitlines()[imp.line - 1]
    return "import_module(" in line or "__import__(" in line


def checked_files() -> list[Path]:
    folders = [ROOT / "common", ROOT / "chapters", ROOT / "tools", ROOT / "docs" / "hooks"]
    return sorted(
        p for folder in folders for p in folder.rglob("*.py") if "__pycache__" not in p.parts
    )


# -- the rules hold -----------------------------------------------------------------------


def test_every_part_imports_only_what_it_may():
    files = checked_files()
    assert any(p.parts[-3] == "chapters" for p in files), "no chapter found"
    problems = [
        problem
        for path in files
        for problem in problems_in(
            path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")
        )
    ]
    assert problems == [], "\n".join(problems)


def test_tools_reach_chapters_by_name():
    """The one sanctioned way from tools to a chapter is used (so the rule above is not
    vacuous): some tool imports a chapter with importlib."""
    by_name = [
        imp
        for path in (ROOT / "tools").rglob("*.py")
        for imp in imports_in(path.read_text(encoding="utf-8"), "tools")
        if imp.module.startswith("chapters")
    ]
    assert by_name


# -- the checker catches what it should ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "source", "wanted"),
    [
        ("common/x.py", "from tools.client import Client\n", "common imports nothing"),
        ("common/x.py", "import importlib\nimportlib.import_module('chapters.x')\n", "common"),
        ("common/x.py", "import importlib\nimportlib.import_module(f'tools.{x}')\n", "common"),
        ("common/x.py", "import numpy\n", "declared dependency"),
        ("chapters/06_flood/x.py", "from tools import progress\n", "only common and itself"),
        ("chapters/06_flood/x.py", "from tests.conftest import wait_until\n", "only common"),
        ("chapters/06_flood/x.py", "from ..c05 import timers\n", "only common and itself"),
        ("chapters/06_flood/x.py", "def f():\n    import tools.client\n", "only common"),
        ("chapters/06_flood/x.py", "from .... import x\n", "leaves the repository"),
        ("tools/x.py", "import chapters\n", "only through importlib"),
        ("chapters/__init__.py", "from chapters import x\n", "only common and itself"),
        ("docs/hooks/x.py", "import tools.client\n", "only tools.chapters"),
    ],
)
def test_a_broken_rule_is_reported(path: str, source: str, wanted: str):
    problems = problems_in(path, source)
    assert len(problems) == 1 and wanted in problems[0], problems


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("common/x.py", "import socket\nfrom rich.console import Console\nfrom .log import x\n"),
        ("chapters/06_flood/x.py", "from common.config import Config\nfrom .pool import P\n"),
        ("chapters/06_flood/x.py", "from sortedcontainers import SortedList\n"),
        (
            "chapters/06_flood/x.py",
            "try:\n    import setproctitle\nexcept ImportError:\n    x = 1\n",
        ),
        ("tools/x.py", "import importlib\nimportlib.import_module('chapters.06_flood')\n"),
        ("tools/x.py", "import importlib\nimportlib.import_module(f'chapters.{n}.server')\n"),
        ("common/x.py", "import importlib\nimportlib.import_module(f'{package}.server')\n"),
        ("tools/x.py", "from common.protocol import PING\nfrom tools.chapters import x\n"),
        ("docs/hooks/x.py", "def f():\n    import tools.chapters\n"),
        ("tests/x.py", "import chapters\nfrom tools import client\n"),
    ],
)
def test_what_is_allowed_passes(path: str, source: str):
    assert problems_in(path, source) == []


# -- the course map on docs/repository.md is today's ------------------------------------

MAP_START = "<!-- course-map: start (generated; tests/core/test_layout.py) -->"
MAP_END = "<!-- course-map: end -->"


def course_map_markdown() -> str:
    """The figures of ``python -m tools.chapters map`` as the page shows them."""
    names = [c.name for c in discover(ROOT)]
    folder = ROOT / "chapters"
    sizes = {n: coursemap.chapter_size(folder / n) for n in names}
    first_seen = {}
    for i, n in enumerate(names):
        for f in sizes[n].files:
            first_seen.setdefault(f, (i, f != "server.py", f))
    files = sorted(first_seen, key=lambda f: first_seen[f])
    short = [n[:2] for n in names]
    out = ["| file | " + " | ".join(short) + " |", "| --- |" + " ---: |" * len(names)]
    for f in files:
        cells = [str(sizes[n].files.get(f, "")) for n in names]
        out.append(f"| `{f}` | " + " | ".join(cells) + " |")
    totals = [str(sum(sizes[n].files.values())) for n in names]
    out += ["| total | " + " | ".join(totals) + " |", ""]
    out += ["| chapter | its longest function | lines |", "| --- | --- | ---: |"]
    for n in names:
        fn = sizes[n].longest
        out.append(f"| {n[:2]} | `{fn.file}`: `{fn.name}` | {fn.lines} |")
    out += ["", "| step | changed | in the subsystem | other | where (file: +added −removed) |"]
    out.append("| --- | ---: | ---: | ---: | --- |")
    for before, after in itertools.pairwise(names):
        s = coursemap.step(folder, before, after)
        where = ", ".join(f"`{f}` +{p} −{m}" for f, (p, m) in s.by_file.items())
        out.append(
            f"| {before[:2]} → {after[:2]} | {s.changed} | {s.subsystem} ({s.share:.0%}) "
            f"| {s.other} | {where} |"
        )
    out += ["", "| target | limit | today |", "| --- | ---: | --- |"]
    out.append(
        f"| `first_server_lines` | {coursemap.TARGETS['first_server_lines']} "
        f"| {sizes[names[0]].files['server.py']} (chapter {short[0]}'s `server.py`) |"
    )
    out.append(
        f"| `last_server_lines` | {coursemap.TARGETS['last_server_lines']} "
        f"| {sizes[names[-1]].files['server.py']} (chapter {short[-1]}'s `server.py`) |"
    )
    fn, at = max(((sizes[n].longest, n) for n in names), key=lambda pair: pair[0].lines)
    out.append(
        f"| `function_lines` | {coursemap.TARGETS['function_lines']} "
        f"| {fn.lines} (`{fn.name}` in chapter {at[:2]}) |"
    )
    steps = [coursemap.step(folder, a, b) for a, b in itertools.pairwise(names)]
    big = max(steps, key=lambda s: s.changed)
    out.append(
        f"| `step_lines` | {coursemap.TARGETS['step_lines']} "
        f"| {big.changed} ({big.before[:2]} → {big.after[:2]}) |"
    )
    low = min(steps, key=lambda s: s.share)
    out.append(
        f"| `step_subsystem_share` | {coursemap.TARGETS['step_subsystem_share']:.0%} "
        f"| {low.share:.0%} ({low.before[:2]} → {low.after[:2]}) |"
    )
    return "\n".join(out)


def test_the_course_map_on_the_repository_page_is_todays():
    page = PAGE.read_text(encoding="utf-8")
    assert MAP_START in page and MAP_END in page, f"{PAGE.name} has lost its course map"
    shown = page.split(MAP_START, 1)[1].split(MAP_END, 1)[0].strip()
    wanted = course_map_markdown()
    assert shown == wanted, (
        f"the chapters changed: replace what is between the course-map markers in "
        f"docs/repository.md with:\n\n{wanted}\n"
    )
