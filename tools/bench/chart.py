"""The benchmark chart: replies/s per target per setting, drawn as SVG from the bench's own
JSON output (``--json``), so a page's picture is made from the same numbers as its tables.

One panel per JSON file (a load setting: mode, connections, pipeline), one bar per row of
that comparison (a target, and with ``--defences`` its setting). Each panel has its own
scale: a pipeline-16 run is ten times a pipeline-1 run, and a shared axis would flatten
the smaller one. A client-bound bar is hatched and labelled "≥ … client-bound": the
server managed at least that, and the bar is the client's limit. Hand-written SVG, no
plotting library: the picture needs bars, text and a pattern, nothing more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

WIDTH = 860
LABEL_W = 190  # the target names
VALUE_W = 190  # room right of the longest bar for its value
ROW_H = 24
BAR_H = 15
PANEL_HEAD = 46
PANEL_GAP = 18
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
COLOURS = {
    "baseline": "#9aa5b1",  # asyncio (standard loop)
    "uvloop": "#5f6b7a",  # asyncio on uvloop
    "chapter": "#2f6fdf",
    "defended": "#d9822b",  # a chapter with its heartbeat / flood detection on
}
LEGEND = (
    ("baseline", "asyncio baseline"),
    ("uvloop", "asyncio on uvloop"),
    ("chapter", "chapter"),
    ("defended", "chapter, heartbeat/flood on (not firing)"),
)


class ChartError(ValueError):
    """A JSON file the chart cannot use: the message says why."""


@dataclass
class Bar:
    label: str
    value: float
    client_bound: bool
    problems: int


@dataclass
class Panel:
    title: str
    subtitle: str
    bars: list[Bar]


def _kind(label: str) -> str:
    if label.startswith("asyncio"):
        return "uvloop" if "uvloop" in label else "baseline"
    return "defended" if " +" in label else "chapter"


def _describe(config: dict[str, Any], rounds: int | None) -> tuple[str, str]:
    mode = config.get("mode", "?")
    title = (
        f"{mode}, {config.get('connections', '?')} connections × pipeline "
        f"{config.get('pipeline', '?')}"
    )
    parts = [f"{config.get('client', '?')} client", config.get("pinning", "pinning ?")]
    parts.append(f"PasswordHashIterations = {config.get('hash_iterations', '?')}")
    defences = config.get("defences", "off")
    if defences == "both":
        parts.append("heartbeat/flood off, and on in the + rows")
    elif defences == "on":
        parts.append("heartbeat/flood on, not firing")
    elif config.get("heartbeat") or config.get("flood"):
        on = [n for n in ("heartbeat", "flood") if config.get(n)]
        parts.append(" and ".join(on) + " on")
    else:
        parts.append("heartbeat/flood off")
    if rounds:
        parts.append(f"medians of {rounds} rounds" if rounds > 1 else "one round")
    return title, "; ".join(str(p) for p in parts)


def panels_from(document: dict[str, Any]) -> Panel:
    """One panel from one ``--json`` document (a comparison or a single run)."""
    kind = document.get("kind")
    try:
        if kind == "compare":
            config = document.get("config") or document["runs"][0]["options"]
            bars = [
                Bar(
                    s["target"],
                    float(s["replies_per_s"]),
                    bool(s.get("client_bound", s.get("client_bottleneck_runs", 0))),
                    int(s.get("errors", 0)),
                )
                for s in document["summary"]
            ]
            title, subtitle = _describe(config, int(config.get("repeat", 0)) or None)
        elif kind == "run":
            r = document["result"]
            config = document.get("config") or r["options"]
            problems = r.get("error_count", 0) + r.get("reordered", 0) + r.get("unanswered", 0)
            bars = [
                Bar(
                    r.get("label") or r["target"],
                    float(r["replies_per_s"]),
                    bool(r.get("client_bottleneck")),
                    int(problems),
                )
            ]
            title, subtitle = _describe(config, None)
        else:
            raise ChartError(f"not a bench result (kind {kind!r}): use a file from --json")
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        if isinstance(exc, ChartError):
            raise
        raise ChartError(f"not a bench result file: missing or bad field {exc}") from None
    if not bars:
        raise ChartError("the file has no rows to draw")
    return Panel(title, subtitle, bars)


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """Round axis values (1, 2 or 5 times a power of ten) from 0 up to at least ``top``."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def _short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def render(panels: list[Panel], title: str = "Replies per second (higher is better)") -> str:
    """The SVG document for ``panels``, top to bottom."""
    out: list[str] = []
    y = 40
    plot_w = WIDTH - LABEL_W - VALUE_W
    for panel in panels:
        ticks = nice_ticks(max(b.value for b in panel.bars))
        scale = plot_w / ticks[-1]
        out.append(f'<g class="panel" transform="translate(0,{y})">')
        out.append(f'<text x="16" y="16" class="ptitle">{escape(panel.title)}</text>')
        out.append(f'<text x="16" y="33" class="sub">{escape(panel.subtitle)}</text>')
        top = PANEL_HEAD
        height = len(panel.bars) * ROW_H
        for tick in ticks:
            x = LABEL_W + tick * scale
            out.append(
                f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{top + height}" class="grid"/>'
            )
            out.append(
                f'<text x="{x:.1f}" y="{top + height + 13}" class="tick">{_short(tick)}</text>'
            )
        for i, bar in enumerate(panel.bars):
            row = top + i * ROW_H
            w = max(bar.value * scale, 1.0)
            mid = row + ROW_H / 2 + 4
            out.append(
                f'<text x="{LABEL_W - 8}" y="{mid:.1f}" class="label">{escape(bar.label)}</text>'
            )
            out.append(
                f'<rect class="bar" data-target="{escape(bar.label)}" data-value="{bar.value:.0f}" '
                f'data-client-bound="{str(bar.client_bound).lower()}" x="{LABEL_W}" '
                f'y="{row + (ROW_H - BAR_H) / 2:.1f}" width="{w:.1f}" height="{BAR_H}" '
                f'fill="{COLOURS[_kind(bar.label)]}"/>'
            )
            value = f"{bar.value:,.0f}/s"
            if bar.client_bound:
                out.append(
                    f'<rect x="{LABEL_W}" y="{row + (ROW_H - BAR_H) / 2:.1f}" width="{w:.1f}" '
                    f'height="{BAR_H}" fill="url(#hatch)"/>'
                )
                value = f"≥ {value} client-bound"
            if bar.problems:
                value += f" ({bar.problems:,} problems)"
            cls = "value warn" if bar.client_bound or bar.problems else "value"
            out.append(
                f'<text x="{LABEL_W + w + 6:.1f}" y="{mid:.1f}" class="{cls}">'
                f"{escape(value)}</text>"
            )
        out.append("</g>")
        y += PANEL_HEAD + height + 18 + PANEL_GAP
    legend_y = y
    x = 16
    used = {_kind(b.label) for panel in panels for b in panel.bars}
    for key, text in LEGEND:
        if key not in used:
            continue
        out.append(f'<rect x="{x}" y="{legend_y}" width="12" height="12" fill="{COLOURS[key]}"/>')
        out.append(f'<text x="{x + 17}" y="{legend_y + 10}" class="sub">{escape(text)}</text>')
        x += 24 + 6.3 * len(text)
    if any(b.client_bound for panel in panels for b in panel.bars):
        legend_y += 20
        out.append(
            f'<rect x="16" y="{legend_y}" width="12" height="12" fill="{COLOURS["chapter"]}"/>'
            f'<rect x="16" y="{legend_y}" width="12" height="12" fill="url(#hatch)"/>'
            f'<text x="33" y="{legend_y + 10}" class="sub">hatched: client-bound, the load '
            "client's limit (the server did at least this)</text>"
        )
    total_h = legend_y + 26
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{total_h}" '
        f'viewBox="0 0 {WIDTH} {total_h}" role="img" aria-label="{escape(title)}">'
        "<defs>"
        '<pattern id="hatch" patternUnits="userSpaceOnUse" width="6" height="6" '
        'patternTransform="rotate(45)"><rect width="3" height="6" fill="#ffffff" '
        'fill-opacity="0.55"/></pattern>'
        "<style>"
        f"text{{font-family:{FONT};font-size:12px;fill:#1f2933}}"
        ".title{font-size:16px;font-weight:600}"
        ".ptitle{font-size:13px;font-weight:600}"
        ".sub{fill:#52606d;font-size:11px}"
        ".label{text-anchor:end}"
        ".tick{fill:#7b8794;font-size:10px;text-anchor:middle}"
        ".grid{stroke:#e4e7eb;stroke-width:1}"
        ".warn{fill:#b42318}"
        "</style></defs>"
        f'<rect width="{WIDTH}" height="{total_h}" fill="#ffffff"/>'
        f'<text x="16" y="24" class="title">{escape(title)}</text>'
    )
    return head + "".join(out) + "</svg>\n"
