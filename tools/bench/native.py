"""The native load client: ``native/loadclient.c``, built on first use, run as processes.

The C source is the only thing in git. The first run compiles it with the system's C
compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) into a cache outside the repository,
``$XDG_CACHE_HOME/pynginx-course/`` (``~/.cache/…`` by default; ``PYNGINX_BENCH_CACHE``
overrides it), under a name keyed by a hash of the source, the compiler and the flags: an
edit to the source builds a new binary, an unchanged one is reused. The binary is written
to a temporary name and renamed into place, so two benches starting at once never run a
half-written file. Where no compiler exists (or the build fails) the bench falls back to
the Python client and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .loadgen import HIST_BUCKETS
from .target import BenchError, affinity_for_children

SOURCE = Path(__file__).with_name("native") / "loadclient.c"
CFLAGS = ("-O2", "-std=c11", "-Wall", "-Wextra")
LIBS = ("-lm",)
COMPILERS = ("cc", "gcc", "clang")


class NativeBuildError(Exception):
    """No C compiler, or the source did not build: the message says which."""


def find_compiler() -> list[str] | None:
    """``$CC`` (which may carry flags, e.g. ``ccache gcc``) or the first compiler on PATH."""
    if os.environ.get("CC"):
        words = shlex.split(os.environ["CC"])
        if words and shutil.which(words[0]):
            return words
        return None
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return [path]
    return None


def cache_dir() -> Path:
    if os.environ.get("PYNGINX_BENCH_CACHE"):
        return Path(os.environ["PYNGINX_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pynginx-course"


def build(compiler: list[str] | None = None, where: Path | None = None) -> Path:
    """The path of the built client, compiling it if this source has no binary yet."""
    compiler = compiler or find_compiler()
    if not compiler:
        raise NativeBuildError("no C compiler found (set CC, or install cc, gcc or clang)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + "\0".join([*compiler, *CFLAGS, *LIBS]).encode()).hexdigest()
    where = where or cache_dir()
    exe = where / f"loadclient-{key[:16]}"
    if os.access(exe, os.X_OK):
        return exe
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".loadclient-", dir=where)
        os.close(fd)
    except OSError as exc:
        raise NativeBuildError(f"cannot write the build cache {where}: {exc}") from None
    try:
        done = subprocess.run(
            [*compiler, *CFLAGS, "-o", tmp, str(SOURCE), *LIBS],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise NativeBuildError(
                f"{' '.join(compiler)} failed to build {SOURCE.name}: " + " | ".join(lines[:4])
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, exe)  # atomic: a concurrent bench sees no binary or a whole one
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NativeBuildError(f"building {SOURCE.name} failed: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return exe


@dataclass
class NativeSpec:
    host: str
    port: int
    connections: int
    pipeline: int
    mode: str
    run_id: str
    warmup: float
    duration: float
    drain_timeout: float


class NativeClients:
    """One or more ``loadclient`` processes, driven over their stdin and stdout.

    Each reports ``ready``, waits for ``start T``, prints ``progress`` lines while it runs
    and one ``result {json}`` line at the end (see the top of ``loadclient.c``)."""

    name = "native"

    def __init__(
        self, exe: Path, spec: NativeSpec, shares: list[int], cores: list[set[int] | None]
    ) -> None:
        self.exe = exe
        self.events: queue.Queue[tuple[int, str, str]] = queue.Queue()
        self.procs: list[subprocess.Popen[str]] = []
        self.tails: list[deque[str]] = []
        self.progress = [0] * len(shares)
        self.threads: list[threading.Thread] = []
        for index, share in enumerate(shares):
            command = [
                str(exe),
                f"--host={spec.host}",
                f"--port={spec.port}",
                f"--connections={share}",
                f"--pipeline={spec.pipeline}",
                f"--mode={spec.mode}",
                f"--warmup={spec.warmup!r}",
                f"--duration={spec.duration!r}",
                f"--drain={spec.drain_timeout!r}",
                f"--run-id={spec.run_id}",
                f"--index={index}",
            ]
            try:
                with affinity_for_children(cores[index]):
                    proc = subprocess.Popen(
                        command,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        bufsize=1,
                        # Ctrl-C reaches the bench alone, which then stops the clients.
                        start_new_session=True,
                    )
            except OSError as exc:
                self.close()
                raise BenchError(f"cannot run the native load client {exe}: {exc}") from None
            self.procs.append(proc)
            self.tails.append(deque(maxlen=10))
            for stream, reader in (
                (proc.stdout, self._read_stdout),
                (proc.stderr, self._read_stderr),
            ):
                thread = threading.Thread(target=reader, args=(index, stream), daemon=True)
                thread.start()
                self.threads.append(thread)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _read_stdout(self, index: int, stream: Any) -> None:
        for line in stream:
            word, _, rest = line.rstrip("\n").partition(" ")
            if word == "progress":
                self.progress[index] = int(rest.split()[1])
            else:
                self.events.put((index, word, rest))
        self.events.put((index, "eof", ""))

    def _read_stderr(self, index: int, stream: Any) -> None:
        for line in stream:
            self.tails[index].append(line.rstrip())

    def _failure(self, index: int) -> BenchError:
        proc = self.procs[index]
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            pass
        why = " | ".join(self.tails[index]) or f"exit code {proc.returncode}"
        return BenchError(f"the native load client failed: {why}")

    def _next(self, deadline: float, what: str) -> tuple[int, str, str]:
        try:
            return self.events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise BenchError(f"the native load client did not {what} in time") from None

    def wait_ready(self, deadline: float) -> None:
        ready = 0
        while ready < len(self.procs):
            index, word, _ = self._next(deadline, "connect")
            if word == "ready":
                ready += 1
            elif word == "eof":
                raise self._failure(index)

    def start(self, at: float) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"start {at!r}\n")
            proc.stdin.flush()

    def replies(self) -> int:
        return sum(self.progress)

    def results(self, deadline: float) -> list[dict[str, Any]]:
        results: dict[int, dict[str, Any]] = {}
        while len(results) < len(self.procs):
            index, word, rest = self._next(deadline, "report")
            if word == "result":
                data = json.loads(rest)
                hist = [0] * HIST_BUCKETS
                for bucket, count in data["hist"]:
                    hist[bucket] = count
                data["hist"] = hist
                data["index"] = index
                results[index] = data
            elif word == "eof" and index not in results:
                raise self._failure(index)
        return [results[i] for i in range(len(self.procs))]

    def abort(self) -> None:
        for proc in self.procs:
            try:
                assert proc.stdin is not None
                proc.stdin.write("abort\n")
                proc.stdin.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        for proc in self.procs:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()  # end of file: a client still running stops
            except OSError:
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for thread in self.threads:
            thread.join(timeout=5)
        for proc in self.procs:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
