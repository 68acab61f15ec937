"""The docs site builds strictly, its chapter pages and placeholders name real chapters,
the diff hook renders a chapter diff faithfully, and the README's two commands are the
Makefile's."""

from __future__ import annotations

import concurrent.futures
import functools
import html
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tools import chapters as ch

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
HOOK = DOCS / "hooks" / "chapter_diff.py"
BUILD_TIMEOUT = 180
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chapter_diff_hook", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env=ENV,
    )


def nav_pages() -> list[str]:
    from mkdocs.config import load_config

    def walk(items: object) -> list[str]:
        found: list[str] = []
        if isinstance(items, str):
            found.append(items)
        elif isinstance(items, list):
            for item in items:
                found.extend(walk(item))
        elif isinstance(items, dict):
            for value in items.values():
                found.extend(walk(value))
        return found

    return walk(load_config(str(ROOT / "mkdocs.yml"))["nav"])


# -- the real site -------------------------------------------------------------------------


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path):
    done = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    page = (tmp_path / "site" / "chapters" / "01_listen" / "index.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    # The included code is the source, not a copy, and the placeholders were replaced.
    assert "def open_listening_sockets(" in text
    assert "chapter-diff:" not in page
    assert "No diff for the first chapter" in text


def test_chapter_pages_name_existing_chapters():
    names = {c.name for c in ch.discover(ROOT)}
    pages = sorted(p.stem for p in (DOCS / "chapters").glob("*.md"))
    assert pages, "no chapter pages"
    assert set(pages) <= names, f"pages for chapters that do not exist: {set(pages) - names}"


def test_every_chapter_page_is_in_the_nav():
    nav = set(nav_pages())
    for page in (DOCS / "chapters").glob("*.md"):
        assert f"chapters/{page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


def test_every_page_is_in_the_nav():
    nav = set(nav_pages())
    for page in DOCS.rglob("*.md"):
        name = page.relative_to(DOCS).as_posix()
        if not name.startswith("hooks/"):
            assert name in nav, f"{name} is not in mkdocs.yml's nav"


def test_placeholders_name_existing_chapters():
    hook = load_hook()
    found = ch.discover(ROOT)
    count = 0
    for page in DOCS.rglob("*.md"):
        for match in hook.PLACEHOLDER.finditer(page.read_text(encoding="utf-8")):
            ch.resolve(ROOT, match.group(2), found)  # raises LookupError if unknown
            count += 1
    assert count >= 1


def test_each_chapter_page_shows_its_own_diff():
    hook = load_hook()
    for page in (DOCS / "chapters").glob("*.md"):
        named = [
            m.group(2)
            for m in hook.PLACEHOLDER.finditer(page.read_text(encoding="utf-8"))
            if m.group(1) == "diff"
        ]
        assert named == [page.stem], f"{page.name} should hold <!-- chapter-diff: {page.stem} -->"


# -- the README and the two commands -------------------------------------------------------


def test_readme_commands_are_the_makefiles():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    commands = re.findall(r"^(make [a-z-]+)", readme, re.M)
    assert commands[:2] == ["make run", "make test"], commands
    for command in commands:
        target = command.split()[1]
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no target {target}"
    assert "make serve-docs" in readme
    home = (DOCS / "index.md").read_text(encoding="utf-8")
    assert re.findall(r"^(make [a-z-]+)", home, re.M)[:2] == ["make run", "make test"]


def test_ci_runs_make_test():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^\s*(exec\s+)?make test\b", script, re.M)


def test_readme_chapter_map_lists_every_chapter():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for chapter in ch.discover(ROOT):
        assert f"chapters/{chapter.name}" in readme, chapter.name


# -- the hook on a fake tree ---------------------------------------------------------------


def fake_repo(root: Path) -> None:
    """Two chapters whose diff holds the two things that could break a page: snippet
    notation (pymdownx.snippets would swallow it) and a fenced block of its own."""
    for name, body, readme in (
        ("01_a", "X = 1\n", "# A\n\n```sh\nrun a\n```\n"),
        ("02_b", "# --8<-- [start:x]\nX = 2\n# --8<-- [end:x]\n", "# B\n\n```sh\nrun b\n```\n"),
    ):
        folder = root / "chapters" / name
        folder.mkdir(parents=True)
        (folder / "server.py").write_text(body)
        (folder / "README.md").write_text(readme)
        first = name == "01_a"
        adds = {"__init__.py", "server.py", "README.md"} if first else set()
        changes = set() if first else {"__init__.py", "server.py", "README.md"}
        (folder / "__init__.py").write_text(
            f"FEATURES = frozenset({{'listen'}})\nADDS = frozenset({sorted(adds)!r})\n"
            f"CHANGES = frozenset({sorted(changes)!r})\n"
        )
    assert ch.check(root) == []


def fake_site(root: Path, page: str) -> Path:
    (root / "docs").mkdir()
    (root / "docs" / "index.md").write_text(page)
    config = root / "mkdocs.yml"
    config.write_text(
        "site_name: fake\n"
        "theme: mkdocs\n"
        f"hooks:\n  - {HOOK}\n"
        "markdown_extensions:\n"
        "  - pymdownx.superfences\n"
        "  - pymdownx.snippets:\n"
        f"      base_path: ['{root}']\n"
        "      check_paths: true\n"
    )
    return config


def test_hook_renders_diff_and_file_table(tmp_path: Path):
    fake_repo(tmp_path)
    hook = load_hook()
    out = hook.render_placeholders(
        "# Page\n\n<!-- chapter-diff: 02_b -->\n\n<!-- chapter-files: 02 -->\n", tmp_path
    )
    assert "<!--" not in out
    assert "`python -m tools.chapters diff 01 02`" in out
    # The README diff holds ``` lines, so its block is fenced with four backticks.
    assert '    ```` diff title="chapters/02_b/README.md"\n    --- chapters/01_a/README.md\n' in out
    assert '    ``` diff title="chapters/02_b/server.py"\n    --- chapters/01_a/server.py\n' in out
    assert "    +# ;--8<-- [start:x]\n" in out  # escaped for pymdownx.snippets
    # one collapsed block per file, server.py first
    assert out.index('??? abstract "`server.py` (changed') < out.index('??? abstract "`README.md`')
    assert "| `server.py` | **changed** |" in out
    first = hook.render_placeholders("<!-- chapter-diff: 01 -->", tmp_path)
    assert first.startswith('!!! note "No diff for the first chapter"')
    with pytest.raises(LookupError):
        hook.render_placeholders("<!-- chapter-diff: 05 -->", tmp_path)


@pytest.mark.slow
def test_hook_output_survives_a_real_build(tmp_path: Path):
    fake_repo(tmp_path)
    config = fake_site(tmp_path, "# Page\n\n<!-- chapter-diff: 02_b -->\n\nafter\n")
    done = mkdocs_build(config, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    page = (tmp_path / "site" / "index.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    # Exactly the diff's lines reach the page: markers kept (no ";"), fences inside code.
    assert "+# --8<-- [start:x]\n+X = 2\n+# --8<-- [end:x]" in text
    assert ";--8<--" not in text
    assert " ```sh\n-run a\n+run b\n ```" in text
    assert page.count("<pre") == 3  # __init__.py, README.md, server.py
    assert "after" in text


@pytest.mark.slow
def test_unknown_chapter_in_a_placeholder_fails_the_build(tmp_path: Path):
    fake_repo(tmp_path)
    config = fake_site(tmp_path, "<!-- chapter-diff: 07_nope -->\n")
    done = mkdocs_build(config, tmp_path / "site")
    assert done.returncode != 0
    assert "no chapter '07_nope'" in done.stdout + done.stderr


# -- every `python -m` command in the docs runs as written ---------------------------------

# Where commands are written down for a reader to copy.
COMMAND_FILES = sorted(
    [ROOT / "README.md", *ROOT.glob("chapters/*/README.md")]
    + [p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts]
)
# How a page says the environment is entered. A bare `python -m` is fine after this text
# on the same page; before it (or on a page without it) write `.venv/bin/python -m`.
ENTER_ENV = "source .venv/bin/activate"
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE = re.compile(r"(`+)(.+?)\1")
_COMMAND = re.compile(r"(?P<venv>\.venv/bin/)?python3? -m (?P<module>[\w.]+)(?P<args>.*)")
# Pages still written before this convention, not this change's to edit: each is expected
# to fail (strict, so a fixed page turns its xfail into a failure asking for its removal).
COMMANDS_KNOWN_BROKEN: dict[str, str] = {}


@dataclass(frozen=True)
class Command:
    line: int  # 1-based line in the file
    offset: int  # character offset in the file: before or after the ENTER_ENV text?
    venv: bool  # written as .venv/bin/python
    module: str
    args: tuple[str, ...]
    inline: bool  # an inline code span (`a|b` there lists alternatives, not a pipe)


def commands_in(text: str) -> list[Command]:
    """Every ``python -m`` in a fenced block or an inline code span, with its arguments up
    to a comment or a shell operator."""
    found: list[Command] = []
    fence: str | None = None
    offset = 0
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        marker = _FENCE.match(line)
        if fence is None and marker:
            fence = marker.group(1)
        elif fence is not None and marker and marker.group(1).startswith(fence):
            fence = None
        elif fence is not None:
            if m := _COMMAND.search(line):
                args = re.split(r"\s(?:#|&&|\|\|?|;|>|2>|&\s*$)", m.group("args"))[0]
                found.append(_command(number, offset + m.start(), m, args, inline=False))
        else:
            for span in _INLINE.finditer(line):
                if m := _COMMAND.search(span.group(2)):
                    at = offset + span.start(2) + m.start()
                    found.append(_command(number, at, m, m.group("args"), inline=True))
        offset += len(line)
    return found


def _command(line: int, offset: int, m: re.Match, args: str, *, inline: bool) -> Command:
    try:
        tokens = shlex.split(args.replace("\\|", "|"))
    except ValueError:
        tokens = args.split()
    return Command(line, offset, bool(m.group("venv")), m.group("module"), tuple(tokens), inline)


def _variants(command: Command) -> list[tuple[str, ...]]:
    """The argument lists a command stands for: in an inline span, ``ping|register`` is
    two commands; a placeholder (``…``, ``<name>``, or an upper-case metavar such as
    ``TOOL``) stands for arguments left out, so only what precedes it is checked."""
    args = list(command.args)
    for i, token in enumerate(args):
        if token in ("…", "...") or token.startswith("<") or re.fullmatch(r"[A-Z][A-Z_]*", token):
            args = args[:i]
            break
    variants: list[tuple[str, ...]] = [()]
    for token in args:
        choices = token.split("|") if command.inline and "|" in token else [token]
        variants = [(*v, c) for v in variants for c in choices if c]
    return variants


@functools.cache
def help_for(module: str, args: tuple[str, ...]) -> tuple[int, str]:
    """``python -m module ARGS --help``: argparse checks the subcommand and each value it
    consumes on the way, then prints the help of the (sub)command the arguments chose."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, "COLUMNS": "300", "NO_COLOR": "1"},
    )
    return done.returncode, done.stdout + done.stderr


def command_problems(command: Command) -> list[str]:
    where = f"line {command.line}: python -m {command.module}"
    if command.module not in _module_exists_cache:
        _module_exists_cache[command.module] = _module_exists(command.module)
    if not _module_exists_cache[command.module]:
        return [f"{where}: no module {command.module!r}"]
    problems = []
    for args in _variants(command):
        code, text = help_for(command.module, args)
        if code != 0:
            problems.append(
                f"{where} {' '.join(args)}: --help after these arguments "
                f"exits {code}: {text.strip().splitlines()[-1:]}"
            )
            continue
        known = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))
        known |= set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_for(command.module, ())[1]))
        for token in args:
            flag = token.split("=", 1)[0]
            if re.fullmatch(r"--?[A-Za-z][\w-]*", flag) and flag not in known:
                problems.append(
                    f"{where}: {flag} is not an option of {command.module} "
                    f"{' '.join(a for a in args if not a.startswith('-'))[:40]}"
                )
    return problems


_module_exists_cache: dict[str, bool] = {}


def _module_exists(module: str) -> bool:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def env_problems(text: str, commands: list[Command]) -> list[str]:
    entered = text.find(ENTER_ENV)
    return [
        f"line {c.line}: `python -m {c.module}` comes before the page says how the "
        f"environment is entered: write `.venv/bin/python -m`, or say `{ENTER_ENV}` "
        "(make run / make test create .venv) above it"
        for c in commands
        if not c.venv and (entered < 0 or c.offset < entered)
    ]


def _file_param(path: Path) -> object:
    name = path.relative_to(ROOT).as_posix()
    if name in COMMANDS_KNOWN_BROKEN:
        reason = COMMANDS_KNOWN_BROKEN[name]
        return pytest.param(name, marks=pytest.mark.xfail(reason=reason, strict=True))
    return name


@pytest.mark.slow
@pytest.mark.parametrize("name", [_file_param(p) for p in COMMAND_FILES])
def test_commands_run_as_written(name: str):
    text = (ROOT / name).read_text(encoding="utf-8")
    commands = commands_in(text)
    problems = env_problems(text, commands)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for found in pool.map(command_problems, commands):
            problems += found
    assert not problems, f"{name}:\n  " + "\n  ".join(dict.fromkeys(problems))


def test_command_extraction():
    page = (
        "Run `python -m chapters.01_listen --port 0`.\n\n"
        "```console\n$ .venv/bin/python -m tools.client ping --count 3  # three\n"
        "$ python -m tools.chapters diff 01 02 | less\n```\n\n"
        "| `python -m tools.client ping\\|login` | x |\n"
    )
    found = commands_in(page)
    assert [(c.line, c.venv, c.module, c.args) for c in found] == [
        (1, False, "chapters.01_listen", ("--port", "0")),
        (4, True, "tools.client", ("ping", "--count", "3")),
        (5, False, "tools.chapters", ("diff", "01", "02")),
        (8, False, "tools.client", ("ping|login",)),
    ]
    assert _variants(found[3]) == [("ping",), ("login",)]
    assert len(env_problems(page, found)) == 3  # the three bare ones: no ENTER_ENV
    entered = f"{ENTER_ENV} first.\n\n" + page
    assert env_problems(entered, commands_in(entered)) == []


@pytest.mark.slow
def test_command_checks_catch_mistakes():
    def one(line: str) -> list[str]:
        return command_problems(commands_in(f"`{line}`")[0])

    assert one("python -m tools.client ping --count 3") == []
    assert "no module" in one("python -m tools.nope")[0]
    assert "--bogus is not an option" in one("python -m tools.client ping --bogus")[0]
    assert "exits 2" in one("python -m tools.attack nonsense")[0]
    assert "exits 2" in one("python -m tools.client ping --count many")[0]
