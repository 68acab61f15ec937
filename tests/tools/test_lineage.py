"""Chapters are snapshots (GUIDE.md section 4): the real chapters' lineage is honest, and
the checker, ``forward`` and ``diff`` of :mod:`tools.chapters` do what they say, on fake
chapter trees in a temporary directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import chapters as ch

ROOT = Path(__file__).resolve().parents[2]


# -- the real chapters --------------------------------------------------------------------


def test_real_chapters_lineage_is_honest():
    found = ch.discover(ROOT)
    assert found, "no chapters found"
    problems = ch.check(ROOT, found)
    assert not problems, "lineage problems:\n" + "\n".join(map(str, problems))


def test_real_chapters_metadata_is_readable():
    for chapter in ch.discover(ROOT):
        assert not chapter.errors, (chapter.name, chapter.errors)
        assert chapter.features, f"{chapter.name} declares no FEATURES"
        assert "__init__.py" in chapter.adds | chapter.changes, (
            f"{chapter.name}: __init__.py carries the chapter's own metadata, so it is always "
            "added or changed"
        )


def test_real_first_chapter_adds_every_file():
    first = ch.discover(ROOT)[0]
    assert first.adds == first.files()
    assert first.changes == frozenset()


# -- a fake chapters tree -----------------------------------------------------------------


def write_chapter(
    root: Path,
    name: str,
    files: dict[str, str],
    *,
    adds: set[str] | None = None,
    changes: set[str] = frozenset(),  # type: ignore[assignment]
    features: tuple[str, ...] = ("listen",),
) -> Path:
    """Write chapters/<name>/ with ``files`` and an ``__init__.py`` declaring the sets.
    ``adds`` defaults to every file (what a first chapter declares)."""
    folder = root / "chapters" / name
    folder.mkdir(parents=True)
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text, encoding="utf-8")
    if adds is None:
        adds = set(files) | {"__init__.py"}
    init = (
        f'"""Chapter {name}."""\n\n'
        f'TITLE = "Chapter {name}"\n'
        f"FEATURES = frozenset({sorted(features)!r})\n"
        f"ADDS = frozenset({sorted(adds)!r})\n"
        f"CHANGES: frozenset[str] = frozenset({sorted(changes)!r})\n"
    )
    (folder / "__init__.py").write_text(init, encoding="utf-8")
    return folder


BASE = {"server.py": "def serve():\n    return 1\n", "util.py": "X = 1\n"}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Three honest chapters: 02 changes server.py and adds pool.py; 03 changes nothing
    but its __init__.py."""
    write_chapter(tmp_path, "01_listen", BASE)
    write_chapter(
        tmp_path,
        "02_epoll",
        {**BASE, "server.py": "def serve():\n    return 2\n", "pool.py": "POOL = []\n"},
        adds={"pool.py"},
        changes={"__init__.py", "server.py"},
        features=("listen", "epoll"),
    )
    write_chapter(
        tmp_path,
        "03_pool",
        {**BASE, "server.py": "def serve():\n    return 2\n", "pool.py": "POOL = []\n"},
        adds=set(),
        changes={"__init__.py"},
        features=("listen", "epoll", "pool"),
    )
    return tmp_path


def kinds(problems: list[ch.Problem]) -> list[tuple[str, str, str]]:
    return [(p.chapter, p.kind, p.path) for p in problems]


def test_honest_tree_has_no_problems(tree: Path):
    assert ch.check(tree) == []
    assert [c.name for c in ch.discover(tree)] == ["01_listen", "02_epoll", "03_pool"]
    second = ch.discover(tree)[1]
    assert second.adds == {"pool.py"}
    assert second.changes == {"__init__.py", "server.py"}
    assert second.features == {"listen", "epoll"}
    assert second.title == "Chapter 02_epoll"


def test_undeclared_difference(tree: Path):
    (tree / "chapters/03_pool/util.py").write_text("X = 2\n")
    assert kinds(ch.check(tree)) == [("03_pool", ch.UNDECLARED_CHANGE, "util.py")]


def test_declared_change_that_is_identical(tree: Path):
    (tree / "chapters/02_epoll/server.py").write_text(BASE["server.py"])
    (tree / "chapters/03_pool/server.py").write_text(BASE["server.py"])
    assert kinds(ch.check(tree)) == [("02_epoll", ch.IDENTICAL_CHANGE, "server.py")]


def test_declared_add_that_already_existed(tmp_path: Path):
    write_chapter(tmp_path, "01_a", BASE)
    write_chapter(tmp_path, "02_b", BASE, adds={"util.py"}, changes={"__init__.py"})
    assert kinds(ch.check(tmp_path)) == [("02_b", ch.ADD_EXISTED, "util.py")]


def test_file_missing_from_later_chapter(tree: Path):
    (tree / "chapters/03_pool/util.py").unlink()
    assert kinds(ch.check(tree)) == [("03_pool", ch.MISSING, "util.py")]


def test_declared_names_that_do_not_exist(tmp_path: Path):
    write_chapter(tmp_path, "01_a", BASE, adds={"__init__.py", *BASE, "README.md"})
    write_chapter(tmp_path, "02_b", BASE, adds={"pool.py"}, changes={"__init__.py", "ghost.py"})
    assert kinds(ch.check(tmp_path)) == [
        ("01_a", ch.NOT_FOUND, "README.md"),
        ("02_b", ch.NOT_FOUND, "ghost.py"),
        ("02_b", ch.NOT_FOUND, "pool.py"),
    ]


def test_undeclared_new_file_and_change_that_should_be_an_add(tmp_path: Path):
    write_chapter(tmp_path, "01_a", BASE)
    write_chapter(
        tmp_path,
        "02_b",
        {**BASE, "new.py": "", "other.py": ""},
        adds=set(),
        changes={"__init__.py", "other.py"},
    )
    assert kinds(ch.check(tmp_path)) == [
        ("02_b", ch.UNDECLARED_ADD, "new.py"),
        ("02_b", ch.UNDECLARED_ADD, "other.py"),
        ("02_b", ch.CHANGE_IS_NEW, "other.py"),
    ]


def test_first_chapter_must_add_every_file(tmp_path: Path):
    write_chapter(tmp_path, "01_a", BASE, adds={"__init__.py", "server.py"})
    assert kinds(ch.check(tmp_path)) == [("01_a", ch.UNDECLARED_ADD, "util.py")]


def test_added_and_changed_at_once(tmp_path: Path):
    write_chapter(tmp_path, "01_a", BASE)
    write_chapter(
        tmp_path,
        "02_b",
        {**BASE, "util.py": "X = 2\n"},
        adds={"util.py"},
        changes={"__init__.py", "util.py"},
    )
    assert kinds(ch.check(tmp_path)) == [
        ("02_b", ch.BOTH, "util.py"),
        ("02_b", ch.ADD_EXISTED, "util.py"),
    ]


def test_bytecode_caches_are_ignored(tree: Path):
    for name in ("01_listen", "03_pool"):
        cache = tree / "chapters" / name / "__pycache__"
        cache.mkdir()
        (cache / "server.cpython-311.pyc").write_bytes(name.encode())
    (tree / "chapters/03_pool/stray.pyc").write_bytes(b"\0")
    assert ch.check(tree) == []
    assert "__pycache__/server.cpython-311.pyc" not in ch.discover(tree)[0].files()


def test_unreadable_or_incomplete_metadata(tmp_path: Path):
    write_chapter(tmp_path, "01_a", BASE)
    folder = write_chapter(tmp_path, "02_b", BASE, adds=set(), changes={"__init__.py"})
    (folder / "__init__.py").write_text('"""No lineage here."""\nTITLE = "b"\n')
    no_init = tmp_path / "chapters" / "03_c"
    shutil.copytree(folder, no_init)
    (no_init / "__init__.py").unlink()
    problems = ch.check(tmp_path)
    assert (
        "02_b",
        ch.METADATA,
        "",
    ) in kinds(problems)
    messages = [p.message for p in problems if p.kind == ch.METADATA]
    assert "__init__.py does not define ADDS" in messages
    assert "has no __init__.py" in messages
    # 03_c lost __init__.py, which 02_b has: that is also a missing file.
    assert ("03_c", ch.MISSING, "__init__.py") in kinds(problems)


def test_duplicate_chapter_numbers(tmp_path: Path):
    write_chapter(tmp_path, "01_a", BASE)
    write_chapter(tmp_path, "01_b", BASE, adds=set(), changes={"__init__.py"})
    assert kinds(ch.check(tmp_path)) == [("01_b", ch.METADATA, "")]


def test_metadata_that_is_computed_is_still_read(tmp_path: Path):
    folder = write_chapter(tmp_path, "01_a", BASE)
    (folder / "__init__.py").write_text(
        "_BASE = frozenset({'__init__.py'})\n"
        "ADDS = _BASE | {'server.py', 'util.py'}\n"  # static: names and unions
        "CHANGES = frozenset()\n"
        "FEATURES = frozenset(sorted(['listen']))\n"  # not static: the file is executed
    )
    [chapter] = ch.discover(tmp_path)
    assert chapter.adds == {"__init__.py", "server.py", "util.py"}
    assert chapter.features == {"listen"}
    assert ch.check(tmp_path) == []


def test_resolve_and_previous(tree: Path):
    assert ch.resolve(tree, "2").name == "02_epoll"
    assert ch.resolve(tree, "02").name == "02_epoll"
    assert ch.resolve(tree, "chapters/03_pool/").name == "03_pool"
    with pytest.raises(LookupError, match="01_listen, 02_epoll, 03_pool"):
        ch.resolve(tree, "09")
    assert ch.previous(tree, "01") is None
    assert ch.previous(tree, "03_pool").name == "02_epoll"  # type: ignore[union-attr]


# -- diff ----------------------------------------------------------------------------------


def test_diff_of_two_chapters(tree: Path):
    diffs = ch.diff_files(tree, "01", "02")
    assert [(d.path, d.status) for d in diffs] == [
        ("__init__.py", "changed"),
        ("pool.py", "added"),
        ("server.py", "changed"),
    ]
    server = diffs[2].text.splitlines()
    assert server[:2] == ["--- chapters/01_listen/server.py", "+++ chapters/02_epoll/server.py"]
    assert server[3:] == [" def serve():", "-    return 1", "+    return 2"]
    assert diffs[1].text.splitlines() == [
        "--- /dev/null",
        "+++ chapters/02_epoll/pool.py",
        "@@ -0,0 +1 @@",
        "+POOL = []",
    ]
    assert ch.diff_chapters(tree, "01_listen", "02_epoll") == "".join(d.text for d in diffs)
    assert ch.chapter_diff(tree, "02") == ch.diff_chapters(tree, "01", "02")
    assert ch.chapter_diff(tree, "01") is None


def test_diff_marks_removed_binary_and_unterminated_files(tmp_path: Path):
    write_chapter(tmp_path, "01_a", {"gone.py": "x\n", "logo.bin": "", "t.txt": "a"})
    folder = write_chapter(tmp_path, "02_b", {"logo.bin": "", "t.txt": "b"})
    (tmp_path / "chapters/01_a/logo.bin").write_bytes(b"\xff\x00")
    (folder / "logo.bin").write_bytes(b"\xfe\x00")
    diffs = {d.path: d for d in ch.diff_files(tmp_path, "01", "02")}
    assert diffs["gone.py"].status == "removed"
    assert diffs["gone.py"].text.splitlines()[:2] == ["--- chapters/01_a/gone.py", "+++ /dev/null"]
    assert diffs["logo.bin"].text == (
        "Binary files chapters/01_a/logo.bin and chapters/02_b/logo.bin differ\n"
    )
    assert diffs["t.txt"].text.splitlines()[3:] == [
        "-a",
        "\\ No newline at end of file",
        "+b",
        "\\ No newline at end of file",
    ]


def test_file_table(tree: Path):
    assert ch.file_table(tree, "02") == [
        ("__init__.py", "changed"),
        ("pool.py", "added"),
        ("server.py", "changed"),
        ("util.py", "unchanged"),
    ]


def test_cli_diff_is_plain_when_piped(tree: Path, capsys: pytest.CaptureFixture[str]):
    assert ch.main(["--root", str(tree), "diff", "01", "02"]) == 0
    out = capsys.readouterr().out
    assert out == ch.diff_chapters(tree, "01", "02")
    assert "\x1b[" not in out
    assert ch.main(["--root", str(tree), "diff", "01", "07"]) == 2
    assert "no chapter '07'" in capsys.readouterr().err


def test_cli_check_and_list(tree: Path, capsys: pytest.CaptureFixture[str]):
    assert ch.main(["--root", str(tree), "check"]) == 0
    assert "lineage ok: 3 chapter(s), 01 -> 02 -> 03" in capsys.readouterr().out
    (tree / "chapters/02_epoll/util.py").write_text("X = 3\n")
    assert ch.main(["--root", str(tree), "check"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("chapters/02_epoll/util.py: differs from 01_listen")
    assert out[1].startswith("chapters/03_pool/util.py: differs from 02_epoll")
    assert ch.main(["--root", str(tree), "list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("01_listen", "02_epoll", "03_pool", "pool.py"))


def test_module_runs_as_a_command(tree: Path):
    done = subprocess.run(
        [sys.executable, "-m", "tools.chapters", "--root", str(tree), "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("lineage ok: 3 chapter(s)")


# -- forward -------------------------------------------------------------------------------


@pytest.fixture
def long_tree(tmp_path: Path) -> Path:
    """util.py introduced in 01, carried unchanged by 02 and 03, changed on purpose in 04."""
    write_chapter(tmp_path, "01_a", BASE)
    for name in ("02_b", "03_c"):
        write_chapter(tmp_path, name, BASE, adds=set(), changes={"__init__.py"})
    write_chapter(
        tmp_path,
        "04_d",
        {**BASE, "util.py": "X = 4\n"},
        adds=set(),
        changes={"__init__.py", "util.py"},
    )
    assert ch.check(tmp_path) == []
    return tmp_path


def git(root: Path, *args: str) -> None:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=30,
        env=env,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_forward_uses_the_committed_version_and_stops_at_a_declared_change(long_tree: Path):
    git(long_tree, "init", "-q")
    git(long_tree, "add", ".")
    git(long_tree, "commit", "-q", "-m", "chapters")
    fixed = "X = 1  # fixed\n"
    (long_tree / "chapters/01_a/util.py").write_text(fixed)

    report = ch.forward(long_tree, "chapters/01_a/util.py")
    assert report.copied == ["02_b", "03_c"]
    assert report.stopped is not None and report.stopped.startswith("04_d declares util.py")
    for name in ("02_b", "03_c"):
        assert (long_tree / "chapters" / name / "util.py").read_text() == fixed
    assert (long_tree / "chapters/04_d/util.py").read_text() == "X = 4\n"
    assert ch.check(long_tree) == []

    again = ch.forward(long_tree, "chapters/01_a/util.py")
    assert (again.copied, again.up_to_date) == ([], ["02_b", "03_c"])


def test_forward_dry_run_copies_nothing(long_tree: Path, capsys: pytest.CaptureFixture[str]):
    (long_tree / "chapters/01_a/util.py").write_text("X = 1  # fixed\n")
    report = ch.forward(long_tree, "util.py", from_chapter="01", old=[b"X = 1\n"], dry_run=True)
    assert report.copied == ["02_b", "03_c"]
    assert (long_tree / "chapters/02_b/util.py").read_text() == "X = 1\n"
    # The CLI reports the same without git (a tmp dir is no repository): from chapter 2,
    # whose copy is meant to equal chapter 1's, the previous chapter supplies the old version.
    (long_tree / "chapters/01_a/util.py").write_text("X = 1\n")
    (long_tree / "chapters/02_b/util.py").write_text("X = 1  # fixed\n")
    args = ["--root", str(long_tree), "forward", "chapters/02_b/util.py", "--dry-run"]
    assert ch.main(args) == 0
    out = capsys.readouterr().out
    assert "note: 02_b does not declare util.py changed, so the fix belongs in " in out
    assert "chapters/01_a/util.py" in out
    assert "would copy chapters/02_b/util.py -> chapters/03_c/util.py" in out
    assert "stopped: 04_d declares util.py changed" in out
    assert (long_tree / "chapters/03_c/util.py").read_text() == "X = 1\n"


def test_forward_does_not_overwrite_an_unexpected_copy(long_tree: Path):
    (long_tree / "chapters/01_a/util.py").write_text("X = 1  # fixed\n")
    (long_tree / "chapters/03_c/util.py").write_text("X = 1  # someone else's edit\n")
    report = ch.forward(long_tree, "chapters/01_a/util.py", old=[b"X = 1\n"])
    assert report.copied == ["02_b"]
    assert report.stopped is not None and "neither the old nor the new" in report.stopped
    assert (long_tree / "chapters/03_c/util.py").read_text() == "X = 1  # someone else's edit\n"


def test_forward_rejects_paths_outside_chapters(long_tree: Path):
    with pytest.raises(LookupError, match="give a path like"):
        ch.forward(long_tree, "util.py")
    with pytest.raises(LookupError, match="does not exist"):
        ch.forward(long_tree, "chapters/01_a/nope.py")
    with pytest.raises(LookupError, match="is not in chapter 02"):
        ch.forward(long_tree, "chapters/01_a/util.py", from_chapter="02")
