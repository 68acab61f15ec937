"""Platform checks with one clear sentence instead of an AttributeError deep in a chapter."""

from __future__ import annotations

import contextlib
import select
import sys
from pathlib import Path


class UnsupportedPlatform(RuntimeError):
    """This chapter cannot run on this operating system."""


def require_epoll() -> None:
    """Chapters 2-6 are built on Linux's epoll; stop at start-up where it does not exist."""
    if not hasattr(select, "epoll"):
        raise UnsupportedPlatform(
            f"this chapter needs Linux's epoll, which {sys.platform} does not have; "
            "run it on Linux, in WSL, or in a Linux container (chapter 1 runs anywhere)."
        )


# --8<-- [start:set_title]
def set_title(title: str) -> None:
    """Name this process for ``ps`` and ``top`` (chapter 7: ``pynginx: worker 2``). C++
    (nginx): ngx_setproctitle. With the optional ``setproctitle`` package (``pip install
    -e '.[titles]'``) the whole command line is replaced; without it, Linux still shows
    the first 15 characters as the process name (``ps -o comm``); elsewhere, nothing."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        with contextlib.suppress(OSError):
            Path("/proc/self/comm").write_text(title[:15])
    else:
        setproctitle(f"pynginx: {title}")


# --8<-- [end:set_title]
