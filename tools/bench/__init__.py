"""``python -m tools.bench``: load a server on loopback and measure it.

It starts the target (a chapter or the asyncio baseline, ``tools/asyncio_server.py``) in a
subprocess with a config suited to load, or loads one already running on this machine;
drives it from several client processes, each a non-blocking epoll loop keeping
``--pipeline`` requests in flight on each of its connections; checks every reply byte for
byte; and reports replies/s, latency percentiles, the server's CPU and memory (from
``/proc``), the client's CPU, and which side limited the rate. ``--compare`` interleaves
several targets, ``--idle-connections`` measures what a quiet connection costs, and
``python -m tools.bench parser`` times the packet parser alone.

Linux only (epoll, ``/proc``). The function API behind the command line::

    from tools.bench import BenchOptions, run_bench
    result = run_bench(BenchOptions(chapter="asyncio", connections=10, duration=1))
    result.replies_per_s, result.latency_ms["p99"], result.ok
"""

from .core import BenchOptions, BenchResult, CompareSummary, IdleReport, run_bench, run_compare
from .parserbench import ParserResult, parser_bench
from .target import BenchError

__all__ = [
    "BenchError",
    "BenchOptions",
    "BenchResult",
    "CompareSummary",
    "IdleReport",
    "ParserResult",
    "parser_bench",
    "run_bench",
    "run_compare",
]
