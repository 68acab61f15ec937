"""Attack tools: ``python -m tools.attack flood|garbage|slowloris|slow-reader|churn|idle``.

Each tool misbehaves in one way that one of the server's defences is built to stop, so a
reader can run a chapter with ``--dashboard`` in one terminal, an attack in another, and
watch the defence fire (or, in an earlier chapter, watch it missing):

==============  ============================================  ==========================
tool            what it does                                  the defence it meets
==============  ============================================  ==========================
``flood``       pings back-to-back on one connection          flood kick (chapter 6)
``garbage``     a header with an impossible length            malformed close (ch. 6)
``slowloris``   partial packets, a byte now and then          silence kick (chapter 5)
``slow-reader`` pipelines requests and never reads a reply    send-stall kick (ch. 5)
``churn``       connects and disconnects as fast as it can    online limit (chapter 3)
``idle``        connects and sends nothing                    silence kick (chapter 5)
==============  ============================================  ==========================

Every tool is bounded in count and in time, and refuses any target that is not a loopback
address: these are for watching your own server on your own machine, nothing else. Each
``run_*`` function returns a report dataclass (the tests assert on it); the command line
prints the same report as a small rich table and a one-line verdict.

One module per tool (``flood``, ``garbage``, ``hold`` for idle and slowloris,
``slow_reader``, ``churn``), what they share in ``base``, the command line in ``cli``.
"""

from __future__ import annotations

from .base import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    AttackError,
    NotLoopback,
    Report,
    Target,
    resolve_target,
)
from .churn import ChurnReport, run_churn
from .cli import TOOLS, build_parser, main
from .flood import FloodReport, run_flood
from .garbage import GarbageReport, malformed, run_garbage
from .hold import HoldReport, IdleReport, SlowlorisReport, run_idle, run_slowloris
from .slow_reader import SlowReaderReport, run_slow_reader

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TOOLS",
    "AttackError",
    "ChurnReport",
    "FloodReport",
    "GarbageReport",
    "HoldReport",
    "IdleReport",
    "NotLoopback",
    "Report",
    "SlowReaderReport",
    "SlowlorisReport",
    "Target",
    "build_parser",
    "main",
    "malformed",
    "resolve_target",
    "run_churn",
    "run_flood",
    "run_garbage",
    "run_idle",
    "run_slow_reader",
    "run_slowloris",
]
