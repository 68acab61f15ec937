"""MkDocs hook: put each chapter's generated diff and file table on its page at build time.

A page writes a placeholder on a line of its own::

    <!-- chapter-diff: 02_epoll -->
    <!-- chapter-files: 02_epoll -->

and the build replaces it with, respectively, the unified diff of that chapter against the
previous one (one ``diff`` code block per file, computed by :mod:`tools.chapters`, never
pasted into the page) and a table of the chapter's files marked added, changed or
unchanged. The first chapter has no previous chapter, so its diff placeholder becomes a
short note instead. A placeholder naming a chapter that does not exist fails the build.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

PLACEHOLDER = re.compile(r"^<!--[ \t]*chapter-(diff|files):[ \t]*(\S+?)[ \t]*-->[ \t]*$", re.M)

# pymdownx.snippets treats "--8<--" lines in the page as its own notation (a section marker
# line is deleted, a quoted path is included). Source files in a diff carry such lines, so
# they are escaped with ";" (which snippets removes again) to reach the page as written.
_SNIPPET_LINE = re.compile(r"^[ \t]*-+8<-+(?:[ \t]+([\"']).*\1)?[ \t]*$")
_SECTION_MARKER = re.compile(r"-+8<-+[ \t]+\[[ \t]*(?:start|end)[ \t]*:", re.I)
_MARKER = re.compile(r"(?<![-;])-+8<-")


# The repository this hook belongs to (docs/hooks/ -> the root), which holds tools/
_REPO = Path(__file__).resolve().parents[2]


def _chapters_module() -> Any:
    if str(_REPO) not in sys.path:
        sys.path.insert(0, str(_REPO))
    import tools.chapters

    return tools.chapters


def _escape_snippet_notation(line: str) -> str:
    body = line[1:]  # the diff's own first column (" ", "+" or "-")
    if "8<-" in body and (_SNIPPET_LINE.match(body) or _SECTION_MARKER.search(body)):
        return line[0] + _MARKER.sub(lambda m: ";" + m.group(0), body, count=1)
    return line


def _fence_for(text: str) -> str:
    """A backtick fence longer than any backtick run inside ``text`` (chapter READMEs hold
    fenced blocks of their own, which must not close ours)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def render_diff(root: Path, name: str) -> str:
    chapters = _chapters_module()
    found = chapters.discover(root)
    chapter = chapters.resolve(root, name, found)
    prev = chapters.previous(root, chapter.name, found)
    if prev is None:
        return (
            '!!! note "No diff for the first chapter"\n'
            "    Every file of this chapter is new, so there is nothing to compare it with. "
            "From chapter 2 on, this section shows the diff against the previous chapter, "
            "generated from the source folders when the site is built.\n"
        )
    diffs = chapters.diff_files(root, prev.name, chapter.name)
    if not diffs:
        return f"Chapter `{chapter.name}` is byte-identical to `{prev.name}`.\n"
    summary = []
    for status in ("changed", "added", "removed"):
        names = [f"`{d.path}`" for d in diffs if d.status == status]
        if names:
            summary.append(f"{status}: {', '.join(names)}")
    parts = [
        f"Generated from the source folders when this site was built "
        f"(`python -m tools.chapters diff {prev.number} {chapter.number}` prints the same). "
        f"Files {'; '.join(summary)}. Every other file is identical to `{prev.name}`.\n"
    ]
    # server.py first (it holds the handlers and the wiring), then the chapter's own new
    # modules, then the rest; each file's diff collapsed, so the page stays short and the
    # reader opens the ones they want.
    order = {"added": 1, "changed": 2, "removed": 3}
    for diff in sorted(diffs, key=lambda d: (d.path != "server.py", order[d.status], d.path)):
        lines = diff.text.splitlines()
        body = "\n".join(_escape_snippet_notation(line) for line in lines)
        fence = _fence_for(body)
        title = diff.new_label if diff.status != "removed" else f"{diff.old_label} (removed)"
        plus = sum(1 for line in lines[2:] if line.startswith("+"))
        minus = sum(1 for line in lines[2:] if line.startswith("-"))
        block = f'{fence} diff title="{title}"\n{body}\n{fence}'
        summary = f"`{diff.path}` ({diff.status}: +{plus} -{minus})"
        parts.append(f'??? abstract "{summary}"\n\n' + _indent(block) + "\n")
    return "\n".join(parts)


def _indent(text: str) -> str:
    """Indent a block by four spaces, so it sits inside a collapsible ``???`` block."""
    return "\n".join(f"    {line}" if line else "" for line in text.splitlines())


def render_files(root: Path, name: str) -> str:
    chapters = _chapters_module()
    chapter = chapters.resolve(root, name)
    prev = chapters.previous(root, chapter.name)
    against = f"`{prev.name}`" if prev is not None else "nothing (first chapter)"
    lines = [
        f"| File in `chapters/{chapter.name}/` | Compared with {against} |",
        "| --- | --- |",
    ]
    marks = {"added": "**added**", "changed": "**changed**", "unchanged": "identical copy"}
    for path, status in chapters.file_table(root, chapter.name):
        lines.append(f"| `{path}` | {marks[status]} |")
    return "\n".join(lines) + "\n"


def render_placeholders(markdown: str, root: Path) -> str:
    """Replace every placeholder in ``markdown``; raise ``LookupError`` for an unknown
    chapter."""

    def replace(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2)
        return render_diff(root, name) if kind == "diff" else render_files(root, name)

    return PLACEHOLDER.sub(replace, markdown)


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    root = Path(config.config_file_path).resolve().parent
    try:
        return render_placeholders(markdown, root)
    except LookupError as exc:
        raise PluginError(f"{page.file.src_uri}: chapter placeholder: {exc}") from exc
