"""``python -m tools.exercise``: every exercise is checkable and solvable, and the tool's
commands do what they say.

* checkable: the exercise's check fails (pytest exit 1: tests ran and failed) on a copy of
  the chapter as it is;
* solvable: it passes once the solution patch is applied to a fresh copy;
* the commands (list, start, check, diff, solution, run) and their errors;
* nothing is left behind: every copy lives in a temporary work folder, and the repository's
  ``exercises/`` and ``chapters/`` trees are the same after the checks as before.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
import signal
from pathlib import Path

import pytest

from common.protocol import PING_PACKET
from tests.conftest import LISTENING, START_TIMEOUT, STOP_TIMEOUT, Proc, recv_exactly
from tools import exercise as ex
from tools.chapters import discover
from tools.client import Client

ROOT = Path(__file__).resolve().parents[2]
IDS = [e.id for e in ex.CATALOGUE]


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (bytecode caches aside) and a hash of its bytes."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def bytecode_caches() -> list[Path]:
    """The __pycache__ folders in exercises/ (the readers' copies aside): the checks run
    with PYTHONDONTWRITEBYTECODE, so they must not add any."""
    return sorted(
        path
        for path in (ROOT / "exercises").rglob("__pycache__")
        if "work" not in path.relative_to(ROOT / "exercises").parts
    )


# -- every exercise: fails as the chapter is, passes with its solution --------------------


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ex.CheckResult, ...]]:
    """Every exercise's check on an untouched copy and on a solved copy, run in parallel
    (each check is a pytest process of its own); the repository must not change."""
    before = {name: tree_digest(ROOT / name) for name in ("exercises", "chapters")}
    caches = bytecode_caches()
    untouched, solved = tmp_path_factory.mktemp("untouched"), tmp_path_factory.mktemp("solved")
    for exercise in ex.CATALOGUE:
        ex.start(exercise, untouched)
        ex.start(exercise, solved)
        changed = ex.apply_solution(exercise, solved)
        assert sorted(changed) == sorted(exercise.edit), (
            f"{exercise.id}: the solution changes {changed}, the catalogue says {exercise.edit}"
        )
    jobs = [(e, work) for e in ex.CATALOGUE for work in (untouched, solved)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: ex.check(*job), jobs))
    after = {name: tree_digest(ROOT / name) for name in ("exercises", "chapters")}
    assert after == before, "running the checks changed files in the repository"
    assert bytecode_caches() == caches, "a check left bytecode in exercises/"
    for work in (untouched, solved):
        assert not list(work.rglob("__pycache__")), "a check left bytecode in a copy"
    by_id: dict[str, list[ex.CheckResult]] = {}
    for (exercise, _), result in zip(jobs, results, strict=True):
        by_id.setdefault(exercise.id, []).append(result)
    return {key: tuple(value) for key, value in by_id.items()}


@pytest.mark.parametrize("exercise_id", IDS)
def test_the_check_fails_on_the_chapter_as_it_is(checked, exercise_id):
    result = checked[exercise_id][0]
    # 1: tests ran and some failed. Anything else (2-5) means the check could not run.
    assert result.returncode == 1, result.output
    assert re.search(r"\d+ failed", result.output), result.output


@pytest.mark.parametrize("exercise_id", IDS)
def test_the_check_passes_with_the_solution(checked, exercise_id):
    result = checked[exercise_id][1]
    assert result.passed, result.output
    assert re.search(r"\d+ passed", result.output), result.output
    assert "skipped" not in result.output and "failed" not in result.output, result.output


# -- the catalogue, the files and the page agree -------------------------------------------


def test_every_exercise_has_its_check_and_solution_and_nothing_else_is_there():
    assert len(set(IDS)) == len(IDS), "duplicate exercise ids"
    checks = {p.name for p in ex.CHECKS.glob("test_*.py")}
    solutions = {p.name for p in ex.SOLUTIONS.glob("*")}
    assert checks == {e.check_file.name for e in ex.CATALOGUE}
    assert solutions == {e.solution_file.name for e in ex.CATALOGUE}
    chapters = {c.name for c in discover(ROOT)}
    for exercise in ex.CATALOGUE:
        assert exercise.chapter in chapters, exercise
        assert exercise.id.split(".")[0] == str(int(exercise.chapter[:2])), exercise
        for name in exercise.edit:
            assert (ROOT / "chapters" / exercise.chapter / name).is_file(), (exercise.id, name)


def test_every_chapter_has_a_checkable_exercise():
    numbers = {e.chapter for e in ex.CATALOGUE}
    assert numbers == {c.name for c in discover(ROOT)}


def test_the_page_has_every_anchor_and_solution():
    page = (ROOT / ex.PAGE).read_text(encoding="utf-8")
    for chapter in discover(ROOT):
        number = int(chapter.number)
        assert f"{{#chapter-{number}}}" in page, f"no #chapter-{number} heading"
    for exercise in ex.CATALOGUE:
        assert f"{{#{exercise.anchor}}}" in page, f"no #{exercise.anchor} heading"
        assert exercise.title in page, exercise.title
        solution = ex._shown(exercise.solution_file)
        assert f'--8<-- "{solution}"' in page, f"the page does not include {solution}"
        assert f"python -m tools.exercise check {exercise.id}" in page


# -- the commands ---------------------------------------------------------------------------


def main(capsys: pytest.CaptureFixture[str], work: Path, *args: str) -> tuple[int, str, str]:
    code = ex.main(["--work", str(work), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_exercise_and_which_are_started(tmp_path, capsys):
    ex.start(ex.find("3.1"), tmp_path)
    code, out, _ = main(capsys, tmp_path, "list")
    assert code == 0
    for exercise in ex.CATALOGUE:
        assert exercise.id in out
    assert out.count("not started") == len(ex.CATALOGUE) - 1
    assert "03_pool_ex1" in out


def test_start_copies_the_chapter_and_says_what_to_do(tmp_path, capsys):
    code, out, _ = main(capsys, tmp_path, "start", "3.1")
    assert code == 0
    copy = tmp_path / "03_pool_ex1"
    assert tree_digest(copy) == tree_digest(ROOT / "chapters" / "03_pool")
    for text in ("Exercise 3.1", "pool.py", "check 3.1", "diff 3.1", "#exercise-3-1"):
        assert text in out, text


def test_the_commands_start_prints_run_as_printed(tmp_path, capsys):
    """With a work folder of its own, every command start suggests names it, in the
    place argparse takes it (before the command)."""
    _, out, _ = main(capsys, tmp_path, "start", "3.1")
    commands = re.findall(r"\.venv/bin/python -m tools\.exercise (.+)", out)
    assert len(commands) == 3, out
    for command in commands:
        argv = command.split()
        assert argv[:2] == ["--work", str(tmp_path)], command
        args = ex.build_parser().parse_args(argv)  # exits on an argument it does not take
        assert args.work == tmp_path and args.id == "3.1"
    _, err = main(capsys, tmp_path, "diff", "3.2")[1:]
    assert f"tools.exercise --work {tmp_path} start 3.2" in err


def test_start_twice_keeps_the_copy_and_force_keeps_a_backup(tmp_path, capsys):
    main(capsys, tmp_path, "start", "2.1")
    edited = tmp_path / "02_epoll_ex1" / "server.py"
    edited.write_text(edited.read_text() + "# mine\n")
    code, _, err = main(capsys, tmp_path, "start", "2.1")
    assert code == 2
    assert "started already" in err and "--force" in err
    assert edited.read_text().endswith("# mine\n")  # untouched
    code, _, _ = main(capsys, tmp_path, "start", "2.1", "--force")
    assert code == 0
    assert not edited.read_text().endswith("# mine\n")  # a fresh copy
    assert (tmp_path / "02_epoll_ex1.bak" / "server.py").read_text().endswith("# mine\n")


@pytest.mark.parametrize("command", ["start", "check", "diff", "solution", "run"])
def test_an_unknown_exercise_is_a_clear_error(tmp_path, capsys, command):
    code, out, err = main(capsys, tmp_path, command, "9.9")
    assert code == 2
    assert err.startswith("error: no exercise '9.9'") and "1.1" in err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("command", ["check", "diff", "run"])
def test_no_copy_yet_is_a_clear_error(tmp_path, capsys, command):
    code, _, err = main(capsys, tmp_path, command, "1.1")
    assert code == 2
    assert "no copy for exercise 1.1 yet" in err
    assert "start 1.1" in err


def test_check_says_pass_or_not_yet(tmp_path, capsys):
    main(capsys, tmp_path, "start", "6.1")
    code, out, _ = main(capsys, tmp_path, "check", "6.1")
    assert code == 1
    assert "NOT YET: exercise 6.1" in out and "#exercise-6-1" in out
    main(capsys, tmp_path, "solution", "6.1", "--apply")
    code, out, _ = main(capsys, tmp_path, "check", "6.1")
    assert code == 0
    assert "PASS: exercise 6.1 is done" in out


def test_check_without_pytest_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    main(capsys, tmp_path, "start", "6.1")
    real = ex.importlib.util.find_spec
    monkeypatch.setattr(
        ex.importlib.util, "find_spec", lambda name: None if name == "pytest" else real(name)
    )
    code, _, err = main(capsys, tmp_path, "check", "6.1")
    assert code == 2
    assert err.startswith("error: pytest is not installed") and "make test" in err


def test_a_copy_that_does_not_import_is_reported(tmp_path, capsys):
    main(capsys, tmp_path, "start", "3.1")
    (tmp_path / "03_pool_ex1" / "pool.py").write_text("def broken(:\n")
    code, out, _ = main(capsys, tmp_path, "check", "3.1")
    assert code == 1
    assert "could not run your copy" in out or "NOT YET" in out


def test_diff_shows_the_changes_and_round_trips_through_apply(tmp_path, capsys):
    main(capsys, tmp_path, "start", "2.1")
    code, out, err = main(capsys, tmp_path, "diff", "2.1")
    assert (code, out) == (0, "")
    assert "no changes yet" in err
    server = tmp_path / "02_epoll_ex1" / "server.py"
    text = server.read_text()
    server.write_text(text.replace("RECV_SIZE = 65536", "RECV_SIZE = 4096") + "# end\n")
    (tmp_path / "02_epoll_ex1" / "notes.txt").write_text("a new file\n")
    (tmp_path / "02_epoll_ex1" / ".server.py.swp").write_bytes(b"\xff\x00 an editor's")
    code, patch, _ = main(capsys, tmp_path, "diff", "2.1")
    assert code == 0
    assert "-RECV_SIZE = 65536\n+RECV_SIZE = 4096\n" in patch
    assert "--- /dev/null\n+++ b/notes.txt\n" in patch
    fresh = tmp_path / "fresh"
    ex.start(ex.find("2.1"), fresh)
    assert sorted(ex.apply_patch(patch, fresh / "02_epoll_ex1")) == ["notes.txt", "server.py"]
    (tmp_path / "02_epoll_ex1" / ".server.py.swp").unlink()
    assert tree_digest(fresh / "02_epoll_ex1") == tree_digest(tmp_path / "02_epoll_ex1")
    (tmp_path / "02_epoll_ex1" / "data.bin").write_bytes(b"\xff\xfe")
    code, _, err = main(capsys, tmp_path, "diff", "2.1")
    assert code == 2 and "data.bin is not UTF-8 text" in err


def test_solution_prints_the_patch_and_apply_wants_a_fresh_copy(tmp_path, capsys):
    code, out, _ = main(capsys, tmp_path, "solution", "5.1")
    assert code == 0
    assert out == ex.solution(ex.find("5.1"))
    assert out.startswith("--- a/server.py\n+++ b/server.py\n@@ ")
    code, _, err = main(capsys, tmp_path, "solution", "5.1", "--apply")
    assert code == 2 and "no copy for exercise 5.1 yet" in err
    main(capsys, tmp_path, "start", "5.1")
    code, out, _ = main(capsys, tmp_path, "solution", "5.1", "--apply")
    assert code == 0 and "server.py" in out
    code, _, err = main(capsys, tmp_path, "solution", "5.1", "--apply")
    assert code == 2
    assert "has changes" in err and "--force" in err


@pytest.mark.parametrize("command", ["list", "start", "check", "diff", "solution", "run"])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        ex.main([command, "--help"] if command != "list" else ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "python -m tools.exercise" in out


def test_run_serves_the_copy(tmp_path):
    work = tmp_path / "work"
    ex.start(ex.find("1.1"), work)
    config = tmp_path / "test.conf"
    config.write_text("ListenPort0 = 0\nUserDatabase = :memory:\nPasswordHashIterations = 1000\n")
    proc = Proc(["-m", "tools.exercise", "--work", str(work), "run", "1.1", "--config",
                 str(config), "--port", "0"])  # fmt: skip
    try:
        port = int(proc.wait_for(LISTENING, START_TIMEOUT).group(1))
        with Client("127.0.0.1", port, timeout=10) as client:
            client.send(PING_PACKET)
            assert recv_exactly(client.sock, 8) == PING_PACKET
        proc.popen.send_signal(signal.SIGINT)
        assert proc.finish(STOP_TIMEOUT) == 0, proc.text
        assert "Goodbye" in proc.text and "01_listen_ex1" in proc.text
    finally:
        proc.kill()


# -- patches ----------------------------------------------------------------------------


def test_solution_files_escape_snippet_notation():
    """The page includes each solution file with pymdownx.snippets, which would drop a
    context line holding a chapter's section marker: every "--8<--" is escaped with ";"
    in the file, and solution() gives the patch back as it applies."""
    for exercise in ex.CATALOGUE:
        stored = exercise.solution_file.read_text(encoding="utf-8")
        assert not re.search(r"(?<![-;])-+8<-", stored), exercise.id
        assert ex.escape_snippets(ex.solution(exercise)) == stored
    marked = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n # --8<-- [start:a]\n-a\n+b\n"
    assert ex.escape_snippets(marked).count(";--8<--") == 1


def test_a_patch_that_does_not_fit_changes_nothing(tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "a.py").write_text("one\ntwo\nthree\n")
    (folder / "b.py").write_text("x\n")
    patch = (
        "--- a/b.py\n+++ b/b.py\n@@ -1 +1 @@\n-x\n+y\n"
        "--- a/a.py\n+++ b/a.py\n@@ -1,3 +1,3 @@\n one\n-TWO\n+2\n three\n"
    )
    with pytest.raises(ex.PatchError, match=r"a\.py: hunk 1"):
        ex.apply_patch(patch, folder)
    assert (folder / "b.py").read_text() == "x\n"  # not half applied


def test_a_hunk_is_found_where_the_file_moved(tmp_path):
    (tmp_path / "a.py").write_text("new first line\none\ntwo\nthree\n")
    ex.apply_patch("--- a/a.py\n+++ b/a.py\n@@ -1,3 +1,3 @@\n one\n-two\n+2\n three\n", tmp_path)
    assert (tmp_path / "a.py").read_text() == "new first line\none\n2\nthree\n"


@pytest.mark.parametrize(
    "patch",
    [
        "not a patch\n",
        "",
        "--- a/x.py\n",
        "--- a/../x.py\n+++ b/../x.py\n@@ -1 +1 @@\n-a\n+b\n",
        "--- a/x.py\n+++ b/x.py\n@@ -1,2 +1,2 @@\n a\n",
    ],
    ids=["text", "empty", "no-plus", "outside", "truncated"],
)
def test_malformed_patches_are_refused(tmp_path, patch):
    (tmp_path / "x.py").write_text("a\n")
    with pytest.raises(ex.PatchError):
        ex.apply_patch(patch, tmp_path)
    assert (tmp_path / "x.py").read_text() == "a\n"


def test_a_work_folder_that_cannot_be_made_is_an_error_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = main(capsys, blocker / "work", "start", "1.1")
    assert code == 1
    assert err.startswith("error: ") and "Traceback" not in out + err
