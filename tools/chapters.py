"""Chapters are snapshots: list them, check their lineage, carry fixes forward, diff them.

``python -m tools.chapters --help`` for the command line.

Every chapter folder is a complete server. Chapter N's folder is chapter N-1's folder with
the files named in its ``CHANGES`` edited, the files named in its ``ADDS`` new, and every
other file byte-identical (GUIDE.md section 4). That duplication is what makes
``diff 02 03`` show exactly what chapter 3 teaches, so it is kept honest here:

* ``check`` fails on any difference a chapter does not declare, and on any declaration
  that is not true;
* ``forward`` copies a fix from one chapter into the later chapters that carry the file
  unchanged, and stops at the first chapter that changes it on purpose;
* ``diff`` prints what one chapter changes relative to another (the docs pages show the
  same diff, generated at build time by ``docs/hooks/chapter_diff.py``).

Every function takes the repository root as its first argument, so the tests run them on
a fake chapters tree in a temporary directory. Chapter metadata is read from
``__init__.py`` statically (with :mod:`ast`) so that checking a chapter never imports it.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
CHAPTER_NAME = re.compile(r"(\d\d)_[a-z0-9_]+")
IGNORED_DIRS = frozenset({"__pycache__"})
IGNORED_SUFFIXES = frozenset({".pyc", ".pyo"})


# ----------------------------------------------------------------------------------------
# Reading chapters
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chapter:
    """One chapter folder and what its ``__init__.py`` declares."""

    name: str  # "02_epoll"
    path: Path
    title: str = ""
    doc: str = ""
    features: frozenset[str] = frozenset()
    adds: frozenset[str] = frozenset()
    changes: frozenset[str] = frozenset()
    errors: tuple[str, ...] = ()  # metadata that could not be read

    @property
    def number(self) -> str:
        return self.name[:2]

    def files(self) -> set[str]:
        return chapter_files(self.path)


def chapter_files(folder: Path) -> set[str]:
    """Every file under ``folder`` as a relative POSIX path, without bytecode caches."""
    found: set[str] = set()
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part in IGNORED_DIRS for part in rel.parts) or path.suffix in IGNORED_SUFFIXES:
            continue
        if path.is_file():
            found.add(rel.as_posix())
    return found


def _literal(node: ast.expr, env: dict[str, object]) -> object:
    """Evaluate the few expression forms chapter metadata uses: strings, numbers, set,
    list and tuple displays, ``frozenset(...)``/``set(...)``, ``a | b`` and names already
    assigned in the same file. Anything else raises ``ValueError``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float):
        return node.value
    if isinstance(node, ast.Set | ast.List | ast.Tuple):
        return frozenset(_literal(elt, env) for elt in node.elts)  # type: ignore[misc]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("frozenset", "set")
        and not node.keywords
        and len(node.args) <= 1
    ):
        return frozenset(_literal(node.args[0], env)) if node.args else frozenset()  # type: ignore[call-overload]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _literal(node.left, env) | _literal(node.right, env)  # type: ignore[operator]
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    raise ValueError(f"not a literal: {ast.unparse(node)}")


def _read_metadata(init: Path) -> dict[str, object]:
    """Module-level assignments of ``init``, evaluated statically where possible; if the
    file computes its metadata in some other way, it is executed on its own instead."""
    source = init.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(init))
    env: dict[str, object] = {"__doc__": ast.get_docstring(tree) or ""}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = stmt.target, stmt.value
        else:
            continue
        if isinstance(target, ast.Name):
            try:
                env[target.id] = _literal(value, env)
            except ValueError:
                return runpy.run_path(str(init), run_name=f"chapter_{init.parent.name}")
    return env


def load_chapter(path: Path) -> Chapter:
    """Read one chapter folder; problems reading the metadata end up in ``errors``."""
    init = path / "__init__.py"
    errors: list[str] = []
    meta: dict[str, object] = {}
    if not init.is_file():
        errors.append("has no __init__.py")
    else:
        try:
            meta = _read_metadata(init)
        except Exception as exc:  # a syntax error in a half-written chapter, say
            errors.append(f"cannot read __init__.py: {exc}")
    sets: dict[str, frozenset[str]] = {}
    for key in ("ADDS", "CHANGES", "FEATURES"):
        value = meta.get(key)
        if value is None:
            if meta or not errors:
                errors.append(f"__init__.py does not define {key}")
            value = frozenset()
        elif not isinstance(value, frozenset | set | list | tuple) or not all(
            isinstance(item, str) for item in value
        ):
            errors.append(f"{key} must be a set of strings, got {value!r}")
            value = frozenset()
        sets[key] = frozenset(value)
    return Chapter(
        name=path.name,
        path=path,
        title=str(meta.get("TITLE", path.name)),
        doc=str(meta.get("__doc__") or ""),
        features=sets["FEATURES"],
        adds=sets["ADDS"],
        changes=sets["CHANGES"],
        errors=tuple(errors),
    )


def discover(root: Path = ROOT) -> list[Chapter]:
    """Every ``chapters/NN_name`` folder under ``root``, in order."""
    folder = root / "chapters"
    if not folder.is_dir():
        return []
    return [
        load_chapter(path)
        for path in sorted(folder.iterdir())
        if path.is_dir() and CHAPTER_NAME.fullmatch(path.name)
    ]


def resolve(root: Path, ref: str, chapters: list[Chapter] | None = None) -> Chapter:
    """Find a chapter by number (``2``, ``02``), full name (``02_epoll``) or folder
    (``chapters/02_epoll``). Raises ``LookupError`` naming the chapters that exist."""
    chapters = discover(root) if chapters is None else chapters
    name = Path(ref.rstrip("/")).name
    for chapter in chapters:
        if name == chapter.name or (name.isdigit() and int(name) == int(chapter.number)):
            return chapter
    known = ", ".join(c.name for c in chapters) or "none"
    raise LookupError(f"no chapter {ref!r} (chapters: {known})")


def previous(root: Path, name: str, chapters: list[Chapter] | None = None) -> Chapter | None:
    """The chapter before ``name``, or None for the first one."""
    chapters = discover(root) if chapters is None else chapters
    chapter = resolve(root, name, chapters)
    index = [c.name for c in chapters].index(chapter.name)
    return chapters[index - 1] if index > 0 else None


# ----------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One lineage problem. ``kind`` is stable (tests match on it); ``message`` says what
    to do about it."""

    chapter: str
    kind: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"chapters/{self.chapter}/{self.path}" if self.path else f"chapters/{self.chapter}"
        return f"{where}: {self.message}"


# The kinds of problem, for reference (and for the tests).
UNDECLARED_CHANGE = "undeclared-change"  # differs from the previous chapter, not in CHANGES
UNDECLARED_ADD = "undeclared-add"  # new in this chapter, not in ADDS
IDENTICAL_CHANGE = "identical-change"  # in CHANGES but byte-identical to the previous one
ADD_EXISTED = "add-existed"  # in ADDS but the previous chapter already has it
CHANGE_IS_NEW = "change-is-new"  # in CHANGES but the previous chapter does not have it
MISSING = "missing"  # the previous chapter has it, this one does not
NOT_FOUND = "not-found"  # named in ADDS or CHANGES, but no such file here
BOTH = "added-and-changed"  # named in both ADDS and CHANGES
METADATA = "metadata"  # __init__.py missing or unreadable, or a duplicate chapter number


def check_pair(prev: Chapter | None, cur: Chapter) -> list[Problem]:
    """Problems in ``cur``'s declarations relative to ``prev`` (None: the first chapter,
    which must declare every file it has as added)."""
    problems = [Problem(cur.name, METADATA, "", error) for error in cur.errors]
    files = cur.files()
    before = prev.files() if prev is not None else set()
    prev_label = prev.name if prev is not None else "no previous chapter"
    prev_path = prev.path if prev is not None else cur.path  # unused for the first chapter

    def report(kind: str, path: str, message: str) -> None:
        problems.append(Problem(cur.name, kind, path, message))

    for path in sorted(cur.adds & cur.changes):
        report(BOTH, path, "is in both ADDS and CHANGES; a file is one or the other")
    for path in sorted(cur.adds | cur.changes):
        if path not in files:
            which = "ADDS" if path in cur.adds else "CHANGES"
            report(NOT_FOUND, path, f"is named in {which} but does not exist")
    for path in sorted(before - files):
        report(MISSING, path, f"exists in {prev_label} but is missing here")
    for path in sorted(files - before):
        if path not in cur.adds:
            report(UNDECLARED_ADD, path, f"is new ({prev_label} has no such file); add it to ADDS")
    for path in sorted(cur.adds & before):
        report(ADD_EXISTED, path, f"is in ADDS but {prev_label} already has it; use CHANGES")
    for path in sorted((cur.changes - cur.adds) & (files - before)):
        report(CHANGE_IS_NEW, path, f"is in CHANGES but {prev_label} has no such file; use ADDS")
    for path in sorted(files & before):
        same = (cur.path / path).read_bytes() == (prev_path / path).read_bytes()
        if not same and path not in cur.changes:
            report(
                UNDECLARED_CHANGE,
                path,
                f"differs from {prev_label} but is not in CHANGES "
                f"(declare it, or carry the fix forward: python -m tools.chapters forward "
                f"chapters/{prev_label}/{path})",
            )
        elif same and path in cur.changes:
            report(IDENTICAL_CHANGE, path, f"is in CHANGES but identical to {prev_label}")
    return problems


def check(root: Path = ROOT, chapters: list[Chapter] | None = None) -> list[Problem]:
    """Every lineage problem of every chapter under ``root`` (empty list: all honest)."""
    chapters = discover(root) if chapters is None else chapters
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for index, chapter in enumerate(chapters):
        if chapter.number in seen:
            problems.append(
                Problem(
                    chapter.name,
                    METADATA,
                    "",
                    f"has the same number as {seen[chapter.number]}; numbers must be unique",
                )
            )
        seen[chapter.number] = chapter.name
        problems.extend(check_pair(chapters[index - 1] if index else None, chapter))
    return problems


# ----------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------


@dataclass
class ForwardReport:
    source: str  # chapters/02_epoll/listening.py
    copied: list[str] = field(default_factory=list)  # later chapters that got the new file
    up_to_date: list[str] = field(default_factory=list)  # already had it
    stopped: str | None = None  # why forwarding stopped before the last chapter
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False


def locate(root: Path, file: str, from_chapter: str | None = None) -> tuple[Chapter, str]:
    """Split ``chapters/02_epoll/listening.py`` (or ``listening.py`` with ``from_chapter``
    ``02``) into the chapter and the path inside it."""
    chapters = discover(root)
    path = Path(file)
    if path.is_absolute():
        path = path.resolve().relative_to(root.resolve())
    parts = path.parts
    if len(parts) >= 3 and parts[0] == "chapters" and CHAPTER_NAME.fullmatch(parts[1]):
        chapter = resolve(root, parts[1], chapters)
        if from_chapter is not None and resolve(root, from_chapter, chapters) != chapter:
            raise LookupError(f"{file} is not in chapter {from_chapter}")
        rel = Path(*parts[2:]).as_posix()
    elif from_chapter is not None:
        chapter, rel = resolve(root, from_chapter, chapters), path.as_posix()
    else:
        raise LookupError(f"{file}: give a path like chapters/02_epoll/listening.py, or --from")
    if not (chapter.path / rel).is_file():
        raise LookupError(f"chapters/{chapter.name}/{rel} does not exist")
    return chapter, rel


def old_versions(root: Path, chapter: Chapter, rel: str, rev: str = "HEAD") -> list[bytes]:
    """What the file looked like before the fix: the committed version at ``rev`` (the fix
    is not committed yet), and, when ``chapter`` does not declare the file changed, the
    previous chapter's copy (which it is meant to equal)."""
    new = (chapter.path / rel).read_bytes()
    olds: list[bytes] = []
    try:
        shown = subprocess.run(
            ["git", "-C", str(root), "show", f"{rev}:./chapters/{chapter.name}/{rel}"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if shown.returncode == 0 and shown.stdout != new:
            olds.append(shown.stdout)
    except (OSError, subprocess.TimeoutExpired):
        pass  # no git: the previous chapter's copy is all we have
    if rel not in chapter.adds | chapter.changes:
        prev = previous(root, chapter.name)
        if prev is not None and (prev.path / rel).is_file():
            old = (prev.path / rel).read_bytes()
            if old != new and old not in olds:
                olds.append(old)
    return olds


def forward(
    root: Path,
    file: str,
    *,
    from_chapter: str | None = None,
    old: Iterable[bytes] | None = None,
    rev: str = "HEAD",
    dry_run: bool = False,
) -> ForwardReport:
    """Copy ``file`` into each later chapter whose copy is the old version, in order,
    stopping at the first chapter that declares the file added or changed (its copy differs
    on purpose: the fix has to be merged there by hand) or whose copy is neither old nor
    new (someone edited it: it is not overwritten).

    ``old`` overrides the versions :func:`old_versions` finds."""
    chapter, rel = locate(root, file, from_chapter)
    chapters = discover(root)
    new = (chapter.path / rel).read_bytes()
    olds = list(old) if old is not None else old_versions(root, chapter, rel, rev)
    report = ForwardReport(f"chapters/{chapter.name}/{rel}", dry_run=dry_run)
    if rel not in chapter.adds | chapter.changes:
        prev = previous(root, chapter.name, chapters)
        if (
            prev is not None
            and (prev.path / rel).is_file()
            and (prev.path / rel).read_bytes() != new
        ):
            origin = _introduced_in(chapters, chapter, rel)
            report.notes.append(
                f"{chapter.name} does not declare {rel} changed, so the fix belongs in "
                f"chapters/{origin}/{rel}; put it there and forward from there"
            )
    later = chapters[[c.name for c in chapters].index(chapter.name) + 1 :]
    for target in later:
        dest = target.path / rel
        if rel in target.adds | target.changes:
            report.stopped = (
                f"{target.name} declares {rel} changed: merge the fix into "
                f"chapters/{target.name}/{rel} by hand, then forward from there"
            )
            break
        if not dest.is_file():
            report.stopped = f"{target.name} has no {rel}"
            break
        current = dest.read_bytes()
        if current == new:
            report.up_to_date.append(target.name)
            continue
        if current not in olds:
            hint = "" if olds else " (no old version found: is the fix committed? try --rev HEAD~1)"
            report.stopped = (
                f"chapters/{target.name}/{rel} is neither the old nor the new version: "
                f"not overwritten{hint}"
            )
            break
        if not dry_run:
            dest.write_bytes(new)
            shutil.copymode(chapter.path / rel, dest)
        report.copied.append(target.name)
    return report


def _introduced_in(chapters: list[Chapter], chapter: Chapter, rel: str) -> str:
    """The last chapter up to ``chapter`` that added or changed ``rel``."""
    origin = chapter.name
    for c in chapters:
        if rel in c.adds | c.changes:
            origin = c.name
        if c.name == chapter.name:
            break
    return origin


# ----------------------------------------------------------------------------------------
# diff
# ----------------------------------------------------------------------------------------


def _lines(path: Path) -> list[str] | None:
    """The file's lines, or None for a binary file."""
    try:
        return path.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


class FileDiff(NamedTuple):
    """One file's part of a chapter diff."""

    path: str  # relative to the chapter folder
    status: str  # "added", "removed", "changed"
    old_label: str  # chapters/01_listen/server.py, or /dev/null
    new_label: str
    text: str  # unified diff, "---"/"+++" header included


def diff_files(root: Path, a: str, b: str, context: int = 3) -> list[FileDiff]:
    """Unified diff of chapter ``a``'s folder against chapter ``b``'s, one entry per file
    that differs, in path order. Paths are shown relative to ``root``."""
    chapters = discover(root)
    first, second = resolve(root, a, chapters), resolve(root, b, chapters)
    files_a, files_b = first.files(), second.files()
    diffs: list[FileDiff] = []
    for rel in sorted(files_a | files_b):
        in_a, in_b = rel in files_a, rel in files_b
        label_a = f"chapters/{first.name}/{rel}" if in_a else "/dev/null"
        label_b = f"chapters/{second.name}/{rel}" if in_b else "/dev/null"
        path_a, path_b = first.path / rel, second.path / rel
        if in_a and in_b and path_a.read_bytes() == path_b.read_bytes():
            continue
        status = "changed" if in_a and in_b else "added" if in_b else "removed"
        old = _lines(path_a) if in_a else []
        new = _lines(path_b) if in_b else []
        if old is None or new is None:
            text = f"Binary files {label_a} and {label_b} differ\n"
        else:
            text = "".join(
                line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                for line in difflib.unified_diff(old, new, label_a, label_b, n=context)
            )
        diffs.append(FileDiff(rel, status, label_a, label_b, text))
    return diffs


def diff_chapters(root: Path, a: str, b: str, context: int = 3) -> str:
    """The whole diff of chapter ``a`` against chapter ``b`` as one text (empty when the
    folders are identical)."""
    return "".join(d.text for d in diff_files(root, a, b, context))


def chapter_diff(root: Path, name: str, context: int = 3) -> str | None:
    """The diff of chapter ``name`` against the chapter before it; None for the first."""
    chapters = discover(root)
    prev = previous(root, name, chapters)
    if prev is None:
        return None
    return diff_chapters(root, prev.name, resolve(root, name, chapters).name, context)


def file_table(root: Path, name: str) -> list[tuple[str, str]]:
    """``(path, status)`` for every file of chapter ``name``: status is ``added``,
    ``changed`` or ``unchanged`` (relative to the previous chapter), in path order."""
    chapter = resolve(root, name)
    rows = []
    for rel in sorted(chapter.files()):
        if rel in chapter.adds:
            status = "added"
        elif rel in chapter.changes:
            status = "changed"
        else:
            status = "unchanged"
        rows.append((rel, status))
    return rows


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def _names(items: Iterable[str]) -> str:
    return ", ".join(sorted(items)) or "-"


def _cmd_list(root: Path, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Chapters", title_justify="left")
    for column in ("chapter", "title", "features (new in bold)", "adds", "changes"):
        table.add_column(column, overflow="fold")
    before: frozenset[str] = frozenset()
    for chapter in discover(root):
        new = chapter.features - before
        features = ", ".join(f"[bold]{f}[/]" if f in new else f for f in sorted(chapter.features))
        table.add_row(
            chapter.name, chapter.title, features, _names(chapter.adds), _names(chapter.changes)
        )
        before = chapter.features
    Console().print(table)
    return 0


def _cmd_check(root: Path, args: argparse.Namespace) -> int:
    chapters = discover(root)
    problems = check(root, chapters)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} lineage problem(s) in {len(chapters)} chapter(s)", file=sys.stderr)
        return 1
    print(f"lineage ok: {len(chapters)} chapter(s), {' -> '.join(c.number for c in chapters)}")
    return 0


def _cmd_forward(root: Path, args: argparse.Namespace) -> int:
    try:
        report = forward(
            root, args.file, from_chapter=args.from_chapter, rev=args.rev, dry_run=args.dry_run
        )
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verb = "would copy" if report.dry_run else "copied"
    rel = report.source.split("/", 2)[2]
    for note in report.notes:
        print(f"note: {note}")
    for name in report.copied:
        print(f"{verb} {report.source} -> chapters/{name}/{rel}")
    for name in report.up_to_date:
        print(f"up to date: chapters/{name}/{rel}")
    if report.stopped:
        print(f"stopped: {report.stopped}")
    if not report.copied and not report.stopped:
        print("nothing to carry forward")
    return 0


def _cmd_diff(root: Path, args: argparse.Namespace) -> int:
    try:
        text = diff_chapters(root, args.a, args.b, args.context)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from rich.console import Console

    console = Console()
    if console.is_terminal and text:
        from rich.syntax import Syntax

        console.print(Syntax(text, "diff", background_color="default", word_wrap=True))
    else:
        sys.stdout.write(text)
    return 0


def _cmd_map(root: Path, args: argparse.Namespace) -> int:
    from rich.console import Console

    from tools import coursemap

    names = [c.name for c in discover(root)]
    chapters_dir = root / "chapters"
    Console().print(coursemap.render(chapters_dir, names, details=args.details))
    if args.check:
        problems = coursemap.misses(chapters_dir, names)
        for problem in problems:
            print(f"target missed: {problem}")
        if problems:
            return 1
        print("every target met")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.chapters",
        description="Chapters are snapshots: each folder is the previous one plus the files "
        "its __init__.py declares in ADDS (new) and CHANGES (edited).",
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="repository root (default: %(default)s)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="chapters with title, features, adds and changes")
    sub.add_parser(
        "check",
        help="verify every chapter's lineage; print the problems, exit 1 if there are any",
    )
    fwd = sub.add_parser(
        "forward",
        help="carry a fixed file forward into the later chapters that carry it unchanged",
        description="Copy FILE into each later chapter whose copy is the old version (the "
        "committed one, or the previous chapter's copy), stopping at the first chapter that "
        "declares the file changed.",
    )
    fwd.add_argument("file", metavar="FILE", help="e.g. chapters/02_epoll/listening.py")
    fwd.add_argument(
        "--from",
        dest="from_chapter",
        metavar="NN",
        help="the chapter FILE is in, when FILE is relative to the chapter folder "
        "(e.g. 'forward listening.py --from 02')",
    )
    fwd.add_argument(
        "--rev", default="HEAD", help="git revision holding the old version (default: HEAD)"
    )
    fwd.add_argument(
        "-n", "--dry-run", action="store_true", help="print what would be copied, copy nothing"
    )
    dif = sub.add_parser(
        "diff",
        help="unified diff of chapter A's folder against chapter B's",
        description="Unified diff of two chapter folders (e.g. 'diff 01 02'), highlighted on "
        "a terminal, plain when piped.",
    )
    dif.add_argument("a", metavar="A", help="chapter number or name, e.g. 01 or 01_listen")
    dif.add_argument("b", metavar="B", help="chapter number or name, e.g. 02 or 02_epoll")
    dif.add_argument(
        "-U", "--context", type=int, default=3, metavar="N", help="lines of context (default: 3)"
    )
    mp = sub.add_parser(
        "map",
        help="the course in figures: file and function sizes, what each step changes",
        description="File sizes and the longest function of every chapter; for every step, "
        "the .py lines it changes (__init__.py left out), by file, and how many belong to "
        "the subsystem the chapter adds (see tools/coursemap.py for the rule).",
    )
    mp.add_argument(
        "--details", action="store_true", help="also list each step's changes by function"
    )
    mp.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if a target is missed (server.py sizes, functions <= 50 lines, steps "
        "<= 400 changed lines, >= 85%% of them in the subsystem)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "list": _cmd_list,
        "check": _cmd_check,
        "forward": _cmd_forward,
        "diff": _cmd_diff,
        "map": _cmd_map,
    }
    return commands[args.command](args.root, args)


if __name__ == "__main__":
    sys.exit(main())
