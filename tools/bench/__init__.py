"""``python -m tools.bench``: load a server on loopback and measure it.

It starts the target (a chapter or an asyncio baseline, ``tools/asyncio_server.py``) in a
subprocess with a config suited to load, or loads one already running on this machine;
drives it with a closed-loop load client that keeps ``--pipeline`` requests in flight on
each connection and checks every reply (length, code, CRC, exact bytes, order); and
reports replies/s, latency percentiles, the server's CPU and memory (from ``/proc``), the
client's CPU, how busy each core was, and which side limited the rate.

The load client is native by default (``native/loadclient.c``: one thread, one epoll
loop; built on first use with the system's C compiler into a cache outside git, see
``native.py``), because a Python client costs about as much CPU per reply as the Python
servers it measures. Where no compiler exists the Python client (``loadgen.py``, one
epoll loop per process) takes over, and the report says which one ran. The server and
the client are pinned to different cores (``--pin``, on by default where there are two);
a run where the client's side ran out of CPU is labelled client-bound and never given a
ratio. ``--compare`` interleaves several targets (and with ``--defences both`` each
chapter with its heartbeat and flood detection off and on), ``--chart`` and
``python -m tools.bench chart`` draw the results as SVG, ``--idle-connections``
measures what a quiet connection costs, and ``python -m tools.bench parser`` times the
packet parser alone.

Linux only (epoll, ``/proc``). The function API behind the command line::

    from tools.bench import BenchOptions, run_bench
    result = run_bench(BenchOptions(chapter="asyncio", connections=10, duration=1))
    result.replies_per_s, result.latency_ms["p99"], result.client, result.limited_by
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
