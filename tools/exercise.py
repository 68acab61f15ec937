"""Exercises on the chapters: work on a copy, check it over the wire.

``python -m tools.exercise --help`` for the command line; the exercises themselves (task,
why, hints, solution) are on the site's Exercises page (``docs/exercises.md``).

The chapters are never edited in place: their lineage (``python -m tools.chapters check``)
and the shared suite depend on them as they are. So an exercise is done on a copy:

* ``start 3.1`` copies ``chapters/03_pool/`` to ``exercises/work/03_pool_ex1/``
  (``exercises/work/`` is git-ignored), and says what to do;
* ``check 3.1`` runs that exercise's check (``exercises/checks/test_3_1_*.py``, plain
  pytest) against the copy: the check imports the copy by its package name, runs its
  ``Server`` in-process on an ephemeral loopback port and talks to it over the wire;
* ``diff 3.1`` shows what the copy changes, ``run 3.1`` serves the copy for a client,
  ``solution 3.1`` prints the solution (a patch in ``exercises/solutions/``) and
  ``solution 3.1 --apply`` applies it to a fresh copy.

A copy is a package of its own (``03_pool_ex1``, imported with the work folder on the
import path), so its relative imports (``from .pool import ...``) stay inside the copy
while ``common`` is the repository's. Everything takes ``--work DIR`` so the tests work in
a temporary folder and leave nothing behind in the repository.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tools.chapters import chapter_files

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "exercises"
CHECKS = EXERCISES / "checks"
SOLUTIONS = EXERCISES / "solutions"
DEFAULT_WORK = EXERCISES / "work"
PAGE = "docs/exercises.md"
# The check reads the copy's package name from here (exercises/checks/conftest.py).
PACKAGE_ENV = "EXERCISE_PACKAGE"
# A check is a handful of bounded tests; this only catches a check that hangs anyway.
CHECK_TIMEOUT = 300
COMMAND = ".venv/bin/python -m tools.exercise"


@dataclass(frozen=True)
class Exercise:
    """One exercise: ``id`` "3.1" is chapter 3's first."""

    id: str
    chapter: str  # the folder copied: "03_pool"
    slug: str  # names the check and the solution files
    title: str
    task: str  # one paragraph; the page says more
    edit: tuple[str, ...]  # the files of the copy the solution changes

    @property
    def stem(self) -> str:
        return f"{self.id.replace('.', '_')}_{self.slug}"

    @property
    def check_file(self) -> Path:
        return CHECKS / f"test_{self.stem}.py"

    @property
    def solution_file(self) -> Path:
        return SOLUTIONS / f"{self.stem}.patch"

    @property
    def copy_name(self) -> str:
        """The copy's folder and package name: ``03_pool_ex1``."""
        return f"{self.chapter}_ex{self.id.split('.')[1]}"

    @property
    def anchor(self) -> str:
        return f"exercise-{self.id.replace('.', '-')}"


CATALOGUE: tuple[Exercise, ...] = (
    Exercise(
        "1.1",
        "01_listen",
        "thread_per_client",
        "A thread per client",
        "Serve each accepted client on a thread of its own, so a second client is served "
        "while the first one idles, and shutdown() still ends every client's thread.",
        ("server.py",),
    ),
    Exercise(
        "2.1",
        "02_epoll",
        "multi_accept",
        "Accept every waiting client at once",
        "Add the key Sock_MultiAccept (0 or 1, default 0): with 1, on_accept accepts until "
        "the accept queue is empty (EAGAIN) instead of once per readiness event.",
        ("server.py",),
    ),
    Exercise(
        "3.1",
        "03_pool",
        "storm_factor",
        "The storm guard's factor as a config key",
        "Add the key Sock_StormFactor (an integer >= 1, default 5): the storm guard refuses "
        "clients once the pool holds more than factor x worker_connections objects.",
        ("pool.py",),
    ),
    Exercise(
        "3.2",
        "03_pool",
        "per_address_limit",
        "A limit per client address",
        "Add the key Sock_MaxConnPerAddress (0 = no limit): a client whose address already "
        "holds that many connections is refused at accept, counted as refused.per_address.",
        ("server.py",),
    ),
    Exercise(
        "4.1",
        "04_sendqueue",
        "ping_fast_path",
        "Pings skip the worker queue",
        "Answer a read that holds only pings on the event loop itself, without a worker, "
        "unless the client still has requests in flight (its replies must stay in order).",
        ("server.py",),
    ),
    Exercise(
        "5.1",
        "05_timers",
        "any_request_is_alive",
        "Every answered request is a sign of life",
        "A client that keeps sending requests the server answers (logins, say) is alive, "
        "pings or not; a packet that gets no reply (a bad CRC) still is not.",
        ("server.py",),
    ),
    Exercise(
        "6.1",
        "06_flood",
        "token_bucket",
        "A flood rule a flooder cannot pace around",
        "Replace the 'consecutive packets too close together' rule with a token bucket "
        "holding Sock_FloodKickCounter tokens, refilled one per Sock_FloodTimeInterval: "
        "bursts with short pauses no longer get through.",
        ("flood.py", "connection.py"),
    ),
    Exercise(
        "7.1",
        "07_processes",
        "bounded_drain",
        "A bounded drain",
        "Add the key WorkerShutdownTimeout (seconds, default 0: no bound, as nginx's "
        "worker_shutdown_timeout): a worker draining gently (after a reload or SIGQUIT) that "
        "still has clients after that long drains for good, as if the master had said t.",
        ("master.py",),
    ),
)


class ExerciseError(Exception):
    """A problem the reader can fix (unknown exercise, no copy yet ...): the message says
    how. The command line prints it and exits 2."""


def find(exercise_id: str) -> Exercise:
    for exercise in CATALOGUE:
        if exercise.id == exercise_id.strip():
            return exercise
    known = ", ".join(e.id for e in CATALOGUE)
    raise ExerciseError(f"no exercise {exercise_id!r} (exercises: {known}; see 'list')")


def copy_path(exercise: Exercise, work: Path = DEFAULT_WORK) -> Path:
    return work / exercise.copy_name


def chapter_path(exercise: Exercise) -> Path:
    return ROOT / "chapters" / exercise.chapter


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (shorter to read)."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _command(work: Path) -> str:
    """How to call the tool for this work folder (``--work`` comes before the command)."""
    return COMMAND if work.resolve() == DEFAULT_WORK.resolve() else f"{COMMAND} --work {work}"


def existing_copy(exercise: Exercise, work: Path = DEFAULT_WORK) -> Path:
    copy = copy_path(exercise, work)
    if not (copy / "__init__.py").is_file():
        raise ExerciseError(
            f"no copy for exercise {exercise.id} yet ({_shown(copy)} does not exist): "
            f"start with: {_command(work)} start {exercise.id}"
        )
    return copy


# ----------------------------------------------------------------------------------------
# start
# ----------------------------------------------------------------------------------------


def start(exercise: Exercise, work: Path = DEFAULT_WORK, *, force: bool = False) -> Path:
    """Copy the exercise's chapter into ``work``; return the copy. An existing copy is
    kept unless ``force``, and then it is moved aside to ``<copy>.bak``, not deleted."""
    copy = copy_path(exercise, work)
    if copy.exists():
        if not force:
            raise ExerciseError(
                f"exercise {exercise.id} is started already: your copy is {_shown(copy)}. "
                f"To start again from the chapter, add --force (your copy is then kept as "
                f"{_shown(copy)}.bak)"
            )
        backup = copy.with_name(copy.name + ".bak")
        if backup.exists():
            shutil.rmtree(backup)
        copy.rename(backup)
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        chapter_path(exercise), copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return copy


def start_message(exercise: Exercise, copy: Path, work: Path) -> str:
    tool = _command(work)
    return "\n".join(
        [
            f"Exercise {exercise.id}: {exercise.title}",
            "",
            textwrap.fill(exercise.task, 88),
            "",
            f"Your copy of chapters/{exercise.chapter}/ is {_shown(copy)}/; edit it there "
            "(the chapters stay as they are).",
            f"Files to change: {', '.join(exercise.edit)}",
            f"Why, hints and the solution: {PAGE}#{exercise.anchor} "
            f"(make serve-docs, then http://127.0.0.1:8000/exercises/#{exercise.anchor})",
            "",
            f"Check it:        {tool} check {exercise.id}",
            f"Your changes:    {tool} diff {exercise.id}",
            f"Serve your copy: {tool} run {exercise.id} --port 5679",
        ]
    )


# ----------------------------------------------------------------------------------------
# diff and patches
# ----------------------------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        raise ExerciseError(f"{_shown(path)} is not UTF-8 text: a patch cannot hold it") from None
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"  # a patch of ours is line-based; a missing last newline is noise
    return lines


def diff(exercise: Exercise, work: Path = DEFAULT_WORK) -> str:
    """What the copy changes in its chapter, as a unified diff with ``a/`` and ``b/``
    paths relative to the chapter folder (the form of ``exercises/solutions/*.patch``)."""
    copy = existing_copy(exercise, work)
    original = chapter_path(exercise)
    before = chapter_files(original)
    # An editor's swap and backup files (.server.py.swp, server.py~) are not the reader's
    # changes.
    after = {
        rel for rel in chapter_files(copy) if not Path(rel).name.startswith(".") and rel[-1] != "~"
    }
    out: list[str] = []
    for rel in sorted(before | after):
        old = _read_lines(original / rel) if rel in before else []
        new = _read_lines(copy / rel) if rel in after else []
        if old == new:
            continue
        old_label = f"a/{rel}" if rel in before else "/dev/null"
        new_label = f"b/{rel}" if rel in after else "/dev/null"
        out.extend(difflib.unified_diff(old, new, old_label, new_label))
    return "".join(out)


class PatchError(ExerciseError):
    """A patch that does not fit the files it is applied to."""


@dataclass
class Hunk:
    old_start: int  # 1-based, as in the "@@ -l,s" header (0 for an empty file)
    old: list[str]
    new: list[str]


@dataclass
class FilePatch:
    path: str  # relative to the patched folder
    old_missing: bool  # "--- /dev/null": the patch creates the file
    new_missing: bool  # "+++ /dev/null": the patch deletes it
    hunks: list[Hunk]


_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_patch(text: str) -> list[FilePatch]:
    """The files and hunks of a unified diff (``a/``/``b/`` paths, as :func:`diff`
    writes them). Raises :class:`PatchError` on anything else."""
    files: list[FilePatch] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("--- "):
            if line.strip():
                raise PatchError(f"patch line {i + 1}: expected '--- a/FILE', got {line!r}")
            i += 1
            continue
        if i + 1 >= len(lines) or not lines[i + 1].startswith("+++ "):
            raise PatchError(f"patch line {i + 2}: expected '+++ b/FILE'")
        old_name, new_name = line[4:].strip(), lines[i + 1][4:].strip()
        name = new_name if new_name != "/dev/null" else old_name
        if not name.startswith(("a/", "b/")) or ".." in Path(name[2:]).parts:
            raise PatchError(f"patch line {i + 1}: {name!r} is not a path like a/server.py")
        patch = FilePatch(name[2:], old_name == "/dev/null", new_name == "/dev/null", [])
        files.append(patch)
        i += 2
        while i < len(lines) and lines[i].startswith("@@"):
            match = _HUNK.match(lines[i])
            if match is None:
                raise PatchError(f"patch line {i + 1}: not a hunk header: {lines[i]!r}")
            old_count = int(match.group(2) or 1)
            new_count = int(match.group(4) or 1)
            hunk = Hunk(int(match.group(1)), [], [])
            i += 1
            while len(hunk.old) < old_count or len(hunk.new) < new_count:
                if i >= len(lines):
                    raise PatchError(f"patch ends inside a hunk of {patch.path}")
                kind, body = lines[i][:1], lines[i][1:]
                if kind in (" ", "-"):
                    hunk.old.append(body)
                if kind in (" ", "+"):
                    hunk.new.append(body)
                if kind not in (" ", "-", "+", "\\"):
                    raise PatchError(f"patch line {i + 1}: unexpected {lines[i]!r} in a hunk")
                i += 1
            patch.hunks.append(hunk)
    if not files:
        raise PatchError("the patch changes no file")
    return files


def _locate(lines: list[str], block: list[str], expected: int, start: int) -> int | None:
    """Where ``block`` occurs in ``lines`` at or after ``start``: at ``expected`` if it
    does, else the occurrence nearest to it (the file gained or lost lines elsewhere)."""
    size = len(block)
    if lines[expected : expected + size] == block and expected >= start:
        return expected
    found = [at for at in range(start, len(lines) - size + 1) if lines[at : at + size] == block]
    return min(found, key=lambda at: abs(at - expected)) if found else None


def apply_patch(text: str, folder: Path) -> list[str]:
    """Apply a patch of :func:`diff`'s form to ``folder``; return the files changed. Every
    hunk is matched exactly (context included) before any file is written, so a patch
    that does not fit changes nothing."""
    results: dict[str, list[str] | None] = {}
    for patch in parse_patch(text):
        target = folder / patch.path
        if patch.old_missing:
            if target.exists():
                raise PatchError(f"{patch.path}: the patch creates it, but it exists already")
            lines: list[str] = []
        elif not target.is_file():
            raise PatchError(f"{patch.path}: no such file to patch in {_shown(folder)}")
        else:
            lines = _read_lines(target)
        out: list[str] = []
        position = 0
        for number, hunk in enumerate(patch.hunks, 1):
            # "@@ -l,0" (nothing removed, no context) inserts after line l.
            expected = hunk.old_start - 1 if hunk.old else hunk.old_start
            at = _locate(lines, hunk.old, expected, position)
            if at is None:
                raise PatchError(
                    f"{patch.path}: hunk {number} (line {hunk.old_start}) does not match the "
                    "file: it changed since the patch was made"
                )
            out += lines[position:at] + hunk.new
            position = at + len(hunk.old)
        out += lines[position:]
        results[patch.path] = None if patch.new_missing else out
    for rel, content in results.items():
        target = folder / rel
        if content is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(content), encoding="utf-8")
    return list(results)


# The solutions are shown on the Exercises page by pymdownx.snippets, which takes any
# "--8<--" in an included file as its own notation (a chapter's section markers, in a
# patch's context lines) and drops the line. So a solution file has one ";" before each
# "--8<--", which snippets removes again on the page and solution() removes here.
_SNIPPET_MARK = re.compile(r"(?<!-)(-+8<-)")
_ESCAPED_MARK = re.compile(r";(-+8<-)")


def escape_snippets(patch: str) -> str:
    return _SNIPPET_MARK.sub(r";\1", patch)


def solution(exercise: Exercise) -> str:
    """The solution patch, as :func:`diff` writes it (its file escapes snippet notation)."""
    return _ESCAPED_MARK.sub(r"\1", exercise.solution_file.read_text(encoding="utf-8"))


def save_solution(exercise: Exercise, work: Path = DEFAULT_WORK) -> Path:
    """For the course's authors: make the copy's changes the exercise's solution."""
    patch = diff(exercise, work)
    if not patch:
        raise ExerciseError(f"the copy for {exercise.id} has no changes to save")
    exercise.solution_file.write_text(escape_snippets(patch), encoding="utf-8")
    return exercise.solution_file


def apply_solution(exercise: Exercise, work: Path = DEFAULT_WORK) -> list[str]:
    """Apply the solution to the exercise's copy, which must be untouched (a patch mixed
    into a half-done copy would fail or, worse, half-apply the reader's idea)."""
    copy = existing_copy(exercise, work)
    if diff(exercise, work):
        raise ExerciseError(
            f"your copy {_shown(copy)} has changes ('diff {exercise.id}' shows them); the "
            f"solution applies to a fresh copy: {_command(work)} start {exercise.id} --force "
            "(keeps yours as .bak), then --apply again"
        )
    return apply_patch(solution(exercise), copy)


# ----------------------------------------------------------------------------------------
# check and run
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    returncode: int  # pytest's: 0 passed, 1 tests failed, 2+ could not run
    output: str  # pytest's output ("" when it went to the terminal)


def check_command(exercise: Exercise) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        str(exercise.check_file),
        "-q",
        "--no-header",
        "--tb=short",
        "-p",
        "no:cacheprovider",  # no .pytest_cache written by a check
        "-p",
        "no:hypothesispytest",  # the checks use no hypothesis; its plugin costs 1 s of start-up
        "--timeout=60",
    ]


def check_env(exercise: Exercise, work: Path) -> dict[str, str]:
    path = [str(work.resolve()), str(ROOT)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return {
        **os.environ,
        PACKAGE_ENV: exercise.copy_name,
        "PYTHONPATH": os.pathsep.join(path),
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ left in the copy or the checks
    }


def check(exercise: Exercise, work: Path = DEFAULT_WORK, *, capture: bool = True) -> CheckResult:
    """Run the exercise's check against its copy (pytest, in a process of its own, so the
    copy is imported fresh, as it is now)."""
    existing_copy(exercise, work)
    for module, name in (("pytest", "pytest"), ("pytest_timeout", "pytest-timeout")):
        if importlib.util.find_spec(module) is None:
            raise ExerciseError(
                f"{name} is not installed in {sys.executable}: the checks need it. "
                "make test sets up .venv with it (or: pip install -e '.[test]')"
            )
    try:
        done = subprocess.run(
            check_command(exercise),
            cwd=ROOT,
            env=check_env(exercise, work),
            stdin=subprocess.DEVNULL,
            capture_output=capture,
            text=True,
            timeout=CHECK_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise ExerciseError(
            f"the check of {exercise.id} did not finish in {CHECK_TIMEOUT} s; does your "
            "server stop when shutdown() is called?"
        ) from None
    output = (done.stdout or "") + (done.stderr or "") if capture else ""
    return CheckResult(done.returncode == 0, done.returncode, output)


def run(exercise: Exercise, work: Path, argv: list[str]) -> int:
    """Serve the copy as ``python -m chapters.NN`` serves a chapter (``common.cli``)."""
    existing_copy(exercise, work)
    from common.cli import main as serve_main

    sys.path.insert(0, str(work.resolve()))
    return serve_main(exercise.copy_name, argv)


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Exercises", title_justify="left")
    for column in ("id", "chapter", "title", "your copy"):
        table.add_column(column, overflow="fold")
    for exercise in CATALOGUE:
        copy = copy_path(exercise, args.work)
        state = f"{_shown(copy)}/" if copy.is_dir() else "not started"
        table.add_row(exercise.id, exercise.chapter, exercise.title, state)
    console = Console()
    console.print(table)
    print(f"Start one: {_command(args.work)} start 1.1   (the tasks: {PAGE})")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    exercise = find(args.id)
    copy = start(exercise, args.work, force=args.force)
    print(start_message(exercise, copy, args.work))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    exercise = find(args.id)
    copy = existing_copy(exercise, args.work)
    print(f"checking exercise {exercise.id} ({exercise.title}) against {_shown(copy)}/ ...")
    sys.stdout.flush()
    result = check(exercise, args.work, capture=False)
    if result.passed:
        print(
            f"PASS: exercise {exercise.id} is done. Compare with the solution: {COMMAND} "
            f"solution {exercise.id}"
        )
        return 0
    if result.returncode == 1:
        print(
            f"NOT YET: exercise {exercise.id}: the failures above say what the check "
            f"expected. Hints: {PAGE}#{exercise.anchor}"
        )
    else:
        print(
            f"NOT YET: the check of {exercise.id} could not run your copy (pytest exit "
            f"{result.returncode}): look for an import or syntax error above"
        )
    return 1


def _cmd_diff(args: argparse.Namespace) -> int:
    if args.save:
        saved = save_solution(find(args.id), args.work)
        print(f"saved the copy's changes as {_shown(saved)}")
        return 0
    text = diff(find(args.id), args.work)
    if not text:
        print("no changes yet", file=sys.stderr)
    sys.stdout.write(text)
    return 0


def _cmd_solution(args: argparse.Namespace) -> int:
    exercise = find(args.id)
    if args.apply:
        changed = apply_solution(exercise, args.work)
        copy = copy_path(exercise, args.work)
        print(f"applied {_shown(exercise.solution_file)} to {_shown(copy)}/: {', '.join(changed)}")
        return 0
    sys.stdout.write(solution(exercise))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    exercise = find(args.id)
    argv = []
    for option in ("config", "port", "host", "log_level"):
        value = getattr(args, option)
        if value is not None:
            argv += [f"--{option.replace('_', '-')}", str(value)]
    if args.dashboard:
        argv.append("--dashboard")
    return run(exercise, args.work, argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.exercise",
        description="Exercises on the chapters: 'start' copies a chapter to a work folder, "
        "you edit the copy, 'check' runs the exercise's tests against it. The chapters "
        f"themselves are never edited. Tasks, hints and solutions: {PAGE}.",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=DEFAULT_WORK,
        metavar="DIR",
        help="where the copies live (default: exercises/work, which git ignores)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="the exercises, and which you have started")

    def with_id(name: str, **kwargs: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, **kwargs)
        command.add_argument("id", metavar="ID", help="the exercise, e.g. 3.1 (see 'list')")
        return command

    st = with_id(
        "start",
        help="copy the exercise's chapter to the work folder and say what to do",
        description="Copy chapters/NN_name/ to <work>/NN_name_exM/ (a package of its own), "
        "then print the task, the files to change and the commands to check it.",
    )
    st.add_argument(
        "--force",
        action="store_true",
        help="start again from the chapter; an existing copy is kept as <copy>.bak",
    )
    with_id(
        "check",
        help="run the exercise's tests against your copy; exit 0 when it passes",
        description="Run exercises/checks/test_N_M_*.py (pytest) against your copy: the "
        "check serves the copy in-process on a free loopback port and talks to it over the "
        "wire. Exit 0: done; 1: not yet (the failures say what was expected).",
    )
    df = with_id("diff", help="what your copy changes in the chapter (a unified diff)")
    df.add_argument(
        "--save",
        action="store_true",
        help="(for the course's authors) save the changes as the exercise's solution",
    )
    so = with_id(
        "solution",
        help="print the solution (a patch); --apply applies it to your copy",
        description="Print exercises/solutions/N_M_*.patch. With --apply, apply it to your "
        "copy, which must be unchanged (start --force gives you a fresh one).",
    )
    so.add_argument("--apply", action="store_true", help="apply the patch to your copy")
    rn = with_id(
        "run",
        help="serve your copy, as python -m chapters.NN_name serves a chapter",
        description="Serve your copy until Ctrl-C, e.g. for python -m tools.client.",
    )
    rn.add_argument("--port", type=int, metavar="N", help="port (default: the config's)")
    rn.add_argument("--host", metavar="ADDR", help="address (default: the config's)")
    rn.add_argument("--config", type=Path, metavar="FILE", help="config file (nginx.conf)")
    rn.add_argument("--log-level", metavar="LEVEL", help="e.g. info or debug")
    rn.add_argument("--dashboard", action="store_true", help="watch it live")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "list": _cmd_list,
        "start": _cmd_start,
        "check": _cmd_check,
        "diff": _cmd_diff,
        "solution": _cmd_solution,
        "run": _cmd_run,
    }
    try:
        return commands[args.command](args)
    except ExerciseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a work folder that cannot be written, say
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
