"""The config reader: the original's nginx.conf format, read faithfully but strictly.

Each test is one rule from ``common/config.py``'s docstring or the reference notes, and the
shipped ``nginx.conf`` is checked as a reader's first contact with the project: it loads,
it is quiet, and every key is explained.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from common.config import DEFAULT_CONFIG, KNOWN_KEYS, Config, ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "nginx.conf"


def write(tmp_path: Path, text: str | bytes, name: str = "test.conf") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


def unknown_key_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "config" and r.levelno == logging.WARNING and "unknown key" in r.getMessage()
    ]


# -- comments, BOM, trimming, case, first wins ------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "# ListenPort0 = 1",
        "; ListenPort0 = 1",
        "[ListenPort0 = 1]",
        "[Net]",
        " ListenPort0 = 1",
        "\tListenPort0 = 1",
        "   ",
        "",
        " no equals sign here",  # ignored before it could be malformed
    ],
)
def test_ignored_lines(line):
    config = Config.from_text(f"{line}\nListenPort0 = 7\n")
    assert config.listen_ports() == [7]
    assert config.get_int("ListenPort0") == 7


def test_bom_is_skipped_in_files_and_text(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbfListenPort0 = 42\r\nworker_connections = 3\r\n")
    config = Config.load(path)
    assert config.get_int("ListenPort0") == 42
    assert config.get_int("worker_connections") == 3
    assert Config.from_text("\ufeffListenPort0 = 43").get_int("ListenPort0") == 43


def test_key_and_value_are_trimmed():
    config = Config.from_text("Log \t=   logs/x.log \t \nListenPort0=  9\n")
    assert config.get_str("Log") == "logs/x.log"
    assert config.get_int("ListenPort0") == 9


def test_value_may_contain_equals_and_be_empty():
    config = Config.from_text("Log = a=b\nUserDatabase =\n")
    assert config.get_str("Log") == "a=b"
    assert config.get_str("UserDatabase") == ""


def test_keys_are_case_insensitive():
    config = Config.from_text("WORKER_CONNECTIONS = 12\nlistenport0 = 99\n")
    assert config.get_int("worker_connections") == 12
    assert config.get_int("Worker_Connections") == 12
    assert config.listen_ports() == [99]
    assert "Worker_connections" in config and "ListenPort1" not in config


def test_first_occurrence_wins():
    config = Config.from_text("worker_connections = 1\nWorker_Connections = 2\nLog = a\nlog = b\n")
    assert config.get_int("worker_connections") == 1
    assert config.get_str("Log") == "a"


def test_line_breaks_are_only_cr_lf():
    """Form feed, U+2028 and the like inside a comment neither split it into a bogus
    key line nor shift the line numbers errors quote."""
    text = "# a\x0cb\u2028c\x1cd\x85e\r\nListenPort0 = 1\rworker_connections = x\n"
    config = Config.from_text(text, "odd.conf")
    assert config.get_int("ListenPort0") == 1
    with pytest.raises(ConfigError, match=r"^odd\.conf:3: "):
        config.get_int("worker_connections")


# -- errors name the file and the line ----------------------------------------------------


def test_line_without_equals_is_an_error_naming_file_and_line(tmp_path):
    path = write(tmp_path, "# comment\nListenPort0 = 1\nListenPortCount 2\n")
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert "ListenPortCount 2" in str(info.value)
    assert (info.value.source, info.value.line) == (str(path), 3)


def test_missing_key_before_equals(tmp_path):
    path = write(tmp_path, "\n= 5\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:2: missing key"):
        Config.load(path)


@pytest.mark.parametrize("value", ["12abc", "abc", "", "1.5", "0x10", "1_000", "١٢", "1 2"])
def test_non_integer_names_file_line_and_key(tmp_path, value):
    path = write(tmp_path, f"[Net]\n# the pool\nworker_connections = {value}\n")
    config = Config.load(path)  # reading is lazy about types; asking for an int is not
    with pytest.raises(ConfigError) as info:
        config.get_int("worker_connections")
    message = str(info.value)
    assert message.startswith(f"{path}:3: ")
    assert "worker_connections" in message and repr(value) in message


@pytest.mark.parametrize("value, expected", [("0", 0), ("+7", 7), ("-3", -3), ("0012", 12)])
def test_integers_accepted(value, expected):
    assert Config.from_text(f"Sock_MaxWaitTime = {value}").get_int("Sock_MaxWaitTime") == expected


def test_int_minimum_names_the_line():
    config = Config.from_text("# x\nPasswordHashIterations = 0\n", "c.conf")
    with pytest.raises(
        ConfigError, match=r"^c\.conf:2: PasswordHashIterations must be >= 1, got 0"
    ):
        config.get_int("PasswordHashIterations", minimum=1)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    assert str(info.value) == f"{path}: config file not found"
    assert info.value.line is None


def test_unreadable_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        Config.load(tmp_path)  # a directory
    assert str(info.value).startswith(f"{tmp_path}: cannot read config file: ")
    assert info.value.line is None


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_invalid_utf8_names_the_line(tmp_path, bom):
    path = write(tmp_path, bom + b"Log = a\r\nLog = b\n\xffLog = c\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:3: not valid UTF-8"):
        Config.load(path)


@pytest.mark.parametrize("first", [*"AZaz_09X", "\u00e9"])
def test_only_comment_characters_make_a_line_ignored(first):
    """Only ``#``, ``;``, ``[``, a space and a tab start an ignored line: a line starting
    with anything else is a setting (an unknown one here, so it warns, but it is read)."""
    config = Config.from_text(f"{first}Limit = 3\n")
    assert f"{first}Limit" in config
    assert config.get_int(f"{first}Limit") == 3


def test_errors_in_text_without_a_source_say_config():
    with pytest.raises(ConfigError, match=r"^<config>:2: expected 'key = value'"):
        Config.from_text("Daemon = 0\nno equals sign\n")
    with pytest.raises(ConfigError, match=r"^<config>: missing required key 'Nothing'$"):
        Config.from_text("").get_str("Nothing")


@pytest.mark.parametrize(
    "key, warned",
    [
        ("ListenPort0", False),
        ("ListenPort12", False),
        ("listenport3", False),
        ("ListenPort", True),
        ("ListenPortX", True),
        ("ListenPorts", True),
        ("MaxClients0", True),  # ten letters then digits, like ListenPort0, is still unknown
        ("Listen_Port0", True),
    ],
)
def test_only_listen_port_n_keys_join_the_known_keys(caplog, key, warned):
    caplog.set_level(logging.WARNING, logger="config")
    Config.from_text(f"{key} = 1\n", "k.conf")
    expected = [f"k.conf:1: unknown key {key!r} (ignored)"] if warned else []
    assert unknown_key_warnings(caplog) == expected


def test_unknown_key_warns_with_line_number(caplog):
    caplog.set_level(logging.WARNING, logger="config")
    config = Config.from_text(
        "ListenPort0 = 1\nListenPort7 = 2\nWorkerConnection = 5\n", "typo.conf"
    )
    assert unknown_key_warnings(caplog) == ["typo.conf:3: unknown key 'WorkerConnection' (ignored)"]
    assert config.get_int("worker_connections") == int(KNOWN_KEYS["worker_connections"])


# -- typed getters ------------------------------------------------------------------------


def test_defaults_from_caller_then_known_keys_then_error():
    config = Config.from_text("")
    assert config.get_int("Sock_FloodKickCounter") == 10  # KNOWN_KEYS
    assert config.get_int("sock_floodkickcounter") == 10  # case-insensitive there too
    assert config.get_int("Sock_FloodKickCounter", 3) == 3  # the caller's default first
    assert config.get_str("ListenAddress") == "127.0.0.1"
    assert config.get_str("Nothing", "x") == "x"
    assert config.get_float("Nothing", 0.25) == 0.25
    assert config.get_float("Sock_RecyConnectionWaitTime") == 60.0
    named = Config.from_text("", "d.conf")
    for getter in (named.get_str, named.get_int, named.get_float, named.get_bool):
        with pytest.raises(ConfigError, match=r"^d\.conf: missing required key 'Nothing'$"):
            getter("Nothing")


def test_a_default_below_the_minimum_is_named_like_a_setting():
    """A value that came from a default, not from the file, is still checked, and the
    error names the key (no line: it is not in the file)."""
    config = Config.from_text("", "d.conf")
    with pytest.raises(ConfigError, match=r"^d\.conf: Sock_MaxWaitTime must be >= 10, got 5$"):
        config.get_int("Sock_MaxWaitTime", 5, minimum=10)
    with pytest.raises(
        ConfigError, match=r"^d\.conf: Sock_FloodKickCounter must be >= 11, got 10$"
    ):
        config.get_int("Sock_FloodKickCounter", minimum=11)  # the known keys' default
    with pytest.raises(ConfigError, match=r"^d\.conf: Sock_MaxWaitTime must be >= 9.5, got 2.5$"):
        config.get_float("Sock_MaxWaitTime", 2.5, minimum=9.5)


@pytest.mark.parametrize(
    "value, expected", [("0.2", 0.2), ("150", 150.0), (".5", 0.5), ("1e-3", 0.001), ("-2.", -2.0)]
)
def test_get_float_with_fractions(value, expected):
    config = Config.from_text(f"Sock_RecyConnectionWaitTime = {value}")
    assert config.get_float("Sock_RecyConnectionWaitTime") == expected


@pytest.mark.parametrize("value", ["nan", "inf", "-infinity", "1e999", "0.2s", "", "1_0.5"])
def test_get_float_rejects_non_finite_and_junk(value):
    config = Config.from_text(f"# x\nSock_MaxWaitTime = {value}", "f.conf")
    with pytest.raises(ConfigError, match=r"^f\.conf:2: Sock_MaxWaitTime must be a"):
        config.get_float("Sock_MaxWaitTime")


def test_get_float_minimum():
    config = Config.from_text("Sock_MaxWaitTime = 0.5", "f.conf")
    assert config.get_float("Sock_MaxWaitTime", minimum=0.5) == 0.5
    with pytest.raises(ConfigError, match=r"^f\.conf:1: .*>= 1"):
        config.get_float("Sock_MaxWaitTime", minimum=1)


@pytest.mark.parametrize("value, expected", [("0", False), ("1", True)])
def test_get_bool_0_or_1(value, expected):
    assert Config.from_text(f"Daemon = {value}").get_bool("Daemon") is expected


@pytest.mark.parametrize("value", ["2", "-1", "yes", "true", "on"])
def test_get_bool_rejects_anything_else(value):
    config = Config.from_text(f"\nDaemon = {value}", "b.conf")
    with pytest.raises(ConfigError, match=r"^b\.conf:2: Daemon must be"):
        config.get_bool("Daemon")


def test_get_bool_default():
    config = Config.from_text("")
    assert config.get_bool("Sock_WaitTimeEnable") is False  # KNOWN_KEYS
    assert config.get_bool("Sock_WaitTimeEnable", True) is True
    assert config.get_bool("NotAKey", False) is False


def test_get_path_relative_to_the_config_folder(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    path = write(sub, "UserDatabase = data/users.db\nLog = /abs/log\n")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = Config.load(path)
    assert config.get_path("UserDatabase") == str(sub.resolve() / "data" / "users.db")
    assert config.get_path("Log") == "/abs/log"
    assert Config.from_text("UserDatabase = :memory:").get_path("UserDatabase") == ":memory:"
    assert Config.from_text("", base_dir=tmp_path).get_path("X", "a.db") == str(tmp_path / "a.db")


def test_listen_ports():
    assert Config.from_text("").listen_ports() == [10000]  # the original's default
    config = Config.from_text("ListenPortCount = 3\nListenPort0 = 80\nListenPort2 = 0\n")
    assert config.listen_ports() == [80, 10000, 0]
    config = Config.from_text("ListenPortCount = 2\nListenPort0 = 65535\nListenPort1 = 0\n")
    assert config.listen_ports() == [65535, 0]  # both ends of the range


@pytest.mark.parametrize("port", ["65536", "-1", "70000"])
def test_listen_port_range(port):
    config = Config.from_text(f"ListenPortCount = 2\n\nListenPort1 = {port}\n", "p.conf")
    with pytest.raises(ConfigError, match=rf"^p\.conf:3: ListenPort1 must be 0-65535, got {port}$"):
        config.listen_ports()


def test_listen_port_count_at_least_one():
    with pytest.raises(ConfigError, match=r"^p\.conf:1: ListenPortCount must be >= 1"):
        Config.from_text("ListenPortCount = 0", "p.conf").listen_ports()


def test_with_overrides():
    base = Config.from_text("ListenPort0 = 5678\nworker_connections = 5\n", "o.conf")
    config = base.with_overrides(listenport0=0, Sock_WaitTimeEnable=True, Daemon=False, Extra="x")
    assert config.listen_ports() == [0]
    assert config.get_bool("Sock_WaitTimeEnable") is True
    assert config.get_bool("Daemon") is False
    assert config.get_int("worker_connections") == 5  # untouched keys kept
    assert config.get_str("extra") == "x"
    assert config.source == "o.conf" and config.base_dir == base.base_dir
    assert base.get_int("ListenPort0") == 5678  # the original is unchanged
    bad = base.with_overrides(worker_connections="many")
    with pytest.raises(ConfigError, match=r"^o\.conf: worker_connections must be an integer"):
        bad.get_int("worker_connections")  # no line: it came from code


# -- the shipped nginx.conf --------------------------------------------------------------


def test_shipped_config_loads_quietly(caplog):
    caplog.set_level(logging.DEBUG, logger="config")
    assert SHIPPED.resolve() == DEFAULT_CONFIG
    assert SHIPPED.read_bytes().startswith(b"\xef\xbb\xbf")
    config = Config.load(SHIPPED)
    assert unknown_key_warnings(caplog) == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert config.get_int("ListenPort0") == 5678
    assert config.listen_ports() == [5678]
    assert config.get_str("ListenAddress") == "127.0.0.1"


def test_shipped_config_values_parse():
    """Numeric keys hold numbers (some take fractions, so read as float), switches are 0/1,
    and the user database lands in the repository, whatever the working directory."""
    config = Config.load(SHIPPED)
    numeric = [k for k, v in KNOWN_KEYS.items() if re.fullmatch(r"\d+", v)]
    assert {k: config.get_float(k) for k in numeric}["worker_connections"] == 2048
    for switch in ("Daemon", "Sock_WaitTimeEnable", "Sock_TimeOutKick"):
        config.get_bool(switch)
    assert config.get_path("UserDatabase") == str(ROOT / "data" / "users.sqlite3")


def test_every_known_key_is_in_the_shipped_file_with_a_comment_above():
    lines = SHIPPED.read_text(encoding="utf-8-sig").splitlines()
    keys_at = {}
    for i, line in enumerate(lines):
        key, sep, _ = line.partition("=")
        if sep and line[:1] not in "#;[ \t":
            keys_at.setdefault(key.strip().lower(), i)
    missing = [k for k in KNOWN_KEYS if k.lower() not in keys_at]
    assert missing == [], f"keys missing from nginx.conf: {missing}"
    uncommented = [
        k
        for k in KNOWN_KEYS
        if keys_at[k.lower()] == 0 or not re.fullmatch(r"# \S.*", lines[keys_at[k.lower()] - 1])
    ]
    assert uncommented == [], f"keys without a '# ...' comment line above them: {uncommented}"
