"""Mutation testing: make small mistakes in a module on purpose, check that the tests notice.

``make mutate`` (or ``python -m tools.mutate``) runs `mutmut <https://mutmut.readthedocs.io>`_
over each module of :data:`MODULES`, each against its own test selection, and prints one
line per module: mutants, killed, survived, equivalent, and the share killed. The table
holds the shared modules (``common/protocol.py``, ``logic.py``, ``config.py``, against
``tests/core/``) and the subsystem modules of the newest chapter (``flood.py``,
``timers.py``, ``pool.py``, ``sendqueue.py``, ``workers.py``, ``eventloop.py``,
``connection.py`` of ``chapters/07_processes``, against that chapter's unit tests in
``tests/chapters/``); the comment above the table says why ``master.py``, ``server.py``
and ``listening.py`` are not in it. docs/testing.md has the figures of the last run.

A *mutant* is the module with one small change (``<`` for ``<=``, ``+ 1`` for ``- 1``, a
constant or a string altered, a statement's value replaced by ``None`` …). It is *killed*
when at least one test of the module's selection fails (or hangs, or crashes) with it in
place. A mutant that *survives* is either a gap in the tests, to be closed by a new test
of behaviour, or *equivalent*: a change no caller can observe. Equivalent mutants are
listed in ``tests/mutation-equivalents.md``, each with a one-line argument; a survivor
matched there counts as equivalent, not as survived.

The run fails (exit 1) when a survivor is neither killed nor listed, or when a listed
equivalent matches no survivor any more (it was killed, so it was not equivalent, or the
code it quotes changed): the list stays true.

What mutmut 3 does not mutate: code outside functions. Module-level constants and tables
(``PKG_MAX_ACCEPTED``, ``KNOWN_KEYS``, the config reader's regular expressions) are left
alone, so the figures speak for the functions only; those constants are pinned by the
tests of the behaviour they set (29000 accepted, 29001 refused; the shipped defaults).

Why mutmut (3.x) rather than cosmic-ray: both are maintained, but mutmut forks one process
per mutant from a process that has already imported pytest, the tests and the code, runs
mutants on every core, and runs for each mutant only the tests that call the mutated
function (it records which test calls which function in one instrumented run first).
cosmic-ray starts the test command afresh for every mutant, and its local runner mutates
the working copy in place and tests one mutant at a time (running in parallel takes HTTP
workers, each with its own copy of the code). Here that would be a second of pytest
start-up plus the whole selection, hypothesis included, for each of several hundred
mutants per module, on one core of a 2-core machine that must finish in minutes.

How it copes with this layout: mutmut reads its configuration only from the current
folder's ``pyproject.toml`` (or ``setup.cfg``), one configuration per run, so each module
runs in its own scratch folder ``.mutate/<module>/`` holding a copy of the packages, the
tests and a ``pyproject.toml`` with a generated ``[tool.mutmut]`` table. mutmut copies the
packages into ``mutants/`` there, rewrites only the module under test, and puts
``mutants/`` first on ``sys.path``, so ``common``, ``tools``, ``tests.conftest`` and the
chapters (``chapters.06_flood`` is found by ``importlib``, and mutmut's own names for it are
plain strings) all import from the copy. Nothing in the repository is touched. The scratch
folder ignores itself in git and is rebuilt from scratch on every run, so the figures are
always those of the current code and tests.

Working on a survivor: the run prints its function and the changed line. In its scratch
folder (``cd .mutate/common-protocol``), ``../../.venv/bin/mutmut show NAME`` prints the
whole diff and ``../../.venv/bin/mutmut browse`` lists every mutant. Write the test of the
behaviour the change breaks, then ``make mutate MUTATE_ARGS=common/protocol.py`` runs that
row again (``chapters/07_processes/timers.py`` for a chapter row, whose folder is
``.mutate/chapters-07_processes-timers``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tools.progress import progress_bar

ROOT = Path(__file__).resolve().parent.parent

# --8<-- [start:modules]
# The module to mutate (a path from the repository root) and the pytest arguments that
# select the tests covering it. Keep each selection small and fast: mutmut runs, for each
# mutant, only those selected tests that call the mutated function, but the selection is
# run whole three times first (to time it, to record who calls what, to check it passes).
# Adding a module is adding a row.
#
# The chapter rows mutate the newest chapter's copy of each subsystem (the older chapters
# hold byte-identical copies or older versions) against that subsystem's unit tests, for
# chapter 7 only: ``-m unit`` keeps the tests that use ``feature_modules`` (one module,
# no server), ``-k 07_processes`` the chapter-7 parameter. The end-to-end tests are left
# out on purpose: chapter 7 serves from forked worker processes, and mutmut records which
# test calls which function in its own process only, so a call made in a worker is never
# seen and those tests would only add their start-up time to every run.
# Not mutated: master.py (it forks the workers, as above: none of its calls would be
# seen, and each test starts processes), server.py (the handlers, reached only through
# the workers) and listening.py (a few lines of socket set-up, exercised by every test).
CHAPTER_UNIT_TESTS = ("-m", "unit", "-k", "07_processes")
MODULES: dict[str, tuple[str, ...]] = {
    "common/protocol.py": ("tests/core/test_protocol.py",),
    "common/logic.py": ("tests/core/test_logic.py",),
    "common/config.py": ("tests/core/test_config.py",),
    "chapters/07_processes/flood.py": ("tests/chapters/test_flood.py", *CHAPTER_UNIT_TESTS),
    "chapters/07_processes/timers.py": ("tests/chapters/test_timers.py", *CHAPTER_UNIT_TESTS),
    "chapters/07_processes/pool.py": ("tests/chapters/test_pool.py", *CHAPTER_UNIT_TESTS),
    "chapters/07_processes/sendqueue.py": (
        "tests/chapters/test_sendqueue.py",
        *CHAPTER_UNIT_TESTS,
    ),
    "chapters/07_processes/workers.py": ("tests/chapters/test_sendqueue.py", *CHAPTER_UNIT_TESTS),
    "chapters/07_processes/eventloop.py": ("tests/chapters/test_epoll.py", *CHAPTER_UNIT_TESTS),
    # Every subsystem's unit tests build connections: they all make up its selection.
    "chapters/07_processes/connection.py": ("tests/chapters", *CHAPTER_UNIT_TESTS),
}
# --8<-- [end:modules]

EQUIVALENTS = ROOT / "tests" / "mutation-equivalents.md"
WORKDIR = ROOT / ".mutate"
# What a module's scratch folder holds: every package (so the module's imports resolve
# inside the copy), the tests, and what the tests read from the repository root.
COPIED = ("common", "chapters", "tools", "tests", "nginx.conf", "pyproject.toml")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")

# mutmut's statuses (``mutmut results``), grouped by what they mean for the score. A mutant
# that makes a test hang or crash the interpreter was noticed, so it counts as killed.
KILLED = frozenset({"killed", "timeout", "segfault", "caught by type check"})
NOT_KILLED = frozenset({"survived", "no tests", "suspicious", "skipped"})

# A mutant is taken to hang (and so to be noticed) when its tests run longer than
# TIMEOUT_MULTIPLIER x (their unmutated time + TIMEOUT_CONSTANT) seconds. mutmut's
# defaults (15 and 1 s) spend most of a run waiting on the mutants that stop a thread the
# tests wait on (a chapter module has dozens: the send thread, the timer monitor, the
# workers): each would cost 15 s at least. 4 x (t + 0.5 s) = 4t + 2 s is still well above
# the slow-down that other jobs on the same two cores cause to a mutant whose tests pass.
TIMEOUT_MULTIPLIER = 4
TIMEOUT_CONSTANT = 0.5

# Tests that use hypothesis run its "mutation" profile (registered in
# tests/core/test_protocol.py, the test module that reads HYPOTHESIS_PROFILE):
# derandomised, so two runs on the same code give the same figures, and without the
# example database, whose replays from earlier mutants would make a kill depend on order.
HYPOTHESIS_PROFILE = "mutation"


@dataclass(frozen=True)
class Change:
    """What a mutant changes, in words a reader can check against the source: the
    function, and its changed lines before and after (trimmed, inline comments dropped).
    Mutant *numbers* shift whenever a function is edited; this does not."""

    module: str
    function: str
    before: str
    after: str

    def __str__(self) -> str:
        return f"{self.module} `{self.function}`: `{self.before}` → `{self.after}`"


@dataclass(frozen=True)
class Equivalent:
    change: Change
    why: str
    line: int  # in the equivalents file


@dataclass
class Result:
    module: str
    status: Counter[str] = field(default_factory=Counter)
    unlisted: list[tuple[str, Change]] = field(default_factory=list)  # (mutant, change)
    equivalent: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.status.values())

    @property
    def killed(self) -> int:
        return sum(n for status, n in self.status.items() if status in KILLED)

    @property
    def survived(self) -> int:
        return len(self.unlisted)

    @property
    def killed_share(self) -> float:
        return self.killed / self.total if self.total else 0.0

    @property
    def score(self) -> float:
        """Killed among the mutants that can be killed (equivalents left out)."""
        killable = self.total - len(self.equivalent)
        return self.killed / killable if killable else 1.0


# -- the equivalents file ------------------------------------------------------------------

_ENTRY = re.compile(r"- `(?P<function>[^`]+)`: `(?P<before>.*)` → `(?P<after>.*)`\s*$")


def read_equivalents(path: Path = EQUIVALENTS) -> list[Equivalent]:
    """Entries of the equivalents file: under a ``## <module path>`` heading, each

    ``- `Function.name`: `line before` → `line after```

    followed by an indented line (or more) saying why no caller can tell the difference."""
    if not path.exists():
        return []
    entries: list[Equivalent] = []
    module = None
    current: tuple[Change, int] | None = None
    why: list[str] = []

    def close() -> None:
        if current is not None:
            change, line = current
            if not why:
                raise ValueError(f"{path}:{line}: an equivalent needs its argument below it")
            entries.append(Equivalent(change, " ".join(why), line))

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("## "):
            close()
            current, why = None, []
            module = line[3:].strip()
        elif line.startswith("- `"):
            close()
            why = []
            match = _ENTRY.match(line)
            if match is None or module is None:
                raise ValueError(
                    f"{path}:{number}: expected '- `function`: `before` → `after`' "
                    "under a '## module/path.py' heading"
                )
            change = Change(module, match["function"], match["before"], match["after"])
            current = (change, number)
        elif current is not None and line.startswith("  ") and line.strip():
            why.append(line.strip())
        elif current is not None and not line.strip():
            close()
            current, why = None, []
    close()
    return entries


# -- reading mutmut's answers --------------------------------------------------------------


def strip_comment(code: str) -> str:
    """``code`` without a trailing ``  # comment`` (ruff format puts two spaces before
    one), unless that ``#`` is inside a string literal."""
    start = 0
    while (at := code.find("  #", start)) >= 0:
        head = code[:at]
        if head.count('"') % 2 == 0 and head.count("'") % 2 == 0:
            return head.rstrip()
        start = at + 1
    return code.rstrip()


def function_name(mutant: str, module: str) -> str:
    """``common.protocol.xǁPacketParserǁfeed__mutmut_3`` → ``PacketParser.feed``;
    ``common.protocol.x_crc32__mutmut_1`` → ``crc32``."""
    name = mutant.removeprefix(module_name(module) + ".")
    name = re.sub(r"__mutmut_\d+$", "", name)
    if name.startswith("xǁ"):
        return ".".join(part for part in name[2:].split("ǁ") if part)
    return name.removeprefix("x_")


def module_name(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def change_from_diff(mutant: str, module: str, diff: str) -> Change:
    removed, added = [], []
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            removed.append(strip_comment(line[1:].strip()))
        elif line.startswith("+"):
            added.append(strip_comment(line[1:].strip()))
    return Change(module, function_name(mutant, module), " ⏎ ".join(removed), " ⏎ ".join(added))


def parse_results(text: str) -> dict[str, str]:
    """``mutmut results --all true`` lines (``    name: status``) as {mutant: status}."""
    out = {}
    for line in text.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            out[name] = status
    return out


# -- running one module --------------------------------------------------------------------


def toml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def prepare(module: str, tests: tuple[str, ...], workdir: Path) -> None:
    """A fresh scratch folder for ``module``: copies of the code and tests, and mutmut's
    configuration for this module alone."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, ignore=IGNORED)
        else:
            shutil.copy2(source, workdir / name)
    packages = sorted({module.split("/")[0], "common", "chapters"})
    config = f"""

[tool.mutmut]
# Generated by tools/mutate.py for {module}; see MODULES there.
source_paths = {toml_list(packages)}
only_mutate = {toml_list([module])}
also_copy = {toml_list(n for n in COPIED if n not in packages)}
pytest_add_cli_args_test_selection = {toml_list(tests)}
pytest_add_cli_args = ["-p", "no:cacheprovider"]
use_git_change_detection = false
timeout_multiplier = {TIMEOUT_MULTIPLIER}
timeout_constant = {TIMEOUT_CONSTANT}
"""
    with (workdir / "pyproject.toml").open("a", encoding="utf-8") as f:
        f.write(config)


def mutmut_command() -> list[str]:
    # The console script, not "python -m mutmut": mutmut sets the "fork" start method at
    # import and warns when its __main__ is executed twice.
    script = Path(sys.executable).parent / "mutmut"
    if not script.exists():
        raise SystemExit(
            "mutmut is not installed in this environment: run 'make mutate', which "
            "installs the 'mutation' extra (pip install -e '.[mutation]')"
        )
    return [str(script)]


_PROGRESS = re.compile(r"(\d+)/(\d+)")


def run_mutmut(workdir: Path, jobs: int, on_progress) -> int:
    """``mutmut run`` in ``workdir``; its screen output goes to ``mutmut.log`` there, and
    its ``done/total`` counter to ``on_progress``."""
    env = dict(os.environ, HYPOTHESIS_PROFILE=HYPOTHESIS_PROFILE)
    with (workdir / "mutmut.log").open("wb") as log:
        proc = subprocess.Popen(
            [*mutmut_command(), "run", "--max-children", str(jobs)],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(4096):
            log.write(chunk)
            counts = _PROGRESS.findall(chunk.decode("utf-8", "replace"))
            if counts:
                done, total = counts[-1]
                on_progress(int(done), int(total))
        return proc.wait()


def show(workdir: Path, mutant: str) -> str:
    out = subprocess.run(
        [*mutmut_command(), "show", mutant],
        cwd=workdir,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return out.stdout


def mutate_module(
    module: str,
    tests: tuple[str, ...],
    equivalents: list[Equivalent],
    matched: set[Equivalent],
    jobs: int,
    on_progress,
) -> Result:
    result = Result(module)
    workdir = WORKDIR / module.removesuffix(".py").replace("/", "-")
    start = time.monotonic()
    prepare(module, tests, workdir)
    code = run_mutmut(workdir, jobs, on_progress)
    if code != 0:
        result.errors.append(f"mutmut run exited {code}: see {workdir / 'mutmut.log'}")
    listing = subprocess.run(
        [*mutmut_command(), "results", "--all", "true"],
        cwd=workdir,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    statuses = parse_results(listing.stdout)
    if not statuses and not result.errors:
        result.errors.append(f"mutmut reported no mutants: see {workdir / 'mutmut.log'}")
    result.status.update(statuses.values())
    unknown = sorted({s for s in statuses.values() if s not in KILLED | NOT_KILLED})
    if unknown:
        result.errors.append(f"unfinished mutants ({', '.join(unknown)}): run again")
    # Timed-out mutants are looked at too: a listed equivalent that "hung" was only slow
    # (the machine was busy), and counts as what the list says it is.
    suspects = [n for n, status in statuses.items() if status in NOT_KILLED | {"timeout"}]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        diffs = list(pool.map(lambda name: show(workdir, name), suspects))
    by_change: dict[Change, list[Equivalent]] = {}
    for entry in equivalents:
        by_change.setdefault(entry.change, []).append(entry)
    for name, diff in zip(suspects, diffs, strict=True):
        change = change_from_diff(name, module, diff)
        timed_out = statuses[name] == "timeout"
        if change in by_change:
            matched.update(by_change[change])
            result.equivalent.append(name)
            if timed_out:
                result.status["timeout"] -= 1
                result.status["survived"] += 1
                result.warnings.append(f"{name} timed out, though listed as equivalent")
        elif not timed_out:
            result.unlisted.append((name, change))
    result.seconds = time.monotonic() - start
    return result


# -- the command line ----------------------------------------------------------------------


def report(results: list[Result], stale: list[Equivalent]) -> bool:
    """Print the survivors and the summary; True when there is nothing left to do."""
    ok = True
    for r in results:
        for error in r.errors:
            print(f"ERROR {r.module}: {error}")
            ok = False
        for warning in r.warnings:
            print(f"warning {r.module}: {warning} (a busy machine?)")
        if r.unlisted:
            ok = False
            print(f"\n{r.module}: {len(r.unlisted)} survivor(s) neither killed nor listed")
            for name, change in r.unlisted:
                print(f"  {name}\n    - `{change.function}`: `{change.before}` → `{change.after}`")
    if stale:
        ok = False
        print(f"\n{EQUIVALENTS.relative_to(ROOT)}: listed but no longer a survivor")
        for entry in stale:
            print(f"  line {entry.line}: {entry.change}")
    header = (
        f"{'module':<32} {'mutants':>7} {'killed':>6} {'(hung)':>6} {'survived':>8}"
        f" {'equivalent':>10} {'killed %':>8} {'score':>6} {'time':>6}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        print(
            f"{r.module:<32} {r.total:>7} {r.killed:>6} {r.status['timeout']:>6}"
            f" {r.survived:>8} {len(r.equivalent):>10} {r.killed_share:>8.1%} {r.score:>6.1%}"
            f" {r.seconds:>5.0f}s"
        )
    print(
        "\nkilled: a test failed, or hung (timed out); killed % = killed / mutants; "
        "score = killed / (mutants - equivalent).\nWork folders (mutmut browse, "
        f"mutmut show NAME): {WORKDIR.relative_to(ROOT)}/<module>/"
    )
    return ok


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.mutate",
        description="Mutation testing with mutmut: each module in tools/mutate.py's MODULES "
        "table (the common protocol, logic and config modules, and the newest chapter's "
        "subsystems) is mutated and run against its own tests; survivors must be killed by "
        "a new test or argued equivalent in tests/mutation-equivalents.md.",
    )
    parser.add_argument(
        "modules",
        nargs="*",
        metavar="MODULE",
        help="only these rows of the table, e.g. common/protocol.py or "
        "chapters/07_processes/timers.py (default: all; --list shows them)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=os.cpu_count() or 2,
        help="mutants tested at once (default: one per core, %(default)s here)",
    )
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for module, tests in MODULES.items():
            print(f"{module:<32} {' '.join(tests)}")
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        print(f"not in the MODULES table: {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print(f"--jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    try:
        equivalents = read_equivalents()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    selected = args.modules or list(MODULES)
    WORKDIR.mkdir(exist_ok=True)
    (WORKDIR / ".gitignore").write_text("*\n", encoding="utf-8")
    matched: set[Equivalent] = set()
    results = []
    try:
        with progress_bar() as bar:
            for module in selected:
                print(f"mutating {module} against {' '.join(MODULES[module])}", flush=True)
                task = bar.add_task(module, total=None)
                result = mutate_module(
                    module,
                    MODULES[module],
                    equivalents,
                    matched,
                    args.jobs,
                    lambda done, total, task=task: bar.update(task, completed=done, total=total),
                )
                bar.remove_task(task)
                results.append(result)
    except KeyboardInterrupt:
        # mutmut got the same Ctrl-C (same process group) and stops on its own.
        print("interrupted: no figures", file=sys.stderr)
        return 130
    stale = [e for e in equivalents if e.change.module in selected and e not in matched]
    return 0 if report(results, stale) else 1


if __name__ == "__main__":
    sys.exit(main())
