"""The docs site builds strictly, its chapter pages and placeholders name real chapters,
the diff hook renders a chapter diff faithfully, and the README's two commands are the
Makefile's."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
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
    assert '```` diff title="chapters/02_b/README.md"\n--- chapters/01_a/README.md\n' in out
    assert '``` diff title="chapters/02_b/server.py"\n--- chapters/01_a/server.py\n' in out
    assert "+# ;--8<-- [start:x]\n" in out  # escaped for pymdownx.snippets
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
