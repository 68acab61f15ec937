"""Logging with rich, on the original's 0-8 levels.

C++: ngx_log_stderr / ngx_log_error_core with NGX_LOG_STDERR (0) .. NGX_LOG_DEBUG (8).

The original has nine levels; Python has five. We add NOTICE between INFO and WARNING so
that every original level maps to a distinct-enough Python level: 0-3 (stderr, emerg, alert,
crit) are CRITICAL, 4 ERROR, 5 WARNING, 6 NOTICE, 7 INFO, 8 DEBUG. The chapters log
one line per connection at INFO, so the shipped ``LogLevel = 6`` keeps a busy server quiet.
"""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.logging import RichHandler

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

# C++: ngx_log_level names, index = the original's number.
NGX_LEVEL_NAMES = ["stderr", "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug"]
_NGX_TO_PY = [
    logging.CRITICAL,
    logging.CRITICAL,
    logging.CRITICAL,
    logging.CRITICAL,
    logging.ERROR,
    logging.WARNING,
    NOTICE,
    logging.INFO,
    logging.DEBUG,
]
_ALIASES = {"err": "error", "warning": "warn", "critical": "crit"}


def parse_level(text: str | int) -> int:
    """Turn an original level (``0``-``8``) or a name (``debug``, ``notice`` …) into a
    Python logging level. Raises ``ValueError`` with the accepted values."""
    value = str(text).strip().lower()
    value = _ALIASES.get(value, value)
    # isascii: str.isdigit() is also true for "²" and "٣", which int() rejects or misreads.
    if value.isascii() and value.isdigit() and 0 <= int(value) <= 8:
        return _NGX_TO_PY[int(value)]
    if value in NGX_LEVEL_NAMES:
        return _NGX_TO_PY[NGX_LEVEL_NAMES.index(value)]
    raise ValueError(f"log level must be 0-8 or one of {', '.join(NGX_LEVEL_NAMES)}; got {text!r}")


def setup_logging(level: int, console: Console | None = None) -> None:
    """Send every log record to the terminal through rich (stderr by default)."""
    handler = RichHandler(
        console=console or Console(stderr=True),
        show_path=False,
        rich_tracebacks=False,
        log_time_format="%H:%M:%S",
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def notice(logger: logging.Logger, msg: str, *args: object) -> None:
    logger.log(NOTICE, msg, *args)


def log_as(name: str) -> None:
    """Start every log line of this process with ``name [pid]`` (chapter 7: ``master``,
    ``worker 2``). A fresh handler on a fresh stream: in a process just forked, a lock
    that another thread of the parent held in the old ones would stay held forever."""
    stream = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stderr = stream  # (a traceback printed by a thread goes there too)
    setup_logging(logging.getLogger().level, Console(file=stream))
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"{name} [{os.getpid()}]: %(message)s"))
