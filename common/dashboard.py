"""The live dashboard: ``stats()`` as a rich table, refreshed once a second.

C++: CSocekt::printTDInfo, which the original's master prints every 10 seconds (online
users, free/total connections, recycle queue, receive and send queue sizes, dropped
packets). Ours shows whatever the running chapter's ``stats()`` returns, so each chapter's
dashboard grows with the subsystems it teaches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from rich.table import Table


def flatten(stats: Mapping[str, object], prefix: str = "") -> list[tuple[str, object]]:
    """``{"drops": {"bad_crc": 1}}`` -> ``[("drops.bad_crc", 1)]``, in a stable order."""
    rows: list[tuple[str, object]] = []
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


def render(stats: Mapping[str, object], title: str) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("counter", style="cyan", no_wrap=True)
    table.add_column("value", justify="right", style="bold")
    for name, value in flatten(stats):
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        table.add_row(name, shown)
    return table


def table_source(stats: Callable[[], Mapping[str, object]], title: str) -> Callable[[], Table]:
    """A zero-argument callable for ``rich.live.Live(get_renderable=...)``."""
    return lambda: render(stats(), title)
