"""Settings: the TOML file and the command line folded into one validated object.

Every setting is declared once in ``SPECS``: its TOML section and key, its
default, how to check it, and (for some) its command-line flag.  The
command-line options in ``tap.py`` are generated from the same table, so a
setting can never exist in one place and not the other.  The command line wins
over the file, which wins over the default.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable


class ConfigError(Exception):
    """A setting is wrong.  ``str()`` names the setting and what is wrong."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


# Twisted's default listen backlog (50) turns a reconnect storm into 1 s SYN
# retries; the kernel caps this at net.core.somaxconn.
DEFAULT_BACKLOG = 1024

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
LOOPBACK_RE = re.compile(r":interface=(127\.\d+\.\d+\.\d+|\\:\\:1|localhost)(:|$)")

# The admin console's socket: in the run directory, for this user only; the
# lock file makes a second server refuse to start on a live one.
DEFAULT_ADMIN = "unix:pushsvc-admin.sock:mode=600:lockfile=1"


def _int(low: int, high: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, got {value!r}")
        if value < low or (high is not None and value > high):
            top = f" and at most {high}" if high is not None else ""
            raise ValueError(f"must be at least {low}{top}, got {value}")
        return value
    return check


def _seconds(low: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"must be a number of seconds, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number of seconds, got {value!r}")
        if not math.isfinite(value) or value < low:
            raise ValueError(f"must be at least {low} seconds and finite, got {value}")
        return float(value)
    return check


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return value
    return check


def _workers(value: Any) -> int | None:
    """``"auto"`` (one per CPU, stored as None) or a whole number >= 0."""
    if value == "auto":
        return None
    return _int(0, 256)(value)


def _endpoints(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of Twisted endpoint strings")
    return list(value)


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of non-empty strings")
    return list(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _app(value: Any) -> str:
    value = _text(value)
    if value and not (value.endswith(".py") or MODULE_RE.match(value)):
        raise ValueError(f"must be a dotted module name or a .py file, got {value!r}")
    return value


def _admin_endpoint(value: Any) -> str:
    """An endpoint string, or '' for no admin console; TCP only on loopback."""
    value = _text(value)
    kind = value.split(":", 1)[0]
    if value and kind not in ("unix", "tcp", "tcp6"):
        raise ValueError(f"must be a unix: or tcp: endpoint, got {value!r}")
    if kind in ("tcp", "tcp6") and not LOOPBACK_RE.search(value):
        raise ValueError("a tcp: admin endpoint must set interface=127.0.0.1 "
                         "(or ::1): the console is for this machine only")
    return value


def _node(value: Any) -> str:
    if value == "":
        return default_node_name()
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError("must be 1-32 letters, digits, '_' or '-'")
    return value


def default_node_name() -> str:
    """The host name, cut to the characters a session id may hold."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])
    return name[:32] or "node"


@dataclass(frozen=True)
class Spec:
    """One setting: where it lives in TOML, its default, its check, its flag."""
    section: str
    key: str
    default: Any
    check: Callable[[Any], Any]
    help: str
    flag: str | None = None

    @property
    def setting(self) -> str:
        return f"{self.section}.{self.key}"


SPECS: tuple[Spec, ...] = (
    Spec("server", "port", 8080, _int(0, 65535),
         "TCP port for WebSocket (/ws) and the HTTP API", flag="port"),
    Spec("server", "listen", [], _endpoints,
         "Twisted endpoint strings to listen on, instead of the port "
         "(repeatable)", flag="listen"),
    Spec("server", "workers", "auto", _workers,
         "worker processes: 'auto' = one per CPU, 0 = one process", flag="workers"),
    Spec("server", "node", "", _node,
         "this machine's name in session ids (default: host name)", flag="node"),
    Spec("server", "app", "", _app,
         "application module with hooks: a dotted module name or a .py file; "
         "'' = none", flag="app"),
    Spec("server", "admin", DEFAULT_ADMIN, _admin_endpoint,
         "endpoint of the admin console (pushsvc-admin); '' = none", flag="admin"),
    Spec("server", "admin_secret", "", _text,
         "secret the admin console must give; required for a tcp: admin endpoint"),
    Spec("limits", "max_message_bytes", 65536, _int(64, 16 * 1024 * 1024),
         "largest WebSocket message or HTTP body accepted, in bytes"),
    Spec("limits", "max_connections", 10000, _int(1),
         "WebSocket sessions this process holds at once"),
    Spec("limits", "max_groups_per_session", 100, _int(1),
         "groups one session may be in"),
    Spec("limits", "max_buffered_bytes", 4 * 1024 * 1024, _int(4096),
         "bytes waiting to be written to one slow client before it is closed "
         "with 1013"),
    Spec("limits", "max_targets", 100, _int(1),
         "names in one address (e.g. a list of groups)"),
    Spec("limits", "max_batch_messages", 1000, _int(1),
         "messages in one POST /api/batch"),
    Spec("limits", "max_worker_backlog", 64 * 1024 * 1024, _int(64 * 1024),
         "bytes the master may hold for one worker that does not read its pipe; "
         "past it the worker is restarted"),
    Spec("limits", "max_batch_bytes", 1024 * 1024, _int(1024, 256 * 1024 * 1024),
         "largest POST /api/batch body, in bytes"),
    Spec("timeouts", "ping_interval", 25.0, _seconds(0.1),
         "seconds between WebSocket pings to an idle client"),
    Spec("timeouts", "ping_timeout", 60.0, _seconds(0.1),
         "seconds of silence after which a client is dropped"),
    Spec("timeouts", "handshake_timeout", 10.0, _seconds(0.1),
         "seconds a new connection has to finish its HTTP request or "
         "WebSocket handshake"),
    Spec("timeouts", "close_timeout", 3.0, _seconds(0.1),
         "seconds to wait for a client's close handshake (and for all "
         "clients at shutdown)"),
    Spec("http", "api_keys", [], _strings,
         "bearer keys for the HTTP API; empty = no key needed"),
    Spec("policy", "client_send", "joined", _choice("joined", "any", "none"),
         "what a client's send may address: 'joined' groups only, 'any' "
         "address, or 'none'"),
)

# Settings a reload leaves as they are: only a restart of the server applies them.
RESTART_ONLY = ("port", "listen", "workers", "node", "admin", "admin_secret")


@dataclass(frozen=True)
class Settings:
    """The validated settings of one pushsvc process."""
    port: int = 8080
    listen: list[str] = field(default_factory=list)
    workers: int | None = None
    node: str = "node"
    app: str = ""
    admin: str = DEFAULT_ADMIN
    admin_secret: str = ""
    max_message_bytes: int = 65536
    max_connections: int = 10000
    max_groups_per_session: int = 100
    max_buffered_bytes: int = 4 * 1024 * 1024
    max_targets: int = 100
    max_batch_messages: int = 1000
    max_worker_backlog: int = 64 * 1024 * 1024
    max_batch_bytes: int = 1024 * 1024
    ping_interval: float = 25.0
    ping_timeout: float = 60.0
    handshake_timeout: float = 10.0
    close_timeout: float = 3.0
    api_keys: list[str] = field(default_factory=list)
    client_send: str = "joined"
    config_path: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # the command line's, by key

    def reread(self) -> "Settings":
        """The settings the config file holds now, with the same command line
        (a reload); raises ConfigError like start-up."""
        return build_settings(self.config_path, self.overrides)

    def reloaded(self, new: "Settings") -> "Settings":
        """``new``, but with this one's RESTART_ONLY settings (a reload keeps them)."""
        return replace(new, **{key: getattr(self, key) for key in RESTART_ONLY})

    def needs_restart(self, new: "Settings") -> list[str]:
        """The RESTART_ONLY settings that ``new`` changes."""
        return [key for key in RESTART_ONLY if getattr(self, key) != getattr(new, key)]

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON values (how the master hands them to workers)."""
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "Settings":
        return cls(**values)

    @property
    def endpoints(self) -> list[str]:
        """The listening endpoints: ``listen``, or ``tcp:PORT`` when it is empty."""
        return self.listen or [f"tcp:{self.port}:backlog={DEFAULT_BACKLOG}"]


def read_toml(path: str) -> dict[str, dict[str, Any]]:
    """Read a config file into ``{section: {key: value}}``; unknown keys are errors."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("--config", f"cannot read {path}: {e.strerror}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("--config", f"{path} is not valid TOML: {e}")
    known = {(s.section, s.key) for s in SPECS}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(section, f"unknown setting in {path}")
        for key in table:
            if (section, key) not in known:
                raise ConfigError(f"{section}.{key}", f"unknown setting in {path}")
    return data


def build_settings(config_path: str | None = None,
                   overrides: dict[str, Any] | None = None) -> Settings:
    """Fold defaults, the TOML file and command-line ``overrides`` (by key).

    Raises ConfigError naming the first wrong setting.
    """
    file_values = read_toml(config_path) if config_path else {}
    overrides = overrides or {}
    values: dict[str, Any] = {}
    for spec in SPECS:
        raw = spec.default
        name = spec.setting
        if spec.key in file_values.get(spec.section, {}):
            raw = file_values[spec.section][spec.key]
        if overrides.get(spec.key) is not None:
            raw = overrides[spec.key]
            name = f"--{spec.flag}" if spec.flag else name
        try:
            values[spec.key] = spec.check(raw)
        except ValueError as e:
            raise ConfigError(name, str(e))
    if values["admin"].startswith("tcp") and not values["admin_secret"]:
        raise ConfigError("server.admin_secret",
                          "must be set when the admin endpoint is tcp:")
    if values["ping_timeout"] < values["ping_interval"]:
        raise ConfigError("timeouts.ping_timeout",
                          "must be at least timeouts.ping_interval")
    return Settings(config_path=os.path.abspath(config_path) if config_path else None,
                    overrides={k: v for k, v in overrides.items() if v is not None},
                    **values)
