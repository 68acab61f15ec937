"""The built site, as a reader sees it: every page opened in headless Chromium.

The site is built strictly into a temporary folder, served on 127.0.0.1, and every page is
opened twice with the network cut off (any request that leaves the local server is
aborted and reported):

* at 1280 px wide: every Mermaid diagram rendered to an SVG, with no Mermaid error, its
  labels complete (every word of the source's labels is in the picture), no two labels
  drawn over each other, and no text under 10 px; no identifier in a table cell cut in
  the middle; no internal link broken;
* at 400 px wide (a phone): no body text sticks out of the page sideways.

A full-page screenshot of every page at both widths is saved under ``site/screenshots/``
for a person to look at. Chromium is Debian's (``.ci/run`` installs it), driven by
Playwright for Python; the test skips, visibly, where there is none.
"""

from __future__ import annotations

import contextlib
import functools
import html
import http.server
import os
import re
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docs.test_docs import DOCS, ROOT, mkdocs_build, nav_pages

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the site fixture skips every browser test then

    class PlaywrightTimeout(Exception):  # type: ignore[no-redef]
        pass


SCREENSHOTS = ROOT / "site" / "screenshots"
WIDE, NARROW = 1280, 400
MIN_TEXT_PX = 10.0
# Screenshots stop this far down: a chapter page with its generated diff is 40000 px tall,
# which is slow to capture and nobody reviews as one picture. Each diagram gets its own.
SHOT_MAX_HEIGHT = 6000
# A diagram taller than the window would have the page's sticky header drawn over its top.
NO_HEADER = ".md-header, .md-tabs { visibility: hidden !important; }"
RENDER_TIMEOUT_MS = 20_000
# Two labels overlap when their boxes share more than this part of the smaller one.
OVERLAP = 0.15
# Debian's flags for a headless run as root; no GPU, no sync, nothing fetched in the
# background (the page must render from the local server alone).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Diagrams on chapter pages that the chapter rewrite will fix (the chapter pages are not
# this test's to edit). Each is expected to fail until then; strict, so a fixed page
# turns the xfail into a failure that asks for its removal.
KNOWN_BROKEN = {
}


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def pages() -> list[str]:
    """Every page of the site: the nav's, and any other page under docs/."""
    found = set(nav_pages())
    found |= {
        p.relative_to(DOCS).as_posix()
        for p in DOCS.rglob("*.md")
        if p.relative_to(DOCS).parts[0] != "hooks"
    }
    return sorted(found)


def page_url(page: str) -> str:
    """``chapters/01_listen.md`` -> ``chapters/01_listen/`` (use_directory_urls)."""
    stem = page.removesuffix(".md")
    if stem == "index":
        return ""
    return stem.removesuffix("/index") + "/"


# -- what a page must look like ------------------------------------------------------------

# Runs in the page: everything about the rendered diagrams, measured by the browser.
# Material renders each diagram into a *closed* shadow root; the init script below opens
# them so the test can look inside (it changes nothing else).
OPEN_SHADOW_ROOTS = """
const attach = Element.prototype.attachShadow;
Element.prototype.attachShadow = function (init) {
    return attach.call(this, { ...init, mode: "open" });
};
"""

MEASURE_DIAGRAMS = """
() => {
  const out = [];
  for (const host of document.querySelectorAll("div.mermaid")) {
    const root = host.shadowRoot;
    const svg = root && root.querySelector("svg");
    const d = { svg: !!svg, words: "", smallest: null, smallestText: "", labels: [],
                height: host.getBoundingClientRect().height };
    out.push(d);
    if (!svg) continue;
    const walker = document.createTreeWalker(svg, NodeFilter.SHOW_TEXT);
    const texts = [];
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      if (n.parentElement.closest("style") || !n.textContent.trim()) continue;
      texts.push(n.textContent);
      const el = n.parentElement;
      // Rendered size = font size x the scale the SVG is drawn at (for HTML labels, the
      // scale of their foreignObject).
      const owner = el instanceof SVGGraphicsElement ? el : el.closest("foreignObject");
      const ctm = owner && owner.getScreenCTM();
      const scale = ctm ? Math.sqrt(Math.abs(ctm.a * ctm.d - ctm.b * ctm.c)) : 1;
      const px = parseFloat(getComputedStyle(el).fontSize) * scale;
      if (d.smallest === null || px < d.smallest) {
        d.smallest = px;
        d.smallestText = n.textContent.trim();
      }
      const range = document.createRange();
      range.selectNodeContents(n);
      for (const r of el instanceof SVGElement ? [el.getBoundingClientRect()]
                                               : range.getClientRects()) {
        if (r.width > 0 && r.height > 0)
          d.labels.push({ text: n.textContent.trim(), x: r.left, y: r.top,
                          w: r.width, h: r.height });
      }
    }
    d.words = texts.join(" ");
  }
  return out;
}
"""

MEASURE_OVERFLOW = """
(width) => {
  const bad = [];
  const article = document.querySelector("article") || document.body;
  const sel = "p, li, h1, h2, h3, h4, h5, h6, dt, dd, blockquote, .admonition, details, "
            + ".md-typeset__scrollwrap, .highlight, div.mermaid";
  for (const el of article.querySelectorAll(sel)) {
    // Code blocks and tables scroll sideways inside their own box: only that box must fit.
    if (el.parentElement.closest("pre, .md-typeset__scrollwrap, .highlight")) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;  // hidden (a closed <details>)
    // Past the edge of the screen, or cut off by a box that hides what overflows it (a
    // few px of an inline code's padding spilling into the margin is neither).
    const overflow = getComputedStyle(el).overflowX;
    const scrolls = ["auto", "scroll"].includes(overflow);
    const end = scrolls ? r.right : Math.max(r.right, r.left + el.scrollWidth);
    const clipped = ["hidden", "clip"].includes(overflow) && el.scrollWidth > el.clientWidth + 4;
    if (end > width + 1 || clipped)
      bad.push(`${el.tagName.toLowerCase()}: "${el.textContent.trim().slice(0, 60)}"`
               + (clipped ? " is cut off" : ` reaches ${Math.round(end)} px`));
  }
  const page = document.documentElement.scrollWidth;
  if (page > width + 1) bad.unshift(`the page is ${page} px wide`);
  return bad;
}
"""

# An identifier in a table cell broken across lines between two of its letters
# (`tests/test_po` / `ol.py`): its column is too narrow for it. A break at a hyphen, or
# in prose at a space, is fine.
MEASURE_CUT_WORDS = """
() => {
  const cut = [];
  for (const code of document.querySelectorAll("article td code, article th code")) {
    const text = code.firstChild;
    if (!text || text.nodeType !== Node.TEXT_NODE || code.getClientRects().length < 2)
      continue;
    const s = text.textContent, range = document.createRange();
    let top = null;
    for (let i = 0; i < s.length; i++) {
      range.setStart(text, i);
      range.setEnd(text, i + 1);
      const r = range.getBoundingClientRect();
      if (top !== null && r.top > top + 2 && /\\w/.test(s[i - 1]) && /\\w/.test(s[i]))
        cut.push(s.slice(0, i) + " / " + s.slice(i));
      top = r.top;
    }
  }
  return cut;
}
"""

LINKS = "() => [...document.querySelectorAll('a[href]')].map(a => a.href)"

_ENTITY = re.compile(r"#(\w+);")
_BR = re.compile(r"<br\s*/?>", re.I)
_TAG = re.compile(r"</?[a-z]+>", re.I)


def _decode(label: str) -> str:
    """Mermaid's own escapes (``#35;``, ``#quot;``) and line breaks, as the picture shows."""
    label = _TAG.sub(" ", _BR.sub(" ", label))
    return _ENTITY.sub(
        lambda m: chr(int(m.group(1))) if m.group(1).isdigit() else html.unescape(f"&{m[1]};"),
        label,
    )


def source_labels(source: str) -> list[str]:
    """The text a diagram's source asks to be drawn: node and edge labels, subgraph
    titles, participants' names, messages, notes, transition labels."""
    lines = [line.strip() for line in source.strip().splitlines()]
    kind = lines[0].split()[0] if lines else ""
    labels: list[str] = []
    if kind in ("flowchart", "graph"):
        for line in lines[1:]:
            labels += re.findall(r'"([^"]*)"', line)
            unquoted = re.sub(r'"[^"]*"', "", line)
            labels += re.findall(r"\|([^|]+)\|", unquoted)
            labels += re.findall(r"\w[\[({]+([^\[\](){}|\"]+)[\])}]+", unquoted)
    else:  # sequenceDiagram, stateDiagram(-v2): labels follow ": "; participants "as"
        for line in lines[1:]:
            if m := re.match(r"(?:participant|actor)\s+\S+\s+as\s+(.+)$", line):
                labels.append(m.group(1))
            elif ": " in line:
                labels.append(line.split(": ", 1)[1])
            if line.startswith("direction "):
                continue
            for state in re.findall(r"(?:^|-->\s*)(\w+)", line):
                if kind.startswith("state") and state not in ("state", "note"):
                    labels.append(state)
    return [_decode(label) for label in labels]


def missing_words(source: str, drawn: str) -> list[str]:
    words = set(re.findall(r"\w+", drawn.lower()))
    wanted: list[str] = []
    for label in source_labels(source):
        for word in re.findall(r"\w+", label.lower()):
            if word not in words and word not in wanted:
                wanted.append(word)
    return wanted


def overlapping(labels: list[dict]) -> list[str]:
    found = []
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            dx = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            dy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            if dx <= 0 or dy <= 0:
                continue
            smaller = min(a["w"] * a["h"], b["w"] * b["h"])
            if dx * dy > OVERLAP * smaller:
                found.append(f"{a['text']!r} and {b['text']!r}")
    return found


def diagram_sources(built_page: Path) -> list[str]:
    """The Mermaid sources of a built page, in order, as the browser will get them."""
    text = built_page.read_text(encoding="utf-8")
    blocks = re.findall(r'<pre class="mermaid"><code>(.*?)</code></pre>', text, re.S)
    return [html.unescape(block) for block in blocks]


# -- the browser ---------------------------------------------------------------------------


@dataclass
class Site:
    folder: Path
    base: str
    pages: dict[int, object] = field(default_factory=dict)  # one tab per width, reused
    blocked: list[str] = field(default_factory=list)  # requests that left the local server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine: apt-get install chromium (.ci/run does)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

    folder = tmp_path_factory.mktemp("browser") / "site"
    done = mkdocs_build(ROOT / "mkdocs.yml", folder)
    assert done.returncode == 0, done.stdout + done.stderr
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="docs-http", daemon=True)
    thread.start()
    try:
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=CHROMIUM_ARGS, timeout=60_000
            )
            site = Site(folder, f"http://127.0.0.1:{server.server_address[1]}/")
            try:
                # One tab per width for every page: the browser's cache then holds the
                # 3.5 MB Mermaid script after the first page, as it does for a reader.
                with (
                    open_page(browser, site, WIDE) as wide,
                    open_page(browser, site, NARROW) as narrow,
                ):
                    site.pages = {WIDE: wide, NARROW: narrow}
                    yield site
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def open_page(browser: object, site: Site, width: int) -> Iterator[object]:
    context = browser.new_context(viewport={"width": width, "height": 900})
    context.add_init_script(OPEN_SHADOW_ROOTS)

    def offline(route: object) -> None:
        url = route.request.url
        if url.startswith(site.base):
            route.continue_()
        else:
            site.blocked.append(url)
            route.abort()

    context.route("**/*", offline)
    context.set_default_timeout(RENDER_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def load(page: object, url: str, diagrams: int) -> str | None:
    """Open ``url`` and wait for its diagrams; say what went wrong, if anything did."""
    page.goto(url, wait_until="load")
    page.evaluate("document.fonts.ready.then(() => true)")
    if not diagrams:
        return None
    # Material swaps each <pre class="mermaid"> for a rendered <div class="mermaid">.
    try:
        page.wait_for_function(
            "n => document.querySelectorAll('pre.mermaid').length === 0"
            " && document.querySelectorAll('div.mermaid').length === n",
            arg=diagrams,
        )
    except PlaywrightTimeout:
        done = page.evaluate("document.querySelectorAll('div.mermaid').length")
        return (
            f"only {done} of {diagrams} diagrams rendered within "
            f"{RENDER_TIMEOUT_MS / 1000:.0f} s (is Mermaid loaded from the site?)"
        )
    return None


@functools.cache
def ids_of(built_page: Path) -> frozenset[str]:
    return frozenset(re.findall(r'\sid="([^"]+)"', built_page.read_text(encoding="utf-8")))


def broken_links(site: Site, hrefs: list[str]) -> list[str]:
    broken = []
    for href in dict.fromkeys(hrefs):
        if not href.startswith(site.base):
            continue
        parts = urllib.parse.urlsplit(href)
        rel = urllib.parse.unquote(parts.path)[1:]
        target = site.folder / rel
        if rel == "" or rel.endswith("/"):
            target = target / "index.html"
        if not target.is_file():
            broken.append(f"{href} (no such file)")
            continue
        if parts.fragment and target.suffix == ".html" and parts.fragment not in ids_of(target):
            broken.append(f"{href} (no #{parts.fragment} on that page)")
    return broken


def screenshot(page: object, path: Path) -> None:
    width, height = page.evaluate(
        "[document.documentElement.clientWidth, document.documentElement.scrollHeight]"
    )
    clip = {"x": 0, "y": 0, "width": width, "height": min(height, SHOT_MAX_HEIGHT)}
    page.screenshot(path=str(path), full_page=True, clip=clip)


def diagram_problems(sources: list[str], measured: list[dict]) -> list[str]:
    problems = []
    for i, (source, d) in enumerate(zip(sources, measured, strict=True)):
        where = f"diagram {i + 1} ({source.strip().splitlines()[0]})"
        if not d["svg"]:
            problems.append(f"{where}: not rendered to an SVG")
            continue
        if re.search(r"Syntax error|Parse error", d["words"], re.I):
            problems.append(f"{where}: Mermaid error: {d['words'][:100]}")
        if d["smallest"] is None:
            problems.append(f"{where}: no text drawn")
        elif d["smallest"] < MIN_TEXT_PX:
            problems.append(
                f"{where}: text {d['smallest']:.1f} px high at {WIDE} px "
                f"({d['smallestText']!r}); at least {MIN_TEXT_PX:.0f} px wanted"
            )
        if lost := missing_words(source, d["words"]):
            problems.append(f"{where}: words of its labels not drawn: {lost[:8]}")
        if clash := overlapping(d["labels"]):
            problems.append(f"{where}: labels drawn over each other: {clash[:3]}")
    return problems


def check_page(site: Site, page_path: str) -> list[str]:
    url = site.base + page_url(page_path)
    sources = diagram_sources(site.folder / page_url(page_path) / "index.html")
    name = page_path.removesuffix(".md").replace("/", "_")
    site.blocked.clear()

    wide = site.pages[WIDE]
    problems = [p for p in [load(wide, url, len(sources))] if p]
    screenshot(wide, SCREENSHOTS / f"{name}-{WIDE}.png")
    for i, diagram in enumerate(wide.locator("div.mermaid").all()):
        diagram.screenshot(path=str(SCREENSHOTS / f"{name}-diagram{i + 1}.png"), style=NO_HEADER)
    if re.search(r"Syntax error|Parse error|error in text", wide.inner_text("body"), re.I):
        problems.append("Mermaid error text on the page")
    if not problems:
        problems += diagram_problems(sources, wide.evaluate(MEASURE_DIAGRAMS))
    problems += [
        f"at {WIDE} px, a table cell cuts {word!r} mid-word"
        for word in wide.evaluate(MEASURE_CUT_WORDS)
    ]
    problems += [f"broken link {b}" for b in broken_links(site, wide.evaluate(LINKS))]

    narrow = site.pages[NARROW]
    load(narrow, url, len(sources))  # any rendering problem is reported from the wide one
    screenshot(narrow, SCREENSHOTS / f"{name}-{NARROW}.png")
    problems += [f"at {NARROW} px: {o}" for o in narrow.evaluate(MEASURE_OVERFLOW, NARROW)]

    problems += [f"went to the network: {u}" for u in dict.fromkeys(site.blocked)]
    return problems


@pytest.mark.slow
@pytest.mark.parametrize(
    "page_path",
    [
        pytest.param(p, marks=pytest.mark.xfail(reason=KNOWN_BROKEN[p], strict=True))
        if p in KNOWN_BROKEN
        else p
        for p in pages()
    ],
)
def test_page_renders(site: Site, page_path: str):
    problems = check_page(site, page_path)
    assert not problems, f"{page_path}:\n  " + "\n  ".join(problems)


# -- the checks themselves, on known input -------------------------------------------------


def test_source_labels_and_missing_words():
    sequence = "sequenceDiagram\n participant A as client A\n A->>L: handle conn #1\n"
    assert source_labels(sequence) == ["client A", "handle conn #1"]
    # The broken chapter 3 picture: Mermaid cut the label at '#'.
    assert missing_words(sequence, "client A handle conn") == ["1"]
    assert missing_words(sequence, "client A handle conn 1") == []
    flow = (
        'flowchart TD\n  a["accept()<br/>a client"] -->|yes| b{"full?"}\n  b --> c[plain label]\n'
    )
    assert source_labels(flow) == ["accept() a client", "full?", "yes", "plain label"]
    assert source_labels('flowchart TD\n  t["<b>send thread</b>"]') == [" send thread "]
    state = "stateDiagram-v2\n  [*] --> HD_INIT\n  HD_INIT --> BD_INIT: header #35;1 done\n"
    assert "header #1 done" in source_labels(state)
    assert {"HD_INIT", "BD_INIT"} <= set(source_labels(state))


def test_overlap_check():
    a = {"text": "a", "x": 0, "y": 0, "w": 100, "h": 20}
    assert overlapping([a, {"text": "b", "x": 50, "y": 5, "w": 100, "h": 20}]) == ["'a' and 'b'"]
    assert overlapping([a, {"text": "b", "x": 100, "y": 0, "w": 100, "h": 20}]) == []
    assert overlapping([a, {"text": "b", "x": 0, "y": 18, "w": 100, "h": 20}]) == []


def test_page_urls():
    assert page_url("index.md") == ""
    assert page_url("chapters/01_listen.md") == "chapters/01_listen/"
    assert "index.md" in pages() and "chapters/01_listen.md" in pages()


def test_broken_links(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text('<h2 id="here">x</h2>')
    site = Site(tmp_path, "http://127.0.0.1:1/")
    base = site.base
    assert broken_links(site, [f"{base}a/", f"{base}a/#here", "https://example.org/"]) == []
    assert broken_links(site, [f"{base}b/", f"{base}a/#gone"]) == [
        f"{base}b/ (no such file)",
        f"{base}a/#gone (no #gone on that page)",
    ]
