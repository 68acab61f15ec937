"""Reads ``nginx.conf``: the original's format, read faithfully but strictly.

C++: CConfig::Load, GetString, GetIntDefault.

Faithful: one ``key = value`` per line, key and value trimmed; lines starting with ``#``,
``;``, ``[``, a space or a tab are ignored (``[Section]`` lines only group visually); a UTF-8
BOM is skipped; keys match case-insensitively; the first occurrence of a key wins.

Strict where the original is lax: the original reads integers with ``atoi`` (``12abc`` is 12,
``abc`` is 0) and ignores lines it cannot parse. Here a line without ``=``, a non-number
where a number is asked for, or a missing file is a :class:`ConfigError` naming the file and
the line.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("config")

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "nginx.conf"

# Every key some chapter reads, with the default used when the file does not set it.
KNOWN_KEYS: dict[str, str] = {
    "WorkerProcesses": "1",
    "Daemon": "0",
    "ProcMsgRecvWorkThreadCount": "4",
    "Log": "",
    "LogLevel": "6",
    "ListenAddress": "127.0.0.1",
    "ListenPortCount": "1",
    "worker_connections": "1",
    "Sock_RecyConnectionWaitTime": "60",
    "Sock_SendQueueLimit": "50000",
    "Sock_SendBufferSize": "0",
    "Sock_WaitTimeEnable": "0",
    "Sock_MaxWaitTime": "20",
    "Sock_TimeOutKick": "0",
    "Sock_PingGraceTime": "10",
    "Sock_FloodAttackKickEnable": "0",
    "Sock_FloodTimeInterval": "100",
    "Sock_FloodKickCounter": "10",
    "UserDatabase": ":memory:",
    "PasswordHashIterations": "600000",
    # Chapter 7: the process model.
    "ListenReusePort": "0",
    "PidFile": "",
}
_KNOWN_LOWER = {k.lower(): v for k, v in KNOWN_KEYS.items()}

# Line breaks as editors count them. str.splitlines() also splits on form feed, U+2028 and
# friends, which would turn part of a comment into a bogus "key = value" line and shift the
# line numbers every error message quotes.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Plain ASCII numbers only: int() and float() also take "1_000" and non-ASCII digits, which
# the original's atoi reads differently (as 1), so the same file would mean two things.
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)


class ConfigError(Exception):
    """A config problem, always naming where it is (``file:line: message``)."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.source, self.line, self.message = source, line, message
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str  # as spelled in the file
    value: str
    line: int | None  # None for values set by code (overrides, defaults)


class Config:
    """Typed, case-insensitive access to the settings. Build with :meth:`load` or
    :meth:`from_text`; :meth:`with_overrides` returns a copy with some keys replaced (the
    command line's ``--port``, tests' short intervals)."""

    def __init__(self, entries: dict[str, _Entry], source: str, base_dir: Path) -> None:
        self._entries = entries
        self.source = source
        self.base_dir = base_dir  # relative paths in values are relative to the file

    # -- reading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path = DEFAULT_CONFIG) -> Config:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(str(path), None, "config file not found") from None
        except OSError as exc:
            raise ConfigError(str(path), None, f"cannot read config file: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            # The "utf-8-sig" codec counts offsets after the BOM it skipped.
            offset = exc.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
            line = len(_LINE_BREAK.split(raw[:offset].decode("utf-8-sig")))
            raise ConfigError(str(path), line, "not valid UTF-8") from None
        return cls.from_text(text, str(path), path.resolve().parent)

    @classmethod
    def from_text(cls, text: str, source: str = "<config>", base_dir: Path | None = None) -> Config:
        text = text.removeprefix("\ufeff")
        entries: dict[str, _Entry] = {}
        for number, line in enumerate(_LINE_BREAK.split(text), start=1):
            if not line.strip() or line[0] in "#;[ \t":
                continue
            key, sep, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if not sep:
                raise ConfigError(source, number, f"expected 'key = value', got {line.strip()!r}")
            if not key:
                raise ConfigError(source, number, "missing key before '='")
            lower = key.lower()
            if lower in entries:
                continue  # first occurrence wins, as in the original
            if lower not in _KNOWN_LOWER and not _is_listen_port(lower):
                log.warning("%s:%d: unknown key %r (ignored)", source, number, key)
            entries[lower] = _Entry(key, value, number)
        return cls(entries, source, base_dir or Path.cwd())

    def with_overrides(self, **values: object) -> Config:
        """A copy with ``values`` replacing (or adding) keys. ``True``/``False`` become the
        file's ``1``/``0``, so ``with_overrides(Sock_WaitTimeEnable=True)`` reads back."""
        entries = dict(self._entries)
        for key, value in values.items():
            text = str(int(value)) if isinstance(value, bool) else str(value)
            entries[key.lower()] = _Entry(key, text, None)
        return Config(entries, self.source, self.base_dir)

    # -- typed getters -------------------------------------------------------------------
    def _lookup(self, key: str, default: object) -> _Entry | None:
        entry = self._entries.get(key.lower())
        if entry is not None:
            return entry
        if default is not None:
            return _Entry(key, str(default), None)
        fallback = _KNOWN_LOWER.get(key.lower())
        return None if fallback is None else _Entry(key, fallback, None)

    def get_str(self, key: str, default: str | None = None) -> str:
        entry = self._lookup(key, default)
        if entry is None:
            raise ConfigError(self.source, None, f"missing required key {key!r}")
        return entry.value

    def get_int(self, key: str, default: int | None = None, *, minimum: int | None = None) -> int:
        entry = self._lookup(key, default)
        if entry is None:
            raise ConfigError(self.source, None, f"missing required key {key!r}")
        if not _INT.fullmatch(entry.value):
            raise ConfigError(
                self.source, entry.line, f"{entry.key} must be an integer, got {entry.value!r}"
            )
        value = int(entry.value)
        if minimum is not None and value < minimum:
            raise ConfigError(
                self.source, entry.line, f"{entry.key} must be >= {minimum}, got {value}"
            )
        return value

    def get_float(
        self, key: str, default: float | None = None, *, minimum: float | None = None
    ) -> float:
        entry = self._lookup(key, default)
        if entry is None:
            raise ConfigError(self.source, None, f"missing required key {key!r}")
        if not _FLOAT.fullmatch(entry.value):
            raise ConfigError(
                self.source, entry.line, f"{entry.key} must be a number, got {entry.value!r}"
            )
        value = float(entry.value)
        if value in (float("inf"), float("-inf")):  # "1e999"
            raise ConfigError(self.source, entry.line, f"{entry.key} must be a finite number")
        if minimum is not None and value < minimum:
            raise ConfigError(
                self.source, entry.line, f"{entry.key} must be >= {minimum}, got {value}"
            )
        return value

    def get_bool(self, key: str, default: bool | None = None) -> bool:
        """0/1 switches, as the original uses them."""
        value = self.get_int(key, None if default is None else int(default))
        if value not in (0, 1):
            entry = self._lookup(key, default)
            raise ConfigError(
                self.source, entry.line if entry else None, f"{key} must be 0 or 1, got {value}"
            )
        return bool(value)

    def get_path(self, key: str, default: str | None = None) -> str:
        """A file path; relative paths are taken relative to the config file's folder.
        ``:memory:`` (SQLite's in-memory database) is passed through."""
        value = self.get_str(key, default)
        if value == ":memory:" or Path(value).is_absolute():
            return value
        return str(self.base_dir / value)

    def listen_ports(self) -> list[int]:
        """C++: the ListenPortCount / ListenPortN loop in CSocekt::ReadConf."""
        count = self.get_int("ListenPortCount", minimum=1)
        ports = []
        for i in range(count):
            port = self.get_int(f"ListenPort{i}", 10000)
            if not 0 <= port <= 65535:
                entry = self._lookup(f"ListenPort{i}", 10000)
                raise ConfigError(
                    self.source,
                    entry.line if entry else None,
                    f"ListenPort{i} must be 0-65535, got {port}",
                )
            ports.append(port)
        return ports

    def __contains__(self, key: str) -> bool:
        return key.lower() in self._entries


def _is_listen_port(lower_key: str) -> bool:
    return lower_key.startswith("listenport") and lower_key[len("listenport") :].isdigit()
