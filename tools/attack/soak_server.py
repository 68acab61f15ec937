"""A chapter server that also reports its ``stats()``: what the soak starts and watches.

``python -m tools.attack.soak_server 06_flood --config FILE`` is ``python -m
chapters.06_flood --config FILE`` (the same ``common.cli`` start-up, signal handling and
clean shutdown) plus one thread that writes ``SOAK-STATS {json}`` lines to stderr, the
chapter's ``stats()`` every ``--interval`` seconds. The soak needs the server in a process
of its own, so that ``/proc/PID`` shows the server's memory, descriptors and threads and
nothing of the soak's clients; and it needs the counters, which only ``stats()`` has. This
wrapper gives both at the cost of one extra thread, which is there from start to end and
so does not disturb the before/after comparison.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time

from common.cli import ServerLike, build_parser, serve
from common.config import Config

STATS_PREFIX = "SOAK-STATS "


def report_stats(server: ServerLike, interval: float) -> None:
    """Write one stats line now and one every ``interval`` seconds, until the process ends.

    One ``write`` call per line: the server's log records go to the same stderr from other
    threads, and a line written in one call is not split by them."""
    while True:
        line = STATS_PREFIX + json.dumps(server.stats(), default=str, separators=(",", ":"))
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        "python -m tools.attack.soak_server",
        "Run a chapter server as python -m chapters.NN_name does, and write its stats() "
        "to stderr as SOAK-STATS lines (what python -m tools.attack soak reads).",
    )
    parser.add_argument("chapter", help="chapter package name, e.g. 06_flood")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="seconds between two stats lines (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not args.interval > 0:
        parser.error("--interval must be more than 0 seconds")
    package = f"chapters.{args.chapter}"
    try:
        chapter = importlib.import_module(package)
    except ModuleNotFoundError:
        parser.error(f"no chapter {args.chapter!r}")

    def make_server(config: Config) -> ServerLike:
        server = importlib.import_module(f"{package}.server").Server(config)
        threading.Thread(
            target=report_stats, args=(server, args.interval), name="soak-stats", daemon=True
        ).start()
        return server

    return serve(args, make_server, package, getattr(chapter, "TITLE", package))


if __name__ == "__main__":
    sys.exit(main())
