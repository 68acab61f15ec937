"""A map of the course in figures: how big each chapter is, and what each step changes.

``python -m tools.chapters map`` prints it; ``--check`` also holds the chapters to the
targets the course is built to (see :data:`TARGETS`) and exits 1 when one is missed.

For each chapter: its files and their sizes, and its longest function. For each step
from one chapter to the next: the ``.py`` lines changed (added plus removed; the
chapter's metadata file ``__init__.py`` is left out), where they fall (file, and the
function or class around each line), and how many belong to the subsystem the chapter
adds. A changed line *belongs to the subsystem* when

* it is in a file the chapter adds (``pool.py`` in chapter 3), or
* it, or the function or class around it, names something the chapter adds: one of the
  added modules, a name defined at their top level (``ConnectionPool``), a field the
  chapter adds to ``Connection`` (``generation``), or a server attribute holding one of
  those (``self.loop``).

Everything else (a renamed variable, a docstring that only rewords) counts as "other".
"""

from __future__ import annotations

import ast
import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

# What the course is built to, checked by ``map --check`` and by the test suite.
TARGETS = {
    "first_server_lines": 120,  # chapters/01_listen/server.py
    "last_server_lines": 350,  # the newest chapter's server.py
    "function_lines": 50,  # any function in any chapter
    "step_lines": 400,  # changed .py lines from one chapter to the next
    "step_subsystem_share": 0.85,  # of those, the share in the chapter's subsystem
}

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class FunctionSize:
    file: str
    name: str  # qualified: Server.on_accept
    lines: int


@dataclass
class ChapterSize:
    name: str
    files: dict[str, int]  # .py file -> lines
    longest: FunctionSize | None


@dataclass
class Step:
    before: str
    after: str
    by_file: dict[str, tuple[int, int]] = field(default_factory=dict)  # file -> (+, -)
    by_place: dict[str, int] = field(default_factory=dict)  # "server.py:on_accept" -> n
    subsystem: int = 0
    other: int = 0
    subsystem_names: set[str] = field(default_factory=set)

    @property
    def changed(self) -> int:
        return self.subsystem + self.other

    @property
    def share(self) -> float:
        return self.subsystem / self.changed if self.changed else 1.0


def _py_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.py") if p.name != "__init__.py")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def functions(source: str, file: str) -> list[FunctionSize]:
    """Every function and method with its length in lines, docstring included."""
    found: list[FunctionSize] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                found.append(FunctionSize(file, name, child.end_lineno - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(source), "")
    return found


def _places(source: str) -> list[tuple[int, int, str, str]]:
    """(first line, last line, qualified name, its source) of every def and class,
    innermost last, so the last match for a line number is the innermost place."""
    tree = ast.parse(source)
    lines = source.splitlines()
    places: list[tuple[int, int, str, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                text = "\n".join(lines[start - 1 : child.end_lineno])
                places.append((start, child.end_lineno or start, name, text))
                visit(child, f"{name}.")

    visit(tree, "")
    return places


def _place_of(places: list[tuple[int, int, str, str]], lineno: int) -> tuple[str, str]:
    found = ("(module)", "")
    for start, end, name, text in places:
        if start <= lineno <= end:
            found = (name, text)
    return found


def _top_level_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _slots(source: str) -> set[str]:
    """The ``__slots__`` of ``Connection`` in a connection.py."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == "Connection":
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in stmt.targets)
                    and isinstance(stmt.value, ast.Tuple)
                ):
                    return {e.value for e in stmt.value.elts if isinstance(e, ast.Constant)}
    return set()


def _holders(server_source: str, names: set[str]) -> set[str]:
    """Attributes ``self.x`` of the server assigned from an expression naming ``names``."""
    held = set()
    for node in ast.walk(ast.parse(server_source)):
        if isinstance(node, ast.Assign):
            value_words = set(_WORD.findall(ast.unparse(node.value)))
            if value_words & names:
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                        held.add(target.attr)
    return held


def subsystem_names(before: Path, after: Path) -> set[str]:
    """What the chapter in ``after`` adds, by name (see the module docstring)."""
    added = [f for f in _py_files(after) if not (before / f).exists()]
    names: set[str] = set()
    for file in added:
        names.add(file.removesuffix(".py"))
        names |= _top_level_names((after / file).read_text(encoding="utf-8"))
    if (after / "connection.py").exists():
        old = (before / "connection.py").read_text() if (before / "connection.py").exists() else ""
        names |= _slots((after / "connection.py").read_text()) - (_slots(old) if old else set())
    if (after / "server.py").exists():
        names |= _holders((after / "server.py").read_text(encoding="utf-8"), names)
    return names


def step(chapters_dir: Path, before: str, after: str) -> Step:
    a, b = chapters_dir / before, chapters_dir / after
    result = Step(before, after, subsystem_names=subsystem_names(a, b))
    names = result.subsystem_names
    for file in sorted(set(_py_files(a)) | set(_py_files(b))):
        old, new = _lines(a / file), _lines(b / file)
        if old == new:
            continue
        added_file = not old
        old_places = _places("\n".join(old)) if old else []
        new_places = _places("\n".join(new)) if new else []
        plus = minus = 0
        matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            changed = [(old, old_places, i) for i in range(i1, i2)]
            changed += [(new, new_places, j) for j in range(j1, j2)]
            minus += i2 - i1
            plus += j2 - j1
            for lines, places, index in changed:
                place, text = _place_of(places, index + 1)
                key = f"{file}:{place}"
                result.by_place[key] = result.by_place.get(key, 0) + 1
                words = set(_WORD.findall(lines[index])) | set(_WORD.findall(text))
                if added_file or words & names:
                    result.subsystem += 1
                else:
                    result.other += 1
        result.by_file[file] = (plus, minus)
    return result


def chapter_size(folder: Path) -> ChapterSize:
    files = {f: len(_lines(folder / f)) for f in _py_files(folder)}
    sizes = [size for f in files for size in functions((folder / f).read_text(encoding="utf-8"), f)]
    longest = max(sizes, key=lambda s: s.lines, default=None)
    return ChapterSize(folder.name, files, longest)


def all_functions(folder: Path) -> list[FunctionSize]:
    return [
        size
        for f in [*_py_files(folder), "__init__.py"]
        if (folder / f).exists()
        for size in functions((folder / f).read_text(encoding="utf-8"), f)
    ]


def misses(chapters_dir: Path, names: list[str]) -> list[str]:
    """Every target of :data:`TARGETS` the chapters miss, as sentences."""
    problems = []
    first = len(_lines(chapters_dir / names[0] / "server.py"))
    if first > TARGETS["first_server_lines"]:
        problems.append(f"{names[0]}/server.py has {first} lines (target <= 120)")
    last = len(_lines(chapters_dir / names[-1] / "server.py"))
    if last > TARGETS["last_server_lines"]:
        problems.append(f"{names[-1]}/server.py has {last} lines (target <= 350)")
    for name in names:
        for size in all_functions(chapters_dir / name):
            if size.lines > TARGETS["function_lines"]:
                problems.append(f"{name}/{size.file}: {size.name} has {size.lines} lines (<= 50)")
    for before, after in itertools.pairwise(names):
        s = step(chapters_dir, before, after)
        if s.changed > TARGETS["step_lines"]:
            problems.append(f"{before} -> {after}: {s.changed} changed lines (target <= 400)")
        if s.share < TARGETS["step_subsystem_share"]:
            problems.append(
                f"{before} -> {after}: {s.share:.0%} of the changed lines in the subsystem "
                "(target >= 85%)"
            )
    return problems


def render(chapters_dir: Path, names: list[str], details: bool = False):  # -> rich Group
    """The map as rich renderables (tables), for ``python -m tools.chapters map``."""
    from rich.console import Group
    from rich.table import Table

    sizes = Table(title="Chapters: .py lines per file (longest function)", title_justify="left")
    files = sorted({f for name in names for f in _py_files(chapters_dir / name)}, key=_file_order)
    sizes.add_column("chapter")
    for f in files:
        sizes.add_column(f.removesuffix(".py"), justify="right")
    sizes.add_column("total", justify="right")
    sizes.add_column("longest function")
    for name in names:
        size = chapter_size(chapters_dir / name)
        cells = [str(size.files[f]) if f in size.files else "" for f in files]
        longest = size.longest
        where = f"{longest.file}:{longest.name} ({longest.lines})" if longest else "-"
        sizes.add_row(name, *cells, str(sum(size.files.values())), where)

    steps = Table(
        title="Steps: changed .py lines (added + removed; __init__.py left out)",
        title_justify="left",
    )
    for column in ("step", "changed", "subsystem", "other", "where (file: +added -removed)"):
        steps.add_column(column, justify="left" if column in ("step", "where") else "right")
    parts = []
    for before, after in itertools.pairwise(names):
        s = step(chapters_dir, before, after)
        where = ", ".join(f"{f} +{p} -{m}" for f, (p, m) in s.by_file.items())
        steps.add_row(
            f"{before[:2]} -> {after[:2]}",
            str(s.changed),
            f"{s.subsystem} ({s.share:.0%})",
            str(s.other),
            where,
        )
        if details:
            places = Table(title=f"{before} -> {after}: changed lines by place", show_edge=False)
            places.add_column("file:function or class")
            places.add_column("lines", justify="right")
            for key, n in sorted(s.by_place.items(), key=lambda kv: -kv[1]):
                places.add_row(key, str(n))
            parts.append(places)
    return Group(sizes, steps, *parts)


def _file_order(name: str) -> tuple[int, str]:
    order = ["server.py", "listening.py", "connection.py", "eventloop.py", "pool.py"]
    return (order.index(name) if name in order else len(order), name)
