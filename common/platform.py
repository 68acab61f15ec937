"""Platform checks with one clear sentence instead of an AttributeError deep in a chapter."""

from __future__ import annotations

import select
import sys


class UnsupportedPlatform(RuntimeError):
    """This chapter cannot run on this operating system."""


def require_epoll() -> None:
    """Chapters 2-6 are built on Linux's epoll; stop at start-up where it does not exist."""
    if not hasattr(select, "epoll"):
        raise UnsupportedPlatform(
            f"this chapter needs Linux's epoll, which {sys.platform} does not have; "
            "run it on Linux, in WSL, or in a Linux container (chapter 1 runs anywhere)."
        )
